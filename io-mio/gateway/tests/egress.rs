//! The egress proxy (`client` without `--connect`) against the real binary and real peers:
//! curl (`-x`) and a Java application (`-Dhttp.proxyHost`) are the local application; the
//! partners are the gateway binary itself in server mode with `--require-client-cert` (its
//! identity responder answers with the client certificate it verified) and a Java HTTPS
//! server with `needClientAuth` (`tests/java/HttpsPartner.java`). Partner names
//! (`partner-a.example`, ...) reach loopback through each `[[partner]]`'s `address`; the
//! gateway's log and its metrics endpoint show what the proxy did.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Gateway, Pki, free_port, sample, scrape, text};
use onerecord_tls_tests::LeafSpec;

/// Issue a server certificate for `name` and a client certificate with CN `client`, written
/// as `name`.pem/.key and `client`.pem/.key.
fn issue(pki: &Pki, name: &str, client: &str) {
    let server = pki.ca.issue(&LeafSpec {
        cn: name.to_string(),
        dns: vec![name.to_string()],
        ..LeafSpec::server().around_wall_clock()
    });
    server.write_files(pki.dir.path(), name);
    let c = pki.ca.issue(&LeafSpec::client(client).around_wall_clock());
    c.write_files(pki.dir.path(), client);
}

/// A partner: the gateway in server mode with certificate `name`, mTLS required, answering
/// with the identity it verified; `extra` adds flags (e.g. an --allow-cn rule).
fn partner(pki: &Pki, name: &str, extra: &[&str]) -> Gateway {
    let (cert, key, ca) = (
        pki.path(&format!("{name}.pem")),
        pki.path(&format!("{name}.key")),
        pki.path("ca.pem"),
    );
    let mut args = vec![
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "--require-client-cert",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    Gateway::start("server", &args)
}

/// Write `body` as `name` in the PKI directory; its path.
fn write(pki: &Pki, name: &str, body: &str) -> String {
    let p = pki.dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// The egress gateway from a client file (relative paths: the PKI directory).
fn egress(file: &str) -> Gateway {
    Gateway::start_args(&["client", "--config", file])
}

/// `curl -x http://PROXY URL` (plus `args`), bounded; prints the body then `\nCODE <code>`.
fn curl(proxy: &Gateway, url: &str, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x"])
        .arg(format!("http://{}", proxy.addr))
        .args(args)
        .args(["-w", "\nCODE %{http_code}", url])
        .output()
        .expect("curl")
}

/// The status code curl's `-w` printed.
fn code(o: &Output) -> u16 {
    text(o)
        .rsplit("CODE ")
        .next()
        .and_then(|c| c.trim().get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Connections the partner accepted (its `onerecord::access` lines).
fn accepted(p: &Gateway) -> usize {
    p.log_count("onerecord::access] accepted")
}

/// The loopback address of a partner that was started (or a closed port).
fn at(p: Option<&Gateway>) -> String {
    p.map_or("127.0.0.1:1".to_string(), |g| g.addr.to_string())
}

/// The two-partner client file: a certificate per partner, each reached on loopback at the
/// address of the gateway given for it; refuser.example gets partner b's certificate.
fn two_partner_file(
    pki: &Pki,
    extra_top: &str,
    a: Option<&Gateway>,
    b: Option<&Gateway>,
    refuser: Option<&Gateway>,
) -> String {
    write(
        pki,
        "egress.toml",
        &format!(
            r#"listen = "127.0.0.1:0"
ca = "ca.pem"
allow_destination = ["partner-a.example", "partner-b.example", "refuser.example"]
{extra_top}

[[partner]]
hosts = ["partner-a.example"]
cert = "acme-for-a.pem"
key = "acme-for-a.key"
address = "{}"

[[partner]]
hosts = ["partner-b.example"]
cert = "acme-for-b.pem"
key = "acme-for-b.key"
address = "{}"

[[partner]]
hosts = ["refuser.example"]
cert = "acme-for-b.pem"
key = "acme-for-b.key"
address = "{}"
"#,
            at(a),
            at(b),
            at(refuser)
        ),
    )
}

fn two_partner_pki() -> Pki {
    let pki = Pki::new();
    issue(&pki, "partner-a.example", "acme-for-a");
    issue(&pki, "partner-b.example", "acme-for-b");
    issue(&pki, "refuser.example", "someone-else");
    pki
}

#[test]
fn curl_through_the_egress_proxy_reaches_two_partners_each_with_its_own_certificate() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let b = partner(&pki, "partner-b.example", &[]);
    let gw = egress(&two_partner_file(&pki, "", Some(&a), Some(&b), None));
    for (p, name, cn) in [
        (&a, "partner-a.example", "acme-for-a"),
        (&b, "partner-b.example", "acme-for-b"),
    ] {
        let url = format!("http://{name}:{}/logistics-objects/1", p.addr.port());
        let o = curl(&gw, &url, &[]);
        assert_eq!(code(&o), 200, "{url}: {}", text(&o));
        let body = String::from_utf8_lossy(&o.stdout);
        assert!(
            body.contains(&format!("\"common_name\": \"{cn}\"")),
            "{name} saw another certificate: {body}"
        );
        // The partner was asked under its own name (SNI and Host from the absolute URL).
        assert!(
            body.contains(&format!("\"server_name\": \"{name}\"")),
            "{body}"
        );
    }
}

#[test]
fn separate_curl_processes_share_a_few_tls_connections_to_a_partner() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = egress(&two_partner_file(
        &pki,
        &format!("metrics = \"{metrics}\""),
        Some(&a),
        None,
        None,
    ));
    let url = format!("http://partner-a.example:{}/x", a.addr.port());
    const N: usize = 12;
    for _ in 0..N {
        let o = curl(&gw, &url, &[]);
        assert_eq!(code(&o), 200, "{}", text(&o));
    }
    let tls = accepted(&a);
    assert!(
        (1..N).contains(&tls),
        "{N} requests from separate curl processes made {tls} TLS connections to the partner"
    );
    let dest = format!("partner-a.example:{}", a.addr.port());
    let m = scrape(metrics.parse().unwrap());
    assert_eq!(
        sample(
            &m,
            &format!("onerecord_egress_requests_total{{destination=\"{dest}\"}}")
        ),
        Some(N as u64),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("onerecord_egress_connections_total{{destination=\"{dest}\"}}")
        ),
        Some(tls as u64),
        "{m}"
    );
    // The connection the last request used waits in the pool.
    let idle = sample(
        &m,
        &format!("onerecord_egress_pool_idle_connections{{destination=\"{dest}\"}}"),
    );
    assert!(idle.is_some_and(|n| n >= 1), "{m}");
}

#[test]
fn java_application_with_http_proxy_host_reaches_a_partner_over_reused_mtls() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let gw = egress(&two_partner_file(&pki, "", Some(&a), None, None));
    const N: usize = 6;
    let o = Command::new("timeout")
        .arg("60")
        .arg("java")
        .arg(format!("-Dhttp.proxyHost={}", gw.addr.ip()))
        .arg(format!("-Dhttp.proxyPort={}", gw.addr.port()))
        .arg("-cp")
        .arg(common::java_classes("ProxyClient"))
        .arg("ProxyClient")
        .arg(format!(
            "http://partner-a.example:{}/logistics-objects/1",
            a.addr.port()
        ))
        .arg(N.to_string())
        .output()
        .expect("java");
    let out = text(&o);
    let ok: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("STATUS 200 ") && l.contains("\"common_name\": \"acme-for-a\""))
        .collect();
    assert_eq!(ok.len(), N, "{out}");
    let tls = accepted(&a);
    assert!((1..N).contains(&tls), "{N} requests, {tls} TLS connections");
}

#[test]
fn connect_is_refused_with_405_saying_a_tunnel_would_bypass_the_policy() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let gw = egress(&two_partner_file(&pki, "", Some(&a), None, None));
    // curl -p asks for a tunnel (CONNECT), as an https:// URL through a proxy does.
    let url = format!("http://partner-a.example:{}/", a.addr.port());
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-p", "-x"])
        .arg(format!("http://{}", gw.addr))
        .args(["-w", "\nCONNECT %{http_connect}", &url])
        .output()
        .expect("curl");
    assert!(text(&o).contains("CONNECT 405"), "{}", text(&o));
    // The body says why.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "CONNECT partner-a.example:{0} HTTP/1.1\r\nHost: partner-a.example:{0}\r\n\r\n",
        a.addr.port()
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("tunnel"), "{resp}");
    assert_eq!(accepted(&a), 0, "a refused CONNECT reached the partner");
}

#[test]
fn a_destination_outside_the_allow_list_gets_403_naming_it() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let gw = egress(&two_partner_file(&pki, "", Some(&a), None, None));
    let url = format!("http://elsewhere.example:{}/", a.addr.port());
    let o = curl(&gw, &url, &[]);
    assert_eq!(code(&o), 403, "{}", text(&o));
    assert!(text(&o).contains("elsewhere.example"), "{}", text(&o));
    assert_eq!(accepted(&a), 0);
}

#[test]
fn a_partner_refusing_our_certificate_gives_502_naming_the_alert_and_a_warn_line() {
    let pki = two_partner_pki();
    // It admits only CN someone-else; we present acme-for-b.
    let r = partner(&pki, "refuser.example", &["--allow-cn", "someone-else"]);
    let gw = egress(&two_partner_file(&pki, "", None, None, Some(&r)));
    let dest = format!("refuser.example:{}", r.addr.port());
    let o = curl(&gw, &format!("http://{dest}/"), &[]);
    assert_eq!(code(&o), 502, "{}", text(&o));
    let body = text(&o);
    assert!(
        body.contains(&dest) && body.contains("access_denied"),
        "the body names neither the partner nor the alert: {body}"
    );
    gw.wait_for_log("access_denied", Duration::from_secs(10));
    let log = gw.log();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("onerecord::partner"))
        .unwrap_or_else(|| panic!("no WARN onerecord::partner line:\n{log}"));
    assert!(warn.contains("refuser.example"), "{warn}");
    assert!(warn.contains("access_denied"), "{warn}");
}

#[test]
fn a_partner_whose_certificate_is_for_another_name_gives_502_failed_verification() {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    // partner-b.example's address is partner a, whose certificate names partner-a.example.
    let gw = egress(&two_partner_file(&pki, "", None, Some(&a), None));
    let dest = format!("partner-b.example:{}", a.addr.port());
    let o = curl(&gw, &format!("http://{dest}/"), &[]);
    assert_eq!(code(&o), 502, "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{dest} failed verification")),
        "{}",
        text(&o)
    );
    gw.wait_for_log("failed verification", Duration::from_secs(10));
    assert_eq!(
        accepted(&a),
        0,
        "the partner counted an accepted connection"
    );
}

#[test]
fn sighup_rereads_the_client_file_a_new_destination_is_allowed_and_a_broken_file_keeps_the_running_one()
 {
    let pki = two_partner_pki();
    let a = partner(&pki, "partner-a.example", &[]);
    let b = partner(&pki, "partner-b.example", &[]);
    let file = two_partner_file(&pki, "", Some(&a), Some(&b), None);
    // At first both partners are allowed.
    let gw = egress(&file);
    let url_b = format!("http://partner-b.example:{}/", b.addr.port());
    let url_a = format!("http://partner-a.example:{}/", a.addr.port());
    assert_eq!(code(&curl(&gw, &url_b, &[])), 200);
    // partner b leaves the allow-list (and its entry the file).
    let without_b = format!(
        r#"listen = "127.0.0.1:0"
ca = "ca.pem"
allow_destination = ["partner-a.example"]

[[partner]]
hosts = ["partner-a.example"]
cert = "acme-for-a.pem"
key = "acme-for-a.key"
address = "{}"
"#,
        a.addr
    );
    std::fs::write(&file, without_b).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("egress: reloaded", Duration::from_secs(10));
    let o = curl(&gw, &url_b, &[]);
    assert_eq!(code(&o), 403, "{}", text(&o));
    assert_eq!(code(&curl(&gw, &url_a, &[])), 200);
    // A file that does not load: ERROR naming the key and line, the running proxy stays.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\nbogus = 1\n",
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload failed", Duration::from_secs(10));
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        line.contains("egress.toml:3:1: unknown field `bogus`"),
        "{line}"
    );
    assert_eq!(code(&curl(&gw, &url_a, &[])), 200);
    assert_eq!(code(&curl(&gw, &url_b, &[])), 403);
}

/// Run `onerecord-gateway args` to completion (bounded); its status code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("onerecord-gateway");
    (o.status.code(), text(&o))
}

#[test]
fn every_client_configuration_error_exits_2_naming_the_key_and_its_line() {
    let pki = two_partner_pki();
    let dir = pki.dir.path();
    let cases: &[(&str, &str)] = &[
        // A misspelt key.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\nallow_destinations = [\"a.example\"]\n",
            ":3:1: unknown field `allow_destinations`",
        ),
        // h2 offered to partners: the proxy speaks HTTP/1.1 to them.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\nalpn = [\"h2\"]\n",
            ":3:8: alpn: \"h2\": the egress proxy speaks HTTP/1.1 to partners",
        ),
        // A certificate without its key.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             cert = \"acme-for-a.pem\"\n",
            ":5:8: cert: a client certificate needs its key",
        ),
        // One host, two partners.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             [[partner]]\nhosts = [\"b.example\", \"a.example\"]\n",
            ":6:9: hosts: a.example is already a host of the partner at",
        ),
        // A partner the allow-list does not cover.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\nallow_destination = [\"*.acme.example\"]\n\
             [[partner]]\nhosts = [\"acme.example\"]\n",
            ":5:9: hosts: acme.example is not allowed by",
        ),
        // No CA bundle anywhere.
        (
            "listen = \"127.0.0.1:0\"\n[[partner]]\nhosts = [\"a.example\"]\n",
            "ca: partner a.example has no ca and there is no top-level ca",
        ),
        // A wildcard in the middle.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\nallow_destination = [\"a.*.example\"]\n",
            ":3:21: allow_destination \"a.*.example\": not a host name",
        ),
        // crl_grace without CRLs.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             crl_grace = 60\n",
            ":5:13: crl_grace: needs crl",
        ),
        // A connect override that is a name.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             address = \"127.0.0.1\"\n",
            ":5:11: address \"127.0.0.1\": an IP address and port",
        ),
        // A file that does not load: its key and line.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             cert = \"missing.pem\"\nkey = \"acme-for-a.key\"\n",
            ":5:8: cert: ",
        ),
        // A certificate with another certificate's key.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             cert = \"acme-for-a.pem\"\nkey = \"acme-for-b.key\"\n",
            ":5:8: cert",
        ),
        // A bad SPKI pin.
        (
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n[[partner]]\nhosts = [\"a.example\"]\n\
             verify_spki = [\"abc\"]\n",
            ":5:15: verify_spki: \"abc\" is not 64 hex digits",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let file = file.display().to_string();
        for args in [
            vec!["client", "--config", file.as_str()],
            vec!["check", "--config", file.as_str()],
        ] {
            let (code, err) = run(&args);
            assert_eq!(code, Some(2), "{args:?} with\n{body}\nsaid: {err}");
            assert!(
                err.contains(&format!("bad{i}.toml{want}")) || err.contains(want),
                "{args:?} with\n{body}\nshould say {want:?}; said: {err}"
            );
        }
    }
}

#[test]
fn check_accepts_a_client_file_and_names_each_partner_and_its_certificate() {
    let pki = two_partner_pki();
    let file = two_partner_file(&pki, "", None, None, None);
    let o = Command::new(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["check", "--config", &file])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    let line = |host: &str| {
        out.lines()
            .find(|l| l.contains(&format!("partner {host}")))
            .unwrap_or_else(|| panic!("no line for {host}: {out}"))
            .to_string()
    };
    assert!(
        line("partner-a.example").contains("acme-for-a.pem"),
        "{out}"
    );
    assert!(
        line("partner-b.example").contains("acme-for-b.pem"),
        "{out}"
    );
    assert!(
        out.contains("allow_destination: partner-a.example, partner-b.example"),
        "{out}"
    );
    assert!(out.trim_end().ends_with(": ok"), "{out}");
}

#[test]
fn client_config_with_other_client_flags_exits_2_naming_the_flag() {
    let pki = two_partner_pki();
    let file = two_partner_file(&pki, "", None, None, None);
    let (code, err) = run(&[
        "client",
        "--config",
        &file,
        "--allow-destination",
        "x.example",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot be combined with --allow-destination"),
        "{err}"
    );
}

#[test]
fn egress_flags_with_connect_are_refused() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let (code, err) = run(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--ca",
        &ca,
        "--connect",
        "127.0.0.1:1",
        "--allow-destination",
        "a.example",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--allow-destination"), "{err}");
}

#[test]
fn egress_without_an_allow_list_warns_at_start_that_any_destination_is_allowed() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let g = Gateway::spawn(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    g.wait_for_log("no allow_destination", Duration::from_secs(20));
    let log = g.log();
    let line = log
        .lines()
        .find(|l| l.contains("no allow_destination"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("any"), "{line}");
    // With an allow-list: an INFO line listing it, no such warning.
    let g = Gateway::spawn(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--ca",
        &ca,
        "--allow-destination",
        "*.acme.example:8443",
    ]);
    g.wait_for_log("destinations allowed", Duration::from_secs(20));
    assert!(
        g.log().contains("*.acme.example:8443 (others get 403)"),
        "{}",
        g.log()
    );
    assert!(!g.log().contains("no allow_destination"), "{}", g.log());
}

#[test]
fn readme_egress_example_passes_check() {
    // The README's example file, with its files made in a temporary directory.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("```toml\n# egress.toml")
        .expect("README has the egress example");
    let rest = &readme[start + "```toml\n".len()..];
    let example = &rest[..rest.find("```").unwrap()];
    let pki = Pki::new();
    let carriers = pki
        .ca
        .issue(&LeafSpec::client("acme-cargo-carriers").around_wall_clock());
    carriers.write_files(pki.dir.path(), "acme-carriers");
    for (from, to) in [
        ("ca.pem", "onerecord-ca.pem"),
        ("crl.der", "onerecord-ca.crl"),
        ("client.pem", "acme.pem"),
        ("client.key", "acme.key"),
    ] {
        std::fs::copy(pki.path(from), pki.path(to)).unwrap();
    }
    let file = write(&pki, "egress.toml", example);
    let o = Command::new(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["check", "--config", &file])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// A partner's Java server: `tests/java/HttpsPartner.java` (client certificates required, TLS
/// 1.3 and 1.2) on loopback, killed on drop. It prints a `CONNECTION` line for each connection
/// it accepts, which `connections` counts.
struct JavaPartner {
    child: std::process::Child,
    port: u16,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl JavaPartner {
    /// Start it with certificate `name`.pem/.key, trusting the client CAs in `trusted`, on
    /// `engine`: `httpserver` (the JDK's `HttpsServer`) or `sslsocket` (JSSE's
    /// `SSLServerSocket`, which sends the fatal alert of a refused handshake).
    fn start(pki: &Pki, name: &str, trusted: &str, engine: &str) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = Command::new("java")
            .arg("-cp")
            .arg(common::java_classes("HttpsPartner"))
            .arg("HttpsPartner")
            .args([
                pki.path(&format!("{name}.pem")),
                pki.path(&format!("{name}.key")),
                pki.path(trusted),
                engine.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("java");
        let stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let o2 = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("PORT ") {
                    let _ = port_tx.send(p.trim().parse::<u16>().ok());
                }
                let mut o = o2.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let mut partner = Self {
            child,
            port: 0,
            out,
        };
        partner.port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("HttpsPartner did not listen: {}", partner.stdout()));
        partner
    }

    /// What it printed so far.
    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Connections it accepted so far.
    fn connections(&self) -> usize {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with("CONNECTION "))
            .count()
    }

    /// Wait (bounded) until it printed `needle`; whether it did.
    fn printed(&self, needle: &str, within: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for JavaPartner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The egress proxy on one worker (one pool), presenting the PKI's `client` certificate,
/// allowed to reach `localhost`, which it finds on loopback at `port`.
fn egress_to_localhost(pki: &Pki, port: u16, extra: &[&str]) -> Gateway {
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let resolve = format!("localhost:{port}:127.0.0.1");
    let mut args = vec![
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--allow-destination",
        "localhost",
        "--resolve",
        &resolve,
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    Gateway::start("client", &args)
}

/// The value of `name: value` in the Java partner's answer.
fn field<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn a_java_https_partner_with_need_client_auth_sees_our_certificate_over_reused_connections() {
    let pki = Pki::new();
    let java = JavaPartner::start(&pki, "server", "ca.pem", "httpserver");
    let gw = egress_to_localhost(&pki, java.port, &[]);
    // Our certificate's subject as openssl prints it (RFC 2253, as Java names it).
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(pki.path("client.pem"))
        .output()
        .expect("openssl x509");
    let subject = String::from_utf8_lossy(&o.stdout)
        .trim()
        .strip_prefix("subject=")
        .unwrap_or_else(|| panic!("openssl x509: {}", text(&o)))
        .to_string();
    assert!(subject.contains("CN=acme-cargo"), "{subject}");
    const N: usize = 12;
    let mut remotes = std::collections::BTreeSet::new();
    for i in 0..N {
        let url = format!("http://localhost:{}/logistics-objects/{i}", java.port);
        let o = curl(&gw, &url, &[]);
        assert_eq!(code(&o), 200, "{url}: {}", text(&o));
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(field(&body, "subject"), Some(subject.as_str()), "{body}");
        // Origin form, and the Host the absolute URL named.
        assert_eq!(
            field(&body, "request"),
            Some(format!("GET /logistics-objects/{i} HTTP/1.1").as_str()),
            "{body}"
        );
        assert_eq!(
            field(&body, "host"),
            Some(format!("[localhost:{}]", java.port).as_str()),
            "{body}"
        );
        assert!(
            matches!(field(&body, "tls"), Some("TLSv1.3" | "TLSv1.2")),
            "{body}"
        );
        remotes.insert(field(&body, "remote").unwrap_or_default().to_string());
    }
    let tls = java.connections();
    assert!(
        tls >= 1 && tls * 4 <= N,
        "{N} requests from separate curl processes made {tls} TLS connections to the Java \
         partner:\n{}",
        java.stdout()
    );
    // The requests came over as many TCP connections as the partner counted, or fewer.
    assert!(remotes.len() <= tls, "{remotes:?} over {tls} connections");
}

#[test]
fn a_java_partner_that_does_not_trust_us_gives_502_naming_the_alert() {
    let pki = Pki::new();
    // Its trust store holds another CA: our certificate does not chain to it. JSSE refuses
    // it with a fatal alert, which the SSLServerSocket engine sends.
    let java = JavaPartner::start(&pki, "server", "other-ca.pem", "sslsocket");
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = egress_to_localhost(&pki, java.port, &["--metrics", &metrics]);
    let dest = format!("localhost:{}", java.port);
    let o = curl(&gw, &format!("http://{dest}/logistics-objects/1"), &[]);
    assert_eq!(code(&o), 502, "{}", text(&o));
    // JSSE names an untrusted certificate path certificate_unknown.
    let said = format!("{dest} refused our certificate: certificate_unknown");
    assert!(
        text(&o).contains(&said),
        "the body does not say {said:?}: {}",
        text(&o)
    );
    // The partner refused it for its trust store, as it says.
    assert!(
        java.printed(
            "FAILED javax.net.ssl.SSLHandshakeException: PKIX path",
            Duration::from_secs(10)
        ),
        "{}",
        java.stdout()
    );
    gw.wait_for_log("certificate_unknown", Duration::from_secs(10));
    let log = gw.log();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("onerecord::partner"))
        .unwrap_or_else(|| panic!("no WARN onerecord::partner line:\n{log}"));
    assert!(warn.contains(&said), "{warn}");
    let m = scrape(metrics.parse().unwrap());
    assert_eq!(
        sample(
            &m,
            &format!(
                "onerecord_egress_failures_total{{destination=\"{dest}\",reason=\"refused\"}}"
            )
        ),
        Some(1),
        "{m}"
    );

    // The JDK's HttpsServer refuses the same way but, without the fix for JDK-8315436 (JDK 22;
    // JDK 17.0.15 lacks it), closes the connection without sending the alert (in TLS 1.3, after our Finished): still a 502
    // naming the partner, with the alert when the JDK sent it.
    let java = JavaPartner::start(&pki, "server", "other-ca.pem", "httpserver");
    let gw = egress_to_localhost(&pki, java.port, &[]);
    let dest = format!("localhost:{}", java.port);
    let o = curl(&gw, &format!("http://{dest}/logistics-objects/1"), &[]);
    assert_eq!(code(&o), 502, "{}", text(&o));
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(
        body.starts_with(&format!(
            "{dest} refused our certificate: certificate_unknown"
        )) || body.starts_with(&format!(
            "{dest} closed the TLS connection without an alert before answering"
        )),
        "{body}"
    );
    assert_eq!(java.connections(), 1, "{}", java.stdout());
}

#[test]
fn a_partner_that_closes_idle_connections_costs_no_failed_request() {
    let pki = two_partner_pki();
    // The partner closes a connection idle for a second; the proxy would keep it for 30.
    let a = partner(&pki, "partner-a.example", &["--idle-timeout", "1"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = egress(&two_partner_file(
        &pki,
        &format!("metrics = \"{metrics}\""),
        Some(&a),
        None,
        None,
    ));
    let url = format!(
        "http://partner-a.example:{}/logistics-objects/1",
        a.addr.port()
    );
    let o = curl(&gw, &url, &[]);
    assert_eq!(code(&o), 200, "{}", text(&o));
    // Twice: the partner closes the pooled connection after its idle timeout, and the next
    // request, sent as soon as it has, still succeeds (the proxy saw the close, or retries
    // the request it could not send on a new connection).
    for closed in 1..=2 {
        let n = a.wait_for_count("end=idle_timeout", closed, Duration::from_secs(10));
        assert_eq!(
            n,
            closed,
            "the partner did not close the idle connection:\n{}",
            a.log()
        );
        let o = curl(&gw, &url, &[]);
        assert_eq!(code(&o), 200, "after idle close {closed}: {}", text(&o));
    }
    // Three connections, the two after the first resumed.
    let log = a.log();
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("onerecord::access] accepted"))
        .collect();
    assert_eq!(accepted.len(), 3, "{log}");
    assert!(accepted[0].contains("resumed=false"), "{log}");
    assert!(
        accepted[1..].iter().all(|l| l.contains("resumed=true")),
        "a connection after an idle close was not resumed:\n{log}"
    );
    let dest = format!("partner-a.example:{}", a.addr.port());
    let m = scrape(metrics.parse().unwrap());
    let series = |name: &str| format!("{name}{{destination=\"{dest}\"");
    assert_eq!(
        sample(
            &m,
            &format!("{}}}", series("onerecord_egress_requests_total"))
        ),
        Some(3),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!(
                "{},kind=\"resumed\"}}",
                series("onerecord_egress_handshakes_total")
            )
        ),
        Some(2),
        "{m}"
    );
    // No request failed, not even one the proxy retried.
    let failures = series("onerecord_egress_failures_total");
    assert!(
        m.lines()
            .filter(|l| l.starts_with(&failures))
            .all(|l| l.ends_with(" 0")),
        "{m}"
    );
    assert!(!gw.log().contains("WARN"), "{}", gw.log());
}
