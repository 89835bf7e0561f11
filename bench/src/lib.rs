//! Shared set-up for the benchmarks: a generated PKI, engine policies and equivalent bare
//! rustls configurations (same ring provider, same suite order, same ticket count), named
//! scenarios, and in-memory drivers that run one handshake (or one application-data
//! exchange) to completion while a [`Meter`] times or marks one side's work.
//!
//! Each side's work is what that side would do with a socket: create its connection, copy
//! the peer's bytes in, process them, hand its own bytes out, drop the connection. The
//! in-memory transfer between the two is charged to the receiver (the copy a `read` does).
//!
//! These drivers are instruments: every step is one side's work, wrapped by the meter, and
//! nothing else (no event is recorded). The fixtures they build on come from the test kit
//! (`onerecord-tls-tests`: the key kinds), and a plain in-memory pair for tests is the kit's
//! `Pair`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onerecord_tls::{Certificate, PrivateKey};
use onerecord_tls::{CipherSuite, Tls12Resumption};
use onerecord_tls::{
    ClientPolicy, Event, ServerPolicies, ServerPolicy, Session, Time, TrustStore, Versions,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::crypto::ring as ring_provider;

/// Upper bound on flights exchanged in one in-memory handshake (a full TLS 1.2 mTLS
/// handshake needs 4 turns per side; the bound only stops a broken driver).
const MAX_TURNS: usize = 16;

/// Key type of the server certificate: the test kit's key kinds (ECDSA P-256, RSA 2048 made by
/// the `openssl` command, one key per process, Ed25519).
pub use onerecord_tls_tests::KeyKind as ServerKey;

/// How the handshake of a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// A full handshake (the client has no session).
    Full,
    /// Resumed with a ticket (TLS 1.3 PSK or TLS 1.2 RFC 5077 ticket).
    Ticket,
    /// TLS 1.2 only: resumed by session ID from the server's session cache.
    SessionId,
}

impl Resume {
    /// Short name used in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Ticket => "ticket",
            Self::SessionId => "id",
        }
    }
}

/// One handshake scenario: version, server key, client authentication, resumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// `Tls13Only` or `Tls12Only`.
    pub version: Versions,
    /// Server key type.
    pub key: ServerKey,
    /// Mutual TLS (the client presents an ECDSA P-256 certificate).
    pub mtls: bool,
    /// Full or resumed.
    pub resume: Resume,
}

impl Scenario {
    /// Every scenario: TLS 1.3 and 1.2 × three key types × with and without client auth ×
    /// full, ticket and (TLS 1.2) session ID.
    pub fn all() -> Vec<Scenario> {
        let mut v = Vec::new();
        for version in [Versions::Tls13Only, Versions::Tls12Only] {
            for key in ServerKey::ALL {
                for mtls in [false, true] {
                    for resume in [Resume::Full, Resume::Ticket, Resume::SessionId] {
                        if resume == Resume::SessionId && version != Versions::Tls12Only {
                            continue;
                        }
                        v.push(Scenario {
                            version,
                            key,
                            mtls,
                            resume,
                        });
                    }
                }
            }
        }
        v
    }

    /// The benchmark id part, e.g. `tls13_ecdsa_mtls_full`, `tls12_rsa_id`.
    pub fn name(&self) -> String {
        format!(
            "{}_{}{}_{}",
            if self.version == Versions::Tls12Only {
                "tls12"
            } else {
                "tls13"
            },
            self.key.name(),
            if self.mtls { "_mtls" } else { "" },
            self.resume.name()
        )
    }

    /// The scenario named `name` (see [`Scenario::name`]).
    pub fn parse(name: &str) -> Option<Scenario> {
        Self::all().into_iter().find(|s| s.name() == name)
    }

    /// `true` when the handshake is expected to resume.
    pub fn resumes(&self) -> bool {
        self.resume != Resume::Full
    }
}

/// Certificates for one server key type.
pub struct Pki {
    /// CA certificate PEM (ECDSA P-256 CA).
    pub ca_pem: String,
    /// Server chain.
    pub server_chain: Vec<Certificate<'static>>,
    /// Server key (PKCS#8 DER).
    pub server_key: Vec<u8>,
    /// Client chain.
    pub client_chain: Vec<Certificate<'static>>,
    /// Client key (PKCS#8 DER, ECDSA P-256).
    pub client_key: Vec<u8>,
}

impl Pki {
    /// A CA, a `localhost` server certificate with `key`, and an ECDSA client certificate.
    ///
    /// The certificates keep rcgen's minimal defaults, not the fuller ones the kit's
    /// [`onerecord_tls_tests::Ca`] issues (names, key usages, authority key identifier):
    /// those cost about 1% more instructions per handshake, and the instruction counts of
    /// `scripts/callgrind.sh` are compared with earlier measurements.
    pub fn new(key: ServerKey) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.distinguished_name.push(DnType::CommonName, "bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let skey = key.generate();
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
        self.engine_client_builder(mtls, versions, resume)
            .build(Time::now())
            .expect("client policy")
    }

    fn engine_client_builder(
        &self,
        mtls: bool,
        versions: Versions,
        resume: bool,
    ) -> onerecord_tls::ClientPolicyBuilder {
        let mut b = ClientPolicy::builder(self.trust()).versions(versions);
        if mtls {
            b = b.client_cert(self.client_chain.clone(), Self::key(&self.client_key));
        }
        if !resume {
            b = b.session_cache(None);
        }
        b
    }

    /// Engine policies for `sc`.
    pub fn engine(&self, sc: &Scenario) -> EngineCase {
        let mut cb = self.engine_client_builder(sc.mtls, sc.version, sc.resumes());
        if sc.resume == Resume::SessionId {
            cb = cb.tls12_resumption(Tls12Resumption::SessionIdOnly);
        }
        EngineCase {
            server: self.engine_server(sc.mtls, sc.version),
            client: cb.build(Time::now()).expect("client policy"),
            now: Time::now(),
        }
    }

    /// Engine policies for `sc` negotiating only `aead` (TLS 1.3), no resumption.
    pub fn engine_with_aead(&self, sc: &Scenario, aead: Aead) -> EngineCase {
        let suite = [aead.engine_suite()];
        let mut sb = ServerPolicy::builder(self.server_chain.clone(), Self::key(&self.server_key))
            .versions(sc.version)
            .cipher_suites(&suite);
        if sc.mtls {
            sb = sb.require_client_auth(self.trust());
        }
        EngineCase {
            server: sb.build(Time::now()).expect("server policy").into_set(),
            client: self
                .engine_client_builder(sc.mtls, sc.version, false)
                .cipher_suites(&suite)
                .build(Time::now())
                .expect("client policy"),
            now: Time::now(),
        }
    }

    /// Bare rustls configurations for `sc`.
    pub fn rustls(&self, sc: &Scenario) -> RustlsCase {
        let p = Arc::new(provider());
        let mut client = self.rustls_client_with(p.clone(), sc.mtls, sc.version, sc.resumes());
        if sc.resume == Resume::SessionId {
            client.resumption = client
                .resumption
                .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        }
        RustlsCase {
            server: Arc::new(self.rustls_server_with(p, sc.mtls, sc.version)),
            client: Arc::new(client),
        }
    }

    /// Bare rustls configurations for `sc` negotiating only `aead` (TLS 1.3), no resumption.
    pub fn rustls_with_aead(&self, sc: &Scenario, aead: Aead) -> RustlsCase {
        let p = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![aead.rustls_suite()],
            ..provider()
        });
        RustlsCase {
            server: Arc::new(self.rustls_server_with(p.clone(), sc.mtls, sc.version)),
            client: Arc::new(self.rustls_client_with(p, sc.mtls, sc.version, false)),
        }
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
        Arc::new(self.rustls_server_with(Arc::new(provider()), mtls, versions))
    }

    fn rustls_server_with(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
        mtls: bool,
        versions: Versions,
    ) -> rustls::ServerConfig {
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
        cfg
    }

    /// Bare rustls client config equivalent to [`Pki::engine_client`].
    pub fn rustls_client(
        &self,
        mtls: bool,
        versions: Versions,
        resume: bool,
    ) -> Arc<rustls::ClientConfig> {
        Arc::new(self.rustls_client_with(Arc::new(provider()), mtls, versions, resume))
    }

    fn rustls_client_with(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
        mtls: bool,
        versions: Versions,
        resume: bool,
    ) -> rustls::ClientConfig {
        let b = rustls::ClientConfig::builder_with_provider(provider)
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
        cfg
    }
}

/// The TLS 1.3 AEADs of the application-data benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aead {
    /// TLS_AES_128_GCM_SHA256.
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384.
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256.
    Chacha20Poly1305,
}

impl Aead {
    /// Every AEAD, in report order.
    pub const ALL: [Aead; 3] = [Self::Aes128Gcm, Self::Aes256Gcm, Self::Chacha20Poly1305];

    /// Short name used in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "aes128gcm",
            Self::Aes256Gcm => "aes256gcm",
            Self::Chacha20Poly1305 => "chacha20",
        }
    }

    fn engine_suite(self) -> CipherSuite {
        match self {
            Self::Aes128Gcm => CipherSuite::Tls13Aes128GcmSha256,
            Self::Aes256Gcm => CipherSuite::Tls13Aes256GcmSha384,
            Self::Chacha20Poly1305 => CipherSuite::Tls13Chacha20Poly1305Sha256,
        }
    }

    fn rustls_suite(self) -> rustls::SupportedCipherSuite {
        use ring_provider::cipher_suite as cs;
        match self {
            Self::Aes128Gcm => cs::TLS13_AES_128_GCM_SHA256,
            Self::Aes256Gcm => cs::TLS13_AES_256_GCM_SHA384,
            Self::Chacha20Poly1305 => cs::TLS13_CHACHA20_POLY1305_SHA256,
        }
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

/// Which side's work a [`Meter`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server (or, for application data, the receiver).
    Server,
    /// The client (or, for application data, the sender).
    Client,
}

impl Side {
    /// `server` or `client`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// Wraps every piece of one side's work in a driver, so that it can be timed (criterion) or
/// marked for an instruction counter (callgrind's `--toggle-collect`).
pub trait Meter {
    /// Server work.
    fn server<R>(&mut self, f: impl FnOnce() -> R) -> R;
    /// Client work.
    fn client<R>(&mut self, f: impl FnOnce() -> R) -> R;
}

/// Measures nothing.
pub struct Unmetered;

impl Meter for Unmetered {
    fn server<R>(&mut self, f: impl FnOnce() -> R) -> R {
        f()
    }
    fn client<R>(&mut self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Adds up the wall time of one side's work (single-threaded, so it is that side's CPU).
pub struct Timer {
    side: Side,
    /// Time accumulated so far.
    pub elapsed: Duration,
}

impl Timer {
    /// A timer for `side`.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            elapsed: Duration::ZERO,
        }
    }

    fn time<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.elapsed += t.elapsed();
        r
    }
}

impl Meter for Timer {
    fn server<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.side == Side::Server {
            self.time(f)
        } else {
            f()
        }
    }
    fn client<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.side == Side::Client {
            self.time(f)
        } else {
            f()
        }
    }
}

/// Engine policies of one scenario.
pub struct EngineCase {
    /// Server policies.
    pub server: ServerPolicies,
    /// Client policy (with its session cache).
    pub client: ClientPolicy,
    /// The time every session is driven with.
    pub now: Time,
}

/// Bare rustls configurations of one scenario.
pub struct RustlsCase {
    /// Server config.
    pub server: Arc<rustls::ServerConfig>,
    /// Client config (with its resumption store).
    pub client: Arc<rustls::ClientConfig>,
}

/// Offer all of `data` to `s`, processing in between when its buffer is full.
fn engine_feed(s: &mut Session, data: &[u8], now: Time, on_data: &mut impl FnMut(usize)) {
    let mut off = 0;
    for _ in 0..MAX_TURNS {
        off += s.receive(&data[off..]);
        s.process(now, |e| {
            if let Event::Data(d) = e {
                on_data(d.len());
            }
        })
        .expect("process");
        if off == data.len() {
            return;
        }
    }
    panic!("engine did not take {} bytes", data.len());
}

/// Run an engine handshake in memory, each side's work wrapped by `m`; returns the
/// established (server, client) sessions.
pub fn engine_connect(case: &EngineCase, m: &mut impl Meter) -> (Session, Session) {
    let now = case.now;
    let mut s = m.server(|| Session::server(&case.server, now));
    let mut c = m.client(|| {
        let mut c = Session::client(&case.client, "localhost", now).expect("client");
        c.process(now, |_| {}).expect("client");
        c
    });
    // Bytes each side took from the other this turn; the sender acknowledges them
    // (`transmitted`) at the start of its next turn.
    let mut to_c = 0usize;
    for turn in 0.. {
        let to_s = m.server(|| {
            s.transmitted(to_c);
            let out = c.transmit();
            engine_feed(&mut s, out, now, &mut |_| {});
            out.len()
        });
        to_c = m.client(|| {
            c.transmitted(to_s);
            let out = s.transmit();
            engine_feed(&mut c, out, now, &mut |_| {});
            out.len()
        });
        let done = to_s == 0 && to_c == 0 && s.is_established() && c.is_established();
        if done || turn >= MAX_TURNS {
            break;
        }
    }
    assert!(
        s.is_established() && c.is_established(),
        "engine handshake did not complete"
    );
    (s, c)
}

/// One engine handshake in memory, each side's work (including creating and dropping its
/// session) wrapped by `m`; returns whether it resumed.
pub fn engine_handshake_metered(case: &EngineCase, m: &mut impl Meter) -> bool {
    let (s, c) = engine_connect(case, m);
    let resumed = s.peer_identity().is_some_and(|p| p.resumed());
    m.server(|| drop(s));
    m.client(|| drop(c));
    resumed
}

/// Move all of `from` into `conn` with `read_tls`, processing after each read (rustls reads
/// at most a few KiB per call and refuses more while plaintext is unread). Returns the
/// plaintext bytes read (into `scratch`, then dropped).
fn rustls_read_all<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    mut from: &[u8],
    scratch: &mut [u8],
) -> usize {
    let mut got = 0usize;
    for _ in 0..4 * MAX_TURNS {
        if !from.is_empty() {
            conn.read_tls(&mut from).expect("read_tls");
        }
        conn.process_new_packets().expect("process");
        while let Ok(n) = conn.reader().read(scratch) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if from.is_empty() {
            return got;
        }
    }
    panic!("rustls did not take all bytes");
}

/// Run a bare rustls (buffered API) handshake in memory, each side's work wrapped by `m`;
/// returns the established (server, client) connections.
pub fn rustls_connect(
    case: &RustlsCase,
    m: &mut impl Meter,
) -> (rustls::ServerConnection, rustls::ClientConnection) {
    let mut s = m.server(|| rustls::ServerConnection::new(case.server.clone()).expect("server"));
    let mut to_s = Vec::with_capacity(8192);
    let mut to_c = Vec::with_capacity(8192);
    let mut scratch = [0u8; 256];
    let mut c = m.client(|| {
        let mut c = rustls::ClientConnection::new(
            case.client.clone(),
            "localhost".try_into().expect("name"),
        )
        .expect("client");
        c.write_tls(&mut to_s).expect("write");
        c
    });
    for _ in 0..MAX_TURNS {
        m.server(|| {
            rustls_read_all(&mut s, &to_s, &mut scratch);
            to_c.clear();
            s.write_tls(&mut to_c).expect("write");
        });
        m.client(|| {
            rustls_read_all(&mut c, &to_c, &mut scratch);
            to_s.clear();
            c.write_tls(&mut to_s).expect("write");
        });
        if to_s.is_empty() && to_c.is_empty() && !s.is_handshaking() && !c.is_handshaking() {
            break;
        }
    }
    assert!(
        !s.is_handshaking() && !c.is_handshaking(),
        "rustls handshake did not complete"
    );
    (s, c)
}

/// One bare rustls (buffered API) handshake in memory, each side's work (including creating
/// and dropping its connection) wrapped by `m`; returns whether it resumed.
pub fn rustls_handshake_metered(case: &RustlsCase, m: &mut impl Meter) -> bool {
    let (s, c) = rustls_connect(case, m);
    let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    m.server(|| drop(s));
    m.client(|| drop(c));
    resumed
}

/// An established engine connection in memory, for application-data benchmarks.
pub struct EnginePair {
    server: Session,
    client: Session,
    now: Time,
}

impl EnginePair {
    /// Handshake `case` (unmetered).
    pub fn new(case: &EngineCase) -> Self {
        let (server, client) = engine_connect(case, &mut Unmetered);
        Self {
            server,
            client,
            now: case.now,
        }
    }

    /// The client sends `data` to the server: client work (encrypt, hand out) is
    /// [`Side::Client`], server work (copy in, decrypt, hand up) is [`Side::Server`].
    /// Returns the plaintext bytes the server got.
    pub fn send(&mut self, data: &[u8], m: &mut impl Meter) -> usize {
        let (s, c, now) = (&mut self.server, &mut self.client, self.now);
        let mut got = 0;
        let mut sent = 0;
        for _ in 0..MAX_TURNS {
            m.client(|| sent += c.send(&data[sent..]).expect("send"));
            let n = m.server(|| {
                let out = c.transmit();
                engine_feed(s, out, now, &mut |n| got += n);
                out.len()
            });
            m.client(|| c.transmitted(n));
            if sent == data.len() {
                break;
            }
        }
        assert_eq!(got, data.len(), "engine lost application data");
        got
    }

    /// One request/response round trip: the client sends `request`, the server answers
    /// `response` when the whole request arrived.
    pub fn round_trip(&mut self, request: &[u8], response: &[u8], m: &mut impl Meter) {
        let (s, c, now) = (&mut self.server, &mut self.client, self.now);
        let n = m.client(|| {
            assert_eq!(c.send(request).expect("send"), request.len());
            c.transmit().len()
        });
        let k = m.server(|| {
            let mut got = 0;
            engine_feed(s, &c.transmit()[..n], now, &mut |n| got += n);
            assert_eq!(got, request.len(), "request lost");
            assert_eq!(s.send(response).expect("send"), response.len());
            s.transmit().len()
        });
        m.client(|| {
            c.transmitted(n);
            let mut got = 0;
            engine_feed(c, &s.transmit()[..k], now, &mut |n| got += n);
            assert_eq!(got, response.len(), "response lost");
        });
        m.server(|| s.transmitted(k));
    }
}

/// An established bare rustls (buffered API) connection in memory.
pub struct RustlsPair {
    server: rustls::ServerConnection,
    client: rustls::ClientConnection,
    wire: Vec<u8>,
    scratch: Vec<u8>,
}

impl RustlsPair {
    /// Handshake `case` (unmetered).
    pub fn new(case: &RustlsCase) -> Self {
        let (server, client) = rustls_connect(case, &mut Unmetered);
        Self {
            server,
            client,
            wire: Vec::with_capacity(4 * 18_432),
            scratch: vec![0; 16_384],
        }
    }

    /// Same as [`EnginePair::send`]; the server reads the plaintext into a scratch buffer
    /// (the buffered API copies it out).
    pub fn send(&mut self, data: &[u8], m: &mut impl Meter) -> usize {
        let (s, c) = (&mut self.server, &mut self.client);
        let (wire, scratch) = (&mut self.wire, &mut self.scratch);
        m.client(|| {
            c.writer().write_all(data).expect("write");
            wire.clear();
            for _ in 0..MAX_TURNS {
                if !c.wants_write() {
                    break;
                }
                c.write_tls(wire).expect("write_tls");
            }
        });
        let got = m.server(|| rustls_read_all(s, wire, scratch));
        assert_eq!(got, data.len(), "rustls lost application data");
        got
    }

    /// Same as [`EnginePair::round_trip`].
    pub fn round_trip(&mut self, request: &[u8], response: &[u8], m: &mut impl Meter) {
        let (s, c) = (&mut self.server, &mut self.client);
        let (wire, scratch) = (&mut self.wire, &mut self.scratch);
        m.client(|| {
            c.writer().write_all(request).expect("write");
            wire.clear();
            c.write_tls(wire).expect("write_tls");
        });
        m.server(|| {
            let got = rustls_read_all(s, wire, scratch);
            assert_eq!(got, request.len(), "request lost");
            s.writer().write_all(response).expect("write");
            wire.clear();
            s.write_tls(wire).expect("write_tls");
        });
        m.client(|| {
            let got = rustls_read_all(c, wire, scratch);
            assert_eq!(got, response.len(), "response lost");
        });
    }
}
