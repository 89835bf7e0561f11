//! The trust anchors as rustls holds them, and the CRL signature check against them.

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

/// The trust anchors of a [`crate::TrustStore`], as rustls holds them. Cloning is cheap.
#[derive(Clone, Debug)]
pub(crate) struct Roots(Arc<rustls::RootCertStore>);

impl Default for Roots {
    fn default() -> Self {
        Self(Arc::new(rustls::RootCertStore::empty()))
    }
}

impl Roots {
    /// Add one DER CA certificate; the error says why it is no anchor.
    pub(crate) fn add(&mut self, der: CertificateDer<'static>) -> Result<(), String> {
        Arc::make_mut(&mut self.0)
            .add(der)
            .map_err(|e| e.to_string())
    }

    /// The store, for a verifier.
    pub(super) fn store(&self) -> Arc<rustls::RootCertStore> {
        self.0.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Append, per anchor, the SHA-256 of its subject, key and name constraints: what
    /// decides which certificates the anchors admit (for a policy's trust digest).
    pub(crate) fn digest_into(&self, out: &mut alloc::vec::Vec<u8>) {
        for a in self.0.roots.iter() {
            out.extend_from_slice(&crate::Sha256::of(a.subject.as_ref()).0);
            out.extend_from_slice(&crate::Sha256::of(a.subject_public_key_info.as_ref()).0);
            let nc = a.name_constraints.as_ref().map_or(&[][..], |n| n.as_ref());
            out.extend_from_slice(&crate::Sha256::of(nc).0);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Check that a CRL is issued by one of these anchors and signed with its key (see
    /// [`crate::pki::check_crl`]). `issuer` is the CRL's issuer for messages.
    pub(crate) fn verify_crl(&self, der: &[u8], issuer: &str) -> Result<(), ConfigError> {
        verify_crl(der, &self.0, issuer)
    }
}

fn verify_crl(der: &[u8], roots: &rustls::RootCertStore, issuer: &str) -> Result<(), ConfigError> {
    let bad = |detail: String| ConfigError::BadCrl { index: 0, detail };
    let parts = crl_parts(der).map_err(|e| bad(e.to_string()))?;
    let algs = ring_provider::default_provider().signature_verification_algorithms;
    let mut detail = None;
    for anchor in roots
        .roots
        .iter()
        .filter(|a| a.subject.as_ref() == parts.issuer)
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
            return Ok(());
        }
        detail = Some(if any {
            "bad signature"
        } else {
            "signature algorithm does not match the issuer's key or is not supported"
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
