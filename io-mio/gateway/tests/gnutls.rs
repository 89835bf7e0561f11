//! The gateway against GnuTLS (`gnutls-cli`), a TLS stack that shares no code with rustls or
//! OpenSSL: the allow rules and client-certificate requirements hold for it too, and the
//! alerts it reads are the ones the gateway logs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Gateway, Pki, text};

/// Run `gnutls-cli` against `gw` (optionally with client certificate `name`), send one
/// HTTP/1.0 request; its output.
fn gnutls(gw: &Gateway, pki: &Pki, priority: &str, cert: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "gnutls-cli", "--priority", priority, "--x509cafile"])
        .arg(pki.path("ca.pem"))
        .args(["-p", &gw.addr.port().to_string()]);
    if let Some(name) = cert {
        cmd.arg("--x509certfile")
            .arg(pki.path(&format!("{name}.pem")))
            .arg("--x509keyfile")
            .arg(pki.path(&format!("{name}.key")));
    }
    let mut child = cmd
        .arg("localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gnutls-cli (gnutls-bin) is needed: scripts/install-deps.sh installs it");
    let mut stdin = child.stdin.take().unwrap();
    // gnutls-cli may exit (a refused handshake) before reading its input.
    let _ = stdin.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    drop(stdin);
    text(&child.wait_with_output().expect("gnutls-cli output"))
}

const TLS13: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.3";
const TLS12: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.2";

#[test]
fn gnutls_partner_matching_the_uri_rule_is_served_and_a_lookalike_host_is_denied() {
    let pki = Pki::new();
    pki.write_client_with_uris("evil", &["https://onerecord.example.evil.com/x"]);
    let gw = Gateway::server_with_ca(&pki, &["--allow-uri", "https://onerecord.example"]);
    for priority in [TLS13, TLS12] {
        let ok = gnutls(&gw, &pki, priority, Some("client"));
        assert!(ok.contains(" 200 OK"), "{priority}: {ok}");
        let denied = gnutls(&gw, &pki, priority, Some("evil"));
        assert!(
            !denied.contains(" 200 OK") && denied.contains("Access was denied"),
            "{priority}: a URI that only shares a string prefix must get access_denied: {denied}"
        );
        let anonymous = gnutls(&gw, &pki, priority, None);
        assert!(
            !anonymous.contains(" 200 OK"),
            "{priority}: an allow rule requires a client certificate: {anonymous}"
        );
    }
    let refusals = gw.wait_for_count("alert=access_denied", 2, std::time::Duration::from_secs(5));
    assert_eq!(
        refusals,
        2,
        "each denial is logged with the alert sent:\n{}",
        gw.log()
    );
}
