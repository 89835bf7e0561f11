//! The client-certificate headers the proxy adds: Envoy's `x-forwarded-client-cert` (XFCC)
//! and nginx's URL-encoded PEM (`$ssl_client_escaped_cert`).
//!
//! URL encoding keeps only the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) and
//! percent-encodes every other byte, so `+`, `/`, `=`, space and newline of a PEM become
//! `%2B`, `%2F`, `%3D`, `%20`, `%0A`: what nginx and Envoy produce, and what a form decoder
//! (Java's `URLDecoder`, which reads `+` as a space) and a URI decoder read back alike.
//!
//! XFCC (Envoy's format, one element for the one proxy): `Hash=<hex SHA-256 of the leaf
//! DER>;Cert="<URL-encoded PEM>";Subject="<RFC 4514 subject>";URI=<URI SAN>;DNS=<DNS SAN>`,
//! one `URI=` per URI SAN and one `DNS=` per DNS SAN. `Cert` and `Subject` are always quoted
//! (as Envoy writes them); any other value holding `,`, `=`, `"` or `\` is quoted too, and
//! inside quotes `"` and `\` are escaped with `\`. A subject or SAN holding `;` is left out
//! (see [`element`]): the certificate is always there in `Cert`.
//!
//! Readers: Keycloak's `x509cert-lookup` provider `envoy` takes `Cert` (or `Chain`) from
//! this value, `nginx` takes the URL-encoded PEM field; both URL-decode with Java's
//! `URLDecoder` (the tests run that with a real JVM).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use onerecord_tls::PeerIdentity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Every byte but the RFC 3986 unreserved characters is encoded.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// PEM text of a DER certificate (64-column base64, LF line ends), as openssl writes it.
pub(crate) fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(core::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// URL-encode `s` as nginx's `$ssl_client_escaped_cert` does.
pub(crate) fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, ESCAPED).to_string()
}

/// The URL-encoded PEM of the peer's leaf certificate, when it presented one.
pub(crate) fn escaped_cert(id: &PeerIdentity) -> Option<String> {
    id.chain.first().map(|leaf| url_encode(&pem(leaf.as_ref())))
}

/// The XFCC value for the peer, when it presented a certificate.
pub(crate) fn xfcc(id: &PeerIdentity) -> Option<String> {
    let leaf = id.chain.first()?;
    let info = id.leaf.as_ref();
    Some(element(
        leaf.as_ref(),
        info.map(|i| i.subject.as_str()),
        info.map_or(&[], |i| &i.uris[..]),
        info.map_or(&[], |i| &i.dns_names[..]),
    ))
}

/// The XFCC element for a leaf (DER) with its parsed subject and SANs. A subject or SAN
/// holding `;` is left out: Keycloak's `envoy` lookup splits the value at every `;`, quotes
/// or not, so such a value could pass it a `Cert=` or `Chain=` of the partner's choosing.
fn element(der: &[u8], subject: Option<&str>, uris: &[String], dns: &[String]) -> String {
    let mut out = format!("Hash={};Cert=", onerecord_tls::Sha256::of(der));
    quoted(&mut out, &url_encode(&pem(der)));
    if let Some(subject) = subject.filter(|s| !s.contains(';')) {
        out.push_str(";Subject=");
        quoted(&mut out, subject);
    }
    for (key, v) in uris
        .iter()
        .map(|u| ("URI", u))
        .chain(dns.iter().map(|d| ("DNS", d)))
    {
        if !v.contains(';') {
            out.push(';');
            out.push_str(key);
            out.push('=');
            value(&mut out, v);
        }
    }
    out
}

/// A value, quoted when it holds a character XFCC uses as syntax.
fn value(out: &mut String, v: &str) {
    if v.contains([',', ';', '=', '"', '\\']) {
        quoted(out, v);
    } else {
        out.push_str(v);
    }
}

fn quoted(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        let cases = [
            ("abcXYZ019-._~", "abcXYZ019-._~"),
            ("a b\n", "a%20b%0A"),
            ("+/=", "%2B%2F%3D"),
            ("%\"';,", "%25%22%27%3B%2C"),
            ("é", "%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(url_encode(input), want, "{input:?}");
        }
    }

    #[test]
    fn the_element_has_envoys_keys_in_envoys_order() {
        let der = [1u8, 2, 3];
        let got = element(
            &der,
            Some("CN=acme,O=ACME \"Cargo\""),
            &["https://a.example/x".into(), "urn:a;Cert=evil".into()],
            &["a.example".into()],
        );
        let hash = onerecord_tls::Sha256::of(&der);
        assert_eq!(
            got,
            format!(
                "Hash={hash};Cert=\"-----BEGIN%20CERTIFICATE-----%0AAQID%0A-----END%20CERTIFICATE-----%0A\";\
                 Subject=\"CN=acme,O=ACME \\\"Cargo\\\"\";URI=https://a.example/x;DNS=a.example"
            )
        );
        let got = element(&der, Some("CN=x;Chain=evil"), &[], &[]);
        assert!(!got.contains("Subject") && !got.contains("evil"), "{got}");
    }

    #[test]
    fn pem_wraps_base64_at_64_columns() {
        let der = vec![0xabu8; 100];
        let text = pem(&der);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(lines[3].len(), 136 - 128);
        assert_eq!(lines[4], "-----END CERTIFICATE-----");
        assert_eq!(STANDARD.decode(lines[1..4].concat()).ok(), Some(der));
    }

    #[test]
    fn values_with_syntax_characters_are_quoted_and_escaped() {
        let cases = [
            (
                "https://acme.example/logistics",
                "https://acme.example/logistics",
            ),
            ("https://a.example/?x=1", "\"https://a.example/?x=1\""),
            ("a,b", "\"a,b\""),
            ("a;b", "\"a;b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "\"back\\\\slash\""),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            value(&mut out, input);
            assert_eq!(out, want, "{input:?}");
        }
    }
}
