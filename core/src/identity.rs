//! The verified peer, and the identity rules a policy checks before a session is established.
//!
//! After a handshake the session hands the application a [`PeerIdentity`]: the chain the peer
//! presented (and the policy verified), the parsed leaf ([`CertInfo`]: subject CN/O/OU,
//! issuer, serial, validity, SANs, SHA-256 fingerprints) and the negotiated parameters.
//!
//! ONE Record client certificates carry one URI SAN per ONE Record ID
//! (`https://<host>/<company-id>`) and the company ID as subject CN; [`IdentityRule`] matches
//! on those, on DNS SANs, or on an SPKI SHA-256 pin.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pki_types::CertificateDer;
use x509_cert::Certificate as X509;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::policy::{CipherSuite, Group, TlsVersion};
use crate::time::Time;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parse 64 hex digits (colons allowed, as `openssl x509 -fingerprint` prints them).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        let mut digits = s.bytes().filter(|b| *b != b':');
        for byte in out.iter_mut() {
            let hi = hex_val(digits.next()?)?;
            let lo = hex_val(digits.next()?)?;
            *byte = (hi << 4) | lo;
        }
        digits.next().is_none().then_some(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Sha256 {
    /// Lowercase hex, no separators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// Fields of an X.509 certificate, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject as an RFC 4514 string, e.g. `CN=acme,O=ACME Cargo`.
    pub subject: String,
    /// Subject common names (ONE Record: the company ID).
    pub common_names: Vec<String>,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// Subject organizational units.
    pub organizational_units: Vec<String>,
    /// Issuer as an RFC 4514 string.
    pub issuer: String,
    /// Serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
    /// Start of validity.
    pub not_before: Time,
    /// End of validity.
    pub not_after: Time,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (ONE Record IDs).
    pub uris: Vec<String>,
    /// Email (rfc822) subject alternative names.
    pub emails: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// SHA-256 of the DER SubjectPublicKeyInfo (the "SPKI pin").
    pub spki_sha256: Sha256,
    /// SHA-256 of the whole DER certificate (the usual certificate fingerprint).
    pub cert_sha256: Sha256,
}

impl CertInfo {
    /// Parse a DER certificate. Returns a message on malformed input; never panics.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let cert = X509::from_der(der).map_err(|e| e.to_string())?;
        let tbs = &cert.tbs_certificate;
        let mut info = Self {
            subject: tbs.subject.to_string(),
            common_names: Vec::new(),
            organizations: Vec::new(),
            organizational_units: Vec::new(),
            issuer: tbs.issuer.to_string(),
            serial: tbs.serial_number.as_bytes().to_vec(),
            not_before: Time::from(tbs.validity.not_before.to_unix_duration()),
            not_after: Time::from(tbs.validity.not_after.to_unix_duration()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            ips: Vec::new(),
            spki_sha256: Sha256::of(
                &tbs.subject_public_key_info
                    .to_der()
                    .map_err(|e| e.to_string())?,
            ),
            cert_sha256: Sha256::of(der),
        };
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                let Some(value) = directory_string(&atv.value) else {
                    continue;
                };
                if atv.oid == OID_CN {
                    info.common_names.push(value);
                } else if atv.oid == OID_O {
                    info.organizations.push(value);
                } else if atv.oid == OID_OU {
                    info.organizational_units.push(value);
                }
            }
        }
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id != OID_SAN {
                continue;
            }
            let san =
                SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|e| e.to_string())?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(s) => info.dns_names.push(s.to_string()),
                    GeneralName::UniformResourceIdentifier(s) => info.uris.push(s.to_string()),
                    GeneralName::Rfc822Name(s) => info.emails.push(s.to_string()),
                    GeneralName::IpAddress(o) => {
                        if let Some(ip) = ip_from_bytes(o.as_bytes()) {
                            info.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        let mut s = String::with_capacity(self.serial.len() * 2);
        for b in &self.serial {
            let _ = fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        }
        s
    }
}

fn directory_string(any: &x509_cert::der::Any) -> Option<String> {
    let s = match any.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::PrintableString => PrintableStringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::Ia5String => Ia5StringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::TeletexString => TeletexStringRef::try_from(any).ok()?.as_str().to_string(),
        _ => return None,
    };
    Some(s)
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// How the handshake went.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeKind {
    /// A full handshake.
    Full,
    /// A full TLS 1.3 handshake that needed a HelloRetryRequest (one more round trip).
    FullWithHelloRetry,
    /// A resumed handshake (TLS 1.3 PSK, TLS 1.2 ticket or session ID).
    Resumed,
}

/// The verified peer and the negotiated parameters, available once the session is
/// established and before any application byte is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's certificate chain, leaf first, as presented and verified. Empty when the
    /// peer sent no certificate (a client under optional or disabled client authentication).
    /// On a resumed handshake this is the chain verified in the original handshake.
    pub chain: Vec<CertificateDer<'static>>,
    /// The parsed leaf certificate, when there is one and it parses.
    pub leaf: Option<CertInfo>,
    /// Negotiated protocol version.
    pub version: TlsVersion,
    /// Negotiated cipher suite.
    pub suite: CipherSuite,
    /// Key exchange group, when one was used (a TLS 1.2 resumption uses none).
    pub group: Option<Group>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// Server name: what the client sent (server side) or asked for (client side).
    pub server_name: Option<String>,
    /// How the handshake went (full, with HelloRetryRequest, resumed).
    pub handshake: HandshakeKind,
}

impl PeerIdentity {
    /// `true` when the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.handshake == HandshakeKind::Resumed
    }

    /// `true` when the peer authenticated with a certificate.
    pub fn authenticated(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The leaf's first subject CN (ONE Record: the company ID).
    pub fn common_name(&self) -> Option<&str> {
        self.leaf.as_ref()?.common_names.first().map(String::as_str)
    }

    /// The leaf's URI SANs (ONE Record IDs); empty when there is no leaf.
    pub fn uris(&self) -> &[String] {
        self.leaf.as_ref().map_or(&[], |l| &l.uris)
    }
}

/// One allow rule, checked after the chain verifies. A policy with rules refuses a peer
/// whose certificate matches none of them with `access_denied`.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityRule {
    /// A URI SAN equal to this string.
    UriExact(String),
    /// A URI SAN starting with this prefix (e.g. `https://onerecord.example/`).
    UriPrefix(String),
    /// A DNS SAN equal to this name (ASCII case-insensitive).
    Dns(String),
    /// A subject CN equal to this string (ONE Record: the company ID).
    CommonName(String),
    /// The SHA-256 of the leaf's SubjectPublicKeyInfo.
    SpkiSha256(Sha256),
}

impl IdentityRule {
    /// `true` when `cert` satisfies the rule.
    pub fn matches(&self, cert: &CertInfo) -> bool {
        match self {
            Self::UriExact(u) => cert.uris.iter().any(|x| x == u),
            Self::UriPrefix(p) => cert.uris.iter().any(|x| x.starts_with(p.as_str())),
            Self::Dns(d) => cert.dns_names.iter().any(|x| x.eq_ignore_ascii_case(d)),
            Self::CommonName(cn) => cert.common_names.iter().any(|x| x == cn),
            Self::SpkiSha256(pin) => cert.spki_sha256 == *pin,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        let empty = match self {
            Self::UriExact(s) | Self::UriPrefix(s) | Self::Dns(s) | Self::CommonName(s) => {
                s.is_empty()
            }
            Self::SpkiSha256(_) => false,
        };
        if empty {
            return Err(crate::ConfigError::InvalidIdentityRule {
                detail: alloc::format!("{self:?} is empty and would match everything or nothing"),
            });
        }
        Ok(())
    }
}

/// A set of allow rules; a certificate passes when it matches any rule. An empty set allows
/// every certificate that verifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityRules(pub Vec<IdentityRule>);

/// Slots of a [`LeafCache`].
const LEAF_CACHE_SLOTS: usize = 16;

/// The parsed leaves of recent handshakes of one policy, keyed by their exact DER bytes.
///
/// Parsing a leaf (DER decoding, RFC 4514 names, two SHA-256 hashes) costs about 90,000
/// instructions: more than a whole TLS 1.2 resumption. A client keeps seeing the same server
/// certificate and an mTLS server the same few partners, and a resumed handshake always
/// carries the chain of the original one, so a small cache makes the identity almost free.
/// `CertInfo` is a pure function of the bytes, so a hit is exactly what parsing would give.
/// Memory: at most 16 certificates and their parsed form (about 20 KiB for typical leaves).
#[derive(Debug)]
pub(crate) struct LeafCache {
    slots: crate::sync::Mutex<LeafSlots>,
}

impl Default for LeafCache {
    fn default() -> Self {
        Self {
            slots: crate::sync::Mutex::new(LeafSlots::default()),
        }
    }
}

#[derive(Debug, Default)]
struct LeafSlots {
    entries: Vec<(Vec<u8>, CertInfo)>,
    /// Next slot to replace once full (round robin).
    next: usize,
}

impl LeafCache {
    /// `CertInfo::parse(der)`, from the cache when these exact bytes were parsed before.
    pub(crate) fn parse(&self, der: &[u8]) -> Result<CertInfo, String> {
        {
            let slots = self.slots.lock();
            if let Some((_, info)) = slots.entries.iter().find(|(d, _)| d.as_slice() == der) {
                return Ok(info.clone());
            }
        }
        let info = CertInfo::parse(der)?;
        let mut slots = self.slots.lock();
        if !slots.entries.iter().any(|(d, _)| d.as_slice() == der) {
            if slots.entries.len() < LEAF_CACHE_SLOTS {
                slots.entries.push((der.to_vec(), info.clone()));
            } else {
                let i = slots.next % LEAF_CACHE_SLOTS;
                slots.entries[i] = (der.to_vec(), info.clone());
                slots.next = i + 1;
            }
        }
        Ok(info)
    }
}

impl IdentityRules {
    /// `true` when the leaf `der` is allowed, parsing it through `cache`. A leaf that cannot
    /// be parsed is refused.
    pub(crate) fn allows_der_cached(&self, der: &[u8], cache: &LeafCache) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match cache.parse(der) {
            Ok(info) => self.allows(&info),
            Err(_) => false,
        }
    }

    /// `true` when the leaf `der` is allowed. A leaf that cannot be parsed is refused.
    pub fn allows_der(&self, der: &[u8]) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match CertInfo::parse(der) {
            Ok(info) => self.allows(&info),
            Err(_) => false,
        }
    }

    /// `true` when `cert` matches a rule (or there are no rules).
    pub fn allows(&self, cert: &CertInfo) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.matches(cert))
    }

    /// `true` when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_round_trip_accepts_colons() {
        let d = Sha256::of(b"abc");
        let hex = d.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(Sha256::from_hex(&hex), Some(d));
        let with_colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|c| core::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Sha256::from_hex(&with_colons.to_uppercase()), Some(d));
        assert_eq!(Sha256::from_hex("abc"), None);
        assert_eq!(Sha256::from_hex(&alloc::format!("{hex}00")), None);
    }

    #[test]
    fn garbage_certificate_is_an_error_not_a_panic() {
        assert!(CertInfo::parse(&[]).is_err());
        assert!(CertInfo::parse(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
        assert!(
            !IdentityRules(alloc::vec![IdentityRule::CommonName("x".into())]).allows_der(&[1, 2])
        );
    }

    #[test]
    fn leaf_cache_gives_what_parsing_gives_and_stays_bounded() {
        let cache = LeafCache::default();
        let mut ders = Vec::new();
        for i in 0..(LEAF_CACHE_SLOTS + 4) {
            let mut p =
                rcgen::CertificateParams::new(alloc::vec![alloc::format!("h{i}.example")]).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, alloc::format!("company-{i}"));
            let key = rcgen::KeyPair::generate().unwrap();
            ders.push(p.self_signed(&key).unwrap().der().to_vec());
        }
        for der in &ders {
            let parsed = CertInfo::parse(der).unwrap();
            assert_eq!(cache.parse(der).unwrap(), parsed);
            assert_eq!(cache.parse(der).unwrap(), parsed, "a hit equals a parse");
        }
        assert_eq!(cache.slots.lock().entries.len(), LEAF_CACHE_SLOTS);
        // The oldest were replaced; they still parse correctly (a miss).
        let first = CertInfo::parse(&ders[0]).unwrap();
        assert_eq!(cache.parse(&ders[0]).unwrap(), first);
        assert_eq!(first.common_names, alloc::vec!["company-0".to_string()]);
        assert!(cache.parse(&[0x30, 0x03, 1, 2, 3]).is_err());
        let rules = IdentityRules(alloc::vec![IdentityRule::CommonName("company-3".into())]);
        assert!(rules.allows_der_cached(&ders[3], &cache));
        assert!(!rules.allows_der_cached(&ders[4], &cache));
    }
}
