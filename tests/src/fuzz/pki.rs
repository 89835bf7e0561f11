//! A deterministic test PKI and the policies the fuzz targets run against.
//!
//! Every key is Ed25519 from a fixed seed and every field of every certificate and CRL is
//! fixed, so the generator that records seed handshakes and the targets that replay them
//! agree byte for byte (a recorded TLS 1.2 client certificate flight verifies in the target,
//! a recorded ticket decrypts with the same ticket keys). Test material only: the keys are
//! public by construction.

use std::sync::OnceLock;
use std::time::Duration;

use onerecord_tls::{Certificate, Crl, PrivateKey};
use onerecord_tls::{
    ClientAuth, ClientPolicy, ClientSessionCache, Group, IdentityRule, Revocation, ServerPolicies,
    ServerPolicy, TicketKeys, Time, TrustStore, UnknownStatus, Versions,
};
use pki_types::PrivatePkcs8KeyDer;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// The fixed "now" of every target: 2026-06-01T00:00:00Z (inside every validity window).
pub const NOW_SECS: u64 = 1_780_272_000;

/// The fixed now as a [`Time`].
pub fn now() -> Time {
    Time::from_unix_secs(NOW_SECS)
}

/// The server name every client asks for.
pub const SERVER_NAME: &str = "localhost";

/// URI SAN prefix of the client certificates (ONE Record IDs).
pub const URI_PREFIX: &str = "https://onerecord.example/logistics-agents/";

/// Fixed ticket keys (one 48-byte record): a recorded ticket decrypts in every process.
const TICKET_KEYS: [u8; 48] = *b"onerecord-fuzz-ticket-key-name+aes256gcm-key-32b";

/// An Ed25519 key pair from a fixed seed (PKCS#8 v1 around the 32-byte seed).
fn ed25519(seed: u8) -> KeyPair {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend((0u8..32).map(|i| seed.wrapping_mul(31).wrapping_add(i)));
    let key = PrivateKey::Pkcs8(PrivatePkcs8KeyDer::from(der));
    KeyPair::try_from(&key).expect("ed25519 seed key")
}

/// A certificate and its key.
pub struct Leaf {
    /// DER certificate.
    pub der: Certificate<'static>,
    /// PEM certificate.
    pub pem: String,
    /// PKCS#8 key, DER.
    pub key_der: Vec<u8>,
    /// PKCS#8 key, PEM.
    pub key_pem: String,
}

impl Leaf {
    /// The key as the policy builders take it.
    pub fn key(&self) -> PrivateKey<'static> {
        PrivateKey::Pkcs8(self.key_der.clone().into())
    }
}

/// The test PKI: one CA, a server leaf, two client leaves (one revoked) and a CRL.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: Certificate<'static>,
    /// `localhost` server certificate.
    pub server: Leaf,
    /// Client certificate `acme` (URI SAN under [`URI_PREFIX`]).
    pub client: Leaf,
    /// Client certificate `revoked`, listed on the CRL.
    pub revoked: Leaf,
    /// The CA's CRL (revokes [`Pki::revoked`]), DER.
    pub crl: Crl,
    /// The same CRL, PEM.
    pub crl_pem: String,
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    seed: u8,
    serial: u64,
    cn: &str,
    sans: Vec<SanType>,
    client: bool,
) -> Leaf {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "ONE Record Fuzz Org");
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "cargo");
    p.subject_alt_names = sans;
    p.serial_number = Some(SerialNumber::from(serial));
    p.not_before = date_time_ymd(2026, 1, 1);
    p.not_after = date_time_ymd(2027, 1, 1);
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = ed25519(seed);
    let cert = p.signed_by(&key, issuer).expect("leaf");
    Leaf {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    /// Build the PKI (deterministic: the same bytes every time).
    pub fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, "onerecord-tls fuzz CA");
        p.distinguished_name
            .push(DnType::OrganizationName, "onerecord-tls fuzz");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(SerialNumber::from(1u64));
        p.not_before = date_time_ymd(2025, 1, 1);
        p.not_after = date_time_ymd(2035, 1, 1);
        p.key_identifier_method = KeyIdMethod::Sha256;
        let ca = CertifiedIssuer::self_signed(p, ed25519(1)).expect("ca");
        let dns = |s: &str| SanType::DnsName(s.to_string().try_into().expect("dns"));
        let uri = |s: String| SanType::URI(s.try_into().expect("uri"));
        let server = leaf(&ca, 2, 2, SERVER_NAME, vec![dns(SERVER_NAME)], false);
        let client = leaf(
            &ca,
            3,
            3,
            "acme",
            vec![uri(format!("{URI_PREFIX}acme"))],
            true,
        );
        let revoked = leaf(
            &ca,
            4,
            4,
            "revoked",
            vec![uri(format!("{URI_PREFIX}revoked"))],
            true,
        );
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 5, 1),
            next_update: date_time_ymd(2026, 7, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(4u64),
                revocation_time: date_time_ymd(2026, 5, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("crl");
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server,
            client,
            revoked,
            crl_pem: crl.pem().expect("crl pem"),
            crl: crl.der().clone(),
        }
    }

    /// A trust store with the CA.
    pub fn trust(&self) -> TrustStore {
        TrustStore::from_pem(self.ca_pem.as_bytes()).expect("trust store")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared PKI (built once per process).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

/// Server policy variants, selected by a target's configuration byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// TLS 1.3 and 1.2, no client certificate.
    Plain,
    /// mTLS required, CRL checked (unknown status allowed), URI allow-rule.
    MtlsRequired,
    /// Client certificate optional.
    MtlsOptional,
    /// TLS 1.3 only, mTLS required.
    Tls13Mtls,
    /// TLS 1.2 only, no client certificate, only P-384 (a TLS 1.3 client then gets a
    /// HelloRetryRequest when that version is on).
    Tls12Only,
    /// TLS 1.3 only, P-384 only: every default client gets a HelloRetryRequest.
    Tls13Hrr,
}

impl ServerKind {
    /// All variants, in selector order.
    pub const ALL: [Self; 6] = [
        Self::Plain,
        Self::MtlsRequired,
        Self::MtlsOptional,
        Self::Tls13Mtls,
        Self::Tls12Only,
        Self::Tls13Hrr,
    ];

    /// The variant for a selector byte.
    pub fn from_selector(b: u8) -> Self {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    /// The selector byte of this variant.
    pub fn selector(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    /// `true` when the server asks for a client certificate.
    pub fn wants_client_cert(self) -> bool {
        matches!(
            self,
            Self::MtlsRequired | Self::MtlsOptional | Self::Tls13Mtls
        )
    }
}

/// A server policy of the given kind (fresh: its own clock and session cache).
pub fn server_policy(kind: ServerKind) -> ServerPolicy {
    let pki = pki();
    let keys = TicketKeys::from_bytes(&TICKET_KEYS, Duration::from_secs(86_400)).expect("keys");
    let mut b = ServerPolicy::builder(vec![pki.server.der.clone()], pki.server.key())
        .tickets(Some(keys))
        .session_cache(None);
    let crl = Revocation {
        unknown_status: UnknownStatus::Allow,
        ..Revocation::with_crls(vec![pki.crl.clone()])
    };
    b = match kind {
        ServerKind::Plain => b,
        ServerKind::MtlsRequired => b
            .client_auth(ClientAuth::Required(pki.trust()))
            .revocation(crl)
            .allow(IdentityRule::UriPrefix(URI_PREFIX.into())),
        ServerKind::MtlsOptional => b.client_auth(ClientAuth::Optional(pki.trust())),
        ServerKind::Tls13Mtls => b
            .versions(Versions::Tls13Only)
            .client_auth(ClientAuth::Required(pki.trust())),
        ServerKind::Tls12Only => b.versions(Versions::Tls12Only).groups(&[Group::P384]),
        ServerKind::Tls13Hrr => b.versions(Versions::Tls13Only).groups(&[Group::P384]),
    };
    b.build(now()).expect("server policy")
}

/// The shared server policy set of each kind (built once per process).
pub fn server_policies(kind: ServerKind) -> &'static ServerPolicies {
    static SETS: OnceLock<Vec<ServerPolicies>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        ServerKind::ALL
            .iter()
            .map(|k| server_policy(*k).into_set())
            .collect()
    });
    &sets[usize::from(kind.selector())]
}

/// Client policy variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Defaults (TLS 1.3 and 1.2), no client certificate.
    Plain,
    /// With the `acme` client certificate and CRL checking of the server.
    WithCert,
    /// TLS 1.2 only, with the client certificate.
    Tls12WithCert,
    /// With the revoked client certificate.
    Revoked,
}

impl ClientKind {
    /// All variants, in selector order.
    pub const ALL: [Self; 4] = [
        Self::Plain,
        Self::WithCert,
        Self::Tls12WithCert,
        Self::Revoked,
    ];

    /// The variant for a selector byte.
    pub fn from_selector(b: u8) -> Self {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    /// The selector byte of this variant.
    pub fn selector(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }
}

/// A client policy of the given kind with its own session cache (`cache`: capacity, 0 for
/// none).
pub fn client_policy(kind: ClientKind, cache: usize) -> ClientPolicy {
    let pki = pki();
    let mut b = ClientPolicy::builder(pki.trust()).session_cache(if cache == 0 {
        None
    } else {
        Some(ClientSessionCache::new(cache))
    });
    let crl = Revocation {
        unknown_status: UnknownStatus::Allow,
        ..Revocation::with_crls(vec![pki.crl.clone()])
    };
    b = match kind {
        ClientKind::Plain => b,
        ClientKind::WithCert => b
            .client_cert(vec![pki.client.der.clone()], pki.client.key())
            .revocation(crl),
        ClientKind::Tls12WithCert => b
            .versions(Versions::Tls12Only)
            .client_cert(vec![pki.client.der.clone()], pki.client.key()),
        ClientKind::Revoked => b.client_cert(vec![pki.revoked.der.clone()], pki.revoked.key()),
    };
    b.build(now()).expect("client policy")
}

/// The shared client policy of each kind, without a session cache (built once per process).
pub fn client_policy_shared(kind: ClientKind) -> &'static ClientPolicy {
    static SET: OnceLock<Vec<ClientPolicy>> = OnceLock::new();
    let set = SET.get_or_init(|| {
        ClientKind::ALL
            .iter()
            .map(|k| client_policy(*k, 0))
            .collect()
    });
    &set[usize::from(kind.selector())]
}
