//! The alert a session reports is the alert on the wire, and a refusal is never silent: a
//! handshake message over the 64 KiB bound is answered with `decode_error` (encrypted when
//! the write side is), a wrong TLS 1.3 Finished with `decrypt_error`, in both versions and
//! both roles. Plaintext alert records are read from the bytes sent; encrypted ones are what
//! the peer decrypted.

use std::sync::{Arc, Mutex};

use onerecord_tls::{
    Alert, CipherSuite, ClientPolicy, Error, IdentityRule, Reason, Revocation, ServerPolicies,
    ServerPolicy, Session, Versions,
};
use onerecord_tls_tests::{Ca, Fixture, Identity, LeafSpec, now};

fn fixture() -> Fixture {
    Fixture::new()
}

/// What came out of a run: each side's error and every byte each side sent.
struct Run {
    server_error: Option<Error>,
    client_error: Option<Error>,
    server_sent: Vec<u8>,
    client_sent: Vec<u8>,
}

fn feed(to: &mut Session, bytes: &[u8]) {
    let mut at = 0;
    while at < bytes.len() {
        let n = to.receive(&bytes[at..]);
        if n == 0 {
            break;
        }
        at += n;
    }
}

/// Drive a client and a server session in memory until nothing moves.
fn drive(server: &ServerPolicies, client: &ClientPolicy) -> Run {
    let mut c = Session::client(client, "localhost", now()).unwrap();
    let mut s = Session::server(server, now());
    let mut r = Run {
        server_error: None,
        client_error: None,
        server_sent: Vec::new(),
        client_sent: Vec::new(),
    };
    for _ in 0..100 {
        if r.client_error.is_none() {
            r.client_error = c.process(now(), |_| {}).err();
        }
        let out = c.transmit().to_vec();
        c.transmitted(out.len());
        r.client_sent.extend_from_slice(&out);
        if r.server_error.is_none() {
            feed(&mut s, &out);
            r.server_error = s.process(now(), |_| {}).err();
        }
        let back = s.transmit().to_vec();
        s.transmitted(back.len());
        r.server_sent.extend_from_slice(&back);
        if r.client_error.is_none() {
            feed(&mut c, &back);
            r.client_error = c.process(now(), |_| {}).err();
        }
        if out.is_empty() && back.is_empty() {
            break;
        }
    }
    r
}

/// The plaintext alert records in `wire` (encrypted records are skipped).
fn plaintext_alerts(wire: &[u8]) -> Vec<Alert> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        if wire[at] == 0x15 && len == 2 && at + 7 <= wire.len() {
            out.push(Alert::from_code(wire[at + 6]));
        }
        at += 5 + len;
    }
    out
}

/// `refuser` reported `expect` and the peer received exactly that alert: decrypted by the
/// peer, and read from the bytes when the record was plaintext.
fn assert_alert_on_the_wire(
    what: &str,
    refuser: Option<&Error>,
    peer: Option<&Error>,
    refuser_sent: &[u8],
    expect: Alert,
) {
    let re = refuser.unwrap_or_else(|| panic!("{what}: not refused"));
    assert_eq!(re.alert_sent(), Some(expect), "{what}: reported {re}");
    let pe = peer.unwrap_or_else(|| panic!("{what}: the peer saw no alert"));
    assert_eq!(
        pe.reason(),
        &Reason::PeerAlert(expect),
        "{what}: the peer received {pe}"
    );
    for a in plaintext_alerts(refuser_sent) {
        assert_eq!(a, expect, "{what}: plaintext alert record on the wire");
    }
}

/// A chain of the leaf followed by enough copies of the CA certificate to make the
/// Certificate message larger than 64 KiB.
fn oversized_chain(f: &Fixture, id: &Identity) -> Vec<onerecord_tls::Certificate<'static>> {
    let mut chain = id.chain.clone();
    while chain.iter().map(|c| c.len() + 3).sum::<usize>() < 70_000 {
        chain.push(f.ca.der());
    }
    chain
}

#[test]
fn oversized_handshake_message_is_answered_with_decode_error_on_the_wire() {
    let f = fixture();
    for v in [Versions::Tls13Only, Versions::Tls12Only] {
        // The server's Certificate message is over 64 KiB: the client refuses it.
        let server = ServerPolicy::builder(oversized_chain(&f, &f.server_id), f.server_id.key())
            .versions(v)
            .build(now())
            .unwrap()
            .into_set();
        let client = ClientPolicy::builder(f.ca.trust()).build(now()).unwrap();
        let r = drive(&server, &client);
        assert!(
            r.client_error
                .as_ref()
                .is_some_and(|e| e.to_string().contains("HandshakePayloadTooLarge")),
            "{:?}",
            r.client_error
        );
        assert_alert_on_the_wire(
            &format!("client {v:?}"),
            r.client_error.as_ref(),
            r.server_error.as_ref(),
            &r.client_sent,
            Alert::DecodeError,
        );
        if v == Versions::Tls12Only {
            assert_eq!(plaintext_alerts(&r.client_sent), vec![Alert::DecodeError]);
        }
        // The client's Certificate message is over 64 KiB: the server refuses it.
        let server = ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
            .versions(v)
            .require_client_auth(f.ca.trust())
            .build(now())
            .unwrap()
            .into_set();
        let client = ClientPolicy::builder(f.ca.trust())
            .client_cert(oversized_chain(&f, &f.client_id), f.client_id.key())
            .build(now())
            .unwrap();
        let r = drive(&server, &client);
        assert_alert_on_the_wire(
            &format!("server {v:?}"),
            r.server_error.as_ref(),
            r.client_error.as_ref(),
            &r.server_sent,
            Alert::DecodeError,
        );
        if v == Versions::Tls12Only {
            assert_eq!(plaintext_alerts(&r.server_sent), vec![Alert::DecodeError]);
        }
    }
}

#[test]
fn reported_alert_is_the_alert_on_the_wire_for_policy_refusals() {
    let f = fixture();
    let rogue = Ca::new("Rogue CA").issue(&LeafSpec::client("mallory"));
    let revoked = f.ca.issue(&LeafSpec::client("revoked-co"));
    let crl = f.ca.crl(&[revoked.serial], 7);
    let mtls = || {
        ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
            .require_client_auth(f.ca.trust())
    };
    let with =
        |id: &Identity| ClientPolicy::builder(f.ca.trust()).client_cert(id.chain.clone(), id.key());
    let cases = [
        (
            "no client certificate",
            mtls(),
            ClientPolicy::builder(f.ca.trust()),
        ),
        ("unknown CA", mtls(), with(&rogue)),
        (
            "revoked",
            mtls().revocation(Revocation::with_crls(vec![crl])),
            with(&revoked),
        ),
        (
            "identity denied",
            mtls().allow(IdentityRule::CommonName("someone-else".into())),
            with(&f.client_id),
        ),
    ];
    for (what, s, c) in cases {
        for v in [Versions::Tls13Only, Versions::Tls12Only] {
            let server = s.clone().versions(v).build(now()).unwrap().into_set();
            let r = drive(&server, &c.clone().build(now()).unwrap());
            let se = r.server_error.as_ref().expect("refused");
            let expect = se.alert_sent().expect("an alert");
            assert_alert_on_the_wire(
                &format!("{what} {v:?}"),
                Some(se),
                r.client_error.as_ref(),
                &r.server_sent,
                expect,
            );
        }
    }
}

/// A bare rustls client with a key log, restricted to TLS 1.3 with AES-128-GCM, whose
/// second flight is replaced by handshake messages we encrypt ourselves.
mod bare {
    use super::*;
    use rustls::pki_types::ServerName;

    #[derive(Debug, Default)]
    struct Secrets(Mutex<Vec<(String, Vec<u8>)>>);

    impl rustls::KeyLog for Secrets {
        fn log(&self, label: &str, _random: &[u8], secret: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push((label.to_string(), secret.to_vec()));
        }
    }

    struct Len(usize);

    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }

    /// HKDF-Expand-Label (RFC 8446 7.1) with an empty context, SHA-256.
    fn expand_label(secret: &[u8], label: &str, len: usize) -> Vec<u8> {
        let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret);
        let full = format!("tls13 {label}");
        let mut info = (len as u16).to_be_bytes().to_vec();
        info.push(full.len() as u8);
        info.extend_from_slice(full.as_bytes());
        info.push(0);
        let mut out = vec![0; len];
        prk.expand(&[&info], Len(len))
            .unwrap()
            .fill(&mut out)
            .unwrap();
        out
    }

    /// Encrypt a handshake message as TLS 1.3 records under `secret`, fragmented at 16 KiB.
    fn encrypt(secret: &[u8], message: &[u8]) -> Vec<u8> {
        let key = expand_label(secret, "key", 16);
        let iv = expand_label(secret, "iv", 12);
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key).unwrap(),
        );
        let mut wire = Vec::new();
        for (seq, chunk) in message.chunks(16_383).enumerate() {
            let mut inner = chunk.to_vec();
            inner.push(22); // content type: handshake
            let len = inner.len() + 16;
            let header = [23, 3, 3, (len >> 8) as u8, len as u8];
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&iv);
            for (n, s) in nonce[4..].iter_mut().zip((seq as u64).to_be_bytes()) {
                *n ^= s;
            }
            key.seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(header),
                &mut inner,
            )
            .unwrap();
            wire.extend_from_slice(&header);
            wire.extend_from_slice(&inner);
        }
        wire
    }

    /// Run a TLS 1.3 handshake against `server` up to the client's Finished, send
    /// `finished` (a whole handshake message) instead, and return the server's error and
    /// the error the bare client gets from what the server sent back.
    pub(super) fn send_finished(
        f: &Fixture,
        server: &ServerPolicies,
        finished: &[u8],
    ) -> (Option<Error>, Option<rustls::Error>, Vec<u8>) {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(f.ca.der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let secrets = Arc::new(Secrets::default());
        cfg.key_log = secrets.clone();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut s = Session::server(server, now());
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        feed(&mut s, &hello);
        s.process(now(), |_| {}).unwrap();
        let flight = s.transmit().to_vec();
        s.transmitted(flight.len());
        c.read_tls(&mut &flight[..]).unwrap();
        c.process_new_packets().unwrap();
        let secret = secrets
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(l, _)| l == "CLIENT_HANDSHAKE_TRAFFIC_SECRET")
            .map(|(_, s)| s.clone())
            .expect("client handshake secret");
        feed(&mut s, &encrypt(&secret, finished));
        let se = s.process(now(), |_| {}).err();
        let back = s.transmit().to_vec();
        s.transmitted(back.len());
        c.read_tls(&mut &back[..]).unwrap();
        let ce = c.process_new_packets().err();
        (se, ce, back)
    }
}

fn tls13_server(f: &Fixture) -> ServerPolicies {
    ServerPolicy::builder(f.server_id.chain.clone(), f.server_id.key())
        .versions(Versions::Tls13Only)
        .cipher_suites(&[CipherSuite::Tls13Aes128GcmSha256])
        .build(now())
        .unwrap()
        .into_set()
}

#[test]
fn wrong_tls13_finished_is_reported_as_the_decrypt_error_alert_that_was_sent() {
    // rustls answers a Finished that does not verify with decrypt_error, encrypted; the
    // session used to report bad_record_mac (its guess for the same rustls error).
    let f = fixture();
    let mut finished = vec![20, 0, 0, 32];
    finished.extend_from_slice(&[0u8; 32]);
    let (se, ce, _) = bare::send_finished(&f, &tls13_server(&f), &finished);
    let se = se.expect("refused");
    assert_eq!(
        ce,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::DecryptError
        ))
    );
    assert_eq!(se.alert_sent(), Some(Alert::DecryptError), "{se}");
}

#[test]
fn oversized_tls13_finished_gets_an_encrypted_decode_error() {
    // As tlsfuzzer's test-tls13-finished: a Finished padded to 128 KiB.
    let f = fixture();
    let len = 32 + 0x20000;
    let mut finished = vec![20, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    finished.resize(4 + len, 0);
    let (se, ce, back) = bare::send_finished(&f, &tls13_server(&f), &finished);
    let se = se.expect("refused");
    assert_eq!(se.alert_sent(), Some(Alert::DecodeError), "{se}");
    assert_eq!(
        ce,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::DecodeError
        ))
    );
    assert!(plaintext_alerts(&back).is_empty(), "the alert is encrypted");
}
