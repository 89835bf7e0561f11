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
use crate::cert::CertInfo;
use crate::error::{ConfigError, Warning};
use crate::identity::{IdentityRule, LeafCache};
use crate::resumption::{ClientSessionCache, ServerSessionCache, TicketKeys};
use crate::spec::{
    ClientAuth, ClientSpec, Common, LoadedCrl, OwnCert, Revocation, ServerSpec, Tls12Resumption,
};
use crate::time::Time;
use crate::trust::{CrlInfo, TrustStore};
use crate::vocabulary::{CipherSuite, Group, Versions};

/// Check every CRL against `trust` (parse, issuer in the store, signature) and list
/// the warnings due at `now`.
fn check_crls(
    revocation: &Revocation,
    trust: &TrustStore,
    now: Time,
) -> Result<(Vec<LoadedCrl>, Vec<Warning>), ConfigError> {
    let mut loaded = Vec::with_capacity(revocation.crls.len());
    let mut warnings = Vec::new();
    for (index, crl) in revocation.crls.iter().enumerate() {
        let info = crate::pki::check_crl(crl, trust).map_err(|e| e.at_crl_index(index))?;
        let name = revocation.name_of(index, &info.issuer);
        if let Some(next) = info.next_update {
            if now >= next {
                if revocation.enforce_crl_expiry {
                    warnings.push(Warning::CrlExpired {
                        crl: name.clone(),
                        next_update: next,
                        grace: revocation.grace,
                    });
                }
            } else {
                let remaining = next.saturating_duration_since(now);
                if remaining < revocation.warning {
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

/// The setters both builders share, written once: `$revocation` and `$allow` carry each
/// side's documentation of the two whose meaning depends on the side.
macro_rules! common_setters {
    (
        $(#[$revocation:meta])*
        revocation;
        $(#[$allow:meta])*
        allow;
    ) => {
        /// Enable TLS 1.3 only, or TLS 1.3 and 1.2 (the default).
        pub fn versions(mut self, v: Versions) -> Self {
            self.spec.common.versions = v;
            self
        }

        /// Narrow and order the cipher suites (preference order as given).
        pub fn cipher_suites(mut self, suites: &[CipherSuite]) -> Self {
            self.spec.common.narrow_suites(suites);
            self
        }

        /// Narrow and order the key exchange groups.
        pub fn groups(mut self, groups: &[Group]) -> Self {
            self.spec.common.groups = groups.to_vec();
            self
        }

        $(#[$revocation])*
        pub fn revocation(mut self, r: Revocation) -> Self {
            self.spec.common.revocation = r;
            self
        }

        $(#[$allow])*
        pub fn allow(mut self, rule: IdentityRule) -> Self {
            self.spec.common.rules.0.push(rule);
            self
        }

        /// ALPN protocols in preference order (e.g. `h2`, `http/1.1`).
        pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: &[P]) -> Self {
            self.spec.common.alpn = protocols.iter().map(|p| p.as_ref().to_vec()).collect();
            self
        }

        /// Handshake deadline (default 10 s).
        pub fn handshake_timeout(mut self, d: Duration) -> Self {
            self.spec.common.handshake_timeout = d;
            self
        }

        /// Warn when the own certificate expires within `d` (default 30 days).
        pub fn expiry_warning(mut self, d: Duration) -> Self {
            self.spec.common.expiry_warning = d;
            self
        }

        /// Largest TLS record payload this side sends (default and maximum 16 KiB).
        pub fn max_fragment_size(mut self, n: Option<usize>) -> Self {
            self.spec.common.max_fragment_size = n;
            self
        }
    };
}

/// Builds a [`ServerPolicy`]. Start with [`ServerPolicy::builder`].
#[derive(Clone, Debug)]
pub struct ServerPolicyBuilder {
    spec: ServerSpec,
}

impl ServerPolicyBuilder {
    /// Client authentication (default: disabled). [`ClientAuth::Optional`] together with an
    /// allow rule builds as [`ClientAuth::Required`] (see [`Self::allow`]).
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.spec.client_auth = auth;
        self
    }

    /// Shorthand for `client_auth(ClientAuth::Required(trust))`: mTLS.
    pub fn require_client_auth(self, trust: TrustStore) -> Self {
        self.client_auth(ClientAuth::Required(trust))
    }

    common_setters! {
        /// Revocation checking of client certificates.
        revocation;
        /// Add an allow rule for client certificates (needs client authentication). A client
        /// whose verified certificate matches no rule is refused with `access_denied`.
        ///
        /// Any rule makes a client certificate required: with [`ClientAuth::Optional`] the policy
        /// is built as [`ClientAuth::Required`] (and [`ServerPolicy::client_auth`] says so), so a
        /// client without a certificate is refused (`certificate_required` in TLS 1.3,
        /// `handshake_failure` in TLS 1.2) rather than admitted anonymously. A rule that cannot
        /// match (see [`IdentityRule::validate`]) fails [`Self::build`] with
        /// [`ConfigError::InvalidIdentityRule`].
        allow;
    }

    /// Ticket keys for TLS 1.3 and TLS 1.2 tickets; `None` disables tickets (TLS 1.2 session
    /// IDs still resume through the session cache). Default: fresh random keys, rotated every
    /// [`TicketKeys::DEFAULT_ROTATION`].
    pub fn tickets(mut self, keys: Option<TicketKeys>) -> Self {
        self.spec.tickets = keys;
        self
    }

    /// The server-side session cache for TLS 1.2 session IDs; `None` disables it.
    pub fn session_cache(mut self, cache: Option<ServerSessionCache>) -> Self {
        self.spec.session_cache = cache;
        self
    }

    /// Number of TLS 1.3 tickets sent after a full handshake (default 2; 0 disables TLS 1.3
    /// resumption).
    pub fn tls13_tickets(mut self, n: usize) -> Self {
        self.spec.tls13_tickets = n;
        self
    }

    /// Share the ticket keys and the session cache of `previous`, so that sessions made
    /// under it keep resuming under the policy being built (a reload with a new
    /// certificate, anchors or CRLs). Pass explicit keys with [`Self::tickets`] afterwards
    /// to replace the keys only.
    pub fn resumption_from(mut self, previous: &ServerPolicy) -> Self {
        self.spec.tickets = previous.0.spec.tickets.clone();
        self.spec.session_cache = previous.0.spec.session_cache.clone();
        self
    }

    /// Check everything and build the policy. `now` is used to check the own certificate's
    /// validity (expired: error; expiring within the warning window: [`ServerPolicy::warnings`]).
    pub fn build(mut self, now: Time) -> Result<ServerPolicy, ConfigError> {
        if let (false, ClientAuth::Optional(trust)) =
            (self.spec.common.rules.is_empty(), &self.spec.client_auth)
        {
            // An allow-list admits only the certificates it lists, never anonymous clients.
            self.spec.client_auth = ClientAuth::Required(trust.clone());
        }
        let suites = self.spec.common.enabled_suites()?;
        let (leaf, mut warnings) =
            check_own_cert(&self.spec.own.chain, now, self.spec.common.expiry_warning)?;
        if !self.spec.common.rules.is_empty()
            && matches!(self.spec.client_auth, ClientAuth::Disabled)
        {
            return Err(ConfigError::InvalidIdentityRule {
                detail: "identity rules need client authentication".to_string(),
            });
        }
        let crls = match &self.spec.client_auth {
            _ if self.spec.common.revocation.crls.is_empty() => Vec::new(),
            ClientAuth::Disabled => return Err(ConfigError::CrlWithoutClientAuth),
            ClientAuth::Optional(trust) | ClientAuth::Required(trust) => {
                let (crls, w) = check_crls(&self.spec.common.revocation, trust, now)?;
                warnings.extend(w);
                crls
            }
        };
        let crls: Arc<[LoadedCrl]> = crls.into();
        let leaves = Arc::new(LeafCache::default());
        let tls = backend::server_config(&self.spec, &suites, now, leaves.clone(), &crls)?;
        Ok(ServerPolicy(Arc::new(ServerInner {
            tls,
            leaves,
            crls,
            warnings,
            own_leaf: leaf,
            spec: self.spec,
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
    pub spec: ServerSpec,
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
            spec: ServerSpec {
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
            },
        }
    }

    /// The builder this policy was made from, to make a changed policy (new certificate,
    /// anchors, CRLs) that keeps the same ticket keys and session cache.
    pub fn to_builder(&self) -> ServerPolicyBuilder {
        ServerPolicyBuilder {
            spec: self.0.spec.clone(),
        }
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
        self.0.spec.common.handshake_timeout
    }

    /// The ticket keys, if tickets are enabled (e.g. to rotate them).
    pub fn ticket_keys(&self) -> Option<&TicketKeys> {
        self.0.spec.tickets.as_ref()
    }

    /// Whether client certificates are requested, and whether they are required (a policy
    /// with allow rules always requires them, even if built with [`ClientAuth::Optional`]).
    pub fn client_auth(&self) -> &ClientAuth {
        &self.0.spec.client_auth
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
        self.0.spec.common.versions
    }

    /// The largest plaintext fragment to send, if limited.
    pub(crate) fn max_fragment_size(&self) -> Option<usize> {
        self.0.spec.common.max_fragment_size
    }

    /// A digest of what client authentication depends on: whether client certificates are
    /// requested and required, the trust anchors, and the CRLs (their DER, in order). Two
    /// policies with the same digest accept and refuse the same client certificates; when
    /// it changes, a resumed session (which skips certificate verification) could admit a
    /// client the new policy refuses, so resumption state must not carry over.
    pub fn client_trust_digest(&self) -> crate::Sha256 {
        let mut all = Vec::new();
        let anchors = match &self.0.spec.client_auth {
            ClientAuth::Disabled => {
                all.push(0);
                None
            }
            ClientAuth::Optional(t) => {
                all.push(1);
                Some(t)
            }
            ClientAuth::Required(t) => {
                all.push(2);
                Some(t)
            }
        };
        if let Some(t) = anchors {
            t.roots.digest_into(&mut all);
        }
        all.push(0xff);
        for crl in &self.0.spec.common.revocation.crls {
            all.extend_from_slice(&crate::Sha256::of(crl.as_ref()).0);
        }
        crate::Sha256::of(&all)
    }

    /// `true` when this policy and `other` share ticket keys or a session cache (one was
    /// built with [`ServerPolicyBuilder::resumption_from`] the other, or both from a third).
    pub fn shares_resumption_with(&self, other: &ServerPolicy) -> bool {
        let (a, b) = (&self.0.spec, &other.0.spec);
        let tickets =
            matches!((&a.tickets, &b.tickets), (Some(x), Some(y)) if Arc::ptr_eq(&x.0, &y.0));
        let cache = matches!(
            (&a.session_cache, &b.session_cache),
            (Some(x), Some(y)) if Arc::ptr_eq(&x.0, &y.0)
        );
        tickets || cache
    }

    /// A copy of this policy with new resumption state wherever it shares some with
    /// `previous` (generated ticket keys, an empty session cache of the default size, as a
    /// new builder has); state it does not share, such as fixed keys loaded for a fleet, is
    /// kept. `now` is the build time, as for [`ServerPolicyBuilder::build`].
    pub fn without_resumption_from(
        &self,
        previous: &ServerPolicy,
        now: Time,
    ) -> Result<ServerPolicy, ConfigError> {
        let (a, b) = (&self.0.spec, &previous.0.spec);
        let mut builder = self.to_builder();
        if matches!((&a.tickets, &b.tickets), (Some(x), Some(y)) if Arc::ptr_eq(&x.0, &y.0)) {
            builder.spec.tickets = Some(TicketKeys::generate(TicketKeys::DEFAULT_ROTATION));
        }
        if matches!(
            (&a.session_cache, &b.session_cache),
            (Some(x), Some(y)) if Arc::ptr_eq(&x.0, &y.0)
        ) {
            builder.spec.session_cache = Some(ServerSessionCache::new(
                ServerSessionCache::DEFAULT_CAPACITY,
            ));
        }
        builder.build(now)
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

    /// The same set (same names, same default) with every policy replaced by `f` of it.
    pub fn try_map<E>(
        &self,
        mut f: impl FnMut(&ServerPolicy) -> Result<ServerPolicy, E>,
    ) -> Result<ServerPolicies, E> {
        let default = self.0.default.as_ref().map(&mut f).transpose()?;
        let mut names = Vec::with_capacity(self.0.names.len());
        for (n, p) in &self.0.names {
            names.push((n.clone(), f(p)?));
        }
        Ok(Self(Arc::new(PoliciesInner { names, default })))
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

/// Builds a [`ClientPolicy`]. Start with [`ClientPolicy::builder`].
#[derive(Clone, Debug)]
pub struct ClientPolicyBuilder {
    spec: ClientSpec,
}

impl ClientPolicyBuilder {
    /// Present this certificate chain and key when the server asks (mTLS).
    pub fn client_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.spec.own = Some(OwnCert {
            chain,
            key: Arc::new(key),
        });
        self
    }

    common_setters! {
        /// Revocation checking of server certificates.
        revocation;
        /// Add an allow rule for the server certificate (e.g. an SPKI pin).
        allow;
    }

    /// The session cache that lets a later connection to the same server resume; `None`
    /// disables resumption. Several policies may share one cache.
    pub fn session_cache(mut self, cache: Option<ClientSessionCache>) -> Self {
        self.spec.cache = cache;
        self
    }

    /// How TLS 1.2 sessions resume.
    pub fn tls12_resumption(mut self, r: Tls12Resumption) -> Self {
        self.spec.tls12_resumption = r;
        self
    }

    /// Check everything and build the policy.
    pub fn build(self, now: Time) -> Result<ClientPolicy, ConfigError> {
        let suites = self.spec.common.enabled_suites()?;
        let mut warnings = Vec::new();
        if let Some(own) = &self.spec.own {
            warnings = check_own_cert(&own.chain, now, self.spec.common.expiry_warning)?.1;
        }
        let crls = if self.spec.common.revocation.crls.is_empty() {
            Vec::new()
        } else {
            let (crls, w) = check_crls(&self.spec.common.revocation, &self.spec.trust, now)?;
            warnings.extend(w);
            crls
        };
        let crls: Arc<[LoadedCrl]> = crls.into();
        let leaves = Arc::new(LeafCache::default());
        let tls = backend::client_config(&self.spec, &suites, now, leaves.clone(), &crls)?;
        Ok(ClientPolicy(Arc::new(ClientInner {
            tls,
            leaves,
            crls,
            warnings,
            spec: self.spec,
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
    pub spec: ClientSpec,
}

/// A client's TLS policy. Cloning is cheap; sessions hold a clone.
#[derive(Clone, Debug)]
pub struct ClientPolicy(pub(crate) Arc<ClientInner>);

impl ClientPolicy {
    /// An identifier of this policy, shared by its clones and by no other live policy (the
    /// address of its shared state): pools of connections made under one policy key on it.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Start from the ONE Record defaults, trusting only `trust`.
    pub fn builder(trust: TrustStore) -> ClientPolicyBuilder {
        ClientPolicyBuilder {
            spec: ClientSpec {
                common: Common::default(),
                trust,
                own: None,
                cache: Some(ClientSessionCache::new(
                    ClientSessionCache::DEFAULT_CAPACITY,
                )),
                tls12_resumption: Tls12Resumption::default(),
            },
        }
    }

    /// The builder this policy was made from (keeps the session cache).
    pub fn to_builder(&self) -> ClientPolicyBuilder {
        ClientPolicyBuilder {
            spec: self.0.spec.clone(),
        }
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
        self.0.spec.common.handshake_timeout
    }

    /// The session cache, if resumption is enabled.
    pub fn session_cache(&self) -> Option<&ClientSessionCache> {
        self.0.spec.cache.as_ref()
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
        self.0.spec.common.max_fragment_size
    }
}
