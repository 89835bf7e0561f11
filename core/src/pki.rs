//! Loading certificates, keys, CA bundles and CRLs: functions only; the types they return
//! ([`crate::Certificate`], [`crate::PrivateKey`], [`crate::Crl`], [`crate::CrlInfo`],
//! [`crate::TrustStore`]) are at the crate root.
//!
//! PEM is parsed by `rustls-pki-types` (no hand-written parser here). Every loader names what
//! it was reading in its error; the `*_file` variants (feature `std`) also name the file.

use alloc::string::ToString;
use alloc::vec::Vec;

use pki_types::pem::{self, PemObject};
use pki_types::{CertificateRevocationListDer, PrivateKeyDer};

use crate::error::ConfigError;
use crate::trust::{Crl, CrlInfo, TrustStore, pem_error};

pub use crate::trust::certificates_from_pem;

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

/// Parse a DER CRL and check it against a trust store: its issuer must be one of the
/// store's certificates (compared byte for byte, as RFC 5280 path validation does), and its
/// signature must verify with that certificate's key (ring, through the rustls provider's
/// verification algorithms).
///
/// What this covers: the CA bundle is the whole of what is checked. A bundle may carry
/// intermediates next to roots (each is an anchor); a CRL of such an intermediate passes.
/// A CRL of an intermediate that peers only send in their chains fails with
/// [`ConfigError::CrlIssuerUnknown`]: add that intermediate to the bundle.
///
/// The issuer's CA certificate must also be allowed to sign CRLs: one whose key usage
/// extension lacks `cRLSign` gives [`ConfigError::CrlIssuerNotCrlSigner`] (RFC 5280 section
/// 6.3.3 (f); OpenSSL refuses such a CRL as well, while rustls-webpki does not read a trust
/// anchor's key usage). A CA certificate without a key usage extension may sign CRLs, as
/// rustls-webpki reads it.
pub fn check_crl(der: &[u8], trust: &TrustStore) -> Result<CrlInfo, ConfigError> {
    let info = CrlInfo::parse(der)?;
    trust.roots.verify_crl(der, &info.issuer)?;
    Ok(info)
}

fn looks_like_pem(input: &[u8]) -> bool {
    input.windows(11).any(|w| w == b"-----BEGIN ")
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
    ) -> Result<Vec<crate::trust::Certificate<'static>>, ConfigError> {
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
