//! The body of every fuzz target, as plain functions of the input bytes, so the regression
//! tests in `tests/tests/fuzz_regressions.rs` replay a crash exactly as the fuzzer ran it.

use std::time::Duration;

use onerecord_tls::Admission;
use onerecord_tls::IdentityRules;
use onerecord_tls::hello;
use onerecord_tls::pki::{certificates_from_pem, crls_from_pem_or_der, private_key_from_pem};
use onerecord_tls::{
    CertInfo, ClientAuth, ClientPolicy, ConfigError, IdentityRule, Revocation, ServerPolicy,
    Session, Sha256, TicketKeys, TrustStore,
};
use onerecord_tls::{Fixed, MAX_RECORD};

use crate::fuzz::drive::{Checked, GROWABLE_LIMITS, Script, run_script};
use crate::fuzz::pair::{self, Mutation, Scenario};
use crate::fuzz::pki::{self, ClientKind, ServerKind};

/// (a) The server fed arbitrary client bytes, split at arbitrary points, with clock jumps.
/// Input: a [`Script`] whose config byte selects the [`ServerKind`] (with and without mTLS).
pub fn server_stream(data: &[u8]) {
    let script = Script::parse(data);
    let kind = ServerKind::from_selector(script.config);
    let now = pki::now();
    let session = Session::server(pki::server_policies(kind), now);
    let mut c = Checked::new(session, GROWABLE_LIMITS);
    run_script(&mut c, &script.ops, script.stream, now);
}

/// Copy the client's legacy session id into a ServerHello at the start of `stream`, so a
/// recorded TLS 1.3 ServerHello is accepted and the fuzzer reaches what follows it.
pub fn echo_session_id(client_hello: &[u8], stream: &mut [u8]) {
    const SID: usize = 5 + 4 + 2 + 32;
    let (Some(&n), Some(&m)) = (client_hello.get(SID), stream.get(SID)) else {
        return;
    };
    if n != m || stream.first() != Some(&0x16) || stream.get(5) != Some(&0x02) {
        return;
    }
    let n = usize::from(n);
    if let (Some(src), Some(dst)) = (
        client_hello.get(SID + 1..SID + 1 + n),
        stream.get_mut(SID + 1..SID + 1 + n),
    ) {
        dst.copy_from_slice(src);
    }
}

/// (b) The client fed arbitrary server bytes. Input: a [`Script`]; config bits 0-1 select the
/// [`ClientKind`], bit 7 asks for the session-id echo fix-up ([`echo_session_id`]).
pub fn client_stream(data: &[u8]) {
    let script = Script::parse(data);
    let kind = ClientKind::from_selector(script.config & 0x03);
    let now = pki::now();
    let session =
        Session::client(pki::client_policy_shared(kind), pki::SERVER_NAME, now).expect("client");
    let mut c = Checked::new(session, GROWABLE_LIMITS);
    let _ = c.process(now);
    let hello = c.drain();
    let mut stream = script.stream.to_vec();
    if script.config & 0x80 != 0 {
        echo_session_id(&hello, &mut stream);
    }
    run_script(&mut c, &script.ops, &stream, now);
}

/// (c) A real handshake with its records mutated in flight: see [`pair`].
pub fn handshake_mutation(data: &[u8]) {
    pair::handshake_mutation(data);
}

/// (d) The ClientHello admission parser.
///
/// Properties: a decision on a prefix is the decision on the whole input (the parser is
/// streaming); an accepted hello offers TLS 1.2 or newer and has a clean SNI; an alert
/// record encodes the alert; and a server session given the same bytes agrees with the
/// parser on refusals and on the server name.
pub fn client_hello(data: &[u8]) {
    let verdict = hello::inspect(data);
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let early = hello::inspect(&data[..cut]);
        if early != Admission::NeedMore {
            assert_eq!(
                early, verdict,
                "decided on {cut} bytes, then changed its mind"
            );
        }
    }
    match &verdict {
        Admission::NeedMore => {}
        Admission::Hello(info) => {
            assert!(info.highest_version() >= 0x0303);
            if let Some(name) = &info.server_name {
                assert!(!name.is_empty() || data.is_empty());
                assert!(name.bytes().all(|b| b.is_ascii_graphic()));
            }
            assert!(info.alpn.iter().all(|p| !p.is_empty()));
        }
        Admission::Refuse {
            alert,
            record_version,
            ..
        } => {
            if let Some(a) = alert {
                let rec = hello::alert_record(*a, *record_version);
                assert_eq!(rec[0], 0x15);
                assert_eq!(rec[6], a.code());
            }
        }
    }
    // The session runs the same admission step: it must agree.
    let now = pki::now();
    let mut c = Checked::new(
        Session::server(pki::server_policies(ServerKind::Plain), now),
        GROWABLE_LIMITS,
    );
    c.receive(data);
    let r = c.process(now);
    match verdict {
        Admission::NeedMore if data.len() < hello::MAX_CLIENT_HELLO => {
            assert!(r.is_ok() && !c.session.is_terminal(), "{r:?}");
        }
        Admission::NeedMore => {}
        Admission::Hello(info) => {
            assert_eq!(c.session.server_name(), info.server_name.as_deref());
        }
        Admission::Refuse { reason, alert, .. } => {
            let e = r.expect_err("refused by the parser, refused by the session");
            assert_eq!(e.reason(), &reason);
            assert_eq!(e.alert_sent(), alert);
        }
    }
}

/// (e) PEM and policy loading from arbitrary bytes: certificates, keys, CRLs, bundles,
/// ticket keys. Input: `[selector][bytes]`.
pub fn pem_policy(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let pki = pki::pki();
    let now = pki::now();
    let show = |e: &ConfigError| assert!(!e.to_string().is_empty());
    match sel % 6 {
        0 => {
            // A CA bundle, then a client policy trusting it.
            if let Ok(certs) = certificates_from_pem(rest, "fuzz bundle") {
                for c in &certs {
                    let _ = CertInfo::parse(c);
                    let _ = TrustStore::new().add_der(c.clone());
                }
            }
            match TrustStore::from_pem(rest) {
                Ok(store) => {
                    assert!(!store.is_empty());
                    if let Err(e) = ClientPolicy::builder(store).build(now) {
                        show(&e);
                    }
                }
                Err(e) => show(&e),
            }
        }
        1 => match private_key_from_pem(rest) {
            // A key for the server certificate: only the real key may pass.
            Ok(key) => match ServerPolicy::builder(vec![pki.server.der.clone()], key).build(now) {
                Ok(p) => assert_eq!(
                    p.certificate().spki_sha256,
                    CertInfo::parse(&pki.server.der)
                        .expect("server cert")
                        .spki_sha256
                ),
                Err(e) => show(&e),
            },
            Err(e) => show(&e),
        },
        2 => match crls_from_pem_or_der(rest) {
            // CRLs into an mTLS policy, then a real mTLS handshake checked against them.
            Ok(crls) => {
                let policy = ServerPolicy::builder(vec![pki.server.der.clone()], pki.server.key())
                    .client_auth(ClientAuth::Required(pki.trust()))
                    .revocation(Revocation::with_crls(crls))
                    .session_cache(None)
                    .build(now);
                match policy {
                    Ok(p) => {
                        let client = pki::client_policy_shared(ClientKind::WithCert);
                        let o = pair::exchange_unchecked(
                            Session::server(&p.into_set(), now),
                            GROWABLE_LIMITS,
                            Session::client(client, pki::SERVER_NAME, now).expect("client"),
                            &[],
                            now,
                        );
                        if let Some(id) = o.server.session.peer_identity() {
                            assert_eq!(id.chain.first(), Some(&pki.client.der));
                        }
                    }
                    Err(e) => show(&e),
                }
            }
            Err(e) => show(&e),
        },
        3 => match certificates_from_pem(rest, "fuzz chain") {
            // A certificate chain for the server key: the leaf must carry that key.
            Ok(chain) => match ServerPolicy::builder(chain.clone(), pki.server.key()).build(now) {
                Ok(p) => {
                    let want = CertInfo::parse(&pki.server.der).expect("server cert");
                    assert_eq!(p.certificate().spki_sha256, want.spki_sha256);
                }
                Err(e) => show(&e),
            },
            Err(e) => show(&e),
        },
        4 => {
            let r = TicketKeys::from_bytes(rest, Duration::from_secs(3600));
            let valid_len = !rest.is_empty() && rest.len() % 48 == 0;
            assert_eq!(r.is_ok(), valid_len, "{r:?}");
        }
        _ => {
            // One PEM file holding everything (certificates, a key, CRLs).
            let _ = TrustStore::from_pem(rest).map_err(|e| show(&e));
            let _ = private_key_from_pem(rest).map_err(|e| show(&e));
            let _ = crls_from_pem_or_der(rest).map_err(|e| show(&e));
        }
    }
}

/// (f) Peer identity extraction from arbitrary DER.
///
/// Properties: fingerprints are of the bytes given; every extracted name satisfies the rule
/// built from it when that rule is valid (a URI SAN that is not a strict absolute URI matches
/// no URI rule); a rule set agrees with the single rules.
pub fn cert_info(data: &[u8]) {
    let _ = TrustStore::new().add_der(data.to_vec().into());
    let Ok(info) = CertInfo::parse(data) else {
        assert!(!IdentityRules(vec![IdentityRule::CommonName("x".into())]).allows_der(data));
        return;
    };
    assert_eq!(info.cert_sha256, Sha256::of(data));
    assert_eq!(info.serial_hex().len(), 2 * info.serial.len());
    let hex = info.spki_sha256.to_string();
    assert_eq!(Sha256::from_hex(&hex), Some(info.spki_sha256));
    let mut rules = vec![IdentityRule::SpkiSha256(info.spki_sha256)];
    rules.extend(info.uris.iter().cloned().map(IdentityRule::UriExact));
    rules.extend(info.uris.iter().cloned().map(IdentityRule::UriPrefix));
    rules.extend(info.dns_names.iter().cloned().map(IdentityRule::Dns));
    rules.extend(
        info.common_names
            .iter()
            .cloned()
            .map(IdentityRule::CommonName),
    );
    for r in &rules {
        // A URI SAN that is not a strict absolute URI makes no valid rule and matches none.
        assert_eq!(
            r.matches(&info),
            r.validate().is_ok(),
            "{r:?} built from the certificate must match it exactly when it is valid"
        );
    }
    assert!(IdentityRules(rules).allows_der(data));
    let _ = (
        info.subject.len(),
        info.issuer.len(),
        info.not_before <= info.not_after,
    );
}

/// Incoming and outgoing sizes of the fixed-buffer target.
pub const FIXED_SIZES: ([usize; 4], [usize; 4]) = (
    [512, 2048, 8192, MAX_RECORD + 1024],
    [128, 1024, 4096, 16_384],
);

/// (g) A server on small caller-owned fixed buffers (`Session::server_with_buffers` with
/// `Fixed`, the storage the embedded adapter uses). Input: `[sizes][mode][rest]`: sizes bits
/// 0-1 pick the incoming size and bits 2-3 the outgoing size from [`FIXED_SIZES`]; mode bit 0
/// runs either a [`Script`] of client bytes or a real client with mutations (`rest` as in
/// [`handshake_mutation`]). With the largest sizes an unmutated exchange must complete.
pub fn fixed_buffers(data: &[u8]) {
    let (Some(&sizes), Some(&mode)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let (ins, outs) = FIXED_SIZES;
    let (i, o) = (
        ins[usize::from(sizes & 3)],
        outs[usize::from((sizes >> 2) & 3)],
    );
    let now = pki::now();
    let buffers = || {
        (
            Fixed(vec![0u8; i].into_boxed_slice()),
            Fixed(vec![0u8; o].into_boxed_slice()),
        )
    };
    if mode & 1 == 0 {
        let script = Script::parse(rest);
        let kind = ServerKind::from_selector(script.config);
        let (bi, bo) = buffers();
        let session = Session::server_with_buffers(pki::server_policies(kind), now, bi, bo);
        let mut c = Checked::new(session, (i, o));
        run_script(&mut c, &script.ops, script.stream, now);
        return;
    }
    let Some((&cfg, muts)) = rest.split_first() else {
        return;
    };
    let scenario = Scenario::from_selector(cfg);
    let muts: Vec<Mutation> = muts
        .chunks_exact(4)
        .take(64)
        .map(|c| Mutation::decode([c[0], c[1], c[2], c[3]]))
        .collect();
    let policy = pair::client_policy_for(scenario, now);
    let (bi, bo) = buffers();
    let server = Session::server_with_buffers(
        pki::server_policies(pair::server_kind(scenario)),
        now,
        bi,
        bo,
    );
    let client = Session::client(&policy, pki::SERVER_NAME, now).expect("client");
    let strict = i >= MAX_RECORD && o >= 4096;
    if strict {
        pair::exchange(scenario, server, (i, o), client, &muts, now);
    } else {
        pair::exchange_unchecked(server, (i, o), client, &muts, now);
    }
}
