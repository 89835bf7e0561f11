//! The ONE Record TLS policy, as configuration.
//!
//! [`ServerPolicy`] and [`ClientPolicy`] are built once, then shared (cloning is cheap) by
//! every session that uses them. A builder starts at the ONE Record floor (TLS 1.2 and 1.3,
//! ECDHE + AEAD suites, X25519/P-256/P-384, trusted CA list only, tickets on, 0-RTT off) and
//! can only narrow it: nothing weaker can be expressed.
//!
//! Reloading certificates, anchors or CRLs means building a new policy value and using it for
//! new sessions; [`ServerPolicy::to_builder`] keeps the ticket keys and session cache so
//! resumption survives the swap.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use pki_types::{CertificateDer, PrivateKeyDer};

use crate::backend;
use crate::error::{ConfigError, Warning};
use crate::identity::{CertInfo, IdentityRule, IdentityRules, LeafCache};
use crate::resumption::{ClientSessionCache, ServerSessionCache, TicketKeys};
use crate::time::Time;
use crate::trust::{Crl, CrlInfo, TrustStore};
use crate::vocabulary::{CipherSuite, Group, TlsVersion, Versions};

/// Default handshake deadline.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default warning window before the own certificate expires.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Client authentication on a server.
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// No certificate is requested.
    #[default]
    Disabled,
    /// A certificate is requested; a client without one is accepted (anonymous), a client
    /// with one must pass verification. With identity rules
    /// ([`ServerPolicyBuilder::allow`]) this becomes [`ClientAuth::Required`]: an allow-list
    /// never admits a client that presents nothing.
    Optional(TrustStore),
    /// mTLS: a client without a valid certificate is refused.
    Required(TrustStore),
}

/// What an undetermined revocation status means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownStatus {
    /// Refuse the certificate (`unknown_ca`): strict, the ONE Record default when CRLs are
    /// configured.
    #[default]
    Deny,
    /// Accept it: only certificates a loaded CRL lists as revoked are refused.
    Allow,
}

/// Default warning window before a CRL's `nextUpdate`.
pub const DEFAULT_CRL_WARNING: Duration = Duration::from_secs(24 * 3600);

/// Revocation checking with CRLs.
///
/// When a policy is built, every CRL is parsed and checked against the trust store: its
/// issuer must be one of the trust store's certificates (the CA bundle, intermediates
/// included when they are in the bundle), and its signature must verify with that
/// certificate's key. A CRL of another CA, or of an intermediate that only peers send in
/// their chains, is a [`ConfigError::CrlIssuerUnknown`]: add the intermediate to the bundle.
/// This keeps a wrong file from silently disabling revocation (with
/// [`UnknownStatus::Allow`]) or refusing everyone (with [`UnknownStatus::Deny`]).
#[derive(Clone, Debug)]
pub struct Revocation {
    /// The CRLs. With none, no revocation check is made.
    pub crls: Vec<Crl>,
    /// A name for each CRL, in the same order (e.g. the file it came from), used in
    /// warnings and in [`crate::Reason::CrlExpired`]. Missing names fall back to the issuer.
    pub names: Vec<String>,
    /// What a certificate not covered by any CRL means.
    pub unknown_status: UnknownStatus,
    /// Refuse when a relevant CRL is past its `nextUpdate` (plus [`Self::grace`]).
    pub enforce_crl_expiry: bool,
    /// With expiry enforced: how long after its `nextUpdate` an expired CRL is still used
    /// (bounded fail-open, for a CRL publisher that is late). Zero, the default, fails
    /// closed at `nextUpdate`. Callers should log a non-zero grace: it weakens the policy.
    pub grace: Duration,
    /// Warn ([`Warning::CrlExpiresSoon`]) when a CRL's `nextUpdate` is this close at build.
    pub warning: Duration,
    /// Check only the leaf (not intermediates).
    pub end_entity_only: bool,
}

impl Default for Revocation {
    fn default() -> Self {
        Self::with_crls(Vec::new())
    }
}

impl Revocation {
    /// Check with these CRLs, strict defaults (unknown status refused, expired CRL refused,
    /// no grace).
    pub fn with_crls(crls: Vec<Crl>) -> Self {
        Self {
            crls,
            names: Vec::new(),
            unknown_status: UnknownStatus::Deny,
            enforce_crl_expiry: true,
            grace: Duration::ZERO,
            warning: DEFAULT_CRL_WARNING,
            end_entity_only: false,
        }
    }

    /// [`Self::with_crls`] with a name for each CRL (e.g. its file).
    pub fn with_named_crls(crls: impl IntoIterator<Item = (String, Crl)>) -> Self {
        let (names, crls) = crls.into_iter().unzip();
        Self {
            names,
            ..Self::with_crls(crls)
        }
    }

    /// The name of CRL `index`: its entry in [`Self::names`], or else `issuer`.
    pub(crate) fn name_of(&self, index: usize, issuer: &str) -> String {
        self.names
            .get(index)
            .cloned()
            .unwrap_or_else(|| issuer.to_string())
    }

    /// Check every CRL against `trust` (parse, issuer in the store, signature) and list
    /// the warnings due at `now`.
    pub(crate) fn check(
        &self,
        trust: &TrustStore,
        now: Time,
    ) -> Result<(Vec<LoadedCrl>, Vec<Warning>), ConfigError> {
        let mut loaded = Vec::with_capacity(self.crls.len());
        let mut warnings = Vec::new();
        for (index, crl) in self.crls.iter().enumerate() {
            let info = crate::pki::check_crl(crl, trust).map_err(|e| e.at_crl_index(index))?;
            let name = self.name_of(index, &info.issuer);
            if let Some(next) = info.next_update {
                if now >= next {
                    if self.enforce_crl_expiry {
                        warnings.push(Warning::CrlExpired {
                            crl: name.clone(),
                            next_update: next,
                            grace: self.grace,
                        });
                    }
                } else {
                    let remaining = next.saturating_duration_since(now);
                    if remaining < self.warning {
                        warnings.push(Warning::CrlExpiresSoon {
                            crl: name.clone(),
                            next_update: next,
                            remaining,
                        });
                    }
                }
            }
            loaded.push(LoadedCrl { name, info });
        }
        Ok((loaded, warnings))
    }
}

/// A CRL as the policy checked it.
#[derive(Clone, Debug)]
pub(crate) struct LoadedCrl {
    pub name: String,
    pub info: CrlInfo,
}

/// The parts shared by server and client policies.
#[derive(Clone, Debug)]
pub(crate) struct Common {
    pub versions: Versions,
    pub suites: Vec<CipherSuite>,
    pub groups: Vec<Group>,
    pub revocation: Revocation,
    pub rules: IdentityRules,
    pub alpn: Vec<Vec<u8>>,
    pub handshake_timeout: Duration,
    pub expiry_warning: Duration,
    pub max_fragment_size: Option<usize>,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            versions: Versions::default(),
            suites: CipherSuite::ALL.to_vec(),
            groups: Group::ALL.to_vec(),
            revocation: Revocation::default(),
            rules: IdentityRules::default(),
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            max_fragment_size: None,
        }
    }
}

impl Common {
    fn narrow_suites(&mut self, suites: &[CipherSuite]) {
        self.suites = suites.to_vec();
    }

    fn enabled_suites(&self) -> Result<Vec<CipherSuite>, ConfigError> {
        let suites: Vec<_> = self
            .suites
            .iter()
            .copied()
            .filter(|s| self.versions.enables(s.version()))
            .collect();
        for (v, what) in [
            (TlsVersion::Tls13, "TLS 1.3 cipher suites"),
            (TlsVersion::Tls12, "TLS 1.2 cipher suites"),
        ] {
            // rustls needs a suite for every enabled version.
            if self.versions.enables(v) && !suites.iter().any(|s| s.version() == v) {
                return Err(ConfigError::NothingEnabled { what });
            }
        }
        if self.groups.is_empty() {
            return Err(ConfigError::NothingEnabled {
                what: "key exchange groups",
            });
        }
        if self.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(ConfigError::InvalidAlpn);
        }
        for r in &self.rules.0 {
            r.validate()?;
        }
        Ok(suites)
    }
}

/// The own certificate and key, checked.
#[derive(Clone, Debug)]
pub(crate) struct OwnCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

fn check_own_cert(
    chain: &[CertificateDer<'static>],
    now: Time,
    window: Duration,
) -> Result<(CertInfo, Vec<Warning>), ConfigError> {
    let leaf = chain.first().ok_or(ConfigError::NoCertificate {
        what: "certificate chain",
    })?;
    let info = CertInfo::parse(leaf).map_err(|detail| ConfigError::BadCertificate { detail })?;
    if now > info.not_after {
        return Err(ConfigError::CertificateExpired {
            not_after: info.not_after,
            now,
        });
    }
    if now < info.not_before {
        return Err(ConfigError::CertificateNotYetValid {
            not_before: info.not_before,
            now,
        });
    }
    let remaining = info.not_after.saturating_duration_since(now);
    let mut warnings = Vec::new();
    if remaining < window {
        warnings.push(Warning::CertificateExpiresSoon {
            not_after: info.not_after,
            remaining,
        });
    }
    Ok((info, warnings))
}

/// Builds a [`ServerPolicy`]. Start with [`ServerPolicy::builder`].
#[derive(Clone, Debug)]
pub struct ServerPolicyBuilder {
    pub(crate) common: Common,
    pub(crate) own: OwnCert,
    pub(crate) client_auth: ClientAuth,
    pub(crate) tickets: Option<TicketKeys>,
    pub(crate) session_cache: Option<ServerSessionCache>,
    pub(crate) tls13_tickets: usize,
}

impl ServerPolicyBuilder {
    /// Enable TLS 1.3 only, or TLS 1.3 and 1.2 (the default).
    pub fn versions(mut self, v: Versions) -> Self {
        self.common.versions = v;
        self
    }

    /// Narrow and order the cipher suites (preference order as given).
    pub fn cipher_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.common.narrow_suites(suites);
        self
    }

    /// Narrow and order the key exchange groups.
    pub fn groups(mut self, groups: &[Group]) -> Self {
        self.common.groups = groups.to_vec();
        self
    }

    /// Client authentication (default: disabled). [`ClientAuth::Optional`] together with an
    /// allow rule builds as [`ClientAuth::Required`] (see [`Self::allow`]).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Shorthand for `client_auth(ClientAuth::Required(trust))`: mTLS.
    pub fn require_client_auth(self, trust: TrustStore) -> Self {
        self.client_auth(ClientAuth::Required(trust))
    }

    /// Revocation checking of client certificates.
    pub fn revocation(mut self, r: Revocation) -> Self {
        self.common.revocation = r;
        self
    }

    /// Add an allow rule for client certificates (needs client authentication). A client
    /// whose verified certificate matches no rule is refused with `access_denied`.
    ///
    /// Any rule makes a client certificate required: with [`ClientAuth::Optional`] the policy
    /// is built as [`ClientAuth::Required`] (and [`ServerPolicy::client_auth`] says so), so a
    /// client without a certificate is refused (`certificate_required` in TLS 1.3,
    /// `handshake_failure` in TLS 1.2) rather than admitted anonymously. A rule that cannot
    /// match (see [`IdentityRule::validate`]) fails [`Self::build`] with
    /// [`ConfigError::InvalidIdentityRule`].
    pub fn allow(mut self, rule: IdentityRule) -> Self {
        self.common.rules.0.push(rule);
        self
    }

    /// ALPN protocols in preference order (e.g. `h2`, `http/1.1`).
    pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: &[P]) -> Self {
        self.common.alpn = protocols.iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// Handshake deadline (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.common.handshake_timeout = d;
        self
    }

    /// Warn when the own certificate expires within `d` (default 30 days).
    pub fn expiry_warning(mut self, d: Duration) -> Self {
        self.common.expiry_warning = d;
        self
    }

    /// Largest TLS record payload this side sends (default and maximum 16 KiB).
    pub fn max_fragment_size(mut self, n: Option<usize>) -> Self {
        self.common.max_fragment_size = n;
        self
    }

    /// Ticket keys for TLS 1.3 and TLS 1.2 tickets; `None` disables tickets (TLS 1.2 session
    /// IDs still resume through the session cache). Default: fresh random keys, rotated every
    /// [`TicketKeys::DEFAULT_ROTATION`].
    pub fn tickets(mut self, keys: Option<TicketKeys>) -> Self {
        self.tickets = keys;
        self
    }

    /// The server-side session cache for TLS 1.2 session IDs; `None` disables it.
    pub fn session_cache(mut self, cache: Option<ServerSessionCache>) -> Self {
        self.session_cache = cache;
        self
    }

    /// Number of TLS 1.3 tickets sent after a full handshake (default 2; 0 disables TLS 1.3
    /// resumption).
    pub fn tls13_tickets(mut self, n: usize) -> Self {
        self.tls13_tickets = n;
        self
    }

    /// Share the ticket keys and the session cache of `previous`, so that sessions made
    /// under it keep resuming under the policy being built (a reload with a new
    /// certificate, anchors or CRLs). Pass explicit keys with [`Self::tickets`] afterwards
    /// to replace the keys only.
    pub fn resumption_from(mut self, previous: &ServerPolicy) -> Self {
        self.tickets = previous.0.builder.tickets.clone();
        self.session_cache = previous.0.builder.session_cache.clone();
        self
    }

    /// Check everything and build the policy. `now` is used to check the own certificate's
    /// validity (expired: error; expiring within the warning window: [`ServerPolicy::warnings`]).
    pub fn build(mut self, now: Time) -> Result<ServerPolicy, ConfigError> {
        if let (false, ClientAuth::Optional(trust)) =
            (self.common.rules.is_empty(), &self.client_auth)
        {
            // An allow-list admits only the certificates it lists, never anonymous clients.
            self.client_auth = ClientAuth::Required(trust.clone());
        }
        let suites = self.common.enabled_suites()?;
        let (leaf, mut warnings) =
            check_own_cert(&self.own.chain, now, self.common.expiry_warning)?;
        if !self.common.rules.is_empty() && matches!(self.client_auth, ClientAuth::Disabled) {
            return Err(ConfigError::InvalidIdentityRule {
                detail: "identity rules need client authentication".to_string(),
            });
        }
        let crls = match &self.client_auth {
            _ if self.common.revocation.crls.is_empty() => Vec::new(),
            ClientAuth::Disabled => return Err(ConfigError::CrlWithoutClientAuth),
            ClientAuth::Optional(trust) | ClientAuth::Required(trust) => {
                let (crls, w) = self.common.revocation.check(trust, now)?;
                warnings.extend(w);
                crls
            }
        };
        let crls: Arc<[LoadedCrl]> = crls.into();
        let leaves = Arc::new(LeafCache::default());
        let tls = backend::server_config(&self, &suites, now, leaves.clone(), &crls)?;
        Ok(ServerPolicy(Arc::new(ServerInner {
            tls,
            leaves,
            crls,
            warnings,
            own_leaf: leaf,
            builder: self,
        })))
    }
}

#[derive(Debug)]
pub(crate) struct ServerInner {
    pub tls: backend::ServerTls,
    /// Parsed peer leaves of this policy's handshakes.
    pub leaves: Arc<LeafCache>,
    /// The CRLs, as checked at build.
    pub crls: Arc<[LoadedCrl]>,
    pub warnings: Vec<Warning>,
    pub own_leaf: CertInfo,
    pub builder: ServerPolicyBuilder,
}

/// A server's TLS policy. Cloning is cheap; sessions hold a clone.
#[derive(Clone, Debug)]
pub struct ServerPolicy(pub(crate) Arc<ServerInner>);

impl ServerPolicy {
    /// Start from the ONE Record defaults with this certificate chain (leaf first) and key.
    pub fn builder(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> ServerPolicyBuilder {
        ServerPolicyBuilder {
            common: Common::default(),
            own: OwnCert {
                chain,
                key: Arc::new(key),
            },
            client_auth: ClientAuth::Disabled,
            tickets: Some(TicketKeys::generate(TicketKeys::DEFAULT_ROTATION)),
            session_cache: Some(ServerSessionCache::new(
                ServerSessionCache::DEFAULT_CAPACITY,
            )),
            tls13_tickets: 2,
        }
    }

    /// The builder this policy was made from, to make a changed policy (new certificate,
    /// anchors, CRLs) that keeps the same ticket keys and session cache.
    pub fn to_builder(&self) -> ServerPolicyBuilder {
        self.0.builder.clone()
    }

    /// Warnings found while building (e.g. the certificate expires soon, a CRL expired).
    pub fn warnings(&self) -> &[Warning] {
        &self.0.warnings
    }

    /// The CRLs of this policy with their names ([`Revocation::names`], or else the issuer),
    /// as parsed and checked at build.
    pub fn crls(&self) -> impl Iterator<Item = (&str, &CrlInfo)> {
        self.0.crls.iter().map(|c| (c.name.as_str(), &c.info))
    }

    /// The own leaf certificate, parsed.
    pub fn certificate(&self) -> &CertInfo {
        &self.0.own_leaf
    }

    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        self.0.builder.common.handshake_timeout
    }

    /// The ticket keys, if tickets are enabled (e.g. to rotate them).
    pub fn ticket_keys(&self) -> Option<&TicketKeys> {
        self.0.builder.tickets.as_ref()
    }

    /// Whether client certificates are requested, and whether they are required (a policy
    /// with allow rules always requires them, even if built with [`ClientAuth::Optional`]).
    pub fn client_auth(&self) -> &ClientAuth {
        &self.0.builder.client_auth
    }

    /// The compiled policy rustls runs.
    pub(crate) fn tls(&self) -> &backend::ServerTls {
        &self.0.tls
    }

    /// The cache of parsed peer leaves shared by this policy's sessions.
    pub(crate) fn leaves(&self) -> &Arc<LeafCache> {
        &self.0.leaves
    }

    /// The CRLs as checked at build.
    pub(crate) fn loaded_crls(&self) -> &Arc<[LoadedCrl]> {
        &self.0.crls
    }

    /// The enabled protocol versions.
    pub(crate) fn versions(&self) -> Versions {
        self.0.builder.common.versions
    }

    /// The largest plaintext fragment to send, if limited.
    pub(crate) fn max_fragment_size(&self) -> Option<usize> {
        self.0.builder.common.max_fragment_size
    }

    /// Make a set with this policy as the default (served for every name).
    pub fn into_set(self) -> ServerPolicies {
        ServerPolicies::new(Some(self))
    }
}

/// Several server policies chosen by the SNI name in the ClientHello, before the TLS
/// connection is created (works without `std`). Names match ASCII case-insensitively;
/// `*.example.com` matches one extra leading label. A name with no policy gets
/// `unrecognized_name`, unless there is a default.
#[derive(Clone, Debug)]
pub struct ServerPolicies(pub(crate) Arc<PoliciesInner>);

#[derive(Debug, Default, Clone)]
pub(crate) struct PoliciesInner {
    names: Vec<(String, ServerPolicy)>,
    default: Option<ServerPolicy>,
}

impl ServerPolicies {
    /// A set with an optional default policy (used when no name matches or no SNI was sent).
    pub fn new(default: Option<ServerPolicy>) -> Self {
        Self(Arc::new(PoliciesInner {
            names: Vec::new(),
            default,
        }))
    }

    /// Serve `name` (a DNS name, or `*.` followed by one) with `policy`.
    pub fn with_name(mut self, name: &str, policy: ServerPolicy) -> Result<Self, ConfigError> {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        if pki_types::DnsName::try_from(bare).is_err() {
            return Err(ConfigError::InvalidServerName {
                name: name.to_string(),
            });
        }
        let inner = Arc::make_mut(&mut self.0);
        if inner.names.iter().any(|(n, _)| *n == lower) {
            return Err(ConfigError::DuplicateServerName {
                name: name.to_string(),
            });
        }
        inner.names.push((lower, policy));
        Ok(self)
    }

    /// The policy for `sni` (`None`: the client sent no server name).
    pub fn select(&self, sni: Option<&str>) -> Option<&ServerPolicy> {
        let Some(sni) = sni else {
            return self.0.default.as_ref();
        };
        let exact = self
            .0
            .names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(sni));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            self.0.names.iter().find(|(n, _)| {
                n.strip_prefix("*.")
                    .is_some_and(|p| p.eq_ignore_ascii_case(parent))
            })
        };
        exact
            .or_else(wildcard)
            .map(|(_, p)| p)
            .or(self.0.default.as_ref())
    }

    /// Every policy in the set (the default first, if any).
    pub fn policies(&self) -> impl Iterator<Item = &ServerPolicy> {
        self.0
            .default
            .iter()
            .chain(self.0.names.iter().map(|(_, p)| p))
    }
}

impl From<ServerPolicy> for ServerPolicies {
    fn from(p: ServerPolicy) -> Self {
        p.into_set()
    }
}

/// How a client resumes TLS 1.2 sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tls12Resumption {
    /// Tickets when the server issues them, else session IDs (default).
    #[default]
    TicketsOrSessionId,
    /// Session IDs only (no ticket extension offered).
    SessionIdOnly,
    /// No TLS 1.2 resumption.
    Disabled,
}

/// Builds a [`ClientPolicy`]. Start with [`ClientPolicy::builder`].
#[derive(Clone, Debug)]
pub struct ClientPolicyBuilder {
    pub(crate) common: Common,
    pub(crate) trust: TrustStore,
    pub(crate) own: Option<OwnCert>,
    pub(crate) cache: Option<ClientSessionCache>,
    pub(crate) tls12_resumption: Tls12Resumption,
}

impl ClientPolicyBuilder {
    /// Enable TLS 1.3 only, or TLS 1.3 and 1.2 (the default).
    pub fn versions(mut self, v: Versions) -> Self {
        self.common.versions = v;
        self
    }

    /// Narrow and order the cipher suites.
    pub fn cipher_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.common.narrow_suites(suites);
        self
    }

    /// Narrow and order the key exchange groups.
    pub fn groups(mut self, groups: &[Group]) -> Self {
        self.common.groups = groups.to_vec();
        self
    }

    /// Present this certificate chain and key when the server asks (mTLS).
    pub fn client_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.own = Some(OwnCert {
            chain,
            key: Arc::new(key),
        });
        self
    }

    /// Revocation checking of server certificates.
    pub fn revocation(mut self, r: Revocation) -> Self {
        self.common.revocation = r;
        self
    }

    /// Add an allow rule for the server certificate (e.g. an SPKI pin).
    pub fn allow(mut self, rule: IdentityRule) -> Self {
        self.common.rules.0.push(rule);
        self
    }

    /// ALPN protocols to offer.
    pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: &[P]) -> Self {
        self.common.alpn = protocols.iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// Handshake deadline (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.common.handshake_timeout = d;
        self
    }

    /// Warn when the own certificate expires within `d` (default 30 days).
    pub fn expiry_warning(mut self, d: Duration) -> Self {
        self.common.expiry_warning = d;
        self
    }

    /// Largest TLS record payload this side sends.
    pub fn max_fragment_size(mut self, n: Option<usize>) -> Self {
        self.common.max_fragment_size = n;
        self
    }

    /// The session cache that lets a later connection to the same server resume; `None`
    /// disables resumption. Several policies may share one cache.
    pub fn session_cache(mut self, cache: Option<ClientSessionCache>) -> Self {
        self.cache = cache;
        self
    }

    /// How TLS 1.2 sessions resume.
    pub fn tls12_resumption(mut self, r: Tls12Resumption) -> Self {
        self.tls12_resumption = r;
        self
    }

    /// Check everything and build the policy.
    pub fn build(self, now: Time) -> Result<ClientPolicy, ConfigError> {
        let suites = self.common.enabled_suites()?;
        let mut warnings = Vec::new();
        if let Some(own) = &self.own {
            warnings = check_own_cert(&own.chain, now, self.common.expiry_warning)?.1;
        }
        let crls = if self.common.revocation.crls.is_empty() {
            Vec::new()
        } else {
            let (crls, w) = self.common.revocation.check(&self.trust, now)?;
            warnings.extend(w);
            crls
        };
        let crls: Arc<[LoadedCrl]> = crls.into();
        let leaves = Arc::new(LeafCache::default());
        let tls = backend::client_config(&self, &suites, now, leaves.clone(), &crls)?;
        Ok(ClientPolicy(Arc::new(ClientInner {
            tls,
            leaves,
            crls,
            warnings,
            builder: self,
        })))
    }
}

#[derive(Debug)]
pub(crate) struct ClientInner {
    pub tls: backend::ClientTls,
    /// Parsed peer leaves of this policy's handshakes.
    pub leaves: Arc<LeafCache>,
    /// The CRLs, as checked at build.
    pub crls: Arc<[LoadedCrl]>,
    pub warnings: Vec<Warning>,
    pub builder: ClientPolicyBuilder,
}

/// A client's TLS policy. Cloning is cheap; sessions hold a clone.
#[derive(Clone, Debug)]
pub struct ClientPolicy(pub(crate) Arc<ClientInner>);

impl ClientPolicy {
    /// Start from the ONE Record defaults, trusting only `trust`.
    pub fn builder(trust: TrustStore) -> ClientPolicyBuilder {
        ClientPolicyBuilder {
            common: Common::default(),
            trust,
            own: None,
            cache: Some(ClientSessionCache::new(
                ClientSessionCache::DEFAULT_CAPACITY,
            )),
            tls12_resumption: Tls12Resumption::default(),
        }
    }

    /// The builder this policy was made from (keeps the session cache).
    pub fn to_builder(&self) -> ClientPolicyBuilder {
        self.0.builder.clone()
    }

    /// Warnings found while building.
    pub fn warnings(&self) -> &[Warning] {
        &self.0.warnings
    }

    /// The CRLs of this policy with their names, as in [`ServerPolicy::crls`].
    pub fn crls(&self) -> impl Iterator<Item = (&str, &CrlInfo)> {
        self.0.crls.iter().map(|c| (c.name.as_str(), &c.info))
    }

    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        self.0.builder.common.handshake_timeout
    }

    /// The session cache, if resumption is enabled.
    pub fn session_cache(&self) -> Option<&ClientSessionCache> {
        self.0.builder.cache.as_ref()
    }

    /// The compiled policy rustls runs.
    pub(crate) fn tls(&self) -> &backend::ClientTls {
        &self.0.tls
    }

    /// The cache of parsed peer leaves shared by this policy's sessions.
    pub(crate) fn leaves(&self) -> &Arc<LeafCache> {
        &self.0.leaves
    }

    /// The CRLs as checked at build.
    pub(crate) fn loaded_crls(&self) -> &Arc<[LoadedCrl]> {
        &self.0.crls
    }

    /// The largest plaintext fragment to send, if limited.
    pub(crate) fn max_fragment_size(&self) -> Option<usize> {
        self.0.builder.common.max_fragment_size
    }
}
