//! The gateway's audit trail, against the real binary and real peers over loopback: an
//! access line per accepted connection (who: CN, URI, serial, SPKI) and a close line (how
//! long, how many bytes, why it ended) in `onerecord::access`, `--log-format json`, a
//! start-up error printed once, and client mode warning about a partner that fails.

mod cli_support;
mod common;

use std::time::Duration;

use cli_support::{Proc, run_to_exit, s_server, serial_and_spki, through};
use common::{GET10, Gateway, Pki, URI_PREFIX, s_client, text};
use serde_json::Value;

/// An mTLS gateway answering with the identity responder; `extra` arguments appended.
fn mtls_args(pki: &Pki, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--cert",
        &pki.path("server.pem"),
        "--key",
        &pki.path("server.key"),
        "--client-ca",
        &pki.path("ca.pem"),
        "--require-client-cert",
        "--workers",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `openssl s_client` presenting the client certificate `name`, sending GET10.
fn get_with_cert(pki: &Pki, addr: std::net::SocketAddr, name: &str) -> String {
    let cert = pki.path(&format!("{name}.pem"));
    let key = pki.path(&format!("{name}.key"));
    let ca = pki.path("ca.pem");
    text(&s_client(
        addr,
        &["-CAfile", &ca, "-cert", &cert, "-key", &key],
        GET10,
    ))
}

/// The value of `key=` in a text log line (unquoted or quoted).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q.find('"').map(|e| &q[..e])
    } else {
        Some(rest.split(' ').next().unwrap_or(""))
    }
}

#[test]
fn accepted_mtls_connection_logs_who_connected_and_its_close_logs_duration_bytes_and_why() {
    let pki = Pki::new();
    let args = mtls_args(&pki, &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start("server", &refs);
    let page = get_with_cert(&pki, gw.addr, "client");
    assert!(page.contains(" 200 OK"), "{page}");
    gw.wait_for_log("onerecord::access] closed", Duration::from_secs(10));
    let log = gw.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("INFO") && l.contains("onerecord::access] accepted"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    let (serial, spki) = serial_and_spki(&pki.path("client.pem"));
    assert_eq!(field(accepted, "cn"), Some("acme-cargo"), "{accepted}");
    let uri = format!("{URI_PREFIX}acme-cargo");
    assert_eq!(field(accepted, "uri"), Some(uri.as_str()), "{accepted}");
    assert_eq!(
        field(accepted, "serial").map(|s| s.trim_start_matches('0')),
        Some(serial.as_str()),
        "{accepted}"
    );
    assert_eq!(field(accepted, "spki"), Some(spki.as_str()), "{accepted}");
    assert_eq!(field(accepted, "sni"), Some("localhost"), "{accepted}");
    assert_eq!(field(accepted, "version"), Some("TLSv1.3"), "{accepted}");
    assert_eq!(field(accepted, "resumed"), Some("false"), "{accepted}");
    let remote = field(accepted, "remote").unwrap().to_string();
    assert!(remote.starts_with("127.0.0.1:"), "{accepted}");

    let closed = log
        .lines()
        .find(|l| l.contains("onerecord::access] closed"))
        .unwrap();
    assert_eq!(field(closed, "remote"), Some(remote.as_str()), "{closed}");
    let n = |k: &str| -> u64 {
        field(closed, k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {closed}"))
    };
    assert!(n("duration_ms") < 20_000, "{closed}");
    assert_eq!(n("bytes_in"), GET10.len() as u64, "{closed}");
    // The answer: its head and a body of Content-Length bytes.
    let body_len: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert!(n("bytes_out") > body_len, "{closed}");
    assert!(n("bytes_out") < body_len + 1024, "{closed}");
    // HTTP/1.0: the responder ends the stream after its answer.
    assert_eq!(field(closed, "end"), Some("closed"), "{closed}");
}

#[test]
fn idle_timeout_is_the_reason_on_the_close_line() {
    let pki = Pki::new();
    let args = mtls_args(&pki, &["--idle-timeout", "1"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start("server", &refs);
    // An HTTP/1.1 keep-alive request, then silence until the gateway closes.
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let ca = pki.path("ca.pem");
    let client = std::thread::spawn({
        let addr = gw.addr;
        move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "(printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'; sleep 4) | \
                     timeout 10 openssl s_client -quiet -connect {addr} -CAfile {ca} \
                     -cert {cert} -key {key}"
                ))
                .output()
        }
    });
    gw.wait_for_log("onerecord::access] closed", Duration::from_secs(10));
    let log = gw.log();
    let closed = log
        .lines()
        .find(|l| l.contains("onerecord::access] closed"))
        .unwrap();
    assert_eq!(field(closed, "end"), Some("idle_timeout"), "{closed}");
    let _ = client.join();
}

/// The stderr lines of a JSON-logging process, each parsed (panics on a line that is not
/// a JSON object).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// An mTLS `server` with `--log-format json`, and the address its JSON `listening on` line
/// names.
fn json_mtls_gateway(pki: &Pki) -> (Proc, std::net::SocketAddr) {
    let mut args = vec!["server".to_string(), "--log-format".into(), "json".into()];
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    args.extend(mtls_args(pki, &[]));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Proc::gateway(&refs, None, &[]);
    gw.wait_for_log("listening on", Duration::from_secs(20));
    let addr = json_lines(&gw.log())
        .iter()
        .find_map(|v| {
            v["message"]
                .as_str()?
                .strip_prefix("listening on ")?
                .parse()
                .ok()
        })
        .expect("listening line");
    (gw, addr)
}

#[test]
fn json_log_format_writes_one_object_per_line_with_the_audit_fields() {
    let pki = Pki::new();
    let (gw, addr) = json_mtls_gateway(&pki);
    let page = get_with_cert(&pki, addr, "client");
    assert!(page.contains(" 200 OK"), "{page}");
    // And one refusal (no certificate).
    let anon = text(&s_client(addr, &["-CAfile", &pki.path("ca.pem")], GET10));
    assert!(!anon.contains("200 OK"), "{anon}");
    gw.wait_for_log("\"closed\"", Duration::from_secs(10));
    gw.wait_for_log("onerecord::refused", Duration::from_secs(10));
    let lines = json_lines(&gw.log());
    for v in &lines {
        for k in ["timestamp", "level", "target", "message"] {
            assert!(v[k].is_string(), "{k} in {v}");
        }
    }
    let (serial, spki) = serial_and_spki(&pki.path("client.pem"));
    let accepted = lines
        .iter()
        .find(|v| v["target"] == "onerecord::access" && v["message"] == "accepted")
        .expect("access line");
    assert_eq!(accepted["level"], "INFO");
    assert_eq!(accepted["cn"], "acme-cargo");
    assert_eq!(accepted["uri"], format!("{URI_PREFIX}acme-cargo"));
    assert_eq!(
        accepted["serial"].as_str().unwrap().trim_start_matches('0'),
        serial
    );
    assert_eq!(accepted["spki"], spki.as_str());
    assert_eq!(accepted["resumed"], false);
    assert_eq!(accepted["version"], "TLSv1.3");
    let closed = lines
        .iter()
        .find(|v| v["target"] == "onerecord::access" && v["message"] == "closed")
        .expect("close line");
    assert_eq!(closed["bytes_in"], GET10.len() as u64);
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert!(closed["bytes_out"].as_u64().unwrap() > 0, "{closed}");
    assert_eq!(closed["remote"], accepted["remote"]);
    assert!(
        lines.iter().any(|v| v["target"] == "onerecord::refused"),
        "the refusal is a JSON line too"
    );
}

#[test]
fn json_refusal_lines_carry_reason_alert_and_the_presented_certificate_as_fields() {
    let pki = Pki::new();
    let (gw, addr) = json_mtls_gateway(&pki);
    // A certificate from a CA the gateway does not trust, then no certificate at all.
    let (cert, key) = (pki.path("stranger.pem"), pki.path("stranger.key"));
    let ca = pki.path("ca.pem");
    let stranger = text(&s_client(
        addr,
        &["-CAfile", &ca, "-cert", &cert, "-key", &key],
        GET10,
    ));
    assert!(!stranger.contains("200 OK"), "{stranger}");
    let anon = text(&s_client(addr, &["-CAfile", &ca], GET10));
    assert!(!anon.contains("200 OK"), "{anon}");
    let start = std::time::Instant::now();
    let refusals = loop {
        let r: Vec<_> = json_lines(&gw.log())
            .into_iter()
            .filter(|v| v["target"] == "onerecord::refused")
            .collect();
        if r.len() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    let unknown = &refusals[0];
    assert_eq!(unknown["message"], "refused");
    assert_eq!(unknown["failure"], "unknown_ca", "{unknown}");
    assert_eq!(unknown["alert"], "unknown_ca", "{unknown}");
    assert_eq!(unknown["peer_cn"], "acme-cargo", "{unknown}");
    assert_eq!(
        unknown["peer_uri"],
        format!("{URI_PREFIX}acme-cargo"),
        "{unknown}"
    );
    assert!(
        unknown["peer_issuer"]
            .as_str()
            .is_some_and(|i| i.contains("CN=Untrusted CA")),
        "{unknown}"
    );
    assert!(
        unknown["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:"))
    );
    let anonymous = &refusals[1];
    assert_eq!(anonymous["failure"], "no_client_cert", "{anonymous}");
    assert_eq!(anonymous["peer_cn"], "-", "{anonymous}");
    assert_eq!(anonymous["peer_serial"], "-", "{anonymous}");
}

#[test]
fn a_startup_error_is_printed_exactly_once() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let key = pki.path("server.key");
    let base = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &missing,
        "--key",
        &key,
    ];
    for fmt in ["text", "json"] {
        let mut args = base.to_vec();
        if fmt == "json" {
            args.extend(["--log-format", "json"]);
        }
        let out = run_to_exit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{fmt}: {stderr}");
        assert_eq!(
            stderr.matches(missing.as_str()).count(),
            1,
            "{fmt}: the error once:\n{stderr}"
        );
        if fmt == "json" {
            let lines = json_lines(&stderr);
            assert!(lines.iter().any(|v| v["level"] == "ERROR"), "{stderr}");
        }
    }
    // With errors silenced by RUST_LOG, still once (plain stderr).
    let out = std::process::Command::new("timeout")
        .arg("10")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["server", "--listen", "127.0.0.1:0", "--cert", &missing])
        .args(["--key", &key])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.matches(missing.as_str()).count(), 1, "{stderr}");
}

/// A client-mode gateway to `127.0.0.1:port` trusting `ca` and presenting the client
/// certificate; `extra` appended.
fn client_gateway(pki: &Pki, port: u16, ca: &str, extra: &[&str]) -> Gateway {
    let connect = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "--connect",
        &connect,
        "--server-name",
        "localhost",
        "--ca",
        &pki.path(ca),
        "--cert",
        &pki.path("client.pem"),
        "--key",
        &pki.path("client.key"),
        "--workers",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start("client", &refs)
}

/// The WARN line naming `partner`, waited for (bounded).
fn partner_warning(gw: &Gateway, partner: &str) -> String {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(l) = gw
            .log()
            .lines()
            .find(|l| l.contains("WARN") && l.contains(partner))
        {
            return l.to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no WARN naming {partner}:\n{}", gw.log());
}

#[test]
fn client_mode_warns_naming_a_partner_that_refuses_our_certificate() {
    let pki = Pki::new();
    // The partner trusts only another CA: our certificate is refused (TLS 1.3: after our
    // side of the handshake is complete).
    let (_server, port) = s_server(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
        "-CAfile",
        &pki.path("other-ca.pem"),
        "-Verify",
        "1",
        "-verify_return_error",
    ]);
    let gw = client_gateway(&pki, port, "ca.pem", &[]);
    let page = through(gw.addr, GET10);
    assert!(!page.contains("200 ok"), "{page}");
    let partner = format!("127.0.0.1:{port}");
    let line = partner_warning(&gw, &partner);
    assert!(line.contains("onerecord::partner"), "{line}");
    assert!(
        line.contains("alert") || line.contains("certificate"),
        "says what the partner answered: {line}"
    );
}

#[test]
fn client_mode_warns_naming_a_partner_whose_certificate_fails_verification() {
    let pki = Pki::new();
    let (_server, port) = s_server(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
    ]);
    // We trust only another CA: the partner's certificate does not verify.
    let gw = client_gateway(&pki, port, "other-ca.pem", &[]);
    let page = through(gw.addr, GET10);
    assert!(page.is_empty(), "{page}");
    let partner = format!("127.0.0.1:{port}");
    let line = partner_warning(&gw, &partner);
    assert!(line.contains("UnknownIssuer"), "{line}");
}

#[test]
fn peer_close_notify_and_sigterm_drain_are_the_reasons_on_the_close_lines() {
    let pki = Pki::new();
    let args = mtls_args(&pki, &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut gw = Gateway::start("server", &refs);
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let openssl_client = |keep_open: u32| {
        let addr = gw.addr;
        let (ca, cert, key) = (ca.clone(), cert.clone(), key.clone());
        // Without -ign_eof s_client sends close_notify when its input ends.
        std::thread::spawn(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "(printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'; sleep {keep_open}) | \
                     timeout 10 openssl s_client -connect {addr} -CAfile {ca} -cert {cert} \
                     -key {key}"
                ))
                .output()
        })
    };
    let _ = openssl_client(0).join();
    gw.wait_for_log("onerecord::access] closed", Duration::from_secs(10));
    let log = gw.log();
    let closed = log
        .lines()
        .find(|l| l.contains("onerecord::access] closed"))
        .unwrap();
    assert_eq!(field(closed, "end"), Some("peer_close_notify"), "{closed}");

    let client = openssl_client(5);
    let start = std::time::Instant::now();
    while gw.log().matches("onerecord::access] accepted").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let log = gw.log();
    let last = log
        .lines()
        .filter(|l| l.contains("onerecord::access] closed"))
        .nth(1)
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(field(last, "end"), Some("drain"), "{last}");
    let _ = client.join();
}
