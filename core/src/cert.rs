//! A certificate, parsed for people and rules: [`CertInfo`] (subject, issuer, serial,
//! validity, SANs, fingerprints) and [`Sha256`]. Parsed, not verified.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use x509_cert::Certificate as X509;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::time::Time;

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Parse 64 hex digits (colons allowed, as `openssl x509 -fingerprint` prints them).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        let mut digits = s.bytes().filter(|b| *b != b':');
        for byte in out.iter_mut() {
            let hi = hex_val(digits.next()?)?;
            let lo = hex_val(digits.next()?)?;
            *byte = (hi << 4) | lo;
        }
        digits.next().is_none().then_some(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Sha256 {
    /// Lowercase hex, no separators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// Fields of an X.509 certificate, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject as an RFC 4514 string, e.g. `CN=acme,O=ACME Cargo`.
    pub subject: String,
    /// Subject common names (ONE Record: the company ID).
    pub common_names: Vec<String>,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// Subject organizational units.
    pub organizational_units: Vec<String>,
    /// Issuer as an RFC 4514 string.
    pub issuer: String,
    /// Serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
    /// Start of validity.
    pub not_before: Time,
    /// End of validity.
    pub not_after: Time,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (ONE Record IDs).
    pub uris: Vec<String>,
    /// Email (rfc822) subject alternative names.
    pub emails: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// SHA-256 of the DER SubjectPublicKeyInfo (the "SPKI pin").
    pub spki_sha256: Sha256,
    /// SHA-256 of the whole DER certificate (the usual certificate fingerprint).
    pub cert_sha256: Sha256,
}

impl CertInfo {
    /// Parse a DER certificate. Returns a message on malformed input; never panics.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let cert = X509::from_der(der).map_err(|e| e.to_string())?;
        let tbs = &cert.tbs_certificate;
        let mut info = Self {
            subject: tbs.subject.to_string(),
            common_names: Vec::new(),
            organizations: Vec::new(),
            organizational_units: Vec::new(),
            issuer: tbs.issuer.to_string(),
            serial: tbs.serial_number.as_bytes().to_vec(),
            not_before: Time::from(tbs.validity.not_before.to_unix_duration()),
            not_after: Time::from(tbs.validity.not_after.to_unix_duration()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            ips: Vec::new(),
            spki_sha256: Sha256::of(
                &tbs.subject_public_key_info
                    .to_der()
                    .map_err(|e| e.to_string())?,
            ),
            cert_sha256: Sha256::of(der),
        };
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                let Some(value) = directory_string(&atv.value) else {
                    continue;
                };
                if atv.oid == OID_CN {
                    info.common_names.push(value);
                } else if atv.oid == OID_O {
                    info.organizations.push(value);
                } else if atv.oid == OID_OU {
                    info.organizational_units.push(value);
                }
            }
        }
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id != OID_SAN {
                continue;
            }
            let san =
                SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|e| e.to_string())?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(s) => info.dns_names.push(s.to_string()),
                    GeneralName::UniformResourceIdentifier(s) => info.uris.push(s.to_string()),
                    GeneralName::Rfc822Name(s) => info.emails.push(s.to_string()),
                    GeneralName::IpAddress(o) => {
                        if let Some(ip) = ip_from_bytes(o.as_bytes()) {
                            info.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        let mut s = String::with_capacity(self.serial.len() * 2);
        for b in &self.serial {
            let _ = fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        }
        s
    }
}

fn directory_string(any: &x509_cert::der::Any) -> Option<String> {
    let s = match any.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::PrintableString => PrintableStringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::Ia5String => Ia5StringRef::try_from(any).ok()?.as_str().to_string(),
        Tag::TeletexString => TeletexStringRef::try_from(any).ok()?.as_str().to_string(),
        _ => return None,
    };
    Some(s)
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;

    #[test]
    fn sha256_hex_round_trip_accepts_colons() {
        let d = Sha256::of(b"abc");
        let hex = d.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(Sha256::from_hex(&hex), Some(d));
        let with_colons: String = hex
            .as_bytes()
            .chunks(2)
            .map(|c| core::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Sha256::from_hex(&with_colons.to_uppercase()), Some(d));
        assert_eq!(Sha256::from_hex("abc"), None);
        assert_eq!(Sha256::from_hex(&alloc::format!("{hex}00")), None);
    }
}
