//! Admission before crypto: a bounded parser of the first ClientHello.
//!
//! A server reads the client's first flight with [`inspect`] before any TLS state or key
//! exchange exists, and can refuse cheaply: plaintext HTTP on the TLS port (a distinct
//! [`Reason::PlaintextHttp`] so an adapter can answer "TLS required"), anything that is not
//! TLS, SSLv2/SSLv3/TLS 1.0/TLS 1.1-only hellos (`protocol_version`), and (with the server
//! name it extracts) unknown SNI. The parser never allocates more than the hello it reads,
//! never reads past its input, and never panics.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Alert, Reason};

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// Largest plaintext record fragment (RFC 8446 5.1).
const MAX_FRAGMENT: usize = 16_384;
/// Largest ClientHello accepted (a hello with post-quantum key shares is ~2 KB).
pub const MAX_CLIENT_HELLO: usize = 0x1_0000;

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * ",
];

/// The admission types, at the crate root ([`crate::Admission`], [`crate::ClientHelloInfo`]).
pub(crate) mod types {
    use alloc::string::String;
    use alloc::vec::Vec;

    use crate::error::{Alert, Reason};

    /// What the first ClientHello says.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct ClientHelloInfo {
        /// The SNI host name, if sent.
        pub server_name: Option<String>,
        /// ALPN protocols offered.
        pub alpn: Vec<Vec<u8>>,
        /// Versions offered (`supported_versions`, GREASE removed), or the legacy version alone.
        pub versions: Vec<u16>,
        /// Version in the record header (what an alert to this client should carry).
        pub record_version: u16,
    }

    impl ClientHelloInfo {
        /// The newest version offered.
        pub fn highest_version(&self) -> u16 {
            self.versions.iter().copied().max().unwrap_or(0)
        }

        /// `true` when TLS 1.3 is offered.
        pub fn offers_tls13(&self) -> bool {
            self.versions.contains(&0x0304)
        }
    }

    /// The verdict on the bytes received so far.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Admission {
        /// Not enough bytes yet to decide.
        NeedMore,
        /// A well-formed ClientHello offering TLS 1.2 or newer.
        Hello(ClientHelloInfo),
        /// Refuse; send `alert` (if any) as a plaintext record with [`crate::hello::alert_record`].
        Refuse {
            /// Why.
            reason: Reason,
            /// Alert to send.
            alert: Option<Alert>,
            /// Record version for the alert.
            record_version: u16,
        },
    }
}

pub(crate) use types::{Admission, ClientHelloInfo};

/// A plaintext fatal alert record (used before any TLS state exists).
pub fn alert_record(alert: Alert, record_version: u16) -> [u8; 7] {
    let v = record_version.to_be_bytes();
    [0x15, v[0], v[1], 0x00, 0x02, 0x02, alert.code()]
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn refuse(reason: Reason, alert: Option<Alert>, record_version: u16) -> Admission {
    Admission::Refuse {
        reason,
        alert,
        record_version,
    }
}

fn malformed(record_version: u16) -> Admission {
    refuse(
        Reason::ProtocolViolation,
        Some(Alert::DecodeError),
        record_version,
    )
}

/// Inspect the first bytes a client sent. Call again with more bytes on
/// [`Admission::NeedMore`]; `input` always starts at the first byte of the connection.
pub fn inspect(input: &[u8]) -> Admission {
    let Some(&first) = input.first() else {
        return Admission::NeedMore;
    };
    if first != CONTENT_HANDSHAKE {
        return inspect_non_handshake(input);
    }
    if input.len() < 5 {
        return Admission::NeedMore;
    }
    let record_version = u16::from_be_bytes([input[1], input[2]]);
    if input[1] != 0x03 {
        return refuse(Reason::NotTls, None, 0x0303);
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut msg: Option<Vec<u8>> = None;
    let mut single: &[u8] = &[];
    let mut rest = input;
    loop {
        if rest.len() < 5 {
            return Admission::NeedMore;
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return refuse(
                Reason::ProtocolViolation,
                Some(Alert::UnexpectedMessage),
                record_version,
            );
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len > MAX_FRAGMENT {
            return refuse(
                Reason::ProtocolViolation,
                Some(Alert::RecordOverflow),
                record_version,
            );
        }
        if len == 0 {
            return malformed(record_version);
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Admission::NeedMore;
        };
        rest = &rest[5 + len..];
        let have: &[u8] = match &mut msg {
            None if single.is_empty() => {
                single = fragment;
                single
            }
            None => {
                let mut v = Vec::with_capacity(single.len() + fragment.len());
                v.extend_from_slice(single);
                v.extend_from_slice(fragment);
                msg = Some(v);
                msg.as_deref().unwrap_or_default()
            }
            Some(v) => {
                v.extend_from_slice(fragment);
                v
            }
        };
        if have.len() < 4 {
            continue;
        }
        if have[0] != HANDSHAKE_CLIENT_HELLO {
            return refuse(
                Reason::ProtocolViolation,
                Some(Alert::UnexpectedMessage),
                record_version,
            );
        }
        let body_len = u32::from_be_bytes([0, have[1], have[2], have[3]]) as usize;
        if body_len + 4 > MAX_CLIENT_HELLO {
            return malformed(record_version);
        }
        if have.len() < 4 + body_len {
            continue;
        }
        return parse_client_hello(&have[4..4 + body_len], record_version);
    }
}

/// Progress of [`inspect_incremental`] over one connection's growing input.
#[derive(Debug, Default, Clone)]
pub(crate) struct HelloScan {
    /// Bytes of complete handshake records already walked.
    walked: usize,
    /// Handshake-message bytes in those records.
    fragments: usize,
    /// The handshake message's 4-byte header, as far as seen.
    header: [u8; 4],
}

/// [`inspect`] for input that grows between calls (a ClientHello arriving in many records).
///
/// `inspect` reassembles the hello from the first byte each time, so a hello sent as thousands
/// of tiny records would cost time quadratic in its size. This walks only the records that
/// arrived since the last call and runs `inspect` once the message is complete, or when a
/// record is anything `inspect` would refuse (so the verdict is always `inspect`'s): linear
/// work per connection.
pub(crate) fn inspect_incremental(input: &[u8], scan: &mut HelloScan) -> Admission {
    if input.len() < 5 || input[0] != CONTENT_HANDSHAKE || input[1] != 0x03 {
        return inspect(input);
    }
    let mut at = scan.walked;
    loop {
        let Some(head) = input.get(at..at + 5) else {
            return Admission::NeedMore;
        };
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if head[0] != CONTENT_HANDSHAKE || len == 0 || len > MAX_FRAGMENT {
            return inspect(input);
        }
        let Some(fragment) = input.get(at + 5..at + 5 + len) else {
            return Admission::NeedMore;
        };
        let take = 4usize.saturating_sub(scan.fragments).min(fragment.len());
        for (slot, &b) in scan.header[scan.fragments.min(4)..]
            .iter_mut()
            .zip(&fragment[..take])
        {
            *slot = b;
        }
        scan.fragments += fragment.len();
        at += 5 + len;
        scan.walked = at;
        if scan.fragments >= 4 {
            let body = u32::from_be_bytes([0, scan.header[1], scan.header[2], scan.header[3]]);
            let total = body as usize + 4;
            if scan.header[0] != HANDSHAKE_CLIENT_HELLO
                || total > MAX_CLIENT_HELLO
                || scan.fragments >= total
            {
                return inspect(input);
            }
        }
    }
}

fn inspect_non_handshake(input: &[u8]) -> Admission {
    for m in HTTP_METHODS {
        let n = m.len().min(input.len());
        if input[..n] == m[..n] {
            return if n == m.len() {
                refuse(Reason::PlaintextHttp, None, 0x0303)
            } else {
                Admission::NeedMore
            };
        }
    }
    // SSLv2-compatible ClientHello: 2-byte header with the top bit set, then msg type 1.
    if input[0] & 0x80 != 0 {
        if input.len() < 5 {
            return Admission::NeedMore;
        }
        if input[2] == 0x01 {
            let v = u16::from_be_bytes([input[3], input[4]]);
            return refuse(
                Reason::ProtocolVersion {
                    highest_offered: Some(v.min(0x0302)),
                },
                Some(Alert::ProtocolVersion),
                0x0301,
            );
        }
    }
    if (0x14..=0x18).contains(&input[0]) {
        return refuse(
            Reason::ProtocolViolation,
            Some(Alert::UnexpectedMessage),
            0x0303,
        );
    }
    refuse(Reason::NotTls, None, 0x0303)
}

fn parse_client_hello(body: &[u8], record_version: u16) -> Admission {
    let mut r = Reader { buf: body };
    let Some(legacy_version) = r.u16() else {
        return malformed(record_version);
    };
    let parsed = (|| {
        r.take(32)?; // random
        r.vec8()?; // session id
        r.vec16()?; // cipher suites
        r.vec8()?; // compression methods
        Some(())
    })();
    if parsed.is_none() {
        return malformed(record_version);
    }
    let mut info = ClientHelloInfo {
        record_version,
        ..Default::default()
    };
    let mut supported_versions: Option<Vec<u16>> = None;
    if !r.buf.is_empty() {
        let Some(exts) = r.vec16() else {
            return malformed(record_version);
        };
        let mut e = Reader { buf: exts };
        while !e.buf.is_empty() {
            let (Some(typ), Some(data)) = (e.u16(), e.vec16()) else {
                return malformed(record_version);
            };
            let ok = match typ {
                EXT_SERVER_NAME => parse_sni(data, &mut info),
                EXT_ALPN => parse_alpn(data, &mut info),
                EXT_SUPPORTED_VERSIONS => {
                    let mut d = Reader { buf: data };
                    d.vec8().filter(|l| l.len() % 2 == 0).map(|list| {
                        supported_versions = Some(
                            list.chunks_exact(2)
                                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                                .filter(|v| v & 0x0f0f != 0x0a0a) // GREASE
                                .collect(),
                        );
                    })
                }
                _ => Some(()),
            };
            if ok.is_none() {
                return malformed(record_version);
            }
        }
    }
    info.versions = supported_versions.unwrap_or_else(|| alloc::vec![legacy_version]);
    let highest = info.highest_version();
    if highest < 0x0303 {
        return refuse(
            Reason::ProtocolVersion {
                highest_offered: Some(highest),
            },
            Some(Alert::ProtocolVersion),
            record_version,
        );
    }
    Admission::Hello(info)
}

fn parse_sni(data: &[u8], info: &mut ClientHelloInfo) -> Option<()> {
    let mut d = Reader { buf: data };
    let mut list = Reader { buf: d.vec16()? };
    while !list.buf.is_empty() {
        let typ = list.u8()?;
        let name = list.vec16()?;
        if typ == 0 && info.server_name.is_none() {
            let s = core::str::from_utf8(name).ok()?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            info.server_name = Some(String::from(s.trim_end_matches('.')));
        }
    }
    Some(())
}

fn parse_alpn(data: &[u8], info: &mut ClientHelloInfo) -> Option<()> {
    let mut d = Reader { buf: data };
    let mut list = Reader { buf: d.vec16()? };
    while !list.buf.is_empty() {
        let p = list.vec8()?;
        if p.is_empty() {
            return None;
        }
        info.alpn.push(p.to_vec());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given extensions, in one record.
    fn hello(legacy: u16, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&legacy.to_be_bytes());
        body.extend_from_slice(&[0u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (t, d) in exts {
            e.extend_from_slice(&t.to_be_bytes());
            e.extend_from_slice(&(d.len() as u16).to_be_bytes());
            e.extend_from_slice(d);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = alloc::vec![1, 0, 0, 0];
        hs[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = alloc::vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut d = Vec::new();
        d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        (EXT_SERVER_NAME, d)
    }

    #[test]
    fn reads_sni_alpn_and_versions() {
        let alpn = (EXT_ALPN, alloc::vec![0, 3, 2, b'h', b'2']);
        let sv = (
            EXT_SUPPORTED_VERSIONS,
            alloc::vec![6, 0x0a, 0x0a, 0x03, 0x04, 0x03, 0x03],
        );
        let rec = hello(0x0303, &[sni("Secure.Example"), alpn, sv]);
        let Admission::Hello(info) = inspect(&rec) else {
            panic!("{:?}", inspect(&rec))
        };
        assert_eq!(info.server_name.as_deref(), Some("Secure.Example"));
        assert_eq!(info.alpn, alloc::vec![b"h2".to_vec()]);
        assert_eq!(info.versions, alloc::vec![0x0304, 0x0303]);
        for cut in 0..rec.len() {
            assert_eq!(inspect(&rec[..cut]), Admission::NeedMore, "cut at {cut}");
        }
    }

    /// `inspect_incremental` gives `inspect`'s verdict on every prefix of the input, however
    /// the records are split, and walks each record once.
    #[test]
    fn incremental_inspection_agrees_with_inspect_on_every_prefix() {
        let whole = hello(
            0x0303,
            &[
                sni("secure.example"),
                (EXT_SUPPORTED_VERSIONS, alloc::vec![4, 3, 4, 3, 3]),
            ],
        );
        let body = &whole[5..];
        let mut inputs = Vec::new();
        for size in [1usize, 2, 3, 7, 64, 16_384] {
            let mut v = Vec::new();
            for chunk in body.chunks(size) {
                v.extend_from_slice(&[0x16, 0x03, 0x01, 0, chunk.len() as u8]);
                v.extend_from_slice(chunk);
            }
            inputs.push(v);
        }
        // A bad record after a good first fragment, a non-hello, an empty record, plaintext.
        let mut bad = inputs[2][..20].to_vec();
        bad.extend_from_slice(&[0x17, 0x03, 0x03, 0, 1, 0]);
        inputs.push(bad);
        inputs.push(alloc::vec![0x16, 3, 1, 0, 4, 2, 0, 0, 1, 0]);
        inputs.push(alloc::vec![0x16, 3, 1, 0, 0]);
        inputs.push(b"GET / HTTP/1.1\r\n".to_vec());
        for input in &inputs {
            let mut scan = HelloScan::default();
            for end in 0..=input.len() {
                let a = inspect_incremental(&input[..end], &mut scan);
                let b = inspect(&input[..end]);
                assert_eq!(a, b, "prefix {end} of {input:02x?}");
                if !matches!(b, Admission::NeedMore) {
                    break;
                }
            }
        }
    }

    #[test]
    fn hello_split_over_two_records_is_reassembled() {
        let rec = hello(0x0303, &[sni("a.example")]);
        let hs = &rec[5..];
        let (a, b) = hs.split_at(7);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        let Admission::Hello(info) = inspect(&two) else {
            panic!()
        };
        assert_eq!(info.server_name.as_deref(), Some("a.example"));
    }

    #[test]
    fn tls11_only_hello_gets_protocol_version() {
        let rec = hello(0x0302, &[]);
        let Admission::Refuse {
            reason,
            alert,
            record_version,
        } = inspect(&rec)
        else {
            panic!()
        };
        assert_eq!(
            reason,
            Reason::ProtocolVersion {
                highest_offered: Some(0x0302)
            }
        );
        assert_eq!(alert, Some(Alert::ProtocolVersion));
        assert_eq!(
            alert_record(Alert::ProtocolVersion, record_version),
            [0x15, 3, 1, 0, 2, 2, 70]
        );
    }

    #[test]
    fn http_request_is_plaintext_http() {
        assert_eq!(inspect(b"GE"), Admission::NeedMore);
        assert!(matches!(
            inspect(b"GET / HTTP/1.1\r\n"),
            Admission::Refuse {
                reason: Reason::PlaintextHttp,
                alert: None,
                ..
            }
        ));
        assert!(matches!(
            inspect(b"SSH-2.0-x"),
            Admission::Refuse {
                reason: Reason::NotTls,
                ..
            }
        ));
        assert!(matches!(
            inspect(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
            Admission::Refuse {
                reason: Reason::ProtocolVersion { .. },
                ..
            }
        ));
    }

    #[test]
    fn malformed_hello_is_decode_error() {
        let mut rec = hello(0x0303, &[sni("x.example")]);
        let n = rec.len();
        rec[n - 3] = 0xff; // corrupt the SNI name length
        assert!(matches!(
            inspect(&rec),
            Admission::Refuse {
                alert: Some(Alert::DecodeError),
                ..
            }
        ));
    }
}
