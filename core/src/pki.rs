//! Loading certificates, keys, CA bundles and CRLs.
//!
//! PEM is parsed by `rustls-pki-types` (no hand-written parser here). Every loader names what
//! it was reading in its error; the `*_file` variants (feature `std`) also name the file.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use pki_types::pem::{self, PemObject};
use pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::ConfigError;
use crate::time::Time;

pub use pki_types::{CertificateDer as Certificate, PrivateKeyDer as PrivateKey};

/// Certificate revocation list in DER.
pub type Crl = CertificateRevocationListDer<'static>;

fn pem_error(what: &'static str, e: pem::Error) -> ConfigError {
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

/// The first private key in a PEM input: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
/// PKCS#1 (`RSA PRIVATE KEY`).
///
/// An encrypted key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy OpenSSL key with a
/// `Proc-Type: 4,ENCRYPTED` header) is [`ConfigError::EncryptedPrivateKey`], whose message
/// gives the `openssl` command that decrypts it.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => Ok(k),
        Err(e) => Err(match encrypted_key_format(pem) {
            Some(format) => ConfigError::EncryptedPrivateKey { format },
            None if matches!(e, pem::Error::NoItemsFound) => ConfigError::NoPrivateKey,
            None => pem_error("private key", e),
        }),
    }
}

/// How the first encrypted private key in `pem` is encrypted, if there is one.
fn encrypted_key_format(pem: &[u8]) -> Option<&'static str> {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    if has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some("PKCS#8 ENCRYPTED PRIVATE KEY")
    } else if has(b"Proc-Type: 4,ENCRYPTED") {
        Some("PEM Proc-Type 4,ENCRYPTED")
    } else {
        None
    }
}

/// CRLs from PEM (`X509 CRL` sections, any number) or from a single DER CRL. Each CRL is
/// parsed ([`CrlInfo::parse`]): a damaged one is a [`ConfigError::BadCrl`] with its index.
pub fn crls_from_pem_or_der(input: &[u8]) -> Result<Vec<Crl>, ConfigError> {
    let crls = if looks_like_pem(input) {
        let crls = CertificateRevocationListDer::pem_slice_iter(input)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("CRL", e))?;
        if crls.is_empty() {
            return Err(ConfigError::BadCrl {
                index: 0,
                detail: "no X509 CRL section".to_string(),
            });
        }
        crls
    } else if input.first() == Some(&0x30) {
        alloc::vec![CertificateRevocationListDer::from(input.to_vec())]
    } else {
        return Err(ConfigError::BadCrl {
            index: 0,
            detail: "neither PEM nor DER".to_string(),
        });
    };
    for (index, crl) in crls.iter().enumerate() {
        CrlInfo::parse(crl).map_err(|e| e.at_crl_index(index))?;
    }
    Ok(crls)
}

/// What a CRL says, parsed (not verified: see [`check_crl`]). For operators and metrics.
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

/// Parse a DER CRL and check it against a trust store: its issuer must be one of the
/// store's certificates (compared byte for byte, as RFC 5280 path validation does), and its
/// signature must verify with that certificate's key (ring, through the rustls provider's
/// verification algorithms).
///
/// What this covers: the CA bundle is the whole of what is checked. A bundle may carry
/// intermediates next to roots (each is an anchor); a CRL of such an intermediate passes.
/// A CRL of an intermediate that peers only send in their chains fails with
/// [`ConfigError::CrlIssuerUnknown`]: add that intermediate to the bundle.
pub fn check_crl(der: &[u8], trust: &TrustStore) -> Result<CrlInfo, ConfigError> {
    let info = CrlInfo::parse(der)?;
    crate::backend::verify_crl(der, &trust.roots, &info.issuer)?;
    Ok(info)
}

fn looks_like_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The trusted CA list: the only certificates a peer's chain may lead to.
///
/// There are no built-in or system roots; an empty store is refused when a policy is built.
/// Cloning is cheap (the anchors are shared).
#[derive(Clone, Debug)]
pub struct TrustStore {
    pub(crate) roots: Arc<rustls::RootCertStore>,
}

impl Default for TrustStore {
    fn default() -> Self {
        Self {
            roots: Arc::new(rustls::RootCertStore::empty()),
        }
    }
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
        Arc::make_mut(&mut self.roots)
            .add(der.into_owned())
            .map_err(|e| ConfigError::BadTrustAnchor {
                index: 0,
                detail: e.to_string(),
            })
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// `true` when there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub(crate) fn checked(&self) -> Result<Arc<rustls::RootCertStore>, ConfigError> {
        if self.is_empty() {
            return Err(ConfigError::EmptyTrustStore);
        }
        Ok(self.roots.clone())
    }
}

#[cfg(feature = "std")]
mod files {
    use super::*;
    use alloc::string::String;
    use std::path::Path;

    fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    }

    fn name(path: &Path) -> String {
        path.display().to_string()
    }

    /// [`certificates_from_pem`] on a file.
    pub fn certificates_from_file(
        path: impl AsRef<Path>,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = path.as_ref();
        certificates_from_pem(&read(path)?, "certificate file").map_err(|e| e.in_file(name(path)))
    }

    /// [`private_key_from_pem`] on a file.
    pub fn private_key_from_file(
        path: impl AsRef<Path>,
    ) -> Result<PrivateKeyDer<'static>, ConfigError> {
        let path = path.as_ref();
        private_key_from_pem(&read(path)?).map_err(|e| e.in_file(name(path)))
    }

    /// [`crls_from_pem_or_der`] on a file.
    pub fn crls_from_file(path: impl AsRef<Path>) -> Result<Vec<Crl>, ConfigError> {
        let path = path.as_ref();
        crls_from_pem_or_der(&read(path)?).map_err(|e| e.in_file(name(path)))
    }

    impl TrustStore {
        /// [`TrustStore::from_pem`] on a file.
        pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
            let path = path.as_ref();
            Self::from_pem(&read(path)?).map_err(|e| e.in_file(name(path)))
        }
    }
}

#[cfg(feature = "std")]
pub use files::{certificates_from_file, crls_from_file, private_key_from_file};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificate_is_named_error() {
        let err = certificates_from_pem(b"hello", "server chain").unwrap_err();
        assert_eq!(
            err,
            ConfigError::NoCertificate {
                what: "server chain"
            }
        );
        assert_eq!(
            private_key_from_pem(b"").unwrap_err(),
            ConfigError::NoPrivateKey
        );
    }

    #[test]
    fn encrypted_private_key_is_refused_with_the_command_that_decrypts_it() {
        // Shapes of `openssl genpkey ... -aes256` (PKCS#8) and `openssl genrsa -aes256` /
        // `openssl ec -aes256` (legacy PEM encryption); the bodies are never decrypted.
        let pkcs8 = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let legacy_rsa = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,3F1E5C0A0B0C0D0E0F10111213141516\n\nMIIEpAIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----\n";
        let legacy_ec = b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,3F1E5C0A0B0C0D0E0F10111213141516\n\nMHcCAQEEIA\n-----END EC PRIVATE KEY-----\n";
        for (pem, format) in [
            (&pkcs8[..], "PKCS#8 ENCRYPTED PRIVATE KEY"),
            (&legacy_rsa[..], "PEM Proc-Type 4,ENCRYPTED"),
            (&legacy_ec[..], "PEM Proc-Type 4,ENCRYPTED"),
        ] {
            let err = private_key_from_pem(pem).unwrap_err();
            assert_eq!(err, ConfigError::EncryptedPrivateKey { format });
            let msg = err.to_string();
            assert!(
                msg.contains("encrypted private keys are not supported"),
                "{msg}"
            );
            assert!(
                msg.contains("openssl pkey -in key.pem -out key-decrypted.pem"),
                "{msg}"
            );
        }
    }

    #[test]
    fn empty_trust_store_is_refused() {
        assert_eq!(
            TrustStore::new().checked().unwrap_err(),
            ConfigError::EmptyTrustStore
        );
        assert!(TrustStore::from_pem(b"").is_err());
    }

    #[test]
    fn crl_input_must_be_pem_or_der() {
        assert!(matches!(
            crls_from_pem_or_der(b"xx"),
            Err(ConfigError::BadCrl { .. })
        ));
        // A DER-looking input is parsed when loaded: an empty SEQUENCE is not a CRL.
        assert!(matches!(
            crls_from_pem_or_der(&[0x30, 0x00]),
            Err(ConfigError::BadCrl { index: 0, .. })
        ));
    }
}
