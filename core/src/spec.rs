//! The plain data a policy says: what the builders collect and what the backend compiles
//! into a rustls configuration. No behaviour beyond defaults and self-consistency checks.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;
use crate::identity::IdentityRules;
use crate::resumption::{ClientSessionCache, ServerSessionCache, TicketKeys};
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
    /// ([`crate::ServerPolicyBuilder::allow`]) this becomes [`ClientAuth::Required`]: an allow-list
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
    /// Warn ([`crate::Warning::CrlExpiresSoon`]) when a CRL's `nextUpdate` is this close at build.
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
    pub(crate) fn narrow_suites(&mut self, suites: &[CipherSuite]) {
        self.suites = suites.to_vec();
    }

    pub(crate) fn enabled_suites(&self) -> Result<Vec<CipherSuite>, ConfigError> {
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

/// What a server policy says.
#[derive(Clone, Debug)]
pub(crate) struct ServerSpec {
    pub common: Common,
    pub own: OwnCert,
    pub client_auth: ClientAuth,
    pub tickets: Option<TicketKeys>,
    pub session_cache: Option<ServerSessionCache>,
    pub tls13_tickets: usize,
}

/// What a client policy says.
#[derive(Clone, Debug)]
pub(crate) struct ClientSpec {
    pub common: Common,
    pub trust: TrustStore,
    pub own: Option<OwnCert>,
    pub cache: Option<ClientSessionCache>,
    pub tls12_resumption: Tls12Resumption,
}
