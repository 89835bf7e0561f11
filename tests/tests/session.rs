//! Behaviour of the session over the in-memory harness: handshakes, refusals with the right
//! alert, resumption, KeyUpdate, close, timeouts, SNI selection.

use std::time::Duration;

use onerecord_tls::{
    Alert, CipherSuite, ClientAuth, ClientPolicy, ConfigError, Event, Failure, HandshakeKind,
    IdentityRule, Reason, Revocation, ServerPolicies, ServerPolicy, Session, Sha256, Time,
    TlsVersion, UnknownStatus, Versions, Warning,
};
use onerecord_tls::{Instant, Tls12Resumption};
use onerecord_tls_tests::{Ca, DAY, Fixture, Identity, KeyKind, LeafSpec, NOW_SECS, Pair, now};

fn fixture() -> Fixture {
    Fixture::new()
}

fn server(id: &Identity) -> onerecord_tls::ServerPolicyBuilder {
    ServerPolicy::builder(id.chain.clone(), id.key())
}

fn client(ca: &Ca) -> onerecord_tls::ClientPolicyBuilder {
    ClientPolicy::builder(ca.trust())
}

fn mtls_server(f: &Fixture) -> onerecord_tls::ServerPolicyBuilder {
    server(&f.server_id).require_client_auth(f.ca.trust())
}

fn with_cert(
    b: onerecord_tls::ClientPolicyBuilder,
    id: &Identity,
) -> onerecord_tls::ClientPolicyBuilder {
    b.client_cert(id.chain.clone(), id.key())
}

/// Build a client policy at a time when its own certificate is valid (so that expired and
/// not-yet-valid client certificates can be presented at [`now`]).
fn build_client(c: onerecord_tls::ClientPolicyBuilder) -> ClientPolicy {
    c.clone()
        .build(now())
        .or_else(|e| match e {
            ConfigError::CertificateExpired { not_after, .. } => {
                c.build(Time::from_unix_millis(not_after.as_unix_millis() - 1000))
            }
            ConfigError::CertificateNotYetValid { not_before, .. } => c.build(not_before),
            e => Err(e),
        })
        .unwrap()
}

fn pair(s: onerecord_tls::ServerPolicyBuilder, c: onerecord_tls::ClientPolicyBuilder) -> Pair {
    let s = s.build(now()).unwrap().into_set();
    let c = build_client(c);
    let mut p = Pair::new(&s, &c, "localhost");
    p.run();
    p
}

fn assert_refused(p: &Pair, server_reason: Reason, alert: Alert) {
    let se = p
        .server_error
        .as_ref()
        .unwrap_or_else(|| panic!("server not refused; client: {:?}", p.client_error));
    assert_eq!(se.reason(), &server_reason, "server error: {se}");
    assert_eq!(se.alert_sent(), Some(alert), "server error: {se}");
    let ce = p.client_error.as_ref().unwrap_or_else(|| {
        panic!(
            "client did not fail; server: {se:?}; client events {:?}",
            p.client_events
        )
    });
    assert_eq!(ce.reason(), &Reason::PeerAlert(alert), "client error: {ce}");
    assert!(p.server.is_terminal() && !p.server.is_established());
}

fn roundtrip(p: &mut Pair) {
    assert_eq!(
        p.client
            .send(b"GET /logistics-objects HTTP/1.1\r\n\r\n")
            .unwrap(),
        35
    );
    p.run();
    assert_eq!(
        p.server_received(),
        b"GET /logistics-objects HTTP/1.1\r\n\r\n"
    );
    p.server.send(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    p.run();
    assert_eq!(p.client_received(), b"HTTP/1.1 200 OK\r\n\r\n");
}

fn versions_for(v: TlsVersion) -> Versions {
    match v {
        TlsVersion::Tls13 => Versions::Tls13Only,
        TlsVersion::Tls12 => Versions::Tls12Only,
    }
}

#[test]
fn handshake_succeeds_for_each_version_and_server_key_type() {
    let ca = Ca::new("CA");
    for key in [KeyKind::EcdsaP256, KeyKind::Rsa2048, KeyKind::Ed25519] {
        let id = ca.issue(&LeafSpec::server().key(key));
        for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
            let mut p = pair(server(&id), client(&ca).versions(versions_for(version)));
            assert!(
                p.client.is_established(),
                "{key:?} {version:?}: {:?} / {:?}",
                p.client_error,
                p.server_error
            );
            assert!(p.server.is_established());
            let seen = p.client_saw().unwrap();
            assert_eq!(seen.version, version, "{key:?}");
            assert_eq!(
                seen.leaf.as_ref().unwrap().dns_names,
                vec!["localhost".to_string()]
            );
            assert_eq!(seen.handshake, HandshakeKind::Full);
            assert!(seen.suite.version() == version);
            assert_eq!(
                p.server_saw().unwrap().server_name.as_deref(),
                Some("localhost")
            );
            assert!(
                !p.server_saw().unwrap().authenticated(),
                "no client certificate was asked for"
            );
            roundtrip(&mut p);
        }
    }
}

#[test]
fn sha256_suites_are_preferred_by_default() {
    let f = fixture();
    let p = pair(server(&f.server_id), client(&f.ca));
    assert_eq!(
        p.client_saw().unwrap().suite,
        CipherSuite::Tls13Aes128GcmSha256
    );
    let p = pair(
        server(&f.server_id),
        client(&f.ca).versions(Versions::Tls12Only),
    );
    assert_eq!(
        p.client_saw().unwrap().suite,
        CipherSuite::EcdheEcdsaAes128GcmSha256
    );
}

#[test]
fn mtls_identity_reaches_the_server_before_any_data() {
    let f = fixture();
    let mut p = pair(mtls_server(&f), with_cert(client(&f.ca), &f.client_id));
    assert!(
        p.server.is_established(),
        "{:?} {:?}",
        p.server_error,
        p.client_error
    );
    roundtrip(&mut p);
    let first = p.server_events.first().expect("events");
    let onerecord_tls_tests::Ev::Established(peer) = first else {
        panic!("first event is {first:?}")
    };
    assert!(peer.authenticated());
    let leaf = peer.leaf.as_ref().unwrap();
    assert_eq!(peer.common_name(), Some("acme"));
    assert_eq!(
        peer.uris(),
        ["https://onerecord.example/logistics-agents/acme".to_string()]
    );
    assert_eq!(leaf.organizations, vec!["ONE Record Test Org".to_string()]);
    assert_eq!(leaf.organizational_units, vec!["cargo".to_string()]);
    assert!(
        leaf.issuer.contains("CN=ONE Record Test CA"),
        "{}",
        leaf.issuer
    );
    assert_eq!(leaf.serial_hex(), format!("{:04x}", f.client_id.serial));
    assert_eq!(leaf.not_after, Time::from_unix_secs(NOW_SECS + 215 * DAY));
    assert_eq!(leaf.cert_sha256, Sha256::of(&f.client_id.chain[0]));
    assert_eq!(peer.chain, f.client_id.chain);
    assert!(peer.group.is_some());
}

#[test]
fn mtls_required_rejects_anonymous_with_certificate_required_on_tls13() {
    let f = fixture();
    let p = pair(mtls_server(&f), client(&f.ca));
    assert_refused(&p, Reason::NoPeerCertificate, Alert::CertificateRequired);
    assert_eq!(p.server.stats().failures_of(Failure::NoPeerCertificate), 1);
}

#[test]
fn mtls_required_rejects_anonymous_with_handshake_failure_on_tls12() {
    let f = fixture();
    let p = pair(mtls_server(&f), client(&f.ca).versions(Versions::Tls12Only));
    assert_refused(&p, Reason::NoPeerCertificate, Alert::HandshakeFailure);
}

#[test]
fn optional_client_auth_accepts_anonymous_and_authenticated() {
    let f = fixture();
    let s = server(&f.server_id).client_auth(ClientAuth::Optional(f.ca.trust()));
    let p = pair(s.clone(), client(&f.ca));
    assert!(p.server.is_established());
    assert!(!p.server_saw().unwrap().authenticated());
    let p = pair(s, with_cert(client(&f.ca), &f.client_id));
    assert_eq!(p.server_saw().unwrap().common_name(), Some("acme"));
}

#[test]
fn expired_client_cert_gets_certificate_expired_alert() {
    let f = fixture();
    let expired =
        f.ca.issue(&LeafSpec::client("old").valid(NOW_SECS - 400 * DAY, NOW_SECS - 10 * DAY));
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let p = pair(
            mtls_server(&f),
            with_cert(client(&f.ca).versions(v), &expired),
        );
        let Some(Reason::CertificateExpired { not_after, now: at }) =
            p.server_error.as_ref().map(|e| e.reason().clone())
        else {
            panic!("{:?}", p.server_error)
        };
        assert_eq!(not_after, Some(Time::from_unix_secs(NOW_SECS - 10 * DAY)));
        assert_eq!(at, Some(now()));
        assert_eq!(
            p.server_error.as_ref().unwrap().alert_sent(),
            Some(Alert::CertificateExpired)
        );
        assert_eq!(
            p.client_error.as_ref().unwrap().reason(),
            &Reason::PeerAlert(Alert::CertificateExpired)
        );
    }
}

#[test]
fn not_yet_valid_client_cert_gets_certificate_expired_alert() {
    let f = fixture();
    let future =
        f.ca.issue(&LeafSpec::client("future").valid(NOW_SECS + 10 * DAY, NOW_SECS + 400 * DAY));
    let p = pair(mtls_server(&f), with_cert(client(&f.ca), &future));
    assert!(matches!(
        p.server_error.as_ref().unwrap().reason(),
        Reason::CertificateNotYetValid { .. }
    ));
    assert_eq!(
        p.client_error.as_ref().unwrap().reason(),
        &Reason::PeerAlert(Alert::CertificateExpired)
    );
}

#[test]
fn untrusted_client_ca_gets_unknown_ca_alert() {
    let f = fixture();
    let rogue = Ca::new("Rogue CA").issue(&LeafSpec::client("mallory"));
    let p = pair(mtls_server(&f), with_cert(client(&f.ca), &rogue));
    assert_refused(&p, Reason::UnknownIssuer, Alert::UnknownCa);
    assert_eq!(p.server.stats().failures_of(Failure::UnknownCa), 1);
}

#[test]
fn revoked_client_cert_gets_certificate_revoked_alert() {
    let f = fixture();
    let crl = f.ca.crl(&[f.client_id.serial], 7);
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let s = mtls_server(&f).revocation(Revocation::with_crls(vec![crl.clone()]));
        let p = pair(s, with_cert(client(&f.ca).versions(v), &f.client_id));
        assert_refused(&p, Reason::Revoked, Alert::CertificateRevoked);
    }
    // A certificate the CRL does not list is accepted.
    let other = f.ca.issue(&LeafSpec::client("beta"));
    let s = mtls_server(&f).revocation(Revocation::with_crls(vec![crl]));
    let p = pair(s, with_cert(client(&f.ca), &other));
    assert!(p.server.is_established(), "{:?}", p.server_error);
}

#[test]
fn unknown_revocation_status_is_refused_or_allowed_as_configured() {
    let f = fixture();
    // Both CAs are trusted; only the other one publishes a CRL.
    let other = Ca::new("Other CA");
    let unrelated = other.crl(&[], 7);
    let mut trust = f.ca.trust();
    trust.add_pem(other.pem().as_bytes()).unwrap();
    let strict = server(&f.server_id)
        .require_client_auth(trust.clone())
        .revocation(Revocation::with_crls(vec![unrelated.clone()]));
    let p = pair(strict, with_cert(client(&f.ca), &f.client_id));
    assert_refused(&p, Reason::RevocationStatusUnknown, Alert::UnknownCa);
    let lenient = server(&f.server_id)
        .require_client_auth(trust)
        .revocation(Revocation {
            unknown_status: UnknownStatus::Allow,
            ..Revocation::with_crls(vec![unrelated])
        });
    let p = pair(lenient, with_cert(client(&f.ca), &f.client_id));
    assert!(p.server.is_established(), "{:?}", p.server_error);
}

#[test]
fn expired_crl_is_refused_when_expiry_is_enforced() {
    let f = fixture();
    let stale = f.ca.crl(&[], -1);
    let p = pair(
        mtls_server(&f).revocation(Revocation::with_crls(vec![stale.clone()])),
        with_cert(client(&f.ca), &f.client_id),
    );
    let se = p.server_error.as_ref().expect("refused");
    assert!(
        matches!(se.reason(), Reason::CrlExpired { .. }),
        "server error: {se}"
    );
    assert_eq!(se.alert_sent(), Some(Alert::UnknownCa));
    let relaxed = Revocation {
        enforce_crl_expiry: false,
        ..Revocation::with_crls(vec![stale])
    };
    let p = pair(
        mtls_server(&f).revocation(relaxed),
        with_cert(client(&f.ca), &f.client_id),
    );
    assert!(p.server.is_established());
}

#[test]
fn identity_allow_list_denial_gets_access_denied() {
    let f = fixture();
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let s = mtls_server(&f).allow(IdentityRule::UriPrefix(
            "https://onerecord.example/logistics-agents/globex".into(),
        ));
        let p = pair(s, with_cert(client(&f.ca).versions(v), &f.client_id));
        assert_refused(&p, Reason::IdentityDenied, Alert::AccessDenied);
        assert_eq!(p.server.stats().failures_of(Failure::IdentityDenied), 1);
    }
}

#[test]
fn identity_allow_list_accepts_each_rule_kind() {
    let f = fixture();
    let spki = onerecord_tls::CertInfo::parse(&f.client_id.chain[0])
        .unwrap()
        .spki_sha256;
    for rule in [
        IdentityRule::UriExact("https://onerecord.example/logistics-agents/acme".into()),
        IdentityRule::UriPrefix("https://onerecord.example/".into()),
        IdentityRule::CommonName("acme".into()),
        IdentityRule::SpkiSha256(spki),
    ] {
        let s = mtls_server(&f)
            .allow(IdentityRule::CommonName("nobody".into()))
            .allow(rule.clone());
        let p = pair(s, with_cert(client(&f.ca), &f.client_id));
        assert!(p.server.is_established(), "{rule:?}: {:?}", p.server_error);
    }
}

#[test]
fn server_pin_mismatch_is_refused_by_the_client_with_access_denied() {
    let f = fixture();
    let p = pair(
        server(&f.server_id),
        client(&f.ca).allow(IdentityRule::SpkiSha256(Sha256([0; 32]))),
    );
    let ce = p.client_error.as_ref().expect("client refuses");
    assert_eq!(ce.reason(), &Reason::IdentityDenied);
    assert_eq!(ce.alert_sent(), Some(Alert::AccessDenied));
    assert_eq!(
        p.server_error.as_ref().unwrap().reason(),
        &Reason::PeerAlert(Alert::AccessDenied)
    );
}

#[test]
fn client_refuses_server_name_mismatch_with_bad_certificate() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let c = client(&f.ca).build(now()).unwrap();
    let mut p = Pair::new(&s, &c, "other.example");
    p.run();
    let ce = p.client_error.as_ref().expect("client refuses");
    assert_eq!(ce.reason(), &Reason::NameMismatch);
    assert_eq!(ce.alert_sent(), Some(Alert::BadCertificate));
}

#[test]
fn tls11_only_client_hello_gets_protocol_version() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let mut session = Session::server(&s, now());
    // A TLS 1.1 ClientHello: legacy_version 0x0302, no supported_versions extension.
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0xc0, 0x13, 1, 0]);
    let mut hello = vec![0x16, 0x03, 0x02, 0, 0, 1, 0, 0, body.len() as u8];
    hello.extend_from_slice(&body);
    let len = (hello.len() - 5) as u16;
    hello[3..5].copy_from_slice(&len.to_be_bytes());
    let _ = session.receive(&hello);
    let err = session.process(now(), |_| {}).unwrap_err();
    assert_eq!(
        err.reason(),
        &Reason::ProtocolVersion {
            highest_offered: Some(0x0302)
        }
    );
    assert_eq!(err.alert_sent(), Some(Alert::ProtocolVersion));
    assert_eq!(
        session.transmit(),
        &[0x15, 0x03, 0x02, 0x00, 0x02, 0x02, 70]
    );
    assert_eq!(session.stats().failures_of(Failure::ProtocolVersion), 1);
}

#[test]
fn tls13_only_server_refuses_tls12_client_with_protocol_version() {
    let f = fixture();
    let p = pair(
        server(&f.server_id).versions(Versions::Tls13Only),
        client(&f.ca).versions(Versions::Tls12Only),
    );
    assert_refused(
        &p,
        Reason::ProtocolVersion {
            highest_offered: Some(0x0303),
        },
        Alert::ProtocolVersion,
    );
}

#[test]
fn http_request_on_tls_port_is_a_plaintext_error_without_alert() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let mut session = Session::server(&s, now());
    let _ = session.receive(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let err = session.process(now(), |_| {}).unwrap_err();
    assert_eq!(err.reason(), &Reason::PlaintextHttp);
    assert_eq!(err.alert_sent(), None);
    assert!(session.transmit().is_empty());
    assert!(session.is_terminal());
    assert_eq!(session.stats().failures_of(Failure::Plaintext), 1);
}

fn resumption_case(
    server_b: onerecord_tls::ServerPolicyBuilder,
    client_b: onerecord_tls::ClientPolicyBuilder,
    version: TlsVersion,
) {
    let s = server_b.build(now()).unwrap().into_set();
    let c = client_b.build(now()).unwrap();
    let mut first = Pair::new(&s, &c, "localhost");
    first.run();
    assert!(
        first.client.is_established(),
        "{:?} {:?}",
        first.client_error,
        first.server_error
    );
    assert!(!first.client_saw().unwrap().resumed());
    roundtrip(&mut first);
    let mut second = Pair::new(&s, &c, "localhost");
    second.run();
    let (cs, ss) = (second.client_saw().unwrap(), second.server_saw().unwrap());
    assert_eq!(cs.version, version);
    assert!(cs.resumed(), "client says resumed ({version:?})");
    assert!(ss.resumed(), "server says resumed ({version:?})");
    assert_eq!(second.server.stats().handshakes_resumed, 1);
    roundtrip(&mut second);
}

#[test]
fn second_connection_resumes_with_tls13_ticket() {
    let f = fixture();
    resumption_case(
        mtls_server(&f),
        with_cert(client(&f.ca), &f.client_id),
        TlsVersion::Tls13,
    );
}

#[test]
fn resumed_mtls_session_still_reports_the_client_identity() {
    let f = fixture();
    let s = mtls_server(&f).build(now()).unwrap().into_set();
    let c = with_cert(client(&f.ca), &f.client_id).build(now()).unwrap();
    Pair::new(&s, &c, "localhost").run();
    let mut p = Pair::new(&s, &c, "localhost");
    p.run();
    assert!(p.server_saw().unwrap().resumed());
    assert_eq!(p.server_saw().unwrap().common_name(), Some("acme"));
}

#[test]
fn second_connection_resumes_with_tls12_ticket() {
    let f = fixture();
    resumption_case(
        server(&f.server_id).session_cache(None),
        client(&f.ca).versions(Versions::Tls12Only),
        TlsVersion::Tls12,
    );
}

#[test]
fn second_connection_resumes_with_tls12_session_id() {
    let f = fixture();
    resumption_case(
        server(&f.server_id).tickets(None),
        client(&f.ca)
            .versions(Versions::Tls12Only)
            .tls12_resumption(Tls12Resumption::SessionIdOnly),
        TlsVersion::Tls12,
    );
}

#[test]
fn no_resumption_without_a_client_cache() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let c = client(&f.ca).session_cache(None).build(now()).unwrap();
    Pair::new(&s, &c, "localhost").run();
    let mut p = Pair::new(&s, &c, "localhost");
    p.run();
    assert!(!p.client_saw().unwrap().resumed());
}

#[test]
fn ticket_keys_shared_by_two_servers_resume_across_them() {
    let f = fixture();
    let keys =
        onerecord_tls::TicketKeys::from_bytes(&[9u8; 48], Duration::from_secs(3600)).unwrap();
    let a = server(&f.server_id)
        .tickets(Some(keys.clone()))
        .build(now())
        .unwrap()
        .into_set();
    let b = server(&f.server_id)
        .tickets(Some(keys))
        .build(now())
        .unwrap()
        .into_set();
    let c = client(&f.ca).build(now()).unwrap();
    Pair::new(&a, &c, "localhost").run();
    let mut p = Pair::new(&b, &c, "localhost");
    p.run();
    assert!(
        p.server_saw().unwrap().resumed(),
        "instance b resumes a ticket from instance a"
    );
}

#[test]
fn key_update_keeps_the_connection_working() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    roundtrip(&mut p);
    assert!(p.client.update_keys().unwrap());
    p.run();
    p.client.send(b"after key update").unwrap();
    p.run();
    assert!(p.server_received().ends_with(b"after key update"));
    p.server.send(b"server after").unwrap();
    p.run();
    assert!(p.client_received().ends_with(b"server after"));
    assert!(p.server_error.is_none() && p.client_error.is_none());
    let mut p12 = pair(
        server(&f.server_id),
        client(&f.ca).versions(Versions::Tls12Only),
    );
    assert!(
        !p12.client.update_keys().unwrap(),
        "TLS 1.2 has no KeyUpdate"
    );
}

#[test]
fn clean_close_both_ways() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    roundtrip(&mut p);
    p.client.close();
    p.run();
    assert!(
        p.server_events
            .contains(&onerecord_tls_tests::Ev::PeerClosed)
    );
    // Half-close: the server may still send after the client closed.
    p.server.send(b"last words").unwrap();
    p.server.close();
    p.run();
    assert!(p.client_received().ends_with(b"last words"));
    assert!(
        p.client_events.contains(&onerecord_tls_tests::Ev::Closed),
        "{:?}",
        p.client_events
    );
    assert!(p.server.is_terminal() && p.client.is_terminal());
    assert!(p.server.received_eof().is_ok());
    assert!(p.client_error.is_none() && p.server_error.is_none());
    assert_eq!(p.client.send(b"x"), Err(onerecord_tls::SendError::Closed));
}

#[test]
fn eof_without_close_notify_is_reported() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    let err = p.server.received_eof().unwrap_err();
    assert_eq!(err.reason(), &Reason::UnexpectedEof);
}

#[test]
fn handshake_times_out_when_the_peer_stalls() {
    let f = fixture();
    let s = server(&f.server_id)
        .handshake_timeout(Duration::from_secs(5))
        .build(now())
        .unwrap()
        .into_set();
    let mut session = Session::server(&s, now());
    let _ = session.receive(&[0x16, 0x03, 0x01]); // a ClientHello that never completes
    session.process(now(), |_| {}).unwrap();
    let deadline = session.poll_timeout().expect("deadline while handshaking");
    // Driven with a `Time` alone, the wall clock is the deadline clock.
    let start = Instant::from_millis(now().as_unix_millis());
    assert_eq!(deadline, start.saturating_add(Duration::from_secs(5)));
    session
        .process(Time::from_unix_millis(deadline.as_millis() - 1), |_| {})
        .unwrap();
    let err = session
        .process(Time::from_unix_millis(deadline.as_millis()), |_| {})
        .unwrap_err();
    assert_eq!(
        err.reason(),
        &Reason::HandshakeTimeout {
            after: Duration::from_secs(5)
        }
    );
    assert_eq!(session.stats().failures_of(Failure::Timeout), 1);
    // The client side times out as well.
    let c = client(&f.ca)
        .handshake_timeout(Duration::from_secs(3))
        .build(now())
        .unwrap();
    let mut cs = Session::client(&c, "localhost", now()).unwrap();
    cs.process(now(), |_| {}).unwrap();
    assert!(!cs.transmit().is_empty(), "client hello queued");
    let err = cs
        .process(now().saturating_add(Duration::from_secs(3)), |_| {})
        .unwrap_err();
    assert!(matches!(err.reason(), Reason::HandshakeTimeout { .. }));
}

#[test]
fn per_server_name_policies_are_chosen_before_the_handshake() {
    let f = fixture();
    let secure_id = f.ca.issue(&LeafSpec {
        dns: vec!["secure.example".into()],
        ..LeafSpec::server()
    });
    let open_id = f.ca.issue(&LeafSpec {
        dns: vec!["open.example".into(), "api.open.example".into()],
        ..LeafSpec::server()
    });
    let secure = server(&secure_id)
        .require_client_auth(f.ca.trust())
        .build(now())
        .unwrap();
    let open = server(&open_id)
        .client_auth(ClientAuth::Optional(f.ca.trust()))
        .build(now())
        .unwrap();
    let set = ServerPolicies::new(None)
        .with_name("secure.example", secure)
        .unwrap()
        .with_name("*.open.example", open.clone())
        .unwrap()
        .with_name("open.example", open)
        .unwrap();
    let anon = client(&f.ca).build(now()).unwrap();
    let mut p = Pair::new(&set, &anon, "open.example");
    p.run();
    assert!(
        p.server.is_established(),
        "optional client auth on open.example"
    );
    let mut p = Pair::new(&set, &anon, "api.open.example");
    p.run();
    assert!(p.server.is_established(), "wildcard entry");
    let mut p = Pair::new(&set, &anon, "secure.example");
    p.run();
    assert_refused(&p, Reason::NoPeerCertificate, Alert::CertificateRequired);
    let mut p = Pair::new(&set, &anon, "unknown.example");
    p.run();
    assert_refused(&p, Reason::UnknownServerName, Alert::UnrecognizedName);
    assert_eq!(p.server.server_name(), Some("unknown.example"));
    assert!(matches!(
        ServerPolicies::new(None)
            .with_name("a.example", server(&f.server_id).build(now()).unwrap())
            .unwrap()
            .with_name("A.example", server(&f.server_id).build(now()).unwrap()),
        Err(ConfigError::DuplicateServerName { .. })
    ));
}

#[test]
fn alpn_is_negotiated_and_a_mismatch_is_refused() {
    let f = fixture();
    let p = pair(
        server(&f.server_id).alpn(&["h2", "http/1.1"]),
        client(&f.ca).alpn(&["http/1.1"]),
    );
    assert_eq!(
        p.client_saw().unwrap().alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(
        p.server_saw().unwrap().alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    let p = pair(
        server(&f.server_id).alpn(&["h2"]),
        client(&f.ca).alpn(&["http/1.1"]),
    );
    assert_refused(
        &p,
        Reason::NoApplicationProtocol,
        Alert::NoApplicationProtocol,
    );
}

#[test]
fn handshake_survives_one_byte_fragmentation() {
    let f = fixture();
    let s = mtls_server(&f).build(now()).unwrap().into_set();
    let c = with_cert(client(&f.ca), &f.client_id).build(now()).unwrap();
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let c = c.to_builder().versions(v).build(now()).unwrap();
        let mut p = Pair::new(&s, &c, "localhost");
        p.chunk = 1;
        p.run();
        assert!(
            p.server.is_established() && p.client.is_established(),
            "{:?} {:?}",
            p.client_error,
            p.server_error
        );
        roundtrip(&mut p);
    }
}

#[test]
fn large_writes_are_split_into_records_and_arrive_whole() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    while sent < big.len() {
        sent += p.client.send(&big[sent..]).unwrap();
        p.run();
    }
    assert_eq!(p.server_received(), big);
    assert!(
        p.server_events
            .iter()
            .all(|e| !matches!(e, onerecord_tls_tests::Ev::Data(d) if d.len() > 16_384))
    );
}

#[test]
fn too_small_fixed_buffer_names_the_size_required() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let c = client(&f.ca).build(now()).unwrap();
    let mut client = Session::client_with_buffers(
        &c,
        "localhost",
        now(),
        onerecord_tls::Fixed(vec![0u8; 600]),
        onerecord_tls::Fixed(vec![0u8; 4096]),
    )
    .unwrap();
    let mut server = Session::server(&s, now());
    client.process(now(), |_| {}).unwrap();
    let n = server.receive(client.transmit());
    client.transmitted(n);
    server.process(now(), |_| {}).unwrap();
    let mut err = None;
    for _ in 0..50 {
        let n = client.receive(server.transmit());
        server.transmitted(n);
        if let Err(e) = client.process(now(), |_| {}) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("buffer limit reached");
    let Reason::BufferLimit {
        required, limit, ..
    } = err.reason()
    else {
        panic!("{err}")
    };
    assert_eq!(*limit, 600);
    assert!(*required > 600);
}

#[test]
fn statistics_count_handshakes_and_bytes() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    roundtrip(&mut p);
    let st = p.server.stats();
    assert_eq!(
        (st.handshakes_full, st.handshakes_resumed, st.tls13),
        (1, 0, 1)
    );
    assert_eq!(st.app_bytes_received, 35);
    assert_eq!(st.app_bytes_sent, 19);
    assert_eq!(st.tls_bytes_received, p.client.stats().tls_bytes_sent);
    assert_eq!(st.failures_total(), 0);
}

#[test]
fn configuration_errors_name_the_problem() {
    let f = fixture();
    let other = f.ca.issue(&LeafSpec::server());
    let mismatched = ServerPolicy::builder(f.server_id.chain.clone(), other.key()).build(now());
    assert_eq!(mismatched.unwrap_err(), ConfigError::KeyMismatch);
    let expired =
        f.ca.issue(&LeafSpec::server().valid(NOW_SECS - 100 * DAY, NOW_SECS - DAY));
    assert!(matches!(
        server(&expired).build(now()),
        Err(ConfigError::CertificateExpired { .. })
    ));
    let soon =
        f.ca.issue(&LeafSpec::server().valid(NOW_SECS - 100 * DAY, NOW_SECS + 3 * DAY));
    let p = server(&soon).build(now()).unwrap();
    assert!(matches!(
        p.warnings(),
        [Warning::CertificateExpiresSoon { .. }]
    ));
    assert!(matches!(
        server(&f.server_id)
            .require_client_auth(onerecord_tls::TrustStore::new())
            .build(now()),
        Err(ConfigError::EmptyTrustStore)
    ));
    assert!(matches!(
        ClientPolicy::builder(onerecord_tls::TrustStore::new()).build(now()),
        Err(ConfigError::EmptyTrustStore)
    ));
    let garbage_key = onerecord_tls::PrivateKey::Pkcs8(vec![0x30, 0x03, 0x02, 0x01, 0x00].into());
    assert_eq!(
        ServerPolicy::builder(f.server_id.chain.clone(), garbage_key)
            .build(now())
            .unwrap_err(),
        ConfigError::UnsupportedKeyType
    );
    assert!(matches!(
        server(&f.server_id)
            .allow(IdentityRule::CommonName("x".into()))
            .build(now()),
        Err(ConfigError::InvalidIdentityRule { .. })
    ));
    assert!(matches!(
        server(&f.server_id)
            .cipher_suites(&[CipherSuite::EcdheEcdsaAes128GcmSha256])
            .versions(Versions::Tls13Only)
            .build(now()),
        Err(ConfigError::NothingEnabled { .. })
    ));
    assert!(matches!(
        onerecord_tls::pki::certificates_from_pem(f.server_id.key_pem.as_bytes(), "server.pem"),
        Err(ConfigError::NoCertificate { .. })
    ));
    assert!(matches!(
        Session::client(&client(&f.ca).build(now()).unwrap(), "not a name!", now()),
        Err(ConfigError::InvalidServerName { .. })
    ));
}

#[test]
fn pem_loading_reads_chains_keys_and_crls() {
    let f = fixture();
    let chain =
        onerecord_tls::pki::certificates_from_pem(f.server_id.chain_pem.as_bytes(), "chain")
            .unwrap();
    assert_eq!(chain, f.server_id.chain);
    let key = onerecord_tls::pki::private_key_from_pem(f.server_id.key_pem.as_bytes()).unwrap();
    assert!(ServerPolicy::builder(chain, key).build(now()).is_ok());
    let crl = f.ca.crl(&[1], 7);
    let pem = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64(&crl)
    );
    assert_eq!(
        onerecord_tls::pki::crls_from_pem_or_der(pem.as_bytes()).unwrap(),
        vec![crl.clone()]
    );
    assert_eq!(
        onerecord_tls::pki::crls_from_pem_or_der(&crl).unwrap(),
        vec![crl]
    );
    let dir = std::env::temp_dir().join(format!("onerecord-tls-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("empty.pem");
    std::fs::write(&path, "nothing here").unwrap();
    let err = onerecord_tls::pki::certificates_from_file(&path).unwrap_err();
    assert!(
        err.to_string().contains("empty.pem") && err.to_string().contains("no certificate"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn events_come_in_order_and_data_is_never_seen_after_failure() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    p.client.send(b"one").unwrap();
    p.run();
    assert!(matches!(
        p.server_events[0],
        onerecord_tls_tests::Ev::Established(_)
    ));
    assert!(matches!(
        p.server_events[1],
        onerecord_tls_tests::Ev::Data(_)
    ));
    // Garbage after the handshake: the server fails with an alert and reports no data.
    let before = p.server_events.len();
    let _ = p.server.receive(&[
        0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
        18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    ]);
    let err = p
        .server
        .process(now(), |e| panic!("no event expected, got {e:?}"))
        .unwrap_err();
    assert_eq!(err.reason(), &Reason::ProtocolViolation);
    assert_eq!(err.alert_sent(), Some(Alert::BadRecordMac));
    assert!(!p.server.transmit().is_empty(), "the alert is queued");
    assert_eq!(p.server_events.len(), before);
    assert!(p.server.send(b"x").is_err());
    let _ = Event::Closed;
}

#[test]
fn garbage_right_after_application_data_still_gets_its_alert() {
    let f = fixture();
    let mut p = pair(server(&f.server_id), client(&f.ca));
    assert!(p.server.is_established());
    p.client.send(b"GET /").unwrap();
    p.client.process(now(), |_| {}).unwrap();
    let mut wire = p.client.transmit().to_vec();
    let n = wire.len();
    p.client.transmitted(n);
    assert!(n > 0);
    wire.extend_from_slice(&[
        0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
        18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
    ]);
    assert_eq!(p.server.receive(&wire), wire.len());
    let mut data = Vec::new();
    let res = p.server.process(now(), |e| {
        if let Event::Data(d) = e {
            data.extend_from_slice(d);
        }
    });
    // Either the data arrives and the next call fails, or the call fails at once.
    let err = match res {
        Err(e) => e,
        Ok(()) => p.server.process(now(), |_| {}).unwrap_err(),
    };
    assert_eq!(err.alert_sent(), Some(Alert::BadRecordMac), "{err}");
    assert!(!p.server.transmit().is_empty(), "the alert is queued");
    assert_eq!(data, b"GET /");
}

#[test]
fn record_larger_than_a_fixed_incoming_buffer_after_the_handshake_is_a_named_error() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let c = client(&f.ca).build(now()).unwrap();
    let mut client = Session::client_with_buffers(
        &c,
        "localhost",
        now(),
        onerecord_tls::Fixed(vec![0u8; 4096]),
        onerecord_tls::Fixed(vec![0u8; 32 * 1024]),
    )
    .unwrap();
    let mut server = Session::server(&s, now());
    for _ in 0..20 {
        client.process(now(), |_| {}).unwrap();
        let n = server.receive(client.transmit());
        client.transmitted(n);
        server.process(now(), |_| {}).unwrap();
        let n = client.receive(server.transmit());
        server.transmitted(n);
    }
    client.process(now(), |_| {}).unwrap();
    assert!(client.is_established() && server.is_established());
    // One full 16 KiB record towards the client's 4 KiB incoming buffer.
    assert_eq!(server.send(&[7u8; 16 * 1024]).unwrap(), 16 * 1024);
    server.process(now(), |_| {}).unwrap();
    let mut err = None;
    for _ in 0..20 {
        let n = client.receive(server.transmit());
        server.transmitted(n);
        match client.process(now(), |_| {}) {
            Err(e) => {
                err = Some(e);
                break;
            }
            Ok(()) => assert!(n > 0, "no progress and no error: a silent stall"),
        }
    }
    let err = err.expect("buffer limit reported");
    let Reason::BufferLimit {
        required, limit, ..
    } = err.reason()
    else {
        panic!("{err}")
    };
    assert_eq!(*limit, 4096);
    assert!(*required > 16 * 1024, "names the record's size: {required}");
}

/// Split a client's first flight into records of `size` bytes of handshake data each.
fn refragment(flight: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= flight.len() {
        let len = u16::from_be_bytes([flight[at + 3], flight[at + 4]]) as usize;
        let body = &flight[at + 5..at + 5 + len];
        for chunk in body.chunks(size) {
            out.extend_from_slice(&[flight[at], flight[at + 1], flight[at + 2]]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        at += 5 + len;
    }
    out
}

#[test]
fn a_client_hello_in_one_byte_records_fed_one_record_at_a_time_is_admitted() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let c = client(&f.ca).build(now()).unwrap();
    let mut client = Session::client(&c, "localhost", now()).unwrap();
    client.process(now(), |_| {}).unwrap();
    let hello = client.transmit().to_vec();
    client.transmitted(hello.len());
    let wire = refragment(&hello, 1);
    assert!(wire.len() > 5 * hello.len());
    let mut server = Session::server(&s, now());
    for record in wire.chunks(6) {
        assert_eq!(server.receive(record), record.len());
        server.process(now(), |_| {}).unwrap();
    }
    assert!(!server.transmit().is_empty(), "ServerHello sent");
    assert_eq!(server.server_name(), Some("localhost"));
}

/// A 60 KB "ClientHello" sent as one-byte records, one per call: admission walks each record
/// once (it used to reassemble from the first byte on every call: seconds of CPU for the
/// ~17,000 records that fit in the incoming buffer), and the flood is refused with
/// decode_error when the bounded incoming buffer is full.
#[test]
fn a_huge_fragmented_hello_is_walked_once_and_refused() {
    let f = fixture();
    let s = server(&f.server_id).build(now()).unwrap().into_set();
    let mut server = Session::server(&s, now());
    let body_len: u32 = 60_000;
    let mut msg = vec![1u8, 0, 0, 0];
    msg[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    msg.extend(std::iter::repeat_n(0xEEu8, body_len as usize));
    let start = std::time::Instant::now();
    let mut err = None;
    for b in &msg {
        let _ = server.receive(&[0x16, 0x03, 0x01, 0x00, 0x01, *b]);
        if let Err(e) = server.process(now(), |_| {}) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("refused");
    // Six wire bytes per message byte: the bounded incoming buffer (one 64 KiB handshake
    // message plus two records) fills before the message completes.
    assert!(matches!(err.reason(), Reason::BufferLimit { .. }), "{err}");
    assert_eq!(err.alert_sent(), Some(Alert::DecodeError));
    eprintln!(
        "one-byte records admitted and refused in {:?}",
        start.elapsed()
    );
}
