//! The data types of certificates, keys, CRLs and the trusted CA list (the loaders are in
//! [`crate::pki`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use pki_types::pem::{self, PemObject};
use pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::backend::roots::Roots;
use crate::error::ConfigError;
use crate::time::Time;

pub use pki_types::{CertificateDer as Certificate, PrivateKeyDer as PrivateKey};

/// Certificate revocation list in DER.
pub type Crl = CertificateRevocationListDer<'static>;

pub(crate) fn pem_error(what: &'static str, e: pem::Error) -> ConfigError {
    ConfigError::Pem {
        what,
        detail: alloc::format!("{e:?}"),
    }
}

/// Every certificate in a PEM input (other sections, such as keys, are skipped).
///
/// Fails with [`ConfigError::NoCertificate`] when there is none.
pub fn certificates_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, e))?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate { what });
    }
    Ok(certs)
}

/// What a CRL says, parsed (not verified: see [`crate::pki::check_crl`]). For operators and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The issuer, as an RFC 4514 string (formatted like [`crate::CertInfo::issuer`]).
    pub issuer: String,
    /// `thisUpdate`: when it was issued.
    pub this_update: Time,
    /// `nextUpdate`: when a fresh CRL is due. A CRL without one never expires.
    pub next_update: Option<Time>,
    /// The `cRLNumber` extension, big-endian bytes as encoded, when present.
    pub number: Option<Vec<u8>>,
    /// Number of revoked certificates listed.
    pub revoked: usize,
}

/// OID of the `cRLNumber` extension (RFC 5280 5.2.3).
const OID_CRL_NUMBER: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.20");

impl CrlInfo {
    /// Parse a DER CRL. A malformed one is a [`ConfigError::BadCrl`] (index 0); never panics.
    pub fn parse(der: &[u8]) -> Result<Self, ConfigError> {
        use x509_cert::der::Decode;
        let bad = |detail: String| ConfigError::BadCrl { index: 0, detail };
        let list =
            x509_cert::crl::CertificateList::from_der(der).map_err(|e| bad(e.to_string()))?;
        let tbs = &list.tbs_cert_list;
        let mut number = None;
        for ext in tbs.crl_extensions.iter().flatten() {
            if ext.extn_id == OID_CRL_NUMBER {
                let n = x509_cert::der::asn1::Uint::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| bad(alloc::format!("cRLNumber: {e}")))?;
                number = Some(n.as_bytes().to_vec());
            }
        }
        Ok(Self {
            issuer: tbs.issuer.to_string(),
            this_update: Time::from(tbs.this_update.to_unix_duration()),
            next_update: tbs.next_update.map(|t| Time::from(t.to_unix_duration())),
            number,
            revoked: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
        })
    }

    /// `true` when `nextUpdate` has passed at `now`.
    pub fn is_expired(&self, now: Time) -> bool {
        self.next_update.is_some_and(|n| now >= n)
    }
}

/// The trusted CA list: the only certificates a peer's chain may lead to.
///
/// There are no built-in or system roots; an empty store is refused when a policy is built.
/// Cloning is cheap (the anchors are shared).
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    pub(crate) roots: Roots,
}

impl TrustStore {
    /// An empty store. Add anchors before building a policy with it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CA certificates of a PEM bundle. Every certificate must be usable as an anchor.
    pub fn from_pem(bundle: &[u8]) -> Result<Self, ConfigError> {
        let mut store = Self::new();
        store.add_pem(bundle)?;
        Ok(store)
    }

    /// Add the CA certificates of a PEM bundle.
    pub fn add_pem(&mut self, bundle: &[u8]) -> Result<usize, ConfigError> {
        let certs = certificates_from_pem(bundle, "CA bundle")?;
        let n = certs.len();
        for (index, der) in certs.into_iter().enumerate() {
            self.add_der(der).map_err(|e| match e {
                ConfigError::BadTrustAnchor { detail, .. } => {
                    ConfigError::BadTrustAnchor { index, detail }
                }
                other => other,
            })?;
        }
        Ok(n)
    }

    /// Add one DER CA certificate.
    pub fn add_der(&mut self, der: CertificateDer<'_>) -> Result<(), ConfigError> {
        self.roots
            .add(der.into_owned())
            .map_err(|detail| ConfigError::BadTrustAnchor { index: 0, detail })
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// `true` when there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The anchors, refusing an empty store.
    pub(crate) fn checked(&self) -> Result<&Roots, ConfigError> {
        if self.is_empty() {
            return Err(ConfigError::EmptyTrustStore);
        }
        Ok(&self.roots)
    }
}
