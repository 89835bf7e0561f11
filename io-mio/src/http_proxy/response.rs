//! The response side, pure: an upstream response head is parsed (httparse), its body
//! framing decided (RFC 9112 section 6.3) and the head rewritten for the client.
//!
//! - 1xx other than 101 is relayed (to HTTP/1.1 clients; an HTTP/1.0 client gets none) and
//!   the final response awaited; 101 is an error (the proxy never forwards `Upgrade`).
//! - No body after HEAD, 204 and 304; `Transfer-Encoding` with `chunked` last: chunked
//!   (passed through as is, or decoded for an HTTP/1.0 client, which then reads to the close);
//!   otherwise `Content-Length` (several that differ or one that is not digits: an error);
//!   otherwise delimited by the upstream closing, and the client connection is closed after.
//! - Hop-by-hop fields (`Connection` and what it names, `Keep-Alive`, `Proxy-Connection`,
//!   `TE`, `Trailer`, `Upgrade`, `Proxy-Authenticate`) are removed; the client gets
//!   `Connection: close` when its connection closes after the response, and
//!   `Connection: keep-alive` when it is an HTTP/1.0 client kept open.
//! - The upstream connection may be reused only when it did not say `Connection: close`, is
//!   HTTP/1.1 and the body is not close-delimited.

use std::mem::MaybeUninit;

use super::body::Body;
use super::request::one_of;

/// Largest upstream response head.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// What the client side of the exchange needs to rewrite a response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exchange {
    /// The request was HEAD.
    pub(crate) head_method: bool,
    /// HTTP/1.x minor version of the client.
    pub(crate) minor: u8,
    /// The client connection closes after this response (asked for, or the request body
    /// could not be read to its end).
    pub(crate) close: bool,
}

/// A parsed and rewritten response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    /// Bytes of the upstream buffer the head took.
    pub(crate) head_len: usize,
    /// The status code.
    pub(crate) status: u16,
    /// The head to send to the client (empty for a 1xx an HTTP/1.0 client must not get).
    pub(crate) client_head: Vec<u8>,
    /// `true` for 1xx: a final response follows.
    pub(crate) interim: bool,
    /// The body's framing as the upstream sends it.
    pub(crate) body: Body,
    /// Relay only the payload of a chunked body (HTTP/1.0 client).
    pub(crate) dechunk: bool,
    /// Close the client connection after the response.
    pub(crate) close_client: bool,
    /// The upstream connection may carry another request after this response.
    pub(crate) reusable: bool,
}

/// Parse the response head at the start of `buf`: `Ok(None)` while incomplete, `Err` with a
/// cause for the log and the 502 body.
pub(crate) fn parse(buf: &[u8], ex: &Exchange) -> Result<Option<Response>, String> {
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    if head_len > MAX_RESPONSE_HEAD {
        return Err("response head too large".into());
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("malformed status line".into());
    };
    if status == 101 {
        return Err("upstream switched protocols".into());
    }
    let reason = resp.reason.unwrap_or_default();

    let mut upstream_close = minor == 0;
    let mut options: Vec<&str> = Vec::new();
    let mut length: Option<u64> = None;
    let mut last_coding_chunked = None;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or_default();
        if h.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    upstream_close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    upstream_close &= minor != 0;
                } else if !option.is_empty() {
                    options.push(option);
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            last_coding_chunked = value
                .rsplit(',')
                .next()
                .map(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            let n = v
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or("invalid Content-Length in response")?;
            if length.is_some_and(|m| m != n) {
                return Err("several different Content-Length values in response".into());
            }
            length = Some(n);
        }
    }
    // 1.0 upstreams keep-alive only if they say so (handled above); HTTP/1.0 responses with
    // "Connection: keep-alive" are treated as reusable.
    let interim = (100..200).contains(&status);
    let no_body = interim || ex.head_method || status == 204 || status == 304;
    let body = if no_body {
        Body::Length(0)
    } else {
        match (last_coding_chunked, length) {
            (Some(true), _) => Body::chunked(),
            (Some(false), _) => Body::UntilClose,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        }
    };
    let dechunk = ex.minor == 0 && matches!(body, Body::Chunked(_));
    let close_client = !interim && (ex.close || body == Body::UntilClose || dechunk);
    let reusable = !upstream_close && body != Body::UntilClose;

    let mut out = Vec::with_capacity(head_len + 32);
    if interim && ex.minor == 0 {
        // An HTTP/1.0 client gets no interim response.
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        // httparse reads exactly three digits.
        out.extend_from_slice(&[
            b'0' + (status / 100 % 10) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            if one_of(h.name, HOP_BY_HOP)
                || one_of(h.name, &options)
                || (dechunk && h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if !interim {
            if close_client {
                out.extend_from_slice(b"Connection: close\r\n");
            } else if ex.minor == 0 {
                out.extend_from_slice(b"Connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some(Response {
        head_len,
        status,
        client_head: out,
        interim,
        body,
        dechunk,
        close_client,
        reusable,
    }))
}

/// A response the proxy makes itself (refusals, 502, 504): a short text body, then close.
pub(crate) fn simple(status: u16, text: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("{text}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEEP: Exchange = Exchange {
        head_method: false,
        minor: 1,
        close: false,
    };

    fn parsed(raw: &str, ex: &Exchange) -> Response {
        parse(raw.as_bytes(), ex).unwrap().unwrap()
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let head = Exchange {
            head_method: true,
            ..KEEP
        };
        let cases: &[(&str, &Exchange, Body)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                &KEEP,
                Body::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                &head,
                Body::Length(0),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                &KEEP,
                Body::Length(0),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                &KEEP,
                Body::Length(0),
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", &KEEP, Body::Length(0)),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &KEEP,
                Body::chunked(),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                &KEEP,
                Body::chunked(),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                &KEEP,
                Body::UntilClose,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", &KEEP, Body::UntilClose),
        ];
        for (raw, ex, body) in cases {
            assert_eq!(&parsed(raw, ex).body, body, "{raw:?}");
        }
    }

    #[test]
    fn reuse_and_close_are_decided_from_both_sides() {
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &KEEP);
        assert!(r.reusable && !r.close_client);
        let r = parsed(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            &KEEP,
        );
        assert!(!r.reusable && !r.close_client);
        let r = parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &KEEP);
        assert!(!r.reusable);
        let r = parsed(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            &KEEP,
        );
        assert!(r.reusable);
        let r = parsed("HTTP/1.1 200 OK\r\n\r\n", &KEEP);
        assert!(!r.reusable && r.close_client);
        let text = String::from_utf8(r.client_head).unwrap();
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
        let close = Exchange {
            close: true,
            ..KEEP
        };
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &close).close_client);
    }

    #[test]
    fn http_1_0_clients_get_decoded_bodies_and_no_interim_responses() {
        let old = Exchange { minor: 0, ..KEEP };
        let r = parsed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &old,
        );
        assert!(r.dechunk && r.close_client);
        let text = String::from_utf8(r.client_head).unwrap();
        assert!(!text.contains("Transfer-Encoding"), "{text}");
        let r = parsed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", &old);
        assert!(
            String::from_utf8(r.client_head)
                .unwrap()
                .contains("Connection: keep-alive\r\n")
        );
        assert!(
            parsed("HTTP/1.1 100 Continue\r\n\r\n", &old)
                .client_head
                .is_empty()
        );
    }

    #[test]
    fn hop_by_hop_fields_are_removed_from_responses() {
        let r = parsed(
            "HTTP/1.1 200 OK\r\nConnection: X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n\
             Upgrade: h2c\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\nX-Kept: 1\r\n\r\n",
            &KEEP,
        );
        let text = String::from_utf8(r.client_head).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Kept: 1\r\n\r\n"
        );
    }

    #[test]
    fn bad_upstream_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(raw.as_bytes(), &KEEP).is_err(), "{raw:?}");
        }
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", &KEEP), Ok(None));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse(big.as_bytes(), &KEEP).is_err());
    }

    #[test]
    fn own_responses_name_status_and_cause() {
        let text = String::from_utf8(simple(502, "upstream 127.0.0.1:1 unreachable")).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nupstream 127.0.0.1:1 unreachable\n"));
    }

    proptest! {
        #[test]
        fn arbitrary_upstream_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&input, &KEEP);
        }
    }
}
