//! The verified peer, and the identity rules a policy checks before a session is established.
//!
//! After a handshake the session hands the application a [`PeerIdentity`]: the chain the peer
//! presented (and the policy verified), the parsed leaf ([`CertInfo`]: subject CN/O/OU,
//! issuer, serial, validity, SANs, SHA-256 fingerprints) and the negotiated parameters.
//!
//! ONE Record client certificates carry one URI SAN per ONE Record ID
//! (`https://<host>/<company-id>`) and the company ID as subject CN; [`IdentityRule`] matches
//! on those, on DNS SANs, or on an SPKI SHA-256 pin.

use alloc::string::String;
use alloc::vec::Vec;

use pki_types::CertificateDer;

use crate::cert::{CertInfo, Sha256};
use crate::error::ConfigError;
use crate::vocabulary::{CipherSuite, Group, TlsVersion};

mod uri;

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
    /// Negotiated cipher suite, as negotiated: never a default. (rustls negotiates only the
    /// policy's suites; a suite outside [`CipherSuite`] would fail the session with
    /// [`crate::Reason::Internal`] rather than be reported as another.)
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
///
/// # URI rules
///
/// [`IdentityRule::UriPrefix`] and [`IdentityRule::UriExact`] take an absolute URI
/// (`scheme://host[:port][/path]`) and compare it with each URI SAN component by component,
/// never as a string prefix:
/// - scheme and host equal, ASCII case-insensitively; a host never matches by suffix
///   (`https://onerecord.example` does not cover `https://onerecord.example.evil.com/`);
///   IPv6 literals compare as addresses (`[::1]` equals `[0:0::1]`);
/// - ports equal once `https`/`http` default ports are filled in (`:443` explicit equals
///   implicit, `:8443` is another origin);
/// - paths: see each variant. Percent-encoded octets are compared as written (hex digits
///   case-insensitively) and never decoded, so `%2F` is not a `/` boundary and `%61` is not
///   `a`: the certificate must spell the path the way the rule does.
///
/// A rule with userinfo (`user@host`), a query, a fragment, empty (`//`) or dot (`.`, `..`)
/// path segments, a non-ASCII character or no `scheme://host` is refused when the policy is
/// built ([`ConfigError::InvalidIdentityRule`](ConfigError::InvalidIdentityRule)). A
/// certificate URI with any of these matches no URI rule.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityRule {
    /// A URI SAN naming the same resource: same scheme, host and port (as above) and the
    /// same path (a trailing `/` is significant: `https://h/a` is not `https://h/a/`, but an
    /// empty path equals `/`).
    UriExact(String),
    /// A URI SAN at or under this URI: same scheme, host and port (as above), and the rule's
    /// path a prefix of the certificate's path **at a `/` boundary**. An empty path or `/`
    /// covers the whole origin; `https://h/a` and `https://h/a/` both cover `https://h/a`,
    /// `https://h/a/` and `https://h/a/b`, never `https://h/ab`.
    UriPrefix(String),
    /// A DNS SAN equal to this name (ASCII case-insensitive).
    Dns(String),
    /// A subject CN equal to this string (ONE Record: the company ID).
    CommonName(String),
    /// The SHA-256 of the leaf's SubjectPublicKeyInfo.
    SpkiSha256(Sha256),
}

impl IdentityRule {
    /// `true` when `cert` satisfies the rule. A URI rule that does not parse matches nothing
    /// (building a policy refuses it first, see [`IdentityRule::validate`]).
    pub fn matches(&self, cert: &CertInfo) -> bool {
        match self {
            Self::UriExact(u) => uri_rule_matches(u, cert, uri::Uri::same_resource),
            Self::UriPrefix(p) => uri_rule_matches(p, cert, uri::Uri::covers),
            Self::Dns(d) => cert.dns_names.iter().any(|x| x.eq_ignore_ascii_case(d)),
            Self::CommonName(cn) => cert.common_names.iter().any(|x| x == cn),
            Self::SpkiSha256(pin) => cert.spki_sha256 == *pin,
        }
    }

    /// Check that the rule can match something: not empty, and for URI rules an absolute
    /// URI as described on [`IdentityRule`]. Policy builders call this; an adapter may call
    /// it first to name the option the rule came from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: &str| {
            let (kind, value) = match self {
                Self::UriExact(s) => ("exact URI rule", s.as_str()),
                Self::UriPrefix(s) => ("URI rule", s.as_str()),
                Self::Dns(s) => ("DNS rule", s.as_str()),
                Self::CommonName(s) => ("CN rule", s.as_str()),
                Self::SpkiSha256(_) => ("SPKI rule", ""),
            };
            Err(ConfigError::InvalidIdentityRule {
                detail: alloc::format!("{kind} {value:?}: {why}"),
            })
        };
        match self {
            Self::UriExact(s) | Self::UriPrefix(s) => match uri::Uri::parse(s) {
                Ok(_) => Ok(()),
                Err(why) => invalid(why),
            },
            Self::Dns(s) | Self::CommonName(s) if s.is_empty() => {
                invalid("empty, it would match everything or nothing")
            }
            Self::Dns(_) | Self::CommonName(_) | Self::SpkiSha256(_) => Ok(()),
        }
    }
}

/// `true` when `rule` parses and `matches(rule, san)` holds for a URI SAN of `cert` that
/// parses.
fn uri_rule_matches(
    rule: &str,
    cert: &CertInfo,
    matches: impl Fn(&uri::Uri, &uri::Uri) -> bool,
) -> bool {
    let Ok(rule) = uri::Uri::parse(rule) else {
        return false;
    };
    cert.uris
        .iter()
        .filter_map(|s| uri::Uri::parse(s).ok())
        .any(|san| matches(&rule, &san))
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
    use alloc::string::ToString;

    use crate::time::Time;

    /// (rule, certificate URI, matches as `UriPrefix`, matches as `UriExact`).
    const URI_TABLE: &[(&str, &str, bool, bool)] = &[
        // The cases.
        (
            "https://onerecord.example",
            "https://onerecord.example/logistics-agents/acme",
            true,
            false,
        ),
        (
            "https://onerecord.example",
            "https://onerecord.example.evil.com/x",
            false,
            false,
        ),
        (
            "https://onerecord.example",
            "https://onerecord.example:8443/x",
            false,
            false,
        ),
        (
            "https://onerecord.example/",
            "https://onerecord.example.evil.com/x",
            false,
            false,
        ),
        (
            "https://onerecord.example/",
            "https://onerecord.example",
            true,
            true,
        ),
        (
            "https://onerecord.example",
            "https://onerecord.example/",
            true,
            true,
        ),
        // No suffix or prefix match on hosts.
        (
            "https://onerecord.example",
            "https://evil-onerecord.example/x",
            false,
            false,
        ),
        (
            "https://onerecord.example",
            "https://x.onerecord.example/x",
            false,
            false,
        ),
        (
            "https://a.onerecord.example",
            "https://onerecord.example/x",
            false,
            false,
        ),
        // Default ports: explicit equals implicit, others differ.
        ("https://h.example:443/a", "https://h.example/a", true, true),
        ("https://h.example/a", "https://h.example:443/a", true, true),
        ("https://h.example:/a", "https://h.example/a", true, true),
        ("http://h.example/a", "http://h.example:80/a", true, true),
        ("http://h.example/a", "http://h.example:443/a", false, false),
        (
            "https://h.example/a",
            "https://h.example:80/a",
            false,
            false,
        ),
        (
            "https://h.example:8443/a",
            "https://h.example:8443/a/b",
            true,
            false,
        ),
        (
            "https://h.example:8443/a",
            "https://h.example/a",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example:0443/a",
            true,
            true,
        ),
        // Scheme: case-insensitive, but http is not https.
        ("HTTPS://H.Example/a", "https://h.example/a", true, true),
        ("https://h.example/a", "hTTps://H.EXAMPLE/a", true, true),
        ("https://h.example/a", "http://h.example/a", false, false),
        ("http://h.example/", "https://h.example/", false, false),
        // Path case is significant.
        (
            "https://h.example/Acme",
            "https://h.example/acme",
            false,
            false,
        ),
        // Trailing slashes and / boundaries.
        ("https://h.example/a", "https://h.example/a", true, true),
        ("https://h.example/a", "https://h.example/a/", true, false),
        ("https://h.example/a", "https://h.example/a/b", true, false),
        ("https://h.example/a", "https://h.example/ab", false, false),
        ("https://h.example/a/", "https://h.example/a", true, false),
        ("https://h.example/a/", "https://h.example/a/", true, true),
        ("https://h.example/a/", "https://h.example/a/b", true, false),
        ("https://h.example/a/", "https://h.example/ab", false, false),
        ("https://h.example/a/b", "https://h.example/a", false, false),
        (
            "https://h.example/a/b",
            "https://h.example/a/bc",
            false,
            false,
        ),
        ("https://h.example", "https://h.example", true, true),
        // Percent-encoding: never decoded, hex digits case-insensitive.
        (
            "https://h.example/a",
            "https://h.example/a%2Fb",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a%2fb",
            false,
            false,
        ),
        (
            "https://h.example/a%2Fb",
            "https://h.example/a%2fb",
            true,
            true,
        ),
        (
            "https://h.example/a%2Fb",
            "https://h.example/a%2Fb/c",
            true,
            false,
        ),
        (
            "https://h.example/a%2Fb",
            "https://h.example/a/b",
            false,
            false,
        ),
        ("https://h.example/a", "https://h.example/%61", false, false),
        ("https://h.example/%61", "https://h.example/a", false, false),
        (
            "https://h.example/a%20b",
            "https://h.example/a%20b",
            true,
            true,
        ),
        // IPv4 and IPv6 hosts.
        ("https://[::1]/a", "https://[::1]/a/b", true, false),
        ("https://[::1]/a", "https://[0:0:0:0:0:0:0:1]/a", true, true),
        (
            "https://[2001:DB8::1]/",
            "https://[2001:db8:0::1]:443/x",
            true,
            false,
        ),
        (
            "https://[2001:db8::1]/",
            "https://[2001:db8::2]/x",
            false,
            false,
        ),
        ("https://[::1]:8443/", "https://[::1]/x", false, false),
        ("https://[::1]/", "https://[::1]:8443/x", false, false),
        ("https://127.0.0.1/a", "https://127.0.0.1:443/a", true, true),
        ("https://127.0.0.1/a", "https://127.0.0.2/a", false, false),
        (
            "https://[::ffff:127.0.0.1]/",
            "https://127.0.0.1/",
            false,
            false,
        ),
        // Userinfo tricks in the certificate: never a match.
        (
            "https://onerecord.example",
            "https://onerecord.example@evil.com/",
            false,
            false,
        ),
        (
            "https://evil.com",
            "https://onerecord.example@evil.com/",
            false,
            false,
        ),
        (
            "https://onerecord.example",
            "https://user:pw@onerecord.example/",
            false,
            false,
        ),
        // Query, fragment, dot segments, empty segments, garbage in the certificate.
        (
            "https://h.example/a",
            "https://h.example/a?x=1",
            false,
            false,
        ),
        ("https://h.example/a", "https://h.example/a#x", false, false),
        (
            "https://h.example/a",
            "https://h.example/a/../b",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a/%2e%2E/b",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a/./b",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a//b",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a/b c",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a/%zz",
            false,
            false,
        ),
        (
            "https://h.example/a",
            "https://h.example/a/%4",
            false,
            false,
        ),
        (
            "https://h.example",
            "https://h.example\\@evil.com/",
            false,
            false,
        ),
        ("https://h.example", "https:h.example/a", false, false),
        ("https://h.example", "", false, false),
        ("https://h.example", "h.example/a", false, false),
        (
            "https://h.example",
            "https://h.example:99999/",
            false,
            false,
        ),
        ("https://h.example", "https://h.example:44a/", false, false),
        ("https://h.example", "https://[::1/", false, false),
        ("https://h.example", "https://h.example./", false, false),
        ("https://h.example", "https://h..example/", false, false),
        ("https://h.example", "https://h_x.example/", false, false),
        ("https://h.example", "https://h%2Eexample/", false, false),
        ("https://h.example", "https://h.ex\u{e4}mple/", false, false),
        // Other schemes have no default port.
        (
            "spiffe://trust.example/ns/a",
            "spiffe://trust.example/ns/a/sa",
            true,
            false,
        ),
        (
            "spiffe://trust.example/ns/a",
            "spiffe://trust.example:443/ns/a",
            false,
            false,
        ),
    ];

    fn cert_with_uris(uris: &[&str]) -> CertInfo {
        CertInfo {
            subject: String::new(),
            common_names: Vec::new(),
            organizations: Vec::new(),
            organizational_units: Vec::new(),
            issuer: String::new(),
            serial: Vec::new(),
            not_before: Time::from(core::time::Duration::ZERO),
            not_after: Time::from(core::time::Duration::ZERO),
            dns_names: Vec::new(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
            emails: Vec::new(),
            ips: Vec::new(),
            spki_sha256: Sha256([0; 32]),
            cert_sha256: Sha256([0; 32]),
        }
    }

    #[test]
    fn uri_rules_match_component_by_component_not_by_string_prefix() {
        for (rule, san, prefix, exact) in URI_TABLE {
            let cert = cert_with_uris(&[san]);
            assert_eq!(
                IdentityRule::UriPrefix(rule.to_string()).matches(&cert),
                *prefix,
                "UriPrefix({rule:?}) vs {san:?}"
            );
            assert_eq!(
                IdentityRule::UriExact(rule.to_string()).matches(&cert),
                *exact,
                "UriExact({rule:?}) vs {san:?}"
            );
        }
    }

    #[test]
    fn uri_rule_without_trailing_slash_refuses_a_longer_host() {
        let rule = IdentityRule::UriPrefix("https://onerecord.example".into());
        assert!(rule.matches(&cert_with_uris(&[
            "https://onerecord.example/logistics-agents/acme"
        ])));
        assert!(!rule.matches(&cert_with_uris(&["https://onerecord.example.evil.com/x"])));
        assert!(!rule.matches(&cert_with_uris(&["https://onerecord.example:8443/x"])));
        // Any of several URI SANs may match.
        assert!(rule.matches(&cert_with_uris(&[
            "https://onerecord.example.evil.com/x",
            "https://onerecord.example/logistics-agents/acme",
        ])));
    }

    #[test]
    fn uri_rule_that_is_not_an_absolute_uri_is_invalid_and_names_the_rule() {
        for bad in [
            "onerecord.example",
            "https://a@onerecord.example/",
            "https://h.example/?q",
        ] {
            let err = IdentityRule::UriPrefix(bad.into()).validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidIdentityRule { detail } if detail.contains(bad)),
                "{err}"
            );
            assert!(IdentityRule::UriExact(bad.into()).validate().is_err());
            assert!(!IdentityRule::UriPrefix(bad.into()).matches(&cert_with_uris(&[bad])));
        }
        assert!(
            IdentityRule::UriPrefix("https://onerecord.example".into())
                .validate()
                .is_ok()
        );
        assert!(IdentityRule::CommonName(String::new()).validate().is_err());
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
