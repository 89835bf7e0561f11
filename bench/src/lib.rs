//! Shared set-up for the benchmarks: a generated PKI, engine policies and equivalent bare
//! rustls configurations (same ring provider, same suite order, same ticket count), and
//! in-memory drivers that run one handshake to completion.

use std::sync::Arc;

use onerecord_tls::pki::{Certificate, PrivateKey};
use onerecord_tls::{
    ClientPolicy, ServerPolicies, ServerPolicy, Session, Time, TrustStore, Versions,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::crypto::ring as ring_provider;

/// Key type of the server certificate.
#[derive(Clone, Copy, Debug)]
pub enum ServerKey {
    /// ECDSA P-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// Certificates for one scenario.
pub struct Pki {
    /// CA certificate PEM.
    pub ca_pem: String,
    /// Server chain.
    pub server_chain: Vec<Certificate<'static>>,
    /// Server key (PKCS#8 DER).
    pub server_key: Vec<u8>,
    /// Client chain.
    pub client_chain: Vec<Certificate<'static>>,
    /// Client key (PKCS#8 DER).
    pub client_key: Vec<u8>,
}

impl Pki {
    /// A CA, a `localhost` server certificate with `key`, and an ECDSA client certificate.
    pub fn new(key: ServerKey) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.distinguished_name.push(DnType::CommonName, "bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let skey = match key {
            ServerKey::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            ServerKey::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
        .expect("server key");
        let scert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&skey, &ca)
            .expect("cert");
        let ckey = KeyPair::generate().expect("client key");
        let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
        cp.distinguished_name.push(DnType::CommonName, "acme");
        cp.subject_alt_names.push(SanType::URI(
            "https://onerecord.example/acme".try_into().expect("uri"),
        ));
        let ccert = cp.signed_by(&ckey, &ca).expect("client cert");
        Self {
            ca_pem: ca.pem(),
            server_chain: vec![scert.der().clone()],
            server_key: skey.serialize_der(),
            client_chain: vec![ccert.der().clone()],
            client_key: ckey.serialize_der(),
        }
    }

    fn key(der: &[u8]) -> PrivateKey<'static> {
        PrivateKey::Pkcs8(der.to_vec().into())
    }

    /// Engine server policy.
    pub fn engine_server(&self, mtls: bool, versions: Versions) -> ServerPolicies {
        let mut b = ServerPolicy::builder(self.server_chain.clone(), Self::key(&self.server_key))
            .versions(versions);
        if mtls {
            b = b.require_client_auth(self.trust());
        }
        b.build(Time::now()).expect("server policy").into_set()
    }

    /// Engine client policy.
    pub fn engine_client(&self, mtls: bool, versions: Versions, resume: bool) -> ClientPolicy {
        let mut b = ClientPolicy::builder(self.trust()).versions(versions);
        if mtls {
            b = b.client_cert(self.client_chain.clone(), Self::key(&self.client_key));
        }
        if !resume {
            b = b.session_cache(None);
        }
        b.build(Time::now()).expect("client policy")
    }

    fn trust(&self) -> TrustStore {
        TrustStore::from_pem(self.ca_pem.as_bytes()).expect("trust")
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in
            onerecord_tls::pki::certificates_from_pem(self.ca_pem.as_bytes(), "ca").expect("ca")
        {
            roots.add(c).expect("root");
        }
        Arc::new(roots)
    }

    /// Bare rustls server config equivalent to [`Pki::engine_server`].
    pub fn rustls_server(&self, mtls: bool, versions: Versions) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(provider());
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls_versions(versions))
            .expect("versions");
        let b = if mtls {
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots(), provider)
                    .build()
                    .expect("verifier"),
            )
        } else {
            b.with_no_client_auth()
        };
        let mut cfg = b
            .with_single_cert(self.server_chain.clone(), Self::key(&self.server_key))
            .expect("cert");
        cfg.ticketer = ring_provider::Ticketer::new().expect("ticketer");
        cfg.ignore_client_order = true;
        Arc::new(cfg)
    }

    /// Bare rustls client config equivalent to [`Pki::engine_client`].
    pub fn rustls_client(
        &self,
        mtls: bool,
        versions: Versions,
        resume: bool,
    ) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(rustls_versions(versions))
            .expect("versions")
            .with_root_certificates(self.roots());
        let mut cfg = if mtls {
            b.with_client_auth_cert(self.client_chain.clone(), Self::key(&self.client_key))
                .expect("client cert")
        } else {
            b.with_no_client_auth()
        };
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(cfg)
    }
}

/// ring's provider with the same suite order the engine uses (SHA-256 suites first), so the
/// comparison measures the engine, not a different cipher.
pub fn provider() -> rustls::crypto::CryptoProvider {
    use ring_provider::cipher_suite as cs;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..ring_provider::default_provider()
    }
}

static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];

fn rustls_versions(v: Versions) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match v {
        Versions::Tls13Only => &TLS13,
        Versions::Tls12Only => &TLS12,
        _ => rustls::ALL_VERSIONS,
    }
}

/// One engine handshake in memory; returns whether it resumed.
pub fn engine_handshake(server: &ServerPolicies, client: &ClientPolicy, now: Time) -> bool {
    let mut s = Session::server(server, now);
    let mut c = Session::client(client, "localhost", now).expect("client");
    for _ in 0..16 {
        c.process(now, |_| {}).expect("client");
        let n = s.receive(c.transmit());
        c.transmitted(n);
        s.process(now, |_| {}).expect("server");
        let m = c.receive(s.transmit());
        s.transmitted(m);
        if n == 0 && m == 0 && s.is_established() && c.is_established() {
            break;
        }
    }
    assert!(s.is_established() && c.is_established());
    s.peer_identity().is_some_and(|p| p.resumed())
}

/// One bare rustls (buffered API) handshake in memory; returns whether it resumed.
pub fn rustls_handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> bool {
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
    let mut c =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().expect("name"))
            .expect("client");
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..16 {
        buf.clear();
        c.write_tls(&mut buf).expect("write");
        let moved_a = buf.len();
        s.read_tls(&mut buf.as_slice()).expect("read");
        s.process_new_packets().expect("server");
        buf.clear();
        s.write_tls(&mut buf).expect("write");
        let moved_b = buf.len();
        c.read_tls(&mut buf.as_slice()).expect("read");
        c.process_new_packets().expect("client");
        if moved_a == 0 && moved_b == 0 && !s.is_handshaking() && !c.is_handshaking() {
            break;
        }
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
    s.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}
