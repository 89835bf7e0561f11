//! A small HTTP/1.x responder that describes the verified peer as JSON: what the gateway
//! serves without `--upstream`, and in dev mode.
//!
//! HTTP/1.1 requests keep the connection open (unless `Connection: close`); HTTP/1.0 requests
//! close it after the response (unless `Connection: keep-alive`). Each response is written in
//! one piece, so it leaves as one TLS record.

use std::net::SocketAddr;

use onerecord_tls::{HandshakeKind, PeerIdentity, Time};
use serde::Serialize;
use serde_json::json;

use crate::queue::Queue;
use crate::service::{Handler, Peer, Reply, Service};

/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (it is read and ignored).
const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;

/// The identity responder service: accepts every peer the policy let through.
#[derive(Clone, Debug, Default)]
pub struct IdentityResponder;

impl Service for IdentityResponder {
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        // Serialised once per connection: a request then costs one string copy, and an idle
        // connection holds one compact string instead of a JSON tree.
        let doc = serde_json::to_string_pretty(&PeerDoc::new(peer.identity, peer.remote))
            .unwrap_or_else(|_| String::from("{}"));
        let head = doc.trim_end().strip_suffix('}').unwrap_or("{").trim_end();
        Some(Box::new(IdentityHandler {
            peer_head: head.into(),
            buf: Queue::default(),
            skip_body: 0,
            requests: 0,
        }))
    }
}

/// The peer document as plain structs: serialised straight to text once per connection,
/// with no JSON tree in between.
#[derive(Serialize)]
struct PeerDoc<'a> {
    verified: bool,
    client_certificate: Option<CertDoc<'a>>,
    chain_length: usize,
    tls: TlsDoc<'a>,
    remote_addr: String,
}

#[derive(Serialize)]
struct CertDoc<'a> {
    subject: &'a str,
    common_name: Option<&'a String>,
    organization: Option<&'a String>,
    organizational_unit: Option<&'a String>,
    issuer: &'a str,
    serial: String,
    not_before: String,
    not_after: String,
    dns_names: &'a [String],
    uris: &'a [String],
    emails: &'a [String],
    ips: Vec<String>,
    spki_sha256: String,
    cert_sha256: String,
}

#[derive(Serialize)]
struct TlsDoc<'a> {
    version: String,
    cipher_suite: &'static str,
    group: Option<&'static str>,
    alpn: Option<std::borrow::Cow<'a, str>>,
    server_name: Option<&'a str>,
    resumed: bool,
}

impl<'a> PeerDoc<'a> {
    fn new(id: &'a PeerIdentity, remote: SocketAddr) -> Self {
        Self {
            verified: id.authenticated(),
            client_certificate: id.leaf.as_ref().map(|c| CertDoc {
                subject: &c.subject,
                common_name: c.common_names.first(),
                organization: c.organizations.first(),
                organizational_unit: c.organizational_units.first(),
                issuer: &c.issuer,
                serial: c.serial_hex(),
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
                dns_names: &c.dns_names,
                uris: &c.uris,
                emails: &c.emails,
                ips: c.ips.iter().map(|ip| ip.to_string()).collect(),
                spki_sha256: c.spki_sha256.to_string(),
                cert_sha256: c.cert_sha256.to_string(),
            }),
            chain_length: id.chain.len(),
            tls: TlsDoc {
                version: id.version.to_string(),
                cipher_suite: id.suite.name(),
                group: id.group.map(|g| g.name()),
                alpn: id.alpn.as_deref().map(String::from_utf8_lossy),
                server_name: id.server_name.as_deref(),
                resumed: id.handshake == HandshakeKind::Resumed,
            },
            remote_addr: remote.to_string(),
        }
    }
}

/// RFC 3339 text for a time (UTC).
fn rfc3339(t: Time) -> String {
    let secs = i64::try_from(t.as_unix_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

struct IdentityHandler {
    /// The pretty-printed peer document without its closing brace.
    peer_head: Box<str>,
    buf: Queue,
    /// Body bytes of the current request still to skip.
    skip_body: usize,
    requests: u64,
}

enum Parsed {
    Incomplete,
    Request {
        head_len: usize,
        body_len: usize,
        keep_alive: bool,
        method: String,
        path: String,
        version: u8,
    },
    Bad(u16, &'static str),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Parsed::Bad(431, "request head too large")
            } else {
                Parsed::Incomplete
            }
        }
        Err(_) => Parsed::Bad(400, "malformed HTTP request"),
        Ok(httparse::Status::Complete(head_len)) => {
            let version = req.version.unwrap_or(1);
            let mut keep_alive = version >= 1;
            let mut body_len = 0usize;
            for h in req.headers.iter() {
                let value = || String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if h.name.eq_ignore_ascii_case("connection") {
                    let value = value();
                    if value.split(',').any(|t| t.trim() == "close") {
                        keep_alive = false;
                    } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                        keep_alive = true;
                    }
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    match value().trim().parse::<usize>() {
                        Ok(n) if n <= MAX_BODY => body_len = n,
                        Ok(_) => return Parsed::Bad(413, "request body too large"),
                        Err(_) => return Parsed::Bad(400, "bad Content-Length"),
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Parsed::Bad(501, "chunked request bodies are not supported");
                }
            }
            Parsed::Request {
                head_len,
                body_len,
                keep_alive,
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("").to_string(),
                version,
            }
        }
    }
}

fn response(status: u16, reason: &str, version: u8, keep_alive: bool, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_CAPACITY + body.len());
    write_head(&mut out, status, reason, version, keep_alive, body.len());
    out.extend_from_slice(body);
    out
}

/// Room for the response head (status line and headers).
const HEAD_CAPACITY: usize = 256;

/// The status line and headers, appended to `out`.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    version: u8,
    keep_alive: bool,
    body_len: usize,
) {
    use std::io::Write as _;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        out,
        "HTTP/1.{version} {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\nConnection: {connection}\r\nCache-Control: no-store\r\n\
         Strict-Transport-Security: max-age=31536000\r\nDate: "
    );
    with_http_date(|d| out.extend_from_slice(d.as_bytes()));
    out.extend_from_slice(b"\r\n\r\n");
}

/// Call `f` with the current `Date` header value, formatted at most once a second per thread.
fn with_http_date(f: impl FnOnce(&str)) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(&cached.1);
    });
}

impl Handler for IdentityHandler {
    fn on_data(&mut self, mut data: &[u8], reply: &mut Reply) {
        if self.skip_body > 0 {
            let n = self.skip_body.min(data.len());
            self.skip_body -= n;
            data = &data[n..];
        }
        self.buf.extend(data);
        loop {
            if self.skip_body > 0 {
                let n = self.skip_body.min(self.buf.len());
                self.skip_body -= n;
                self.buf.consume(n);
                if self.skip_body > 0 {
                    return;
                }
            }
            if self.buf.is_empty() {
                // An idle keep-alive connection holds no request buffer.
                self.buf.release();
                return;
            }
            match parse(self.buf.pending()) {
                Parsed::Incomplete => return,
                Parsed::Bad(status, why) => {
                    let body = serde_json::to_vec(&json!({ "error": why })).unwrap_or_default();
                    reply.write(&response(status, why, 1, false, &body));
                    reply.close();
                    self.buf = Queue::default();
                    return;
                }
                Parsed::Request {
                    head_len,
                    body_len,
                    keep_alive,
                    method,
                    path,
                    version,
                } => {
                    self.requests += 1;
                    self.buf.consume(head_len);
                    self.skip_body = body_len;
                    // The peer document (serialised once) plus this request, written
                    // straight into the reply: no JSON tree per request.
                    use std::io::Write as _;
                    let mut body = Vec::with_capacity(self.peer_head.len() + 160);
                    body.extend_from_slice(self.peer_head.as_bytes());
                    if self.peer_head.len() > 1 {
                        body.push(b',');
                    }
                    body.extend_from_slice(b"\n  \"request\": {\"method\":");
                    let _ = serde_json::to_writer(&mut body, &method);
                    body.extend_from_slice(b",\"path\":");
                    let _ = serde_json::to_writer(&mut body, &path);
                    let _ = write!(
                        body,
                        ",\"http_version\":\"1.{version}\",\"number_on_connection\":{}}}\n}}\n",
                        self.requests
                    );
                    reply.out.reserve(HEAD_CAPACITY + body.len());
                    write_head(&mut reply.out, 200, "OK", version, keep_alive, body.len());
                    reply.write(&body);
                    if !keep_alive {
                        reply.close();
                        self.buf = Queue::default();
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn each_response_is_the_peer_document_plus_the_request() {
        let doc =
            serde_json::to_string_pretty(&json!({"verified": true, "tls": {"version": "TLSv1.3"}}))
                .unwrap();
        let mut h = IdentityHandler {
            peer_head: doc.trim_end().strip_suffix('}').unwrap().trim_end().into(),
            buf: Queue::default(),
            skip_body: 0,
            requests: 0,
        };
        let mut reply = Reply::default();
        h.on_data(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?\"q HTTP/1.1\r\n",
            &mut reply,
        );
        h.on_data(b"Host: x\r\n\r\n", &mut reply);
        let text = String::from_utf8(reply.out).unwrap();
        let bodies: Vec<Value> = text
            .split("HTTP/1.1 200 OK")
            .skip(1)
            .map(|r| serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap())
            .collect();
        assert_eq!(bodies.len(), 2, "{text}");
        assert_eq!(bodies[0]["verified"], true);
        assert_eq!(bodies[0]["tls"]["version"], "TLSv1.3");
        assert_eq!(bodies[0]["request"]["path"], "/a");
        assert_eq!(bodies[1]["request"]["path"], "/b?\"q");
        assert_eq!(bodies[1]["request"]["number_on_connection"], 2);
        assert!(!reply.close);
        assert!(
            text.contains("\r\nStrict-Transport-Security: max-age="),
            "{text}"
        );
        assert!(
            text.contains("\r\nDate: ") && text.contains(" GMT\r\n"),
            "{text}"
        );
        assert_eq!(h.buf.capacity(), 0, "idle handler keeps no buffer");
    }

    #[test]
    fn http11_keeps_alive_and_http10_closes() {
        match parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") {
            Parsed::Request { keep_alive, .. } => assert!(keep_alive),
            _ => panic!("not parsed"),
        }
        match parse(b"GET / HTTP/1.0\r\n\r\n") {
            Parsed::Request { keep_alive, .. } => assert!(!keep_alive),
            _ => panic!("not parsed"),
        }
        match parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n") {
            Parsed::Request { keep_alive, .. } => assert!(!keep_alive),
            _ => panic!("not parsed"),
        }
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Incomplete));
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Parsed::Bad(400, _)
        ));
    }
}
