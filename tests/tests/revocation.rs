//! CRLs: checked against the trust store when a policy is built, expiry reported as its own
//! failure with the CRL named, a bounded grace, and the refused peer's certificate named.

use std::time::Duration;

use onerecord_tls::CrlInfo;
use onerecord_tls::pki;
use onerecord_tls::{
    Alert, ClientPolicy, ConfigError, Failure, IdentityRule, Reason, Revocation, ServerPolicy,
    Time, TrustStore, UnknownStatus, Versions, Warning,
};
use onerecord_tls_tests::{Ca, DAY, Fixture, Identity, LeafSpec, NOW_SECS, Pair, now};

fn fixture() -> Fixture {
    Fixture::new()
}

fn mtls_server(f: &Fixture) -> onerecord_tls::ServerPolicyBuilder {
    ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
        .require_client_auth(f.ca.trust())
}

fn client_with(f: &Fixture, id: &Identity, v: Versions) -> ClientPolicy {
    ClientPolicy::builder(f.ca.trust())
        .versions(v)
        .client_cert(id.chain.clone(), id.key())
        .build(now())
        .unwrap()
}

fn run(s: onerecord_tls::ServerPolicyBuilder, c: &ClientPolicy) -> Pair {
    let s = s.build(now()).unwrap().into_set();
    let mut p = Pair::new(&s, c, "localhost");
    p.run();
    p
}

#[test]
fn crl_of_a_ca_outside_the_trust_store_is_a_config_error_naming_its_issuer() {
    let f = fixture();
    let foreign = Ca::new("Some Other CA").crl(&[], 7);
    let err = mtls_server(&f)
        .revocation(Revocation::with_crls(vec![f.ca.crl(&[], 7), foreign]))
        .build(now())
        .unwrap_err();
    match &err {
        ConfigError::CrlIssuerUnknown { index, issuer } => {
            assert_eq!(*index, 1);
            assert!(issuer.contains("CN=Some Other CA"), "{issuer}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("intermediate"), "{err}");
    // The client side checks its CRLs against its trust store in the same way.
    let err = ClientPolicy::builder(f.ca.trust())
        .revocation(Revocation::with_crls(vec![
            Ca::new("Some Other CA").crl(&[], 7),
        ]))
        .build(now())
        .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::CrlIssuerUnknown { index: 0, .. }
    ));
}

#[test]
fn foreign_crl_with_unknown_status_allowed_cannot_silently_turn_revocation_off() {
    let f = fixture();
    // Before: the foreign CRL covered nobody, unknown status was allowed, and a revoked
    // client got in. Now the policy does not build.
    let lenient = |crls| Revocation {
        unknown_status: UnknownStatus::Allow,
        ..Revocation::with_crls(crls)
    };
    let foreign = Ca::new("Some Other CA").crl(&[f.client_id.serial], 7);
    assert!(matches!(
        mtls_server(&f)
            .revocation(lenient(vec![foreign]))
            .build(now()),
        Err(ConfigError::CrlIssuerUnknown { .. })
    ));
    // With the CA's own CRL the revoked client is refused.
    let own = f.ca.crl(&[f.client_id.serial], 7);
    let p = run(
        mtls_server(&f).revocation(lenient(vec![own])),
        &client_with(&f, &f.client_id, Versions::Tls13Only),
    );
    let se = p.server_error.as_ref().expect("refused");
    assert_eq!(se.reason(), &Reason::Revoked);
}

#[test]
fn crl_whose_signature_does_not_verify_with_its_issuer_is_a_config_error() {
    let f = fixture();
    // Same issuer name, another key: the name matches the trusted CA, the signature does not.
    let impostor = Ca::new("ONE Record Test CA").crl(&[], 7);
    let err = mtls_server(&f)
        .revocation(Revocation::with_crls(vec![impostor.clone()]))
        .build(now())
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::CrlBadSignature { index: 0, .. }),
        "{err:?}"
    );
    assert!(matches!(
        pki::check_crl(&impostor, &f.ca.trust()),
        Err(ConfigError::CrlBadSignature { .. })
    ));
    // A CRL whose signature bytes were altered fails the same way.
    let mut tampered = f.ca.crl(&[], 7).to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        pki::check_crl(&tampered, &f.ca.trust()),
        Err(ConfigError::CrlBadSignature { .. })
    ));
    assert!(pki::check_crl(&f.ca.crl(&[], 7), &f.ca.trust()).is_ok());
}

#[test]
fn crl_of_an_intermediate_in_the_bundle_is_accepted() {
    // Each certificate of a bundle is an anchor: a second CA in the bundle stands for an
    // intermediate carried next to the root.
    let f = fixture();
    let intermediate = Ca::new("Intermediate CA");
    let mut trust = f.ca.trust();
    trust.add_pem(intermediate.pem().as_bytes()).unwrap();
    let info = pki::check_crl(&intermediate.crl(&[7], 7), &trust).unwrap();
    assert!(info.issuer.contains("CN=Intermediate CA"));
    assert!(pki::check_crl(&intermediate.crl(&[7], 7), &TrustStore::new()).is_err());
}

#[test]
fn crl_of_a_ca_whose_key_usage_lacks_crl_sign_is_a_config_error_naming_its_issuer() {
    let f = fixture();
    let no_crl_sign = Ca::without_crl_sign("Issuing-only CA");
    let mut trust = f.ca.trust();
    trust.add_pem(no_crl_sign.pem().as_bytes()).unwrap();
    let crl = no_crl_sign.crl(&[], 7);
    let err = pki::check_crl(&crl, &trust).unwrap_err();
    match &err {
        ConfigError::CrlIssuerNotCrlSigner { index: 0, issuer } => {
            assert!(issuer.contains("CN=Issuing-only CA"), "{issuer}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("CN=Issuing-only CA") && msg.contains("cRLSign"),
        "{msg}"
    );
    // Building a policy names the CRL's index, on both sides.
    let server = ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
        .require_client_auth(trust.clone())
        .revocation(Revocation::with_crls(vec![f.ca.crl(&[], 7), crl.clone()]))
        .build(now());
    assert!(
        matches!(
            server,
            Err(ConfigError::CrlIssuerNotCrlSigner { index: 1, .. })
        ),
        "{server:?}"
    );
    let client = ClientPolicy::builder(trust)
        .revocation(Revocation::with_crls(vec![crl]))
        .build(now());
    assert!(
        matches!(
            client,
            Err(ConfigError::CrlIssuerNotCrlSigner { index: 0, .. })
        ),
        "{client:?}"
    );
}

#[test]
fn crl_of_a_ca_without_key_usage_extension_is_accepted_and_enforced() {
    // RFC 5280 wants the extension in a CA certificate, but rustls-webpki reads its absence
    // as any usage: the build check agrees, and the handshake enforces the CRL.
    let ca = Ca::without_key_usage("Legacy CA");
    let f = Fixture {
        server_id: ca.issue(&LeafSpec::server()),
        client_id: ca.issue(&LeafSpec::client("acme")),
        ca,
    };
    assert!(pki::check_crl(&f.ca.crl(&[], 7), &f.ca.trust()).is_ok());
    let client = client_with(&f, &f.client_id, Versions::Tls13Only);
    let p = run(
        mtls_server(&f).revocation(Revocation::with_crls(vec![f.ca.crl(&[], 7)])),
        &client,
    );
    assert!(p.server.is_established(), "{:?}", p.server_error);
    let p = run(
        mtls_server(&f).revocation(Revocation::with_crls(vec![
            f.ca.crl(&[f.client_id.serial], 7),
        ])),
        &client,
    );
    assert_eq!(
        p.server_error.as_ref().map(|e| e.reason().clone()),
        Some(Reason::Revoked)
    );
}

#[test]
fn corrupt_crl_body_is_a_bad_crl_error_when_loading() {
    let f = fixture();
    let good = f.ca.crl(&[], 7);
    let mut corrupt = good.to_vec();
    corrupt.truncate(corrupt.len() / 2);
    assert!(matches!(
        pki::crls_from_pem_or_der(&corrupt),
        Err(ConfigError::BadCrl { index: 0, .. })
    ));
    // Second CRL of a PEM file broken: its index is named.
    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            b64(der)
        )
    };
    let both = pem(&good) + &pem(&corrupt);
    assert!(matches!(
        pki::crls_from_pem_or_der(both.as_bytes()),
        Err(ConfigError::BadCrl { index: 1, .. })
    ));
}

#[test]
fn crls_without_client_authentication_are_a_config_error() {
    let f = fixture();
    let err = ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
        .revocation(Revocation::with_crls(vec![f.ca.crl(&[], 7)]))
        .build(now())
        .unwrap_err();
    assert_eq!(err, ConfigError::CrlWithoutClientAuth);
}

#[test]
fn crl_info_reads_issuer_dates_number_and_revoked_count() {
    let f = fixture();
    let info = CrlInfo::parse(&f.ca.crl(&[5, 6, 7], 7)).unwrap();
    assert!(
        info.issuer.contains("CN=ONE Record Test CA"),
        "{}",
        info.issuer
    );
    assert_eq!(info.revoked, 3);
    assert_eq!(info.number.as_deref(), Some(&[1u8][..]));
    assert_eq!(
        info.next_update,
        Some(Time::from_unix_secs(NOW_SECS + 7 * DAY))
    );
    assert!(info.this_update < now());
    assert!(!info.is_expired(now()));
    assert!(CrlInfo::parse(b"\x30\x03\x02\x01\x00").is_err());
}

#[test]
fn expired_crl_refusal_is_its_own_failure_and_names_the_crl() {
    let f = fixture();
    let stale = f.ca.crl(&[], -1);
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let r = Revocation::with_named_crls([("crls/acme.crl".to_string(), stale.clone())]);
        let p = run(
            mtls_server(&f).revocation(r),
            &client_with(&f, &f.client_id, v),
        );
        let se = p.server_error.as_ref().expect("refused");
        match se.reason() {
            Reason::CrlExpired { crl, next_update } => {
                assert_eq!(crl.as_deref(), Some("crls/acme.crl"));
                assert_eq!(*next_update, Some(Time::from_unix_secs(NOW_SECS - DAY)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(se.failure(), Failure::CrlExpired);
        assert_eq!(Failure::CrlExpired.label(), "crl_expired");
        assert_eq!(p.server.stats().failures_of(Failure::CrlExpired), 1);
        assert_eq!(p.server.stats().failures_of(Failure::Revoked), 0);
        assert!(se.to_string().contains("crls/acme.crl"), "{se}");
    }
}

#[test]
fn expired_and_expiring_crls_are_build_warnings() {
    let f = fixture();
    let r = Revocation::with_named_crls([
        ("old.crl".to_string(), f.ca.crl(&[], -1)),
        ("fresh.crl".to_string(), f.ca.crl(&[], 30)),
    ]);
    let p = mtls_server(&f).revocation(r).build(now()).unwrap();
    assert!(
        matches!(p.warnings(), [Warning::CrlExpired { crl, grace, .. }]
            if crl == "old.crl" && grace.is_zero()),
        "{:?}",
        p.warnings()
    );
    let soon = Revocation {
        warning: Duration::from_secs(40 * DAY),
        ..Revocation::with_named_crls([("fresh.crl".to_string(), f.ca.crl(&[], 30))])
    };
    let p = mtls_server(&f).revocation(soon).build(now()).unwrap();
    assert!(
        matches!(p.warnings(), [Warning::CrlExpiresSoon { crl, .. }] if crl == "fresh.crl"),
        "{:?}",
        p.warnings()
    );
    let names: Vec<_> = p.crls().map(|(n, i)| (n.to_string(), i.revoked)).collect();
    assert_eq!(names, vec![("fresh.crl".to_string(), 0)]);
}

#[test]
fn crl_grace_admits_within_the_window_and_refuses_after_it() {
    let f = fixture();
    let stale = f.ca.crl(&[], -1); // nextUpdate one day ago
    let graced = |grace| Revocation {
        grace,
        ..Revocation::with_crls(vec![stale.clone()])
    };
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        let c = client_with(&f, &f.client_id, v);
        let p = run(
            mtls_server(&f).revocation(graced(Duration::from_secs(2 * DAY))),
            &c,
        );
        assert!(p.server.is_established(), "{:?}", p.server_error);
        let p = run(
            mtls_server(&f).revocation(graced(Duration::from_secs(3600))),
            &c,
        );
        let se = p.server_error.as_ref().expect("refused after the grace");
        assert!(
            matches!(se.reason(), Reason::CrlExpired { next_update: Some(n), .. }
                if *n == Time::from_unix_secs(NOW_SECS - DAY)),
            "{se}"
        );
        assert_eq!(se.alert_sent(), Some(Alert::UnknownCa));
    }
    // Within the grace the stale CRL still revokes.
    let stale_revoking = f.ca.crl(&[f.client_id.serial], -1);
    let p = run(
        mtls_server(&f).revocation(Revocation {
            grace: Duration::from_secs(2 * DAY),
            ..Revocation::with_crls(vec![stale_revoking])
        }),
        &client_with(&f, &f.client_id, Versions::Tls13Only),
    );
    assert_eq!(
        p.server_error.as_ref().map(|e| e.reason().clone()),
        Some(Reason::Revoked)
    );
}

#[test]
fn refusal_names_the_certificate_the_peer_presented() {
    let f = fixture();
    let rogue = Ca::new("Rogue CA").issue(&LeafSpec::client("mallory"));
    let revoked = f.ca.issue(&LeafSpec::client("revoked-co"));
    let denied = f.ca.issue(&LeafSpec::client("not-listed"));
    let crl = f.ca.crl(&[revoked.serial], 7);
    let cases: Vec<(Identity, onerecord_tls::ServerPolicyBuilder, &str)> = vec![
        (rogue, mtls_server(&f), "mallory"),
        (
            revoked,
            mtls_server(&f).revocation(Revocation::with_crls(vec![crl])),
            "revoked-co",
        ),
        (
            denied,
            mtls_server(&f).allow(IdentityRule::CommonName("acme".into())),
            "not-listed",
        ),
    ];
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        for (id, s, cn) in &cases {
            let c = ClientPolicy::builder(f.ca.trust())
                .versions(v)
                .client_cert(id.chain.clone(), id.key())
                .build(now())
                .unwrap();
            let p = run(s.clone(), &c);
            let se = p.server_error.as_ref().expect("refused");
            let cert = se
                .presented_certificate()
                .unwrap_or_else(|| panic!("{cn}: no presented certificate in {se:?}"));
            assert_eq!(cert.common_names, vec![cn.to_string()]);
            assert_eq!(u64::from_str_radix(&cert.serial_hex(), 16), Ok(id.serial));
            assert!(!cert.issuer.is_empty());
        }
    }
    // Nothing presented, nothing named.
    let anon = ClientPolicy::builder(f.ca.trust()).build(now()).unwrap();
    let p = run(mtls_server(&f), &anon);
    let se = p.server_error.as_ref().expect("refused");
    assert!(se.presented_certificate().is_none());
    // An accepted handshake leaves nothing behind for the next failure on this thread.
    let ok = client_with(&f, &f.client_id, Versions::Tls13Only);
    let p = run(mtls_server(&f), &ok);
    assert!(p.server.is_established());
    let p = run(mtls_server(&f), &anon);
    assert!(p.server_error.unwrap().presented_certificate().is_none());
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
