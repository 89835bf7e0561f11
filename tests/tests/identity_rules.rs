//! Allow rules through real handshakes over the in-memory pair: URI rules compare URIs
//! component by component, and any allow rule makes a client certificate required.

use onerecord_tls::{
    Alert, ClientAuth, ClientPolicy, ConfigError, Failure, IdentityRule, Reason, ServerPolicy,
    Versions,
};
use onerecord_tls::{ClientPolicyBuilder, ServerPolicyBuilder};
use onerecord_tls_tests::{Ca, Identity, LeafSpec, Pair, now};

fn server(ca: &Ca, auth: fn(onerecord_tls::TrustStore) -> ClientAuth) -> ServerPolicyBuilder {
    let id = ca.issue(&LeafSpec::server());
    ServerPolicy::builder(id.chain.clone(), id.key()).client_auth(auth(ca.trust()))
}

fn client(ca: &Ca, id: Option<&Identity>, v: Versions) -> ClientPolicyBuilder {
    let b = ClientPolicy::builder(ca.trust()).versions(v);
    match id {
        Some(id) => b.client_cert(id.chain.clone(), id.key()),
        None => b,
    }
}

fn run(s: ServerPolicyBuilder, c: ClientPolicyBuilder) -> Pair {
    let s = s.build(now()).expect("server policy").into_set();
    let c = c.build(now()).expect("client policy");
    let mut p = Pair::new(&s, &c, "localhost");
    p.run();
    p
}

fn client_with_uri(ca: &Ca, uri: &str) -> Identity {
    ca.issue(&LeafSpec {
        uris: vec![uri.into()],
        ..LeafSpec::client("acme")
    })
}

fn assert_refused(p: &Pair, reason: Reason, alert: Alert) {
    let se = p.server_error.as_ref().expect("server refused");
    assert_eq!(se.reason(), &reason, "server error: {se}");
    assert_eq!(se.alert_sent(), Some(alert), "server error: {se}");
    let ce = p.client_error.as_ref().expect("client failed");
    assert_eq!(ce.reason(), &Reason::PeerAlert(alert), "client error: {ce}");
    assert!(!p.server.is_established());
}

#[test]
fn uri_rule_without_trailing_slash_refuses_a_longer_host_in_a_handshake() {
    let ca = Ca::new("ONE Record Test CA");
    let rule = IdentityRule::UriPrefix("https://onerecord.example".into());
    let evil = client_with_uri(&ca, "https://onerecord.example.evil.com/x");
    let other_port = client_with_uri(&ca, "https://onerecord.example:8443/x");
    let good = client_with_uri(&ca, "https://onerecord.example/logistics-agents/acme");
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        for bad in [&evil, &other_port] {
            let p = run(
                server(&ca, ClientAuth::Required).allow(rule.clone()),
                client(&ca, Some(bad), v),
            );
            assert_refused(&p, Reason::IdentityDenied, Alert::AccessDenied);
            assert_eq!(p.server.stats().failures_of(Failure::IdentityDenied), 1);
        }
        let p = run(
            server(&ca, ClientAuth::Required).allow(rule.clone()),
            client(&ca, Some(&good), v),
        );
        assert!(p.server.is_established(), "{:?}", p.server_error);
        assert_eq!(
            p.server_saw().unwrap().uris(),
            ["https://onerecord.example/logistics-agents/acme"]
        );
    }
}

#[test]
fn uri_rule_that_is_not_an_absolute_uri_fails_the_policy_build_naming_the_rule() {
    let ca = Ca::new("ONE Record Test CA");
    for bad in [
        "onerecord.example",
        "https://acme@onerecord.example/",
        "https://onerecord.example/?id=1",
        "https://onerecord.example/a/../b",
    ] {
        for rule in [
            IdentityRule::UriPrefix(bad.into()),
            IdentityRule::UriExact(bad.into()),
        ] {
            let err = server(&ca, ClientAuth::Required)
                .allow(rule)
                .build(now())
                .unwrap_err();
            let ConfigError::InvalidIdentityRule { detail } = &err else {
                panic!("{bad}: {err:?}")
            };
            assert!(detail.contains(bad), "{err}");
        }
    }
}

#[test]
fn allow_rule_with_optional_client_auth_refuses_anonymous_clients() {
    let ca = Ca::new("ONE Record Test CA");
    let acme = ca.issue(&LeafSpec::client("acme"));
    for rule in [
        IdentityRule::CommonName("acme".into()),
        IdentityRule::UriPrefix("https://onerecord.example/".into()),
    ] {
        let s = server(&ca, ClientAuth::Optional).allow(rule.clone());
        let policy = s.clone().build(now()).unwrap();
        assert!(
            matches!(policy.client_auth(), ClientAuth::Required(_)),
            "{rule:?}: a policy with allow rules reports required client auth"
        );
        for (v, alert) in [
            (Versions::Tls13Only, Alert::CertificateRequired),
            (Versions::Tls12Only, Alert::HandshakeFailure),
        ] {
            let p = run(s.clone(), client(&ca, None, v));
            assert_refused(&p, Reason::NoPeerCertificate, alert);
            assert_eq!(p.server.stats().failures_of(Failure::NoPeerCertificate), 1);
            let p = run(s.clone(), client(&ca, Some(&acme), v));
            assert!(p.server.is_established(), "{rule:?}: {:?}", p.server_error);
        }
    }
    // Without rules, optional client auth still admits anonymous clients (documented).
    let p = run(
        server(&ca, ClientAuth::Optional),
        client(&ca, None, Versions::Tls13Only),
    );
    assert!(p.server.is_established());
    assert!(!p.server_saw().unwrap().authenticated());
}
