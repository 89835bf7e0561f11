//! The gateway against Java's TLS stack (JSSE): the client a Spring Boot, Quarkus or NE:ONE
//! partner uses. `tests/java/JsseClient.java` is compiled once with `javac` and run with
//! `java` against the real binary on loopback, over TLS 1.3 and TLS 1.2.

mod common;

use std::process::Command;

use common::{Gateway, Pki, text};

/// Run the Java client against `gw`; its output (`OK ...` or `TLSERROR ...`, then the body).
fn jsse(gw: &Gateway, pki: &Pki, protocol: &str, cert: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "java", "-cp"])
        .arg(common::java_classes("JsseClient"))
        .arg("JsseClient")
        .args(["localhost", &gw.addr.port().to_string(), protocol])
        .arg(pki.path("ca.pem"));
    if let Some(name) = cert {
        cmd.arg(pki.path(&format!("{name}.pem")))
            .arg(pki.path(&format!("{name}.key")));
    }
    let out = cmd.output().expect("java");
    text(&out)
}

#[test]
fn java_partner_with_an_allowed_uri_gets_through_on_tls13_and_tls12() {
    let pki = Pki::new();
    let gw = Gateway::server_with_ca(
        &pki,
        &[
            "--require-client-cert",
            "--allow-uri",
            "https://onerecord.example",
        ],
    );
    for protocol in ["TLSv1.3", "TLSv1.2"] {
        let out = jsse(&gw, &pki, protocol, Some("client"));
        assert!(
            out.starts_with(&format!("OK {protocol} HTTP/1.1 200")),
            "{protocol}: {out}"
        );
        assert!(
            out.contains("https://onerecord.example/logistics-agents/acme-cargo"),
            "the identity responder names the partner's URI: {out}"
        );
    }
}

#[test]
fn java_partner_whose_uri_only_shares_a_string_prefix_is_denied() {
    let pki = Pki::new();
    pki.write_client_with_uris("evil", &["https://onerecord.example.evil.com/x"]);
    pki.write_client_with_uris("otherport", &["https://onerecord.example:8443/x"]);
    let gw = Gateway::server_with_ca(
        &pki,
        &[
            "--require-client-cert",
            "--allow-uri",
            "https://onerecord.example",
        ],
    );
    for name in ["evil", "otherport"] {
        for protocol in ["TLSv1.3", "TLSv1.2"] {
            let out = jsse(&gw, &pki, protocol, Some(name));
            assert!(
                out.starts_with("TLSERROR") && out.contains("access_denied"),
                "{name} over {protocol} must be refused with access_denied: {out}"
            );
        }
    }
    assert!(
        gw.wait_for_count(
            "onerecord.example.evil.com",
            1,
            std::time::Duration::from_secs(5)
        ) >= 1
            || gw.log_count("access_denied") >= 4,
        "refusals are logged:\n{}",
        gw.log()
    );
}

#[test]
fn java_client_without_a_certificate_is_refused_when_allow_rules_are_set() {
    let pki = Pki::new();
    // No --require-client-cert: the allow rule alone must make a certificate required.
    let gw = Gateway::server_with_ca(&pki, &["--allow-cn", "acme-cargo"]);
    for protocol in ["TLSv1.3", "TLSv1.2"] {
        let out = jsse(&gw, &pki, protocol, None);
        assert!(
            out.starts_with("TLSERROR"),
            "anonymous Java client over {protocol} must be refused: {out}"
        );
        let ok = jsse(&gw, &pki, protocol, Some("client"));
        assert!(ok.starts_with("OK"), "allowed client over {protocol}: {ok}");
    }
}
