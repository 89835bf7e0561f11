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
//!   `PP2_SUBTYPE_SSL_CIPHER` (0x23, the IANA suite name);
//! - [`PP2_TYPE_ONERECORD_URI`] (0xE0, in the custom range): one TLV per URI SAN of the client
//!   certificate (ONE Record IDs), in certificate order;
//! - [`PP2_TYPE_ONERECORD_SPKI_SHA256`] (0xE1): the 32-byte SHA-256 of the client
//!   certificate's SubjectPublicKeyInfo.

use std::io;
use std::net::SocketAddr;

use onerecord_tls::{HandshakeKind, PeerIdentity};
use ppp::v2::{Builder, Command, Protocol, Type, Version};

/// Custom TLV type carrying one URI SAN of the client certificate.
pub const PP2_TYPE_ONERECORD_URI: u8 = 0xE0;
/// Custom TLV type carrying the client certificate's SPKI SHA-256 (32 bytes).
pub const PP2_TYPE_ONERECORD_SPKI_SHA256: u8 = 0xE1;

const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

fn sub_tlv(out: &mut Vec<u8>, kind: Type, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(kind as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
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
    if let Some(alpn) = &id.alpn {
        b = b.write_tlv(Type::ALPN, alpn)?;
    }
    if let Some(sni) = &id.server_name {
        b = b.write_tlv(Type::Authority, sni.as_bytes())?;
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
        Type::SSLVersion,
        id.version.to_string().as_bytes(),
    );
    if let Some(cn) = id.common_name() {
        sub_tlv(&mut ssl, Type::SSLCommonName, cn.as_bytes());
    }
    sub_tlv(&mut ssl, Type::SSLCipher, id.suite.name().as_bytes());
    b = b.write_tlv(Type::SSL, &ssl)?;
    for uri in id.uris() {
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
