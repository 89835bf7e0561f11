//! Seed-corpus generator: records real handshakes between the core's client and server
//! (TLS 1.3, TLS 1.2, mTLS, resumption, HelloRetryRequest, a revoked client) and writes each
//! side's flights as seeds in every target's input format, plus PEM/DER certificates, keys
//! and CRLs made with rcgen.
//!
//! Usage: `gen-corpus DIR` writes `DIR/<target>/<name>` (created if missing, overwritten).
//! Nothing it writes is checked in; `scripts/fuzz-smoke.sh` runs it before fuzzing.

use std::fs;
use std::path::{Path, PathBuf};

use onerecord_tls::{ClientPolicy, Session};
use onerecord_tls_fuzz::drive::{Op, Script};
use onerecord_tls_fuzz::pair::{Action, Mutation, Scenario};
use onerecord_tls_fuzz::pki::{self, ClientKind, ServerKind};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

/// The flights of one recorded exchange, in order.
struct Recording {
    /// Client-to-server flights.
    client: Vec<Vec<u8>>,
    /// Server-to-client flights.
    server: Vec<Vec<u8>>,
}

/// Run a clean exchange and keep every flight.
fn record(server_kind: ServerKind, client: &ClientPolicy) -> Recording {
    let now = pki::now();
    let mut s = Session::server(pki::server_policies(server_kind), now);
    let mut c = Session::client(client, pki::SERVER_NAME, now).expect("client");
    let mut rec = Recording {
        client: Vec::new(),
        server: Vec::new(),
    };
    let mut sent_request = false;
    for _ in 0..16 {
        let _ = c.process(now, |_| {});
        if c.is_established() && !sent_request {
            let _ = c.send(b"GET / HTTP/1.1\r\n\r\n");
            sent_request = true;
        }
        let out = c.transmit().to_vec();
        c.transmitted(out.len());
        if !out.is_empty() {
            let _ = s.receive(&out);
            rec.client.push(out);
        }
        let mut got = false;
        let _ = s.process(now, |e| got |= matches!(e, onerecord_tls::Event::Data(_)));
        if got {
            let _ = s.send(b"HTTP/1.1 204 No Content\r\n\r\n");
            s.close();
        }
        let out = s.transmit().to_vec();
        s.transmitted(out.len());
        if !out.is_empty() {
            let _ = c.receive(&out);
            rec.server.push(out);
        }
        if s.is_terminal() || (rec.client.len() > 4 && rec.server.len() > 4) {
            break;
        }
    }
    rec
}

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        fs::write(dir.join(name), bytes).expect("write seed");
        self.count += 1;
    }
}

/// Extra certificates with other key types and every SAN kind, for the parsers.
fn extra_certs() -> Vec<(String, Vec<u8>, String, String)> {
    let mut v = Vec::new();
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let mut p = CertificateParams::new(vec!["gw.onerecord.example".to_string()]).expect("p");
        p.distinguished_name.push(DnType::CommonName, "ACME Cargo");
        p.distinguished_name.push(DnType::OrganizationName, "ACME");
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "ops");
        p.subject_alt_names.extend([
            SanType::URI(
                "https://onerecord.example/logistics-agents/acme"
                    .to_string()
                    .try_into()
                    .expect("uri"),
            ),
            SanType::Rfc822Name("ops@acme.example".to_string().try_into().expect("email")),
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            SanType::IpAddress("::1".parse().expect("ip6")),
        ]);
        let key = KeyPair::generate_for(alg).expect("key");
        let cert = p.self_signed(&key).expect("cert");
        v.push((
            name.to_string(),
            cert.der().to_vec(),
            cert.pem(),
            key.serialize_pem(),
        ));
    }
    v
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("seeds").to_path_buf());
    let mut out = Out { root, count: 0 };
    let pki = pki::pki();

    // Recorded exchanges: (name, server kind, client kind, resumed second connection).
    let cases = [
        ("tls13", ServerKind::Plain, ClientKind::Plain, false),
        ("tls12", ServerKind::Tls12Only, ClientKind::Plain, false),
        (
            "tls13-mtls",
            ServerKind::MtlsRequired,
            ClientKind::WithCert,
            false,
        ),
        (
            "tls12-mtls",
            ServerKind::MtlsRequired,
            ClientKind::Tls12WithCert,
            false,
        ),
        (
            "tls13-mtls-optional",
            ServerKind::MtlsOptional,
            ClientKind::WithCert,
            false,
        ),
        (
            "tls13-only-mtls",
            ServerKind::Tls13Mtls,
            ClientKind::WithCert,
            false,
        ),
        ("tls13-hrr", ServerKind::Tls13Hrr, ClientKind::Plain, false),
        (
            "revoked",
            ServerKind::MtlsRequired,
            ClientKind::Revoked,
            false,
        ),
        ("tls13-resumed", ServerKind::Plain, ClientKind::Plain, true),
        (
            "tls12-mtls-resumed",
            ServerKind::MtlsRequired,
            ClientKind::Tls12WithCert,
            true,
        ),
    ];
    for (name, sk, ck, resumed) in cases {
        let policy = pki::client_policy(ck, 8);
        let mut rec = record(sk, &policy);
        if resumed {
            rec = record(sk, &policy);
        }
        assert!(!rec.client.is_empty() && !rec.server.is_empty(), "{name}");
        let stream: Vec<u8> = rec.client.concat();
        // (a) the server target: the client's bytes whole, per flight, byte-split, with
        // clock jumps (handshake timeout, 40 days on: the CRL has expired).
        let cfg = sk.selector();
        out.put("server_stream", name, &Script::to_bytes(cfg, &[], &stream));
        let per_flight: Vec<Op> = rec.client.iter().map(|f| Op::Feed(f.len())).collect();
        out.put(
            "server_stream",
            &format!("{name}-flights"),
            &Script::to_bytes(cfg, &per_flight, &stream),
        );
        let small: Vec<Op> = (0..24).map(|i| Op::Feed(1 + i % 7)).collect();
        out.put(
            "server_stream",
            &format!("{name}-split"),
            &Script::to_bytes(cfg, &small, &stream),
        );
        let first = rec.client[0].len();
        out.put(
            "server_stream",
            &format!("{name}-timeout"),
            &Script::to_bytes(cfg, &[Op::Feed(first), Op::Forward(10_500)], &stream),
        );
        out.put(
            "server_stream",
            &format!("{name}-days"),
            &Script::to_bytes(
                cfg,
                &[Op::Forward(40 * 86_400_000), Op::Feed(first)],
                &stream,
            ),
        );
        out.put(
            "server_stream",
            &format!("{name}-eof"),
            &Script::to_bytes(cfg, &[Op::Feed(first), Op::Eof], &stream),
        );
        // (b) the client target: the server's bytes.
        let sstream: Vec<u8> = rec.server.concat();
        let ccfg = ck.selector() | if sk == ServerKind::Tls12Only { 0 } else { 0x80 };
        out.put(
            "client_stream",
            name,
            &Script::to_bytes(ccfg, &[], &sstream),
        );
        let sflights: Vec<Op> = rec.server.iter().map(|f| Op::Feed(f.len())).collect();
        out.put(
            "client_stream",
            &format!("{name}-flights"),
            &Script::to_bytes(ccfg, &sflights, &sstream),
        );
        out.put(
            "client_stream",
            &format!("{name}-back"),
            &Script::to_bytes(ccfg, &[Op::Back(400 * 86_400_000)], &sstream),
        );
        // (g) the embedded adapter: the same scripts, server and client side.
        for sizes in [0x0fu8, 0x33, 0x1a] {
            let mut v = vec![sizes, 0];
            v.extend(Script::to_bytes(cfg, &per_flight, &stream));
            out.put("embedded_tls", &format!("{name}-server-{sizes:02x}"), &v);
            let mut v = vec![sizes, 1];
            v.extend(Script::to_bytes(ck.selector(), &sflights, &sstream));
            out.put("embedded_tls", &format!("{name}-client-{sizes:02x}"), &v);
        }
        // (d) the admission parser: the first client flight, whole and cut.
        out.put("client_hello", name, &rec.client[0]);
        out.put(
            "client_hello",
            &format!("{name}-cut"),
            &rec.client[0][..first / 2],
        );
        // (g) fixed buffers: the server script, at each size class.
        for sizes in [0u8, 5, 10, 15] {
            let mut v = vec![sizes, 0];
            v.extend(Script::to_bytes(cfg, &per_flight, &stream));
            out.put("fixed_buffers", &format!("{name}-s{sizes}"), &v);
        }
    }
    // Hand-made first flights for the parser: HTTP, SSLv2, TLS 1.0, two records.
    out.put("client_hello", "http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    out.put(
        "client_hello",
        "sslv2",
        &[0x80, 0x2e, 0x01, 0x00, 0x02, 0, 0x15],
    );
    out.put(
        "client_hello",
        "tls10",
        &[
            0x16, 3, 1, 0, 0x2d, 1, 0, 0, 0x29, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x2f, 1, 0,
        ],
    );

    // (c) the structure-aware target: every scenario clean, and with one mutation of each
    // kind on the first records.
    for sc in Scenario::ALL {
        let s = sc.selector();
        out.put("handshake_mutation", &format!("{sc:?}"), &[s]);
        for (i, action) in Action::ALL.iter().enumerate() {
            let m = Mutation {
                record: (i % 3) as u8,
                to_client: i % 2 == 1,
                action: *action,
                arg: 0x0123 * (i as u16 + 1),
            };
            let mut v = vec![s];
            v.extend(m.encode());
            out.put("handshake_mutation", &format!("{sc:?}-{action:?}"), &v);
            let mut f = vec![0x0f, 1];
            f.extend(&v);
            out.put("fixed_buffers", &format!("pair-{sc:?}-{action:?}"), &f);
        }
        for sizes in [0u8, 5, 10, 15] {
            out.put(
                "fixed_buffers",
                &format!("pair-{sc:?}-s{sizes}"),
                &[sizes, 1, s],
            );
        }
    }

    for cfg in 0..4u8 {
        for sizes in [0x0fu8, 0x0e, 0x07, 0x3d, 0x21] {
            out.put(
                "embedded_tls",
                &format!("pair-{cfg}-{sizes:02x}"),
                &[sizes, 2, cfg],
            );
        }
    }

    // (e) PEM and policy loading; (f) DER certificates.
    let bundle = [
        pki.ca_pem.as_str(),
        pki.server.pem.as_str(),
        pki.server.key_pem.as_str(),
        pki.crl_pem.as_str(),
    ]
    .concat();
    let with = |sel: u8, b: &[u8]| [&[sel][..], b].concat();
    out.put("pem_policy", "ca", &with(0, pki.ca_pem.as_bytes()));
    out.put("pem_policy", "key", &with(1, pki.server.key_pem.as_bytes()));
    out.put(
        "pem_policy",
        "client-key",
        &with(1, pki.client.key_pem.as_bytes()),
    );
    out.put("pem_policy", "crl-pem", &with(2, pki.crl_pem.as_bytes()));
    out.put("pem_policy", "crl-der", &with(2, &pki.crl));
    let chain = [pki.server.pem.as_str(), pki.ca_pem.as_str()].concat();
    out.put("pem_policy", "chain", &with(3, chain.as_bytes()));
    out.put("pem_policy", "tickets", &with(4, &[7u8; 96]));
    out.put("pem_policy", "bundle", &with(5, bundle.as_bytes()));
    for (name, der) in [
        ("ca", pki.ca_der.to_vec()),
        ("server", pki.server.der.to_vec()),
        ("client", pki.client.der.to_vec()),
        ("revoked", pki.revoked.der.to_vec()),
    ] {
        out.put("cert_info", name, &der);
    }
    for (name, der, pem, key) in extra_certs() {
        out.put("cert_info", &name, &der);
        out.put(
            "pem_policy",
            &format!("{name}-cert"),
            &with(0, pem.as_bytes()),
        );
        out.put(
            "pem_policy",
            &format!("{name}-key"),
            &with(1, key.as_bytes()),
        );
        out.put(
            "pem_policy",
            &format!("{name}-chain"),
            &with(3, pem.as_bytes()),
        );
    }
    println!("wrote {} seeds under {}", out.count, out.root.display());
}
