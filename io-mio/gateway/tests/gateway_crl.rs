//! CRLs in the `onerecord-gateway` binary, against real peers over loopback: a CRL that no
//! trusted CA issued or whose signature is bad stops the start (exit 2 naming the file) and
//! is refused on reload; a damaged CRL is named as such; an expired CRL is a warning at start
//! and its refusals are `crl_expired` in the log and the metrics; `--crl-grace` opens a
//! bounded window (in client mode too); a CRL of a CA that may not sign CRLs stops the start;
//! refusal lines name the certificate the client presented.

mod cli_support;
mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cli_support::{s_server, through};
use common::{GET10, Gateway, Pki, free_port, http_get, s_client, sample, scrape, text};
use onerecord_tls_mio::Client;
use onerecord_tls_tests::{Ca, wall_secs};

/// Run the gateway in server mode (bounded by `timeout`) with `args`, expecting it to stop.
fn run_to_exit(pki: &Pki, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("10")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .args([
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
        ])
        .args(args)
        .output()
        .expect("run the gateway")
}

fn assert_exit_2_naming(out: &Output, file: &str, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    assert!(stderr.contains(file), "stderr names {file}:\n{stderr}");
    for w in words {
        assert!(stderr.contains(w), "stderr says {w:?}:\n{stderr}");
    }
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// An mTLS gateway over `crl`, with `extra` arguments.
fn mtls_gateway(pki: &Pki, crl: &str, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--cert".to_string(),
        pki.path("server.pem"),
        "--key".to_string(),
        pki.path("server.key"),
        "--client-ca".to_string(),
        pki.path("ca.pem"),
        "--require-client-cert".to_string(),
        "--crl".to_string(),
        crl.to_string(),
        "--workers".to_string(),
        "1".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start("server", &refs)
}

/// Connect with the client certificate `name` and GET `/`: the response, or the error.
fn get(pki: &Pki, addr: SocketAddr, name: &str) -> Result<String, String> {
    let mut c = Client::new(pki.client_policy(Some(name)));
    c.io_timeout = Duration::from_secs(5);
    let mut s = c
        .connect(addr, "localhost")
        .map_err(|e| format!("connect: {e}"))?;
    http_get(&mut s, "/").map_err(|e| format!("get: {e}"))
}

#[test]
fn crl_of_a_foreign_ca_exits_2_naming_the_file_even_with_crl_allow_unknown() {
    let pki = Pki::new();
    let foreign = Ca::new("Untrusted CA").crl_at(wall_secs(), &[pki.client.serial], 30);
    std::fs::write(pki.path("foreign.crl"), foreign.as_ref()).unwrap();
    let file = pki.path("foreign.crl");
    // With --crl-allow-unknown this file used to turn revocation off silently (a revoked
    // client got 200); without it, every client was refused.
    let ca = pki.path("ca.pem");
    for extra in [&["--crl-allow-unknown"][..], &[]] {
        let mut args = vec!["--client-ca", &ca, "--require-client-cert", "--crl", &file];
        args.extend_from_slice(extra);
        let out = run_to_exit(&pki, &args);
        assert_exit_2_naming(&out, &file, &["CN=Untrusted CA", "--ca "]);
    }
}

#[test]
fn crl_with_a_bad_signature_exits_2_naming_the_file() {
    let pki = Pki::new();
    // Same issuer name as the trusted CA, another key.
    let forged = Ca::new("Gateway Test CA").crl_at(wall_secs(), &[], 30);
    std::fs::write(pki.path("forged.crl"), forged.as_ref()).unwrap();
    let (ca, file) = (pki.path("ca.pem"), pki.path("forged.crl"));
    let out = run_to_exit(&pki, &["--client-ca", &ca, "--crl", &file]);
    assert_exit_2_naming(&out, &file, &["signature"]);
}

/// A CA bundle of the test CA and `ca`, written as `name`; its path.
fn bundle_with(pki: &Pki, ca: &Ca, name: &str) -> String {
    let bundle = pki.ca.pem() + &ca.pem();
    std::fs::write(pki.path(name), bundle).unwrap();
    pki.path(name)
}

#[test]
fn crl_of_a_ca_whose_key_usage_lacks_crl_sign_exits_2_naming_the_file() {
    let pki = Pki::new();
    let issuing_only = Ca::without_crl_sign("Issuing-only CA");
    let bundle = bundle_with(&pki, &issuing_only, "bundle.pem");
    let crl = issuing_only.crl_at(wall_secs(), &[], 30);
    std::fs::write(pki.path("issuing-only.crl"), crl.as_ref()).unwrap();
    let file = pki.path("issuing-only.crl");
    let out = run_to_exit(&pki, &["--client-ca", &bundle, "--crl", &file]);
    assert_exit_2_naming(&out, &file, &["CN=Issuing-only CA", "cRLSign"]);
    // A CA certificate without a key usage extension may sign CRLs: that one starts.
    let legacy = Ca::without_key_usage("Legacy CA");
    let bundle = bundle_with(&pki, &legacy, "legacy-bundle.pem");
    let crl = legacy.crl_at(wall_secs(), &[], 30);
    std::fs::write(pki.path("legacy.crl"), crl.as_ref()).unwrap();
    let gw = Gateway::start(
        "server",
        &[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
            "--client-ca",
            &bundle,
            "--crl",
            &pki.path("legacy.crl"),
        ],
    );
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

#[test]
fn reload_with_a_crl_of_a_ca_without_crl_sign_keeps_the_current_policy() {
    let pki = Pki::new();
    let issuing_only = Ca::without_crl_sign("Issuing-only CA");
    let bundle = bundle_with(&pki, &issuing_only, "bundle.pem");
    let file = pki.path("crl.der");
    let gw = Gateway::start(
        "server",
        &[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
            "--client-ca",
            &bundle,
            "--require-client-cert",
            "--crl",
            &file,
            "--workers",
            "1",
        ],
    );
    assert!(get(&pki, gw.addr, "revoked").is_err());
    let crl = issuing_only.crl_at(wall_secs(), &[], 30);
    pki.replace_file("crl.der", crl.as_ref());
    gw.signal("HUP");
    gw.wait_for_log("reload failed", Duration::from_secs(10));
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        line.contains("ERROR") && line.contains(&file) && line.contains("cRLSign"),
        "{line}"
    );
    // The previous CRL is still in force.
    assert!(
        get(&pki, gw.addr, "client")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(get(&pki, gw.addr, "revoked").is_err());
}

#[test]
fn corrupt_crl_is_reported_as_a_crl_error_naming_the_crl_file() {
    let pki = Pki::new();
    let good = std::fs::read(pki.path("crl.der")).unwrap();
    std::fs::write(pki.path("cut.crl"), &good[..good.len() / 2]).unwrap();
    let (ca, file) = (pki.path("ca.pem"), pki.path("cut.crl"));
    let out = run_to_exit(&pki, &["--client-ca", &ca, "--crl", &file]);
    assert_exit_2_naming(&out, &file, &["--crl", "CRL"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("--cert"),
        "not blamed on the certificate:\n{stderr}"
    );
}

#[test]
fn crl_without_client_ca_exits_2() {
    let pki = Pki::new();
    let file = pki.path("crl.der");
    let out = run_to_exit(&pki, &["--crl", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ca"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn expired_crl_warns_at_start_and_its_refusals_are_crl_expired_in_log_and_metrics() {
    let pki = Pki::new();
    let stale = pki.ca.crl_at(wall_secs(), &[], -1);
    std::fs::write(pki.path("stale.crl"), stale.as_ref()).unwrap();
    let file = pki.path("stale.crl");
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = maddr.to_string();
    let gw = mtls_gateway(&pki, &file, &["--metrics", &m]);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&file) && l.contains("expired")),
        "{log}"
    );
    assert!(get(&pki, gw.addr, "client").is_err());
    gw.wait_for_log("refused remote=", Duration::from_secs(5));
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("refused remote=")).unwrap();
    assert!(line.contains("failure=crl_expired"), "{line}");
    assert!(
        line.contains(&file),
        "the refusal names the stale CRL file: {line}"
    );
    assert!(line.contains(" peer_cn=acme-cargo "), "{line}");
    let series = "onerecord_handshake_failures_total{reason=\"crl_expired\"}";
    let start = Instant::now();
    loop {
        let text = scrape(maddr);
        if sample(&text, series) == Some(1) {
            assert_eq!(
                sample(
                    &text,
                    "onerecord_handshake_failures_total{reason=\"revoked\"}"
                ),
                Some(0),
                "{text}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn crl_grace_admits_clients_within_the_window_and_is_a_warning_at_start() {
    let pki = Pki::new();
    // Expired a day ago; revokes `client` (and not `revoked`, which it does not list).
    let stale = pki.ca.crl_at(wall_secs(), &[pki.client.serial], -1);
    std::fs::write(pki.path("stale.crl"), stale.as_ref()).unwrap();
    let file = pki.path("stale.crl");
    let gw = mtls_gateway(&pki, &file, &["--crl-grace", "172800"]);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("--crl-grace 172800")),
        "{log}"
    );
    let r = get(&pki, gw.addr, "revoked").expect("admitted within the grace");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The grace does not stop the stale CRL from revoking.
    assert!(get(&pki, gw.addr, "client").is_err());
    gw.wait_for_log("failure=revoked", Duration::from_secs(5));
    drop(gw);
    let gw = mtls_gateway(&pki, &file, &["--crl-grace", "3600"]);
    assert!(
        get(&pki, gw.addr, "revoked").is_err(),
        "refused after the grace"
    );
    gw.wait_for_log("failure=crl_expired", Duration::from_secs(5));
}

#[test]
fn reload_with_a_foreign_crl_keeps_the_current_policy_and_logs_an_error() {
    let pki = Pki::new();
    let file = pki.path("crl.der");
    let gw = mtls_gateway(&pki, &file, &[]);
    assert!(
        get(&pki, gw.addr, "client")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(get(&pki, gw.addr, "revoked").is_err());
    let foreign = Ca::new("Untrusted CA").crl_at(wall_secs(), &[], 30);
    pki.replace_file("crl.der", foreign.as_ref());
    gw.signal("HUP");
    gw.wait_for_log("reload failed", Duration::from_secs(10));
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("ERROR") && line.contains(&file), "{line}");
    // The policy in force is the previous one: the client still gets in, the revoked one
    // is still refused.
    assert!(
        get(&pki, gw.addr, "client")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(get(&pki, gw.addr, "revoked").is_err());
}

#[test]
fn expired_crl_warning_is_logged_once_per_change_not_at_every_reload_interval() {
    let pki = Pki::new();
    let stale = pki.ca.crl_at(wall_secs(), &[], -1);
    pki.replace_file("crl.der", stale.as_ref());
    let file = pki.path("crl.der");
    let gw = mtls_gateway(&pki, &file, &["--reload-interval", "1"]);
    gw.wait_for_count("reloaded policy", 3, Duration::from_secs(10));
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(&file) && l.contains("has expired"))
            .count()
    };
    assert_eq!(warned(&gw.log()), 1, "{}", gw.log());
    // A different stale CRL is a change: warned once more.
    let staler = pki.ca.crl_at(wall_secs(), &[], -2);
    pki.replace_file("crl.der", staler.as_ref());
    let start = Instant::now();
    while warned(&gw.log()) < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = gw.log_count("reloaded policy");
    gw.wait_for_count("reloaded policy", before + 2, Duration::from_secs(10));
    assert_eq!(warned(&gw.log()), 2, "{}", gw.log());
}

#[test]
fn refusal_log_names_the_certificate_the_client_presented() {
    let pki = Pki::new();
    let gw = mtls_gateway(&pki, &pki.path("crl.der"), &[]);
    for (name, cn, failure) in [
        ("revoked", "bad-cargo", "revoked"),
        ("stranger", "acme-cargo", "unknown_ca"),
        ("expired", "old-cargo", "expired"),
    ] {
        let before = gw.log_count("refused remote=");
        let (cert, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}.key")),
        );
        let out = s_client(
            gw.addr,
            &["-CAfile", &pki.path("ca.pem"), "-cert", &cert, "-key", &key],
            b"GET / HTTP/1.0\r\n\r\n",
        );
        assert!(
            !text(&out).contains("HTTP/1.1 200"),
            "{name}: {}",
            text(&out)
        );
        gw.wait_for_count("refused remote=", before + 1, Duration::from_secs(5));
        let log = gw.log();
        let line = log
            .lines()
            .filter(|l| l.contains("refused remote="))
            .nth(before)
            .unwrap();
        assert!(line.contains(&format!("failure={failure}")), "{line}");
        assert!(line.contains(&format!(" peer_cn={cn} ")), "{line}");
        assert!(
            line.contains("peer_serial=") && line.contains("peer_issuer="),
            "{line}"
        );
        assert!(line.contains(" peer_uri=https://"), "{line}");
    }
}

#[test]
fn client_mode_expired_crl_refuses_the_partner_as_crl_expired_unless_within_crl_grace() {
    let pki = Pki::new();
    let (_server, port) = s_server(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
    ]);
    let partner = format!("127.0.0.1:{port}");
    let stale = pki.ca.crl_at(wall_secs(), &[], -1);
    std::fs::write(pki.path("stale.crl"), stale.as_ref()).unwrap();
    let file = pki.path("stale.crl");
    let ca = pki.path("ca.pem");
    let client = |extra: &[&str]| {
        let mut args = vec![
            "--connect",
            &partner,
            "--server-name",
            "localhost",
            "--ca",
            &ca,
            "--crl",
            &file,
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        Gateway::start("client", &args)
    };
    let warned_expired = |log: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&file) && l.contains("expired"))
    };

    let gw = client(&["--crl-grace", "172800"]);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("--crl-grace 172800")),
        "{log}"
    );
    assert!(warned_expired(&log), "{log}");
    let page = through(gw.addr, GET10);
    assert!(
        page.starts_with("HTTP/1.0 200 ok"),
        "within the grace:\n{page}\n{}",
        gw.log()
    );
    drop(gw);

    let gw = client(&[]);
    assert!(warned_expired(&gw.log()), "{}", gw.log());
    assert!(!gw.log().contains("--crl-grace"), "{}", gw.log());
    let page = through(gw.addr, GET10);
    assert!(page.is_empty(), "refused: {page}");
    gw.wait_for_log("onerecord::partner", Duration::from_secs(10));
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("onerecord::partner"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains(&partner) && line.contains("failure=crl_expired"),
        "{line}"
    );
}
