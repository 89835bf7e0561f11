//! The HTTP front door in front of a Java application: `tests/java/XfccUpstream.java` (the JDK's
//! own HTTP server) reads the partner's certificate from `x-forwarded-client-cert` the way
//! Keycloak's Envoy lookup does and from an nginx-style header the way its nginx lookup does,
//! and answers with what it saw. curl is the partner, with and without a certificate, sending
//! forged identity headers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Gateway, Pki, text};
use onerecord_tls::Sha256;

/// The Java application, killed on drop.
struct JavaApp {
    child: Child,
    port: u16,
}

impl JavaApp {
    fn start() -> Self {
        let mut child = Command::new("java")
            .arg("-cp")
            .arg(common::java_classes("XfccUpstream"))
            .args(["XfccUpstream", "x-ssl-client-cert"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("java");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("XfccUpstream said {line:?}"));
        Self { child, port }
    }
}

impl Drop for JavaApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway in HTTP mode in front of `app`, client certificates requested (`require`:
/// required).
fn front_door(pki: &Pki, app: &JavaApp, require: bool) -> Gateway {
    front_door_with(pki, app, require, &[])
}

/// [`front_door`] with `extra` flags.
fn front_door_with(pki: &Pki, app: &JavaApp, require: bool, extra: &[&str]) -> Gateway {
    let upstream = format!("http://127.0.0.1:{}", app.port);
    let mut args = vec![
        "--upstream",
        &upstream,
        "--client-cert-header",
        "x-ssl-client-cert",
    ];
    if require {
        args.push("--require-client-cert");
    }
    args.extend_from_slice(extra);
    Gateway::server_with_ca(pki, &args)
}

/// curl through the gateway: `extra` arguments, the response body (fails on a curl error).
fn curl(gw: &Gateway, pki: &Pki, cert: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--cacert", &pki.path("ca.pem")])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", gw.addr.port()),
        ]);
    if let Some(name) = cert {
        cmd.args(["--cert", &pki.path(&format!("{name}.pem"))])
            .args(["--key", &pki.path(&format!("{name}.key"))]);
    }
    cmd.args(extra).arg(format!(
        "https://localhost:{}/logistics-objects/1",
        gw.addr.port()
    ));
    let out = cmd.output().expect("curl");
    assert!(out.status.success(), "curl failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The value of `name: value` in the application's answer.
fn field<'a>(answer: &'a str, name: &str) -> &'a str {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
}

const FORGED: [&str; 8] = [
    "-H",
    "x-forwarded-client-cert: Hash=00;Cert=\"forged\";Subject=\"CN=admin\"",
    "-H",
    "x-ssl-client-cert: forged",
    "-H",
    "x-forwarded-for: 6.6.6.6",
    "-H",
    "x-forwarded-proto: http",
];

#[test]
fn java_application_reads_the_verified_partner_certificate_and_never_a_forged_one() {
    let pki = Pki::new();
    let app = JavaApp::start();
    let gw = front_door(&pki, &app, true);
    let answer = curl(&gw, &pki, Some("client"), &FORGED);
    let leaf = Sha256::of(&pki.client.chain[0]).to_string();
    assert_eq!(field(&answer, "xfcc-count"), "1", "{answer}");
    assert_eq!(field(&answer, "xfcc-sha256"), leaf, "{answer}");
    assert_eq!(field(&answer, "xfcc-hash-field"), leaf, "{answer}");
    assert_eq!(field(&answer, "nginx-sha256"), leaf, "{answer}");
    assert!(
        field(&answer, "xfcc-subject").contains("CN=acme-cargo"),
        "{answer}"
    );
    // The forged address stays (the gateway appends); the last entry is the gateway's.
    assert_eq!(
        field(&answer, "x-forwarded-for"),
        "[6.6.6.6, 127.0.0.1]",
        "{answer}"
    );
    assert_eq!(field(&answer, "x-forwarded-proto"), "[https]", "{answer}");
    assert_eq!(
        field(&answer, "x-forwarded-host"),
        format!("[localhost:{}]", gw.addr.port()),
        "{answer}"
    );
}

#[test]
fn a_partner_without_a_certificate_brings_no_certificate_header_even_a_forged_one() {
    let pki = Pki::new();
    let app = JavaApp::start();
    // --ca without --require-client-cert: anonymous clients are admitted.
    let gw = front_door(&pki, &app, false);
    let answer = curl(&gw, &pki, None, &FORGED);
    assert_eq!(field(&answer, "xfcc-count"), "0", "{answer}");
    assert!(!answer.contains("nginx-subject"), "{answer}");
    assert!(!answer.contains("forged"), "{answer}");
}

#[test]
fn large_uploads_stream_through_to_java_with_content_length_and_chunked() {
    let pki = Pki::new();
    let app = JavaApp::start();
    let gw = front_door(&pki, &app, true);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    // 24 MiB of varied bytes: far more than the gateway buffers per connection.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let want = Sha256::of(&data).to_string();
    let at_file = format!("@{}", file.display());
    for chunked in [false, true] {
        let mut extra = vec!["--data-binary", &at_file, "-H", "Expect:"];
        if chunked {
            extra.extend_from_slice(&["-H", "Transfer-Encoding: chunked"]);
        }
        let answer = curl(&gw, &pki, Some("client"), &extra);
        assert_eq!(field(&answer, "method"), "POST");
        assert_eq!(
            field(&answer, "body-bytes"),
            data.len().to_string(),
            "chunked={chunked}"
        );
        assert_eq!(field(&answer, "body-sha256"), want, "chunked={chunked}");
    }
}

#[test]
fn a_client_offering_h2_gets_http_1_1_by_alpn_and_is_served() {
    let pki = Pki::new();
    let app = JavaApp::start();
    let gw = front_door_with(&pki, &app, true, &["--alpn", "http/1.1"]);
    // curl offers h2 and http/1.1; the gateway picks http/1.1, the only one it serves.
    let out = Command::new("curl")
        .args(["-sS", "-v", "--http2", "--max-time", "30"])
        .args(["--cacert", &pki.path("ca.pem")])
        .args([
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
        ])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", gw.addr.port()),
        ])
        .arg(format!("https://localhost:{}/x", gw.addr.port()))
        .output()
        .expect("curl");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("ALPN: server accepted http/1.1"), "{all}");
    let body = String::from_utf8(out.stdout).unwrap();
    assert_eq!(field(&body, "xfcc-count"), "1", "{body}");
}
