//! PROXY protocol v2 header carrying the client address and the verified identity, written to
//! the upstream before any application byte (`--proxy-protocol`).
//!
//! TLVs, per the HAProxy PROXY protocol specification (section 2.2):
//! - `PP2_TYPE_ALPN` (0x01): the negotiated ALPN protocol, when there is one;
//! - `PP2_TYPE_AUTHORITY` (0x02): the SNI host name, when sent;
//! - `PP2_TYPE_SSL` (0x20): `client` flags (`PP2_CLIENT_SSL`, plus `PP2_CLIENT_CERT_CONN` when a
//!   certificate was presented on this connection or `PP2_CLIENT_CERT_SESS` when it was
//!   presented in the resumed session), `verify` (0 = a client certificate was presented and
//!   verified, 1 = none), and the sub-TLVs `PP2_SUBTYPE_SSL_VERSION` (0x21, e.g. `TLSv1.3`),
//!   `PP2_SUBTYPE_SSL_CN` (0x22, the client certificate's subject CN) and
//!   `PP2_SUBTYPE_SSL_CIPHER` (0x23, the IANA suite name), and
//!   [`PP2_SUBTYPE_SSL_CLIENT_CERT`] (0x28, the client's leaf certificate in DER) when the client
//!   authenticated with a certificate, on this connection or in the session it resumed;
//! - [`PP2_TYPE_ONERECORD_URI`] (0xE0, in the custom range): one TLV per URI SAN of the client
//!   certificate (ONE Record IDs), in certificate order;
//! - [`PP2_TYPE_ONERECORD_SPKI_SHA256`] (0xE1): the 32-byte SHA-256 of the client
//!   certificate's SubjectPublicKeyInfo.
//!
//! `PP2_SUBTYPE_SSL_CLIENT_CERT` is not in the HAProxy specification: it is the sub-TLV type and
//! encoding that ghostunnel's `--proxy-protocol-mode=tls-full` writes (and go-proxyproto names),
//! nested in `PP2_TYPE_SSL` with the leaf's DER bytes as its whole value, so a backend written for
//! ghostunnel reads the certificate from this gateway unchanged. The specification tells
//! receivers to skip types they do not know. The header's length field has 16 bits: a leaf too
//! large to fit in it beside the other TLVs (over about 64 KiB) is left out, never truncated,
//! and the flags still say a certificate was presented.

use std::io;
use std::net::SocketAddr;

use onerecord_tls::{HandshakeKind, PeerIdentity};
use ppp::v2::{Builder, Command, Protocol, Type, Version};

/// Custom TLV type carrying one URI SAN of the client certificate.
pub const PP2_TYPE_ONERECORD_URI: u8 = 0xE0;
/// Custom TLV type carrying the client certificate's SPKI SHA-256 (32 bytes).
pub const PP2_TYPE_ONERECORD_SPKI_SHA256: u8 = 0xE1;
/// Sub-TLV of `PP2_TYPE_SSL` carrying the client's leaf certificate in DER: type 0x28 and
/// encoding as ghostunnel's `tls-full` mode writes it (not in the HAProxy specification).
pub const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;

/// The largest value a TLV (and the whole header after its 16-byte prefix) can carry.
const TLV_MAX: usize = u16::MAX as usize;

const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// Append one sub-TLV; a value longer than a TLV can carry is left out, never truncated.
fn sub_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let Ok(len) = u16::try_from(value.len()) else {
        return;
    };
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Bytes one TLV of `value_len` bytes takes in the header.
fn tlv_len(value_len: usize) -> usize {
    3 + value_len
}

/// The PROXY v2 header for a connection from `remote` to `local` with this verified peer.
pub fn header(remote: SocketAddr, local: SocketAddr, id: &PeerIdentity) -> io::Result<Vec<u8>> {
    // Both addresses must be of one family; map IPv4 to IPv6 when they differ.
    let (src, dst) = match (remote, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (remote, local)
        }
        _ => (to_v6(remote), to_v6(local)),
    };
    let mut b =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst));
    // What the header carries besides the certificate, to know whether the certificate fits.
    let mut used = if src.is_ipv4() { 12 } else { 36 };
    if let Some(alpn) = &id.alpn {
        b = b.write_tlv(Type::ALPN, alpn)?;
        used += tlv_len(alpn.len());
    }
    if let Some(sni) = &id.server_name {
        b = b.write_tlv(Type::Authority, sni.as_bytes())?;
        used += tlv_len(sni.len());
    }
    let mut ssl = Vec::with_capacity(128);
    let mut client = PP2_CLIENT_SSL;
    if id.authenticated() {
        client |= if id.handshake == HandshakeKind::Resumed {
            PP2_CLIENT_CERT_SESS
        } else {
            PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        };
    }
    ssl.push(client);
    let verify: u32 = if id.authenticated() { 0 } else { 1 };
    ssl.extend_from_slice(&verify.to_be_bytes());
    sub_tlv(
        &mut ssl,
        Type::SSLVersion as u8,
        id.version.to_string().as_bytes(),
    );
    if let Some(cn) = id.common_name() {
        sub_tlv(&mut ssl, Type::SSLCommonName as u8, cn.as_bytes());
    }
    sub_tlv(&mut ssl, Type::SSLCipher as u8, id.suite.name().as_bytes());
    let uris = id.uris();
    used += uris.iter().map(|u| tlv_len(u.len())).sum::<usize>();
    if id.leaf.is_some() {
        used += tlv_len(32);
    }
    if let Some(der) = id.chain.first() {
        let with_cert = ssl.len() + tlv_len(der.len());
        if with_cert <= TLV_MAX && used + tlv_len(with_cert) <= TLV_MAX {
            sub_tlv(&mut ssl, PP2_SUBTYPE_SSL_CLIENT_CERT, der);
        }
    }
    b = b.write_tlv(Type::SSL, &ssl)?;
    for uri in uris {
        b = b.write_tlv(PP2_TYPE_ONERECORD_URI, uri.as_bytes())?;
    }
    if let Some(leaf) = &id.leaf {
        b = b.write_tlv(PP2_TYPE_ONERECORD_SPKI_SHA256, &leaf.spki_sha256.0)?;
    }
    b.build()
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onerecord_tls::{CipherSuite, TlsVersion};
    use ppp::v2::{Header, TypeLengthValues};

    fn identity(leaf: Option<Vec<u8>>) -> PeerIdentity {
        PeerIdentity {
            chain: leaf.into_iter().map(Into::into).collect(),
            leaf: None,
            version: TlsVersion::Tls13,
            suite: CipherSuite::Tls13Aes128GcmSha256,
            group: None,
            alpn: None,
            server_name: Some("localhost".into()),
            handshake: HandshakeKind::Full,
        }
    }

    /// The `PP2_TYPE_SSL` client flags and the value of each of its sub-TLVs, as ppp parses
    /// the header.
    fn ssl_of(bytes: &[u8]) -> (u8, Vec<(u8, Vec<u8>)>) {
        let h = Header::try_from(bytes).expect("a header ppp parses");
        let ssl = h
            .tlvs()
            .map(|t| t.expect("well-formed TLV"))
            .find(|t| t.kind == Type::SSL as u8)
            .expect("PP2_TYPE_SSL");
        let subs = TypeLengthValues::from(&ssl.value[5..])
            .map(|t| t.expect("well-formed sub-TLV"))
            .map(|t| (t.kind, t.value.to_vec()))
            .collect();
        (ssl.value[0], subs)
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.7:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        )
    }

    #[test]
    fn client_certificate_is_the_ghostunnel_sub_tlv_0x28_with_the_leaf_der() {
        let (r, l) = addrs();
        let der: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        let (flags, subs) = ssl_of(&header(r, l, &identity(Some(der.clone()))).unwrap());
        assert_eq!(
            flags,
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        );
        let certs: Vec<_> = subs.iter().filter(|(k, _)| *k == 0x28).collect();
        assert_eq!(certs.len(), 1, "{subs:?}");
        assert_eq!(certs[0].1, der);
    }

    #[test]
    fn no_client_certificate_no_certificate_sub_tlv() {
        let (r, l) = addrs();
        let (flags, subs) = ssl_of(&header(r, l, &identity(None)).unwrap());
        assert_eq!(flags, PP2_CLIENT_SSL);
        assert!(subs.iter().all(|(k, _)| *k != 0x28), "{subs:?}");
    }

    #[test]
    fn leaf_too_large_for_the_header_is_left_out_not_truncated() {
        let (r, l) = addrs();
        // 65 500 fits a TLV alone, but not beside the addresses and the other TLVs.
        for size in [65_500, 65_535, 70_000] {
            let h = header(r, l, &identity(Some(vec![0x30; size]))).expect("header still built");
            let (flags, subs) = ssl_of(&h);
            assert!(subs.iter().all(|(k, _)| *k != 0x28), "size {size}");
            assert_eq!(flags & PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_CONN);
        }
        // The largest leaf that fits is carried whole.
        let fit = TLV_MAX - 12 - tlv_len(9) - tlv_len(5 + tlv_len(7) + tlv_len(22)) - 3;
        let h = header(r, l, &identity(Some(vec![0x30; fit]))).expect("header");
        let (_, subs) = ssl_of(&h);
        assert!(subs.iter().any(|(k, v)| *k == 0x28 && v.len() == fit));
        let h = header(r, l, &identity(Some(vec![0x30; fit + 1]))).expect("header");
        assert!(ssl_of(&h).1.iter().all(|(k, _)| *k != 0x28));
    }
}
