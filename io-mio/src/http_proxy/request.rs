//! The request side, pure: a request head is parsed (httparse), checked against the
//! framing rules that keep a proxy from enabling request smuggling, and rewritten into the
//! head sent upstream; or refused with a status and a short reason, never forwarded.
//!
//! What is refused (the status, then the connection is closed):
//! - `414` a request line over `max_request_line`; `431` a head over `max_head` or with more
//!   than `max_headers` fields;
//! - `400` both `Content-Length` and `Transfer-Encoding`; `Content-Length` values that are not
//!   plain digits, or several that differ (identical repeated values are merged into one);
//!   `Transfer-Encoding` other than exactly one `chunked` (so `gzip, chunked` too: the proxy
//!   passes chunked framing through and decodes no other coding); `Transfer-Encoding` in an
//!   HTTP/1.0 request; obs-fold (a line starting with SP/HTAB), whitespace before a colon, a
//!   bare LF as a line end, anything else httparse rejects; an HTTP/1.1 request without
//!   exactly one `Host` (RFC 9112 3.2), or any request with several; a target that is not
//!   origin-form, `*` (OPTIONS only) or absolute-form `http(s)://` whose authority is the
//!   `Host`; the HTTP/2 preface;
//! - `405` CONNECT (the proxy makes no tunnels).
//!
//! What is removed before forwarding: hop-by-hop fields (`Connection` and every field it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`,
//! `Proxy-Authorization`: credentials meant for a proxy, never for the application); every
//! field the proxy sets (`x-forwarded-client-cert`, the configured client-certificate field,
//! `x-forwarded-proto`, `x-forwarded-host`); and the other forwarding fields an application
//! framework would trust in their place (`Forwarded`, `x-forwarded-port`,
//! `x-forwarded-prefix`, `x-real-ip`). A `Connection` option naming `Host`,
//! `Content-Length` or `Transfer-Encoding` does not remove them (the framing stays what was
//! checked). `x-forwarded-for` is kept and the client address appended (several fields are
//! merged into one). Absolute-form targets are sent in origin-form. The upstream request is
//! always HTTP/1.1 without `Connection: close`, so its connection can be pooled.

use std::mem::MaybeUninit;

use super::body::Body;

/// Limits on a request head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub(crate) max_request_line: usize,
    pub(crate) max_head: usize,
    pub(crate) max_headers: usize,
}

/// What the proxy adds to every request from one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct Added {
    /// The client's address, as text (appended to `x-forwarded-for`).
    pub(crate) client_ip: Option<String>,
    /// `x-forwarded-client-cert` value, when the peer presented a certificate.
    pub(crate) xfcc: Option<String>,
    /// The nginx-style client-certificate field: lowercase name, and the URL-encoded PEM
    /// when the peer presented a certificate (the name is stripped from requests either way).
    pub(crate) cert_header: Option<(String, Option<String>)>,
    /// `x-forwarded-host` (and `Host` upstream) for a request that has no `Host`.
    pub(crate) fallback_host: Option<String>,
}

/// A refused request: the status and a short reason for the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// An accepted request, rewritten for the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes of the client's buffer the head took.
    pub(crate) head_len: usize,
    /// The head to send upstream.
    pub(crate) upstream_head: Vec<u8>,
    /// The request body's framing (`Length(0)` when there is none).
    pub(crate) body: Body,
    /// `true` for HEAD (the response has no body).
    pub(crate) head_method: bool,
    /// The method is idempotent (RFC 9110 9.2.2): it may be retried.
    pub(crate) idempotent: bool,
    /// HTTP/1.x minor version of the client.
    pub(crate) minor: u8,
    /// The client asked to close after this exchange (or did not ask to keep it open, 1.0).
    pub(crate) close: bool,
    /// Forward proxy: where the request goes (from its absolute-form target).
    pub(crate) dest: Option<Dest>,
}

/// Result of looking at the start of a client's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The head is not complete yet and within the limits: read more.
    Partial,
    /// A complete, accepted request head.
    Request(Request),
    /// A request that must not be forwarded.
    Refused(Refusal),
}

/// Fields removed from every request (lowercase), besides those `Connection` names and the
/// configured client-certificate field.
const STRIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "x-forwarded-client-cert",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

/// Fields a `Connection` option cannot remove.
const FRAMING: &[&str] = &["host", "content-length", "transfer-encoding"];

/// `true` for a field the proxy removes, sets or checks itself (a lowercase name): not a
/// name for the configured client-certificate field.
pub(crate) fn is_managed(lower: &str) -> bool {
    STRIPPED.contains(&lower)
        || FRAMING.contains(&lower)
        || lower == "x-forwarded-for"
        || lower == "expect"
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How a request head is rewritten: for the application behind a reverse proxy, or for a
/// partner reached through the forward (egress) proxy.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode<'a> {
    /// Reverse proxy: origin-form (or absolute-form naming the `Host`) targets, identity and
    /// forwarding fields added.
    Reverse(&'a Added),
    /// Forward proxy: absolute-form targets only, sent in origin-form with the target's
    /// authority as `Host`; hop-by-hop and `Proxy-*` fields removed, nothing added.
    Forward,
}

/// Parse and rewrite the request head at the start of `buf` (reverse proxy).
#[cfg(test)]
pub(crate) fn parse(buf: &[u8], limits: &HeadLimits, added: &Added) -> Parsed {
    parse_with(buf, limits, Mode::Reverse(added))
}

/// Parse and rewrite the request head at the start of `buf` for `mode`.
pub(crate) fn parse_with(buf: &[u8], limits: &HeadLimits, mode: Mode<'_>) -> Parsed {
    if buf.starts_with(H2_PREFACE) || (buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf))
    {
        if buf.len() < H2_PREFACE.len() && !buf.is_empty() {
            return Parsed::Partial;
        }
        if !buf.is_empty() {
            return Parsed::Refused(Refusal::new(400, "HTTP/2 is not served here: use HTTP/1.1"));
        }
    }
    // The request line.
    match memchr::memchr(b'\n', buf) {
        Some(lf) if lf.saturating_sub(1) > limits.max_request_line => {
            return Parsed::Refused(Refusal::new(414, "request line too long"));
        }
        None if buf.len() > limits.max_request_line + 1 => {
            return Parsed::Refused(Refusal::new(414, "request line too long"));
        }
        _ => {}
    }
    // The end of the head; a bare LF anywhere before it is refused.
    let end = match head_end(buf) {
        Ok(Some(end)) => end,
        Ok(None) if buf.len() > limits.max_head => {
            return Parsed::Refused(Refusal::new(431, "request head too large"));
        }
        Ok(None) => return Parsed::Partial,
        Err(()) => return Parsed::Refused(Refusal::new(400, "bare LF in request head")),
    };
    if end > limits.max_head {
        return Parsed::Refused(Refusal::new(431, "request head too large"));
    }
    let rewritten = match mode {
        Mode::Reverse(added) => rewrite(&buf[..end], limits, added),
        Mode::Forward => rewrite_forward(&buf[..end], limits),
    };
    match rewritten {
        Ok(mut req) => {
            req.head_len = end;
            Parsed::Request(req)
        }
        Err(refusal) => Parsed::Refused(refusal),
    }
}

/// The length of the head (through its empty line), `None` when not complete; `Err` on a
/// bare LF.
fn head_end(buf: &[u8]) -> Result<Option<usize>, ()> {
    let mut line_start = 0;
    for i in memchr::memchr_iter(b'\n', buf) {
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(());
        }
        if i - 1 == line_start {
            return Ok(Some(i + 1));
        }
        line_start = i + 1;
    }
    Ok(None)
}

/// Parsed facts about the fields, collected in one pass.
#[derive(Default)]
struct Fields<'a> {
    content_length: Option<u64>,
    transfer_encodings: usize,
    chunked: bool,
    hosts: Vec<&'a str>,
    close: bool,
    keep_alive: bool,
    connection_options: Vec<&'a str>,
    forwarded_for: Vec<&'a str>,
}

/// A parsed head: the request line, the fields and what they say about framing.
struct Head<'h, 'b> {
    method: &'b str,
    target: &'b str,
    minor: u8,
    headers: &'h [httparse::Header<'b>],
    fields: Fields<'b>,
    body: Body,
}

/// Parse `head` with httparse (field slots on the stack up to the default limit, left
/// uninitialised: httparse fills what it parses) and check its framing; `f` gets the result.
fn with_head<T>(
    head: &[u8],
    limits: &HeadLimits,
    f: impl FnOnce(Head<'_, '_>) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
    let mut heap = Vec::new();
    let storage = if limits.max_headers <= stack.len() {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, storage) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "malformed request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "too many header fields"));
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request head: {e}"))),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal::new(400, "malformed request line"));
    };
    let mut fields = Fields::default();
    for h in req.headers.iter() {
        scan_field(&mut fields, h)?;
    }
    let body = framing(&fields, minor)?;
    f(Head {
        method,
        target,
        minor,
        headers: req.headers,
        fields,
        body,
    })
}

/// Note what one field says (framing, `Host`, `Connection`, `x-forwarded-for`).
fn scan_field<'b>(f: &mut Fields<'b>, h: &httparse::Header<'b>) -> Result<(), Refusal> {
    let value = std::str::from_utf8(h.value).ok();
    let name = h.name;
    if name.eq_ignore_ascii_case("content-length") {
        let n = value
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Refusal::new(400, "invalid Content-Length"))?;
        if f.content_length.is_some_and(|m| m != n) {
            return Err(Refusal::new(400, "several different Content-Length values"));
        }
        f.content_length = Some(n);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        f.transfer_encodings += 1;
        f.chunked = value.is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    } else if name.eq_ignore_ascii_case("host") {
        f.hosts.push(
            value
                .map(str::trim)
                .ok_or_else(|| Refusal::new(400, "invalid Host"))?,
        );
    } else if name.eq_ignore_ascii_case("connection") {
        for option in value.unwrap_or_default().split(',').map(str::trim) {
            if option.eq_ignore_ascii_case("close") {
                f.close = true;
            } else if option.eq_ignore_ascii_case("keep-alive") {
                f.keep_alive = true;
            } else if !option.is_empty() {
                f.connection_options.push(option);
            }
        }
    } else if name.eq_ignore_ascii_case("x-forwarded-for") {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            f.forwarded_for.push(v);
        }
    }
    Ok(())
}

/// The request body's framing, or the refusal of an ambiguous one.
fn framing(f: &Fields<'_>, minor: u8) -> Result<Body, Refusal> {
    if f.transfer_encodings > 0 && f.content_length.is_some() {
        return Err(Refusal::new(
            400,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if f.transfer_encodings > 0 && minor == 0 {
        return Err(Refusal::new(
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if f.transfer_encodings > 1 || (f.transfer_encodings == 1 && !f.chunked) {
        return Err(Refusal::new(400, "Transfer-Encoding other than chunked"));
    }
    Ok(if f.chunked {
        Body::chunked()
    } else {
        Body::Length(f.content_length.unwrap_or(0))
    })
}

fn rewrite(head: &[u8], limits: &HeadLimits, added: &Added) -> Result<Request, Refusal> {
    with_head(head, limits, |h| rewrite_reverse(h, added))
}

fn rewrite_reverse(h: Head<'_, '_>, added: &Added) -> Result<Request, Refusal> {
    let Head {
        method,
        target,
        minor,
        headers,
        fields: f,
        body,
    } = h;
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::new(405, "CONNECT is not supported"));
    }

    // Host and target.
    if f.hosts.len() > 1 || (minor == 1 && f.hosts.is_empty()) {
        return Err(Refusal::new(400, "a request needs exactly one Host"));
    }
    let host = f.hosts.first().copied();
    let path = origin_form(method, target, host)?;
    let host = host
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| authority(target).map(str::to_string))
        .or_else(|| added.fallback_host.clone());

    // The upstream head.
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let cert_name = added.cert_header.as_ref().map(|(n, _)| n.as_str());
    copy_fields(&mut out, headers, &f, minor, |name| {
        one_of(name, STRIPPED)
            || cert_name.is_some_and(|c| c.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case("x-forwarded-for")
    });
    if minor == 0 && host.is_some() && f.hosts.is_empty() {
        push_field(
            &mut out,
            "Host",
            host.as_deref().unwrap_or_default().as_bytes(),
        );
    }
    if let Some(xfcc) = &added.xfcc {
        push_field(&mut out, "x-forwarded-client-cert", xfcc.as_bytes());
    }
    if let Some((name, Some(value))) = &added.cert_header {
        push_field(&mut out, name, value.as_bytes());
    }
    push_field(&mut out, "x-forwarded-proto", b"https");
    if let Some(host) = &host {
        push_field(&mut out, "x-forwarded-host", host.as_bytes());
    }
    let mut xff = f.forwarded_for.join(", ");
    if let Some(ip) = &added.client_ip {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(ip);
    }
    if !xff.is_empty() {
        push_field(&mut out, "x-forwarded-for", xff.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    Ok(Request {
        head_len: 0,
        upstream_head: out,
        body,
        head_method: method.eq_ignore_ascii_case("HEAD"),
        idempotent: ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
            .iter()
            .any(|m| method.eq_ignore_ascii_case(m)),
        minor,
        close: if minor == 0 { !f.keep_alive } else { f.close },
        dest: None,
    })
}

/// The refusal of CONNECT by the forward proxy.
pub(crate) const CONNECT_REFUSED: &str = "CONNECT is refused: a tunnel would let the \
application bypass the company's client certificate and TLS policy. Send requests in \
absolute form (GET http://partner.example:8443/path HTTP/1.1); the gateway makes the TLS \
connection itself";

/// The refusal of an origin-form request by the forward proxy.
pub(crate) const ORIGIN_FORM_REFUSED: &str = "this is a forward proxy: requests need an \
absolute-form target (GET http://partner.example:8443/path HTTP/1.1)";

fn rewrite_forward(head: &[u8], limits: &HeadLimits) -> Result<Request, Refusal> {
    with_head(head, limits, |h| {
        let Head {
            method,
            target,
            minor,
            headers,
            fields: f,
            body,
        } = h;
        if method.eq_ignore_ascii_case("CONNECT") {
            return Err(Refusal::new(405, CONNECT_REFUSED));
        }
        if f.hosts.len() > 1 {
            return Err(Refusal::new(400, "a request needs at most one Host"));
        }
        let Some(auth) = authority(target) else {
            return Err(Refusal::new(400, ORIGIN_FORM_REFUSED));
        };
        let dest = Dest::parse(auth)
            .ok_or_else(|| Refusal::new(400, format!("invalid destination {auth:?}")))?;
        let path = origin_form(method, target, None)?;

        let mut out = Vec::with_capacity(head.len() + 64);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(auth.as_bytes());
        out.extend_from_slice(b"\r\n");
        copy_fields(&mut out, headers, &f, minor, |name| {
            one_of(name, HOP_BY_HOP)
                || starts_with_ci(name, "proxy-")
                || name.eq_ignore_ascii_case("host")
        });
        out.extend_from_slice(b"\r\n");
        Ok(Request {
            head_len: 0,
            upstream_head: out,
            body,
            head_method: method.eq_ignore_ascii_case("HEAD"),
            idempotent: ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
                .iter()
                .any(|m| method.eq_ignore_ascii_case(m)),
            minor,
            close: if minor == 0 { !f.keep_alive } else { f.close },
            dest: Some(dest),
        })
    })
}

/// Hop-by-hop fields, removed by the forward proxy (besides `Proxy-*` and what
/// `Connection` names).
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "te", "trailer", "upgrade"];

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// Where a forward-proxy request goes: the host of its absolute-form target (lowercase,
/// an IPv6 literal without brackets) and the port (443 when the target names none, for
/// `http://` too: every request leaves over TLS).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dest {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Dest {
    /// The destination of an authority (`host`, `host:port`, `[v6]:port`); `None` for
    /// userinfo, an empty host, a bad port or characters a host name cannot hold.
    pub(crate) fn parse(auth: &str) -> Option<Dest> {
        let (host, port) = split_authority(auth)?;
        if host.contains('*') {
            return None;
        }
        Some(Dest {
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(443),
        })
    }
}

/// An authority's host (an IPv6 literal without brackets) and port, if it names one; `None`
/// for userinfo, an empty host, a bad or zero port or characters a host name cannot hold.
pub(crate) fn split_authority(auth: &str) -> Option<(&str, Option<u16>)> {
    if auth.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match auth.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._:*".contains(&b);
    if host.is_empty() || !host.bytes().all(ok) || (host.contains('*') && !host.starts_with("*.")) {
        return None;
    }
    Some((host, port))
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `name` is one of `list`, ignoring ASCII case.
pub(crate) fn one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// Copy the request's fields to the upstream head `out`, leaving out those `dropped` names,
/// every field the request's `Connection` names (framing fields excepted), `Expect` from an
/// HTTP/1.0 client (it has no 100-continue), and repeats of an identical `Content-Length`
/// (the parser refused differing ones).
fn copy_fields(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    f: &Fields<'_>,
    minor: u8,
    dropped: impl Fn(&str) -> bool,
) {
    let mut merged_length = false;
    for h in headers {
        let name = h.name;
        if dropped(name)
            || (one_of(name, &f.connection_options) && !one_of(name, FRAMING))
            || (minor == 0 && name.eq_ignore_ascii_case("expect"))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if merged_length {
                continue;
            }
            merged_length = true;
        }
        push_field(out, h.name, h.value);
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The authority of an absolute-form target (`http://host:port/...`).
fn authority(target: &str) -> Option<&str> {
    let rest =
        strip_prefix_ci(target, "http://").or_else(|| strip_prefix_ci(target, "https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// The origin-form target to send upstream.
fn origin_form(method: &str, target: &str, host: Option<&str>) -> Result<String, Refusal> {
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    if target == "*" && method.eq_ignore_ascii_case("OPTIONS") {
        return Ok(target.to_string());
    }
    let Some(authority) = authority(target) else {
        return Err(Refusal::new(400, "invalid request target"));
    };
    if authority.is_empty() || host.is_some_and(|h| !h.eq_ignore_ascii_case(authority)) {
        return Err(Refusal::new(400, "absolute-form target for another host"));
    }
    let rest = strip_prefix_ci(target, "http://")
        .or_else(|| strip_prefix_ci(target, "https://"))
        .and_then(|r| r.get(authority.len()..))
        .unwrap_or_default();
    Ok(match rest.as_bytes().first() {
        Some(b'/') => rest.to_string(),
        _ => format!("/{rest}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 8 * 1024,
        max_head: 32 * 1024,
        max_headers: 100,
    };

    fn added() -> Added {
        Added {
            client_ip: Some("192.0.2.7".into()),
            xfcc: Some("Hash=ab;Cert=\"x\"".into()),
            cert_header: Some(("x-ssl-client-cert".into(), Some("PEM".into()))),
            fallback_host: None,
        }
    }

    fn request(raw: &str) -> Request {
        match parse(raw.as_bytes(), &LIMITS, &added()) {
            Parsed::Request(r) => r,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn upstream(raw: &str) -> String {
        String::from_utf8(request(raw).upstream_head).unwrap()
    }

    fn refused(raw: &[u8]) -> u16 {
        match parse(raw, &LIMITS, &added()) {
            Parsed::Refused(r) => r.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn ambiguous_or_malformed_requests_are_refused_with_their_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\tX-A: 1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET evil HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        ];
        for (raw, status) in cases {
            assert_eq!(refused(raw), *status, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn size_limits_give_414_and_431() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(refused(long_line.as_bytes()), 414);
        // An unfinished line over the limit is refused before it ends.
        assert_eq!(
            refused(format!("GET /{}", "a".repeat(9000)).as_bytes()),
            414
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(33_000)
        );
        assert_eq!(refused(big.as_bytes()), 431);
        assert_eq!(refused(&big.as_bytes()[..33_000]), 431);
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X: 1\r\n".repeat(100)
        );
        assert_eq!(refused(many.as_bytes()), 431);
    }

    #[test]
    fn incomplete_heads_are_partial() {
        for raw in [
            "",
            "G",
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r",
            "PRI * HT",
        ] {
            assert_eq!(
                parse(raw.as_bytes(), &LIMITS, &added()),
                Parsed::Partial,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn forged_identity_and_forwarding_fields_are_replaced() {
        let up = upstream(
            "GET /x HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-Client-Cert: forged\r\n\
             X-SSL-Client-Cert: forged\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\n\
             Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n",
        );
        assert!(!up.contains("forged"), "{up}");
        assert!(!up.to_ascii_lowercase().contains("evil"), "{up}");
        assert!(!up.to_ascii_lowercase().contains("forwarded:"), "{up}");
        assert!(
            !up.contains("X-Real-IP") && !up.contains("X-Forwarded-Port"),
            "{up}"
        );
        assert!(
            up.starts_with("GET /x HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\n"),
            "{up}"
        );
        assert!(
            up.contains("\r\nx-forwarded-client-cert: Hash=ab;Cert=\"x\"\r\n"),
            "{up}"
        );
        assert!(up.contains("\r\nx-ssl-client-cert: PEM\r\n"), "{up}");
        assert!(up.contains("\r\nx-forwarded-proto: https\r\n"), "{up}");
        assert!(up.contains("\r\nx-forwarded-host: app.example\r\n"), "{up}");
        assert!(
            up.contains("\r\nx-forwarded-for: 6.6.6.6, 10.0.0.1, 192.0.2.7\r\n"),
            "{up}"
        );
        assert!(up.ends_with("\r\n\r\n"));
    }

    #[test]
    fn without_a_certificate_no_identity_field_is_added_but_forged_ones_still_go() {
        let added = Added {
            client_ip: Some("::1".into()),
            xfcc: None,
            cert_header: Some(("x-ssl-client-cert".into(), None)),
            fallback_host: None,
        };
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nx-ssl-client-cert: f\r\nx-forwarded-client-cert: f\r\n\r\n";
        let Parsed::Request(r) = parse(raw.as_bytes(), &LIMITS, &added) else {
            panic!()
        };
        let up = String::from_utf8(r.upstream_head).unwrap();
        assert!(!up.to_ascii_lowercase().contains("client-cert"), "{up}");
        assert!(up.contains("x-forwarded-for: ::1\r\n"), "{up}");
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let up = upstream(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Content-Length\r\n\
             X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\n\
             Proxy-Connection: close\r\nProxy-Authorization: Basic x\r\nContent-Length: 0\r\n\r\n",
        );
        for gone in [
            "Connection",
            "X-Secret",
            "Keep-Alive",
            "TE:",
            "Trailer",
            "Upgrade",
            "Proxy-",
        ] {
            assert!(!up.contains(gone), "{gone} in {up}");
        }
        assert!(up.contains("Content-Length: 0\r\n"), "{up}");
    }

    #[test]
    fn framing_and_connection_handling_are_read_from_the_head() {
        let r =
            request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(r.body, Body::Length(7));
        assert_eq!(
            String::from_utf8(r.upstream_head)
                .unwrap()
                .matches("Content-Length")
                .count(),
            1
        );
        let r = request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(r.body, Body::chunked());
        assert!(!r.close);
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").close);
        assert!(request("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(request("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").head_method);
        assert_eq!(request("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET").head_len, 27);
    }

    #[test]
    fn http_1_0_requests_go_upstream_as_http_1_1_with_a_host() {
        let added = Added {
            fallback_host: Some("sni.example".into()),
            ..Added::default()
        };
        let Parsed::Request(r) = parse(b"GET / HTTP/1.0\r\n\r\n", &LIMITS, &added) else {
            panic!()
        };
        let up = String::from_utf8(r.upstream_head).unwrap();
        assert_eq!(
            up,
            "GET / HTTP/1.1\r\nHost: sni.example\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: sni.example\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_for_the_same_host_is_sent_in_origin_form() {
        let up =
            upstream("GET http://A.example:8443/p?q=1 HTTP/1.1\r\nHost: a.example:8443\r\n\r\n");
        assert!(up.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{up}");
        let up = upstream("GET https://a?q HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(up.starts_with("GET /?q HTTP/1.1\r\n"), "{up}");
        let up = upstream("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(up.starts_with("OPTIONS * HTTP/1.1\r\n"), "{up}");
    }

    proptest! {
        /// Whatever the split, a head is partial until its last byte and then the same request.
        #[test]
        fn a_head_is_partial_until_complete(cut in 0usize..200) {
            let raw = b"POST /upload?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc";
            let head = raw.len() - 3;
            let cut = cut % raw.len();
            let got = parse(&raw[..cut], &LIMITS, &added());
            if cut < head {
                prop_assert_eq!(got, Parsed::Partial);
            } else {
                prop_assert!(matches!(got, Parsed::Request(ref r) if r.head_len == head));
            }
        }

        /// Arbitrary bytes never panic, and an accepted head is never longer than the input.
        #[test]
        fn arbitrary_heads_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Parsed::Request(r) = parse(&input, &LIMITS, &added()) {
                prop_assert!(r.head_len <= input.len());
            }
        }

        /// Mutated valid requests are refused or accepted, never forwarded ambiguously: an
        /// accepted one has exactly one framing field kind.
        #[test]
        fn mutations_keep_framing_unambiguous(pos in 0usize..120, byte in any::<u8>()) {
            let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let pos = pos % raw.len();
            raw[pos] = byte;
            if let Parsed::Request(r) = parse(&raw, &LIMITS, &added()) {
                let up = String::from_utf8_lossy(&r.upstream_head).to_ascii_lowercase();
                prop_assert!(!(up.contains("content-length:") && up.contains("transfer-encoding:")));
            }
        }
    }

    fn forward(raw: &str) -> Parsed {
        parse_with(raw.as_bytes(), &LIMITS, Mode::Forward)
    }

    fn forward_request(raw: &str) -> (String, Dest) {
        match forward(raw) {
            Parsed::Request(r) => (String::from_utf8(r.upstream_head).unwrap(), r.dest.unwrap()),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn forward_requests_go_in_origin_form_with_the_targets_authority_as_host() {
        let (head, dest) = forward_request(
            "GET http://Partner.Example:8443/logistics-objects/1?x=1 HTTP/1.1\r\n\
             Host: localhost:3128\r\nAccept: application/ld+json\r\n\r\n",
        );
        assert_eq!(
            head,
            "GET /logistics-objects/1?x=1 HTTP/1.1\r\nHost: Partner.Example:8443\r\n\
             Accept: application/ld+json\r\n\r\n"
        );
        assert_eq!(dest.to_string(), "partner.example:8443");
        // No port: 443 for http:// too (everything leaves over TLS); no path: "/".
        let (head, dest) = forward_request("GET http://partner.example HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("GET / HTTP/1.1\r\nHost: partner.example\r\n"),
            "{head}"
        );
        assert_eq!(dest.port, 443);
        let (_, dest) = forward_request("GET https://[::1]:9/ HTTP/1.1\r\nHost: [::1]:9\r\n\r\n");
        assert_eq!(dest.to_string(), "[::1]:9");
    }

    #[test]
    fn forward_requests_lose_proxy_and_hop_by_hop_fields_and_gain_no_forwarding_fields() {
        let (head, _) = forward_request(
            "POST http://p.example/x HTTP/1.1\r\nHost: p.example\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\
             Proxy-Anything: 1\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n\
             X-Forwarded-For: 10.0.0.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(
            head,
            "POST /x HTTP/1.1\r\nHost: p.example\r\nX-Forwarded-For: 10.0.0.1\r\n\
             Content-Length: 2\r\n\r\n"
        );
    }

    #[test]
    fn forward_mode_refuses_connect_origin_form_and_bad_destinations() {
        let status = |raw: &str| match forward(raw) {
            Parsed::Refused(r) => (r.status, r.reason),
            other => panic!("{raw:?}: {other:?}"),
        };
        let (s, why) = status("CONNECT p.example:443 HTTP/1.1\r\nHost: p.example:443\r\n\r\n");
        assert_eq!(s, 405);
        assert!(why.contains("bypass"), "{why}");
        let (s, why) = status("GET /x HTTP/1.1\r\nHost: p.example\r\n\r\n");
        assert_eq!(s, 400);
        assert!(why.contains("absolute-form"), "{why}");
        for raw in [
            "GET http://user@p.example/ HTTP/1.1\r\n\r\n",
            "GET http://p.example:0/ HTTP/1.1\r\n\r\n",
            "GET http://p.example:99999/ HTTP/1.1\r\n\r\n",
            "GET http://*.example/ HTTP/1.1\r\n\r\n",
            "GET http:///x HTTP/1.1\r\n\r\n",
            "GET ftp://p.example/ HTTP/1.1\r\n\r\n",
            "GET http://p.example/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST http://p.example/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(status(raw).0, 400, "{raw:?}");
        }
    }
}
