//! The trust anchors as rustls holds them, and the CRL signature and key usage check against
//! them.

use alloc::string::{String, ToString};
use alloc::sync::Arc;

use pki_types::CertificateDer;
use rustls::crypto::ring as ring_provider;

use crate::error::ConfigError;

/// The parts of a DER CRL that its signature covers and needs: the whole `tbsCertList`, the
/// `signatureAlgorithm` contents, the signature bits, and the raw issuer `Name` contents.
struct CrlParts<'a> {
    tbs: &'a [u8],
    alg: &'a [u8],
    signature: &'a [u8],
    issuer: &'a [u8],
}

fn crl_parts(der: &[u8]) -> Result<CrlParts<'_>, x509_cert::der::Error> {
    use x509_cert::der::asn1::{AnyRef, BitStringRef};
    use x509_cert::der::{Decode, Reader, SliceReader, Tag};
    let mut r = SliceReader::new(der)?;
    let (tbs, alg, signature) = r.sequence(|r| {
        let tbs = r.tlv_bytes()?;
        let alg = AnyRef::decode(r)?.value();
        let sig = BitStringRef::decode(r)?.raw_bytes();
        Ok((tbs, alg, sig))
    })?;
    r.finish(())?;
    let mut t = SliceReader::new(tbs)?;
    let issuer = t.sequence(|t| {
        if t.peek_tag()? == Tag::Integer {
            AnyRef::decode(t)?;
        }
        AnyRef::decode(t)?;
        let issuer = AnyRef::decode(t)?.value();
        let rest = t.remaining_len();
        t.read_slice(rest)?;
        Ok(issuer)
    })?;
    Ok(CrlParts {
        tbs,
        alg,
        signature,
        issuer,
    })
}

/// The `(algorithm contents, key bits)` of a DER `SubjectPublicKeyInfo`'s contents.
fn spki_parts(spki: &[u8]) -> Result<(&[u8], &[u8]), x509_cert::der::Error> {
    use x509_cert::der::asn1::{AnyRef, BitStringRef};
    use x509_cert::der::{Decode, Reader, SliceReader};
    let mut r = SliceReader::new(spki)?;
    let alg = AnyRef::decode(&mut r)?.value();
    let key = BitStringRef::decode(&mut r)?.raw_bytes();
    r.finish((alg, key))
}

/// `false` when the DER certificate has a key usage extension without `cRLSign`, read as
/// rustls-webpki reads the key usage of a CRL's issuer (`KeyUsageMode::CrlSign` in its
/// `crl` module): no extension means any usage; a value that is no well-formed DER BIT
/// STRING (more than 7 or non-zero padding bits, padding without bits) asserts nothing. A
/// certificate x509-cert cannot parse counts as having no extension (rustls accepted it as
/// an anchor, and webpki does not read an anchor's key usage).
fn may_sign_crls(der: &[u8]) -> bool {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::BitStringRef;
    const KEY_USAGE: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.15");
    /// RFC 5280 section 4.2.1.3: `cRLSign (6)`.
    const CRL_SIGN: usize = 6;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return true;
    };
    let Some(ku) = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == KEY_USAGE)
    else {
        return true;
    };
    let Ok(bits) = BitStringRef::from_der(ku.extn_value.as_bytes()) else {
        return false;
    };
    let (padding, raw) = (bits.unused_bits(), bits.raw_bytes());
    let well_formed = match (padding, raw.last()) {
        (8.., _) | (1.., None) => false,
        (1..=7, Some(last)) => last & ((1 << padding) - 1) == 0,
        _ => true,
    };
    well_formed
        && raw
            .get(CRL_SIGN / 8)
            .is_some_and(|b| (b >> (7 - CRL_SIGN % 8)) & 1 == 1)
}

/// The trust anchors of a [`crate::TrustStore`], as rustls holds them. Cloning is cheap.
#[derive(Clone, Debug)]
pub(crate) struct Roots {
    store: Arc<rustls::RootCertStore>,
    /// Per anchor, in the store's order: whether its certificate may sign CRLs
    /// ([`may_sign_crls`]; rustls keeps no key usage of an anchor).
    crl_signers: Arc<alloc::vec::Vec<bool>>,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            store: Arc::new(rustls::RootCertStore::empty()),
            crl_signers: Arc::default(),
        }
    }
}

impl Roots {
    /// Add one DER CA certificate; the error says why it is no anchor.
    pub(crate) fn add(&mut self, der: CertificateDer<'static>) -> Result<(), String> {
        let crl_signer = may_sign_crls(der.as_ref());
        Arc::make_mut(&mut self.store)
            .add(der)
            .map_err(|e| e.to_string())?;
        Arc::make_mut(&mut self.crl_signers).push(crl_signer);
        Ok(())
    }

    /// The store, for a verifier.
    pub(super) fn store(&self) -> Arc<rustls::RootCertStore> {
        self.store.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// Append, per anchor, the SHA-256 of its subject, key and name constraints: what
    /// decides which certificates the anchors admit (for a policy's trust digest).
    pub(crate) fn digest_into(&self, out: &mut alloc::vec::Vec<u8>) {
        for a in self.store.roots.iter() {
            out.extend_from_slice(&crate::Sha256::of(a.subject.as_ref()).0);
            out.extend_from_slice(&crate::Sha256::of(a.subject_public_key_info.as_ref()).0);
            let nc = a.name_constraints.as_ref().map_or(&[][..], |n| n.as_ref());
            out.extend_from_slice(&crate::Sha256::of(nc).0);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Check that a CRL is issued by one of these anchors, signed with its key, and that
    /// the anchor may sign CRLs (see [`crate::pki::check_crl`]). `issuer` is the CRL's
    /// issuer for messages.
    pub(crate) fn verify_crl(&self, der: &[u8], issuer: &str) -> Result<(), ConfigError> {
        verify_crl(der, &self.store, &self.crl_signers, issuer)
    }
}

fn verify_crl(
    der: &[u8],
    roots: &rustls::RootCertStore,
    crl_signers: &[bool],
    issuer: &str,
) -> Result<(), ConfigError> {
    let bad = |detail: String| ConfigError::BadCrl { index: 0, detail };
    let parts = crl_parts(der).map_err(|e| bad(e.to_string()))?;
    let algs = ring_provider::default_provider().signature_verification_algorithms;
    let mut detail = None;
    let mut signed_by_non_signer = false;
    for (anchor, &crl_signer) in roots
        .roots
        .iter()
        .zip(crl_signers)
        .filter(|(a, _)| a.subject.as_ref() == parts.issuer)
    {
        let Ok((key_alg, key)) = spki_parts(anchor.subject_public_key_info.as_ref()) else {
            continue;
        };
        let mut candidates = algs.all.iter().filter(|a| {
            a.public_key_alg_id().as_ref() == key_alg && a.signature_alg_id().as_ref() == parts.alg
        });
        let mut any = false;
        if candidates.any(|a| {
            any = true;
            a.verify_signature(key, parts.tbs, parts.signature).is_ok()
        }) {
            if crl_signer {
                return Ok(());
            }
            // Another anchor of the same name and key may still be a CRL signer.
            signed_by_non_signer = true;
            continue;
        }
        detail = Some(if any {
            "bad signature"
        } else {
            "signature algorithm does not match the issuer's key or is not supported"
        });
    }
    if signed_by_non_signer {
        return Err(ConfigError::CrlIssuerNotCrlSigner {
            index: 0,
            issuer: issuer.to_string(),
        });
    }
    match detail {
        Some(d) => Err(ConfigError::CrlBadSignature {
            index: 0,
            issuer: issuer.to_string(),
            detail: d.to_string(),
        }),
        None => Err(ConfigError::CrlIssuerUnknown {
            index: 0,
            issuer: issuer.to_string(),
        }),
    }
}
