//! Everything that names a rustls type lives under this module, so that a move to another
//! rustls line (0.24 removed the unbuffered API) touches one place.
//!
//! - this file: the caller-driven clock, the crypto provider, rustls configs, our verifiers,
//!   ticket and session-store trait implementations;
//! - [`engine`]: the unbuffered connection driver;
//! - `alerts`: rustls errors → reasons and alerts, and the alert actually sent;
//! - `alert_spy`: the record-layer wrapper that notes encrypted alerts;
//! - [`roots`]: the trust anchors and the CRL signature check;
//! - [`client_cache`]: the client session store.
//!
//! Nothing here imports `policy` or `session`: a policy is compiled from its plain data
//! (`crate::spec`) into [`ServerTls`] / [`ClientTls`], which the engine runs.

mod alert_spy;
mod alerts;
pub(crate) mod client_cache;
pub(crate) mod engine;
pub(crate) mod roots;

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, ring as ring_provider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    NoServerSessionStorage, ProducesTickets, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

use crate::error::ConfigError;
use crate::identity::{IdentityRules, LeafCache};
use crate::resumption::{ServerSessionCache, TicketKeys};
use crate::spec::{
    ClientAuth, ClientSpec, Common, LoadedCrl, OwnCert, Revocation, ServerSpec, Tls12Resumption,
    UnknownStatus,
};
use crate::time::Time;
use crate::vocabulary::{CipherSuite, Group, Versions};

#[cfg(target_has_atomic = "64")]
type AtomicSecs = core::sync::atomic::AtomicU64;
#[cfg(not(target_has_atomic = "64"))]
type AtomicSecs = core::sync::atomic::AtomicU32;

/// rustls pulls time from a `TimeProvider`; this one returns the last `now` a session of the
/// policy was driven with. The core never reads a clock.
#[derive(Debug)]
pub(crate) struct Clock(AtomicSecs);

impl Clock {
    pub(crate) fn new(now: Time) -> Self {
        let c = Self(AtomicSecs::new(0));
        c.set(now);
        c
    }

    pub(crate) fn set(&self, now: Time) {
        let secs = now.as_unix_secs();
        #[cfg(not(target_has_atomic = "64"))]
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self.0.store(secs, core::sync::atomic::Ordering::Relaxed);
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        let secs = self.0.load(core::sync::atomic::Ordering::Relaxed);
        #[allow(clippy::useless_conversion)]
        Some(UnixTime::since_unix_epoch(Duration::from_secs(u64::from(
            secs,
        ))))
    }
}

fn rustls_suite(s: CipherSuite) -> rustls::SupportedCipherSuite {
    use ring_provider::cipher_suite as cs;
    match s {
        CipherSuite::Tls13Aes128GcmSha256 => cs::TLS13_AES_128_GCM_SHA256,
        CipherSuite::Tls13Chacha20Poly1305Sha256 => cs::TLS13_CHACHA20_POLY1305_SHA256,
        CipherSuite::Tls13Aes256GcmSha384 => cs::TLS13_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaChacha20Poly1305Sha256 => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheRsaChacha20Poly1305Sha256 => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    }
}

pub(crate) fn suite_from_rustls(s: rustls::SupportedCipherSuite) -> Option<CipherSuite> {
    let id = s.suite();
    CipherSuite::ALL
        .into_iter()
        .find(|c| rustls_suite(*c).suite() == id)
}

fn rustls_group(g: Group) -> &'static dyn rustls::crypto::SupportedKxGroup {
    use ring_provider::kx_group as kx;
    match g {
        Group::X25519 => kx::X25519,
        Group::P256 => kx::SECP256R1,
        Group::P384 => kx::SECP384R1,
    }
}

pub(crate) fn group_from_rustls(g: rustls::NamedGroup) -> Option<Group> {
    Group::ALL
        .into_iter()
        .find(|x| rustls_group(*x).name() == g)
}

/// ring's provider, narrowed to the policy's suites and groups, in the policy's order; the
/// suites' AEADs note the alerts they encrypt ([`alert_spy`]).
fn provider(suites: &[CipherSuite], groups: &[Group]) -> Arc<CryptoProvider> {
    let base = ring_provider::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: suites
            .iter()
            .map(|s| alert_spy::spied(rustls_suite(*s)))
            .collect(),
        kx_groups: groups.iter().map(|g| rustls_group(*g)).collect(),
        ..base
    })
}

static TLS13_AND_TLS12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];

fn versions(v: Versions) -> &'static [&'static SupportedProtocolVersion] {
    match v {
        Versions::Tls13AndTls12 => &TLS13_AND_TLS12,
        Versions::Tls13Only => &TLS13_ONLY,
        Versions::Tls12Only => &TLS12_ONLY,
    }
}

fn tls_config_error(e: impl core::fmt::Display) -> ConfigError {
    ConfigError::Tls {
        detail: e.to_string(),
    }
}

fn certified_key(
    own: &OwnCert,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let key = provider
        .key_provider
        .load_private_key(own.key.clone_key())
        .map_err(|_| ConfigError::UnsupportedKeyType)?;
    let ck = CertifiedKey::new(own.chain.clone(), key);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(_) => Err(ConfigError::KeyMismatch),
    }
}

fn crl_error(e: rustls::server::VerifierBuilderError) -> ConfigError {
    match e {
        rustls::server::VerifierBuilderError::NoRootAnchors => ConfigError::EmptyTrustStore,
        rustls::server::VerifierBuilderError::InvalidCrl(e) => ConfigError::BadCrl {
            index: 0,
            detail: alloc::format!("{e:?}"),
        },
        other => tls_config_error(alloc::format!("{other:?}")),
    }
}

/// webpki's own `nextUpdate` check has no grace: with a grace it is left off and
/// [`CrlGrace`] checks expiry instead.
fn enforce_expiry_in_webpki(r: &Revocation) -> bool {
    r.enforce_crl_expiry && r.grace.is_zero()
}

fn crl_grace(r: &Revocation, crls: &[LoadedCrl]) -> Option<CrlGrace> {
    if crls.is_empty() || !r.enforce_crl_expiry || r.grace.is_zero() {
        return None;
    }
    Some(CrlGrace {
        crls: crls
            .iter()
            .filter_map(|c| Some((c.info.issuer.clone(), c.info.next_update?)))
            .collect(),
        grace: r.grace,
        end_entity_only: r.end_entity_only,
    })
}

/// A compiled server policy as rustls runs it: the config and the clock it reads.
#[derive(Debug)]
pub(crate) struct ServerTls {
    config: Arc<ServerConfig>,
    clock: Arc<Clock>,
}

impl ServerTls {
    /// A connection for a ClientHello admitted at `now`.
    pub(crate) fn accept(
        &self,
        now: Time,
    ) -> Result<rustls::server::UnbufferedServerConnection, rustls::Error> {
        self.clock.set(now);
        rustls::server::UnbufferedServerConnection::new(self.config.clone())
    }

    pub(crate) fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }
}

/// A compiled client policy as rustls runs it: the config and the clock it reads.
#[derive(Debug)]
pub(crate) struct ClientTls {
    config: Arc<ClientConfig>,
    clock: Arc<Clock>,
}

impl ClientTls {
    /// A connection to `name`, started at `now`.
    pub(crate) fn connect(
        &self,
        name: ServerName<'static>,
        now: Time,
    ) -> Result<rustls::client::UnbufferedClientConnection, rustls::Error> {
        self.clock.set(now);
        rustls::client::UnbufferedClientConnection::new(self.config.clone(), name)
    }

    pub(crate) fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }
}

pub(crate) fn server_config(
    b: &ServerSpec,
    suites: &[CipherSuite],
    now: Time,
    leaves: Arc<LeafCache>,
    crls: &[LoadedCrl],
) -> Result<ServerTls, ConfigError> {
    let clock = Arc::new(Clock::new(now));
    let common = &b.common;
    let provider = provider(suites, &common.groups);
    let ck = certified_key(&b.own, &provider)?;
    let verifier: Arc<dyn ClientCertVerifier> = match &b.client_auth {
        ClientAuth::Disabled => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Optional(trust) | ClientAuth::Required(trust) => {
            let mut vb = WebPkiClientVerifier::builder_with_provider(
                trust.checked()?.store(),
                provider.clone(),
            );
            let r = &common.revocation;
            if !r.crls.is_empty() {
                vb = vb.with_crls(r.crls.iter().cloned());
                if r.unknown_status == UnknownStatus::Allow {
                    vb = vb.allow_unknown_revocation_status();
                }
                if enforce_expiry_in_webpki(r) {
                    vb = vb.enforce_revocation_expiration();
                }
                if r.end_entity_only {
                    vb = vb.only_check_end_entity_revocation();
                }
            }
            if matches!(b.client_auth, ClientAuth::Optional(_)) {
                vb = vb.allow_unauthenticated();
            }
            Arc::new(PolicyClientVerifier {
                inner: vb.build().map_err(crl_error)?,
                rules: common.rules.clone(),
                leaves,
                grace: crl_grace(&common.revocation, crls),
            })
        }
    };
    let mut cfg = ServerConfig::builder_with_details(provider, clock.clone())
        .with_protocol_versions(versions(common.versions))
        .map_err(tls_config_error)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(ck)));
    apply_common(common, &mut cfg.alpn_protocols, &mut cfg.max_fragment_size);
    cfg.ignore_client_order = true;
    cfg.max_early_data_size = 0;
    cfg.send_half_rtt_data = false;
    cfg.send_tls13_tickets = b.tls13_tickets;
    cfg.ticketer = match &b.tickets {
        Some(keys) => Arc::new(keys.clone()),
        None => Arc::new(NoTickets),
    };
    cfg.session_storage = match &b.session_cache {
        Some(cache) if cache.enabled() => Arc::new(cache.clone()),
        _ => Arc::new(NoServerSessionStorage {}),
    };
    Ok(ServerTls {
        config: Arc::new(cfg),
        clock,
    })
}

fn apply_common(common: &Common, alpn: &mut Vec<Vec<u8>>, mfs: &mut Option<usize>) {
    alpn.clone_from(&common.alpn);
    *mfs = common.max_fragment_size;
}

pub(crate) fn client_config(
    b: &ClientSpec,
    suites: &[CipherSuite],
    now: Time,
    leaves: Arc<LeafCache>,
    crls: &[LoadedCrl],
) -> Result<ClientTls, ConfigError> {
    let clock = Arc::new(Clock::new(now));
    let common = &b.common;
    let provider = provider(suites, &common.groups);
    let mut vb =
        WebPkiServerVerifier::builder_with_provider(b.trust.checked()?.store(), provider.clone());
    let r = &common.revocation;
    if !r.crls.is_empty() {
        vb = vb.with_crls(r.crls.iter().cloned());
        if r.unknown_status == UnknownStatus::Allow {
            vb = vb.allow_unknown_revocation_status();
        }
        if enforce_expiry_in_webpki(r) {
            vb = vb.enforce_revocation_expiration();
        }
        if r.end_entity_only {
            vb = vb.only_check_end_entity_revocation();
        }
    }
    let webpki = vb.build().map_err(crl_error)?;
    let ck = b
        .own
        .as_ref()
        .map(|own| certified_key(own, &provider))
        .transpose()?;
    let builder = ClientConfig::builder_with_details(provider, clock.clone())
        .with_protocol_versions(versions(common.versions))
        .map_err(tls_config_error)?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PolicyServerVerifier {
            inner: webpki,
            rules: common.rules.clone(),
            leaves,
            grace: crl_grace(&common.revocation, crls),
        }));
    let mut cfg = match ck {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ck))),
        None => builder.with_no_client_auth(),
    };
    apply_common(common, &mut cfg.alpn_protocols, &mut cfg.max_fragment_size);
    cfg.enable_sni = true;
    cfg.enable_early_data = false;
    cfg.resumption = match &b.cache {
        Some(cache) => {
            Resumption::store(cache.0.clone()).tls12_resumption(match b.tls12_resumption {
                Tls12Resumption::TicketsOrSessionId => {
                    rustls::client::Tls12Resumption::SessionIdOrTickets
                }
                Tls12Resumption::SessionIdOnly => rustls::client::Tls12Resumption::SessionIdOnly,
                Tls12Resumption::Disabled => rustls::client::Tls12Resumption::Disabled,
            })
        }
        None => Resumption::disabled(),
    };
    Ok(ClientTls {
        config: Arc::new(cfg),
        clock,
    })
}

#[cfg(feature = "std")]
std::thread_local! {
    /// The end-entity certificate a peer presented whose verification just failed, on the
    /// thread that drives the session. Written only on failure (the success path pays
    /// nothing); read and cleared by the engine when it reports the failure.
    static PRESENTED: core::cell::RefCell<Option<CertificateDer<'static>>> =
        const { core::cell::RefCell::new(None) };
}

/// Remember the certificate whose verification failed (std only).
fn note_presented(end_entity: &CertificateDer<'_>) {
    #[cfg(feature = "std")]
    PRESENTED.with(|p| *p.borrow_mut() = Some(end_entity.clone().into_owned()));
    #[cfg(not(feature = "std"))]
    let _ = end_entity;
}

/// The certificate noted by the last failed verification on this thread, if any (std
/// only), clearing it.
pub(crate) fn take_presented() -> Option<CertificateDer<'static>> {
    #[cfg(feature = "std")]
    return PRESENTED.with(|p| p.borrow_mut().take());
    #[cfg(not(feature = "std"))]
    None
}

/// `nextUpdate` plus a grace, checked in place of webpki's check (which has no grace).
#[derive(Debug)]
struct CrlGrace {
    /// `(issuer, nextUpdate)` of each CRL.
    crls: Vec<(String, Time)>,
    grace: Duration,
    end_entity_only: bool,
}

impl CrlGrace {
    /// Refuse when a CRL of the issuer of a certificate of the chain is past `nextUpdate` +
    /// grace, with the error webpki gives for an expired CRL.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        leaves: &LeafCache,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let at = Time::from(now);
        let mut issuers = Vec::new();
        if let Ok(leaf) = leaves.parse(end_entity) {
            issuers.push(leaf.issuer);
        }
        if !self.end_entity_only {
            issuers.extend(
                intermediates
                    .iter()
                    .filter_map(|c| crate::cert::CertInfo::parse(c).ok())
                    .map(|c| c.issuer),
            );
        }
        for (issuer, next) in &self.crls {
            if issuers.contains(issuer) && at >= next.saturating_add(self.grace) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ExpiredRevocationListContext {
                        time: now,
                        next_update: UnixTime::since_unix_epoch(Duration::from_secs(
                            next.as_unix_secs(),
                        )),
                    },
                ));
            }
        }
        Ok(())
    }
}

/// Chain verification by webpki (revocation included), then the CRL grace, then the
/// policy's identity rules. A verified certificate that matches no rule fails with
/// `ApplicationVerificationFailure`, which rustls answers with the `access_denied` alert.
/// The certificate of a failed verification is noted for the engine ([`take_presented`]).
#[derive(Debug)]
struct PolicyClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rules: IdentityRules,
    /// The policy's parsed leaves: the rule check parses the leaf once for the identity too.
    leaves: Arc<LeafCache>,
    grace: Option<CrlGrace>,
}

impl PolicyClientVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(g) = &self.grace {
            g.check(end_entity, intermediates, &self.leaves, now)?;
        }
        if self.rules.is_empty() || self.rules.allows_der_cached(end_entity, &self.leaves) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ClientCertVerifier for PolicyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let r = self.check(end_entity, intermediates, now);
        if r.is_err() {
            note_presented(end_entity);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server-certificate counterpart of [`PolicyClientVerifier`] (e.g. SPKI pinning).
#[derive(Debug)]
struct PolicyServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    rules: IdentityRules,
    /// The policy's parsed leaves, as in [`PolicyClientVerifier`].
    leaves: Arc<LeafCache>,
    grace: Option<CrlGrace>,
}

impl PolicyServerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(g) = &self.grace {
            g.check(end_entity, intermediates, &self.leaves, now)?;
        }
        if self.rules.is_empty() || self.rules.allows_der_cached(end_entity, &self.leaves) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for PolicyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.check(end_entity, intermediates, server_name, ocsp_response, now);
        if r.is_err() {
            note_presented(end_entity);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        !self.is_empty()
    }
    fn lifetime(&self) -> u32 {
        self.lifetime_secs()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

impl StoresServerSessions for ServerSessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        ServerSessionCache::put(self, key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        ServerSessionCache::get(self, key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        ServerSessionCache::take(self, key)
    }
    fn can_cache(&self) -> bool {
        self.enabled()
    }
}
