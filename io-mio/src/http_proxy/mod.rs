//! An HTTP/1.1 reverse proxy to one upstream: the gateway's HTTP mode, as a [`Service`].
//!
//! Each terminated TLS connection gets a handler that reads request heads, refuses what could
//! smuggle a request (see below), rewrites the head (identity and forwarding fields) and
//! relays requests and responses, bodies streamed both ways, over an upstream connection
//! taken from the adapter's per-worker pool ([`Reply::upstream_open`]), so kept-alive
//! upstream connections carry the requests of many client connections.
//!
//! The work is split in two. The pure part (no I/O, no clock, unit-tested with tables and
//! arbitrary splits) is `request` (parse, check, rewrite a request head), `response` (parse
//! a response head, decide its framing, rewrite it), `body` (where a Content-Length or
//! chunked body ends, fed in any split) and `xfcc` (the client-certificate fields). The
//! [`Handler`] here only moves bytes between them and the [`Reply`].
//!
//! What it does per request is documented on [`HttpProxy`].
//!
//! The same handler serves the egress forward proxy ([`crate::ForwardProxy`]): its `Route`
//! is then `Forward` (each request to the destination its absolute-form target names, over
//! TLS) instead of `Reverse` (one plain upstream), and `request` rewrites heads in its
//! forward mode.

mod body;
mod request;
mod response;
mod xfcc;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use onerecord_tls::PeerIdentity;

use crate::http_forward::{self, Event, Pick};
use crate::service::{Handler, Peer, Reply, Service, UpstreamEnd};
use body::Body;
use request::{Added, Mode, Parsed};
pub(crate) use request::{Dest, HeadLimits, split_authority};

/// Largest request body kept for a retry (one that came with its head).
const MAX_RETRY_BODY: usize = 16 * 1024;

/// What an [`HttpProxy`] does. [`HttpProxyConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProxyConfig {
    /// The upstream HTTP server (plain HTTP/1.1 over TCP).
    pub upstream: SocketAddr,
    /// `x-forwarded-host` (and the upstream `Host`) for a request that has none (an HTTP/1.0
    /// request without `Host`). `None`: the server name the client sent (SNI), and without
    /// one the field is left out. A request with a `Host` always gets its own.
    pub fallback_host: Option<String>,
    /// Name of an nginx-style field carrying the client certificate as URL-encoded PEM (as
    /// nginx's `$ssl_client_escaped_cert`), e.g. `x-ssl-client-cert`; `None`: no such field.
    /// Incoming fields of this name are removed either way.
    pub client_cert_header: Option<String>,
    /// Add `x-forwarded-client-cert` (Envoy's format) when the peer presented a certificate.
    /// Incoming ones are removed either way. Default `true`.
    pub xfcc: bool,
    /// Longest request line in bytes; longer gets `414`. Default 8 KiB.
    pub max_request_line: usize,
    /// Largest request head (request line and fields) in bytes; larger gets `431`. Default
    /// 32 KiB.
    pub max_head: usize,
    /// Most header fields in a request; more gets `431`. Default 100.
    pub max_headers: usize,
    /// How long the upstream may be silent (from the last byte exchanged with it) before a
    /// response is complete: `504` before the response head, the client connection closed
    /// after it. Default 60 s.
    pub upstream_timeout: Duration,
}

impl HttpProxyConfig {
    /// The defaults for `upstream`.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            fallback_host: None,
            client_cert_header: None,
            xfcc: true,
            max_request_line: 8 * 1024,
            max_head: 32 * 1024,
            max_headers: 100,
            upstream_timeout: Duration::from_secs(60),
        }
    }
}

/// An [`HttpProxyConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpProxyConfigError {
    /// `client_cert_header` is not an HTTP field name (RFC 9110 token).
    InvalidHeaderName(String),
    /// `client_cert_header` names a field the proxy sets or removes itself.
    ReservedHeaderName(String),
    /// `fallback_host` holds a character a `Host` cannot.
    InvalidHost(String),
    /// A limit that is zero: the named field.
    ZeroLimit(&'static str),
}

impl fmt::Display for HttpProxyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidHeaderName(n) => write!(f, "client_cert_header {n:?} is not a field name"),
            Self::ReservedHeaderName(n) => write!(
                f,
                "client_cert_header {n:?} is a field the proxy sets or removes itself"
            ),
            Self::InvalidHost(h) => write!(f, "fallback_host {h:?} is not a host"),
            Self::ZeroLimit(name) => write!(f, "{name} must be greater than zero"),
        }
    }
}

impl std::error::Error for HttpProxyConfigError {}

/// The HTTP/1.1 reverse-proxy [`Service`]: accepts every peer the TLS policy let through
/// and proxies its requests to [`HttpProxyConfig::upstream`] over the worker's pool of
/// kept-alive upstream connections.
///
/// # Per request
///
/// - Refused with a short text body and `Connection: close`, then closed, never forwarded:
///   `400` for ambiguous or malformed framing (both `Content-Length` and
///   `Transfer-Encoding`; differing `Content-Length`s (identical repeats are merged);
///   `Content-Length` not plain digits; `Transfer-Encoding` other than exactly `chunked`,
///   `gzip, chunked` included; obs-fold; whitespace before a colon; bare LF; missing or
///   repeated `Host`; absolute-form for another host; the HTTP/2 preface), `414` for a
///   request line over [`HttpProxyConfig::max_request_line`], `431` for a head over
///   [`HttpProxyConfig::max_head`] or [`HttpProxyConfig::max_headers`], `405` for CONNECT.
///   A malformed chunk while a chunked request body streams closes both connections (the
///   stream is desynchronised), with a `400` first if no response has started.
/// - Removed: `x-forwarded-client-cert`, the configured client-certificate field,
///   `x-forwarded-proto`, `x-forwarded-host`, `x-forwarded-port`, `x-forwarded-prefix`,
///   `x-real-ip`, `Forwarded`, and hop-by-hop fields (`Connection` and what it names,
///   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`, `Proxy-Authorization`).
/// - Added: `x-forwarded-client-cert` (Envoy's format) and the configured nginx-style field
///   (URL-encoded PEM, as `$ssl_client_escaped_cert`) when the peer presented a certificate;
///   `x-forwarded-proto: https`; the client address appended to `x-forwarded-for`;
///   `x-forwarded-host` from the request's `Host` (see [`HttpProxyConfig::fallback_host`]).
/// - Relayed: bodies in both directions as they arrive (chunked stays chunked; an HTTP/1.0
///   client gets the payload of a chunked response and the close), `Expect: 100-continue`
///   forwarded and any 1xx but 101 relayed, no body after HEAD, 204, 304 and 1xx. A
///   close-delimited response closes the client connection after it.
/// - Connections: the client's `Connection: close` (or an HTTP/1.0 request without
///   `keep-alive`) gets `Connection: close` and `close_notify` after the response. Pipelined
///   requests are taken one at a time: reading pauses while a request is in flight, so
///   memory per connection is bounded by one head plus the adapter's queues, whatever the
///   body sizes. The upstream connection goes back to the pool only when the request and
///   the response were both complete and the upstream did not say `Connection: close`.
/// - Upstream failures: `502 Bad Gateway` when the upstream cannot be reached, or closes or
///   resets before a response head; `504 Gateway Timeout` when it is silent for
///   [`HttpProxyConfig::upstream_timeout`] (counted from the last byte exchanged) before the
///   head; each with a body naming the cause, and a WARN line (target `onerecord::upstream`).
///   Once a response has started, a failure or a timeout closes the client connection.
/// - Retry: a request whose upstream connection ended before any response byte (the
///   upstream closed a pooled connection as it was lent) is sent once more on a new
///   connection when it is whole in hand (no body, or a body of at most 16 KiB that came
///   with the head) and the connection came from the pool or, if the adapter had not yet
///   said so, the method is idempotent (RFC 9110 9.2.2). A second failure is a `502`.
/// - `x-forwarded-client-cert`: `Hash=<hex SHA-256 of the leaf DER>;Cert="<URL-encoded
///   PEM>";Subject="<RFC 4514 subject>"`, then `;URI=<SAN>` per URI SAN and `;DNS=<SAN>`
///   per DNS SAN; values holding `,`, `=`, `"` or `\` are quoted, `"` and `\` escaped. A
///   subject or SAN holding `;` is left out, because Keycloak's `envoy` lookup splits the
///   value at every `;` whether quoted or not. URL encoding keeps only `A-Z a-z 0-9 - . _ ~`
///   (as nginx's `$ssl_client_escaped_cert`), so `+` never stands for a space.
#[derive(Clone, Debug)]
pub struct HttpProxy {
    cfg: Arc<HttpProxyConfig>,
}

impl HttpProxy {
    /// A proxy with `cfg`, checked: a client-certificate field name that is not a token or
    /// names a field the proxy manages, a fallback host with characters a host cannot hold,
    /// or a zero limit is an error naming the field.
    pub fn new(cfg: HttpProxyConfig) -> Result<Self, HttpProxyConfigError> {
        if let Some(name) = &cfg.client_cert_header {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(HttpProxyConfigError::InvalidHeaderName(name.clone()));
            }
            let lower = name.to_ascii_lowercase();
            if request::is_managed(&lower) {
                return Err(HttpProxyConfigError::ReservedHeaderName(name.clone()));
            }
        }
        if let Some(host) = &cfg.fallback_host {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b);
            if host.is_empty() || !host.bytes().all(ok) {
                return Err(HttpProxyConfigError::InvalidHost(host.clone()));
            }
        }
        for (name, v) in [
            ("max_request_line", cfg.max_request_line),
            ("max_head", cfg.max_head),
            ("max_headers", cfg.max_headers),
        ] {
            if v == 0 {
                return Err(HttpProxyConfigError::ZeroLimit(name));
            }
        }
        if cfg.upstream_timeout.is_zero() {
            return Err(HttpProxyConfigError::ZeroLimit("upstream_timeout"));
        }
        Ok(Self { cfg: Arc::new(cfg) })
    }

    /// The configuration.
    pub fn config(&self) -> &HttpProxyConfig {
        &self.cfg
    }
}

impl Service for HttpProxy {
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        let id = peer.identity;
        let added = Added {
            client_ip: Some(peer.remote.ip().to_string()),
            xfcc: if self.cfg.xfcc { xfcc::xfcc(id) } else { None },
            cert_header: self
                .cfg
                .client_cert_header
                .as_ref()
                .map(|n| (n.to_ascii_lowercase(), xfcc::escaped_cert(id))),
            fallback_host: self
                .cfg
                .fallback_host
                .clone()
                .or_else(|| id.server_name.clone()),
        };
        Some(Box::new(ProxyHandler {
            limits: HeadLimits {
                max_request_line: self.cfg.max_request_line,
                max_head: self.cfg.max_head,
                max_headers: self.cfg.max_headers,
            },
            timeout: self.cfg.upstream_timeout,
            route: Route::Reverse(self.cfg.upstream),
            added,
            remote: peer.remote,
            inbuf: Vec::new(),
            state: State::Idle,
            close_after: false,
            waited: false,
        }))
    }
}

/// The forward proxy's handler for one local connection (see [`crate::ForwardProxy`]).
pub(crate) fn forward_handler(
    limits: HeadLimits,
    timeout: Duration,
    remote: SocketAddr,
    route: http_forward::Route,
) -> Box<dyn Handler> {
    Box::new(ProxyHandler {
        limits,
        timeout,
        route: Route::Forward(Box::new(route)),
        added: Added::default(),
        remote,
        inbuf: Vec::new(),
        state: State::Idle,
        close_after: false,
        waited: false,
    })
}

/// Where requests go.
enum Route {
    /// Reverse proxy: every request to one upstream, plain TCP.
    Reverse(SocketAddr),
    /// Forward proxy: each request to the destination it names, over TLS.
    Forward(Box<http_forward::Route>),
}

/// One client connection.
struct ProxyHandler {
    /// How long the upstream may be silent before a response is complete.
    timeout: Duration,
    route: Route,
    limits: HeadLimits,
    added: Added,
    remote: SocketAddr,
    /// Client bytes not yet taken: a head in progress, or pipelined requests.
    inbuf: Vec<u8>,
    state: State,
    /// Close after the exchange in flight (the peer closed, or the server drains).
    close_after: bool,
    /// Forward proxy: the request at the head of `inbuf` waited for its name (it was counted).
    waited: bool,
}

/// Where the client connection is.
enum State {
    /// Waiting for a request head.
    Idle,
    /// Forward proxy: the request head in `inbuf` waits for its destination's name to be
    /// resolved (reading paused).
    Resolving,
    /// A request is in flight.
    Busy(Exchange),
    /// Closing: nothing more is read or relayed.
    Closed,
}

/// One request and its response.
struct Exchange {
    /// What remains of the request body.
    req_body: Body,
    /// The request sent upstream (head, and a small body that came with it), kept for a
    /// retry until a response byte comes.
    retry_head: Option<Vec<u8>>,
    /// Whether the upstream connection was taken from the pool, once known.
    reused: Option<bool>,
    /// The method is idempotent (RFC 9110 9.2.2).
    idempotent: bool,
    /// The upstream connection is known to be usable: plain TCP, taken from the pool, or
    /// its TLS handshake completed. Until then the deadline is the connect timeout's.
    established: bool,
    head_method: bool,
    minor: u8,
    close: bool,
    resp: Resp,
    deadline: Instant,
}

/// The response side of an exchange.
enum Resp {
    /// Reading the response head (the bytes so far).
    Head(Vec<u8>),
    /// Relaying the body.
    Body {
        body: Body,
        dechunk: bool,
        close_client: bool,
        reusable: bool,
    },
}

impl Handler for ProxyHandler {
    fn on_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.note_reused(reply);
        match &mut self.state {
            State::Closed => {}
            State::Resolving => self.inbuf.extend_from_slice(data),
            State::Idle => {
                self.inbuf.extend_from_slice(data);
                self.next_request(reply);
            }
            State::Busy(ex) => {
                if ex.established {
                    ex.deadline = Instant::now() + self.timeout;
                }
                let body_done = ex.req_body.is_done();
                let rest = if body_done {
                    data
                } else {
                    match self.forward_body(data, reply) {
                        Some(rest) => rest,
                        None => return,
                    }
                };
                if !rest.is_empty() {
                    self.inbuf.extend_from_slice(rest);
                    reply.pause_reading(true);
                }
                self.maybe_finish(reply);
            }
        }
    }

    fn on_peer_closed(&mut self, reply: &mut Reply) {
        match &self.state {
            State::Busy(ex) if ex.req_body.is_done() => self.close_after = true,
            State::Busy(_) => self.abort(reply),
            _ => {
                self.state = State::Closed;
                reply.close();
            }
        }
    }

    fn on_wake(&mut self, reply: &mut Reply) {
        if matches!(self.state, State::Resolving) {
            self.state = State::Idle;
            self.next_request(reply);
            return;
        }
        self.note_reused(reply);
        let State::Busy(ex) = &self.state else {
            return;
        };
        if Instant::now() < ex.deadline {
            reply.wake_at(Some(ex.deadline));
            return;
        }
        if !ex.established {
            let secs = match &self.route {
                Route::Forward(r) => r.connect_timeout().as_secs_f64(),
                Route::Reverse(_) => 0.0,
            };
            let cause = format!("{} could not be connected within {secs}s", self.label());
            self.fail(reply, 504, "connect_timeout", &cause);
            return;
        }
        let secs = self.timeout.as_secs_f64();
        if matches!(ex.resp, Resp::Head(_)) {
            let cause = format!("{} sent no response within {secs}s", self.label());
            self.fail(reply, 504, "response_timeout", &cause);
        } else {
            let cause = format!("{} silent for {secs}s mid-response", self.label());
            self.log(0, "response_timeout", &cause);
            self.abort(reply);
        }
    }

    fn on_upstream_established(&mut self, identity: &PeerIdentity, reply: &mut Reply) {
        self.note_reused(reply);
        if let Route::Forward(r) = &self.route {
            r.count(Event::Handshake {
                resumed: identity.resumed(),
            });
        }
        if let State::Busy(ex) = &mut self.state {
            if !ex.established {
                ex.established = true;
                ex.deadline = Instant::now() + self.timeout;
                reply.wake_at(Some(ex.deadline));
            }
        }
    }

    fn on_upstream_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.note_reused(reply);
        let State::Busy(ex) = &mut self.state else {
            return;
        };
        ex.established = true;
        ex.deadline = Instant::now() + self.timeout;
        ex.retry_head = None;
        let mut data = data;
        loop {
            let State::Busy(ex) = &mut self.state else {
                return;
            };
            match &mut ex.resp {
                Resp::Head(buf) => {
                    buf.extend_from_slice(data);
                    let side = response::Exchange {
                        head_method: ex.head_method,
                        minor: ex.minor,
                        close: ex.close || self.close_after || !ex.req_body.is_done(),
                    };
                    let parsed = match response::parse(buf, &side) {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(cause) => {
                            let cause = format!("{}: {cause}", self.label());
                            self.fail(reply, 502, "bad_response", &cause);
                            return;
                        }
                    };
                    reply.write(&parsed.client_head);
                    let rest = buf.split_off(parsed.head_len);
                    if parsed.interim {
                        // What followed the interim head is parsed as the next head.
                        ex.resp = Resp::Head(rest);
                        data = &[];
                        continue;
                    }
                    ex.resp = Resp::Body {
                        body: parsed.body,
                        dechunk: parsed.dechunk,
                        close_client: parsed.close_client,
                        reusable: parsed.reusable,
                    };
                    self.relay_body(&rest, reply);
                    return;
                }
                Resp::Body { .. } => {
                    self.relay_body(data, reply);
                    return;
                }
            }
        }
    }

    fn on_upstream_closed(&mut self, end: UpstreamEnd, reply: &mut Reply) {
        if let (Route::Forward(r), State::Busy(ex)) = (&self.route, &self.state) {
            if ex.reused.is_none() && reply.upstream_reused() == Some(false) {
                r.count(Event::Connection);
            }
        }
        let label = self.label();
        let State::Busy(ex) = &mut self.state else {
            return;
        };
        match &mut ex.resp {
            Resp::Head(buf) => {
                let nothing = buf.is_empty();
                // A TLS failure is a stale connection only on one the pool lent (its
                // handshake was long done); on a new one it is the partner's answer.
                let lent = ex.reused.or(reply.upstream_reused()) == Some(true);
                let stale = match end {
                    UpstreamEnd::ConnectFailed(_) => false,
                    UpstreamEnd::Tls(_) => lent,
                    UpstreamEnd::Eof | UpstreamEnd::Failed(_) => true,
                };
                // Whether the connection came from the pool is known from the call after the
                // one that opened it; when it ended before any, an idempotent request is
                // retried (RFC 9110 9.2.2), another only when the pool is known to have lent it.
                let reused = match ex.reused.or(reply.upstream_reused()) {
                    Some(reused) => reused,
                    None => ex.idempotent,
                };
                if nothing && stale && reused {
                    if let Some(head) = ex.retry_head.take() {
                        info!(
                            target: "onerecord::upstream",
                            upstream = label.as_str(), remote:% = self.remote;
                            "pooled upstream connection closed before a response; retrying on a new one"
                        );
                        ex.reused = Some(false);
                        ex.established = matches!(self.route, Route::Reverse(_));
                        ex.deadline = Instant::now()
                            + match &self.route {
                                Route::Reverse(_) => self.timeout,
                                Route::Forward(r) => r.connect_timeout(),
                            };
                        reply.wake_at(Some(ex.deadline));
                        self.open(reply, true);
                        reply.upstream_write(&head);
                        // One retry (the head is not kept): a second failure is a 502.
                        return;
                    }
                }
                let (status, reason, cause) = match end {
                    UpstreamEnd::ConnectFailed(e) => {
                        (502, "connect", format!("{label} unreachable: {e}"))
                    }
                    UpstreamEnd::Eof => (
                        502,
                        "closed",
                        format!("{label} closed the connection before a response"),
                    ),
                    UpstreamEnd::Failed(e) => (
                        502,
                        "closed",
                        format!("{label} failed before a response: {e}"),
                    ),
                    UpstreamEnd::Tls(e) => {
                        let (status, reason, what) = http_forward::tls_failure(&e);
                        (status, reason, format!("{label} {what}"))
                    }
                };
                self.fail(reply, status, reason, &cause);
            }
            Resp::Body { body, .. } if *body == Body::UntilClose => {
                if let UpstreamEnd::Failed(e) = end {
                    let cause = format!("{label} failed mid-response: {e}");
                    self.log(0, "closed", &cause);
                }
                // The end of a close-delimited body: the client connection closes after it.
                self.state = State::Closed;
                reply.close();
            }
            Resp::Body { .. } => {
                let cause = match end {
                    UpstreamEnd::Failed(e) => format!("{label} failed mid-response: {e}"),
                    UpstreamEnd::Tls(e) => format!("{label} failed mid-response: {e}"),
                    _ => format!("{label} closed the connection mid-response"),
                };
                self.log(0, "closed", &cause);
                self.state = State::Closed;
                reply.close();
            }
        }
    }

    fn on_drain(&mut self, reply: &mut Reply) {
        if matches!(self.state, State::Busy(_) | State::Resolving) {
            self.close_after = true;
        } else {
            self.state = State::Closed;
            reply.close();
        }
    }
}

impl ProxyHandler {
    /// Record whether the upstream connection of the exchange came from the pool (known
    /// from the call after the one that opened it).
    fn note_reused(&mut self, reply: &mut Reply) {
        if let State::Busy(ex) = &mut self.state {
            if ex.reused.is_none() {
                ex.reused = reply.upstream_reused();
                match (&self.route, ex.reused) {
                    (Route::Forward(r), Some(false)) => r.count(Event::Connection),
                    (_, Some(true)) if !ex.established => {
                        // A pooled connection is established: the response timeout applies.
                        ex.established = true;
                        ex.deadline = Instant::now() + self.timeout;
                        reply.wake_at(Some(ex.deadline));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The upstream as named in messages: `upstream ADDR`, or the partner's `host:port`.
    fn label(&self) -> String {
        match &self.route {
            Route::Reverse(addr) => format!("upstream {addr}"),
            Route::Forward(r) => r.label(),
        }
    }

    /// Open the exchange's upstream connection (`fresh`: a new one).
    fn open(&self, reply: &mut Reply, fresh: bool) {
        match &self.route {
            Route::Reverse(addr) => reply.upstream_open(*addr, fresh),
            Route::Forward(r) => r.open(reply, fresh),
        }
    }

    /// Start the requests waiting in `inbuf`, one at a time.
    fn next_request(&mut self, reply: &mut Reply) {
        // A client may send an empty line between requests (RFC 9112 2.2).
        let blank = self.inbuf.chunks(2).take_while(|c| *c == b"\r\n").count();
        self.inbuf.drain(..blank * 2);
        if self.inbuf.is_empty() {
            reply.pause_reading(false);
            return;
        }
        let mode = match self.route {
            Route::Reverse(_) => Mode::Reverse(&self.added),
            Route::Forward(_) => Mode::Forward,
        };
        let req = match request::parse_with(&self.inbuf, &self.limits, mode) {
            Parsed::Partial => {
                reply.pause_reading(false);
                return;
            }
            Parsed::Refused(refusal) => {
                info!(
                    target: "onerecord::http",
                    remote:% = self.remote, status = refusal.status,
                    reason = refusal.reason.as_str();
                    "request refused"
                );
                reply.write(&response::simple(refusal.status, &refusal.reason));
                self.state = State::Closed;
                self.inbuf = Vec::new();
                reply.close();
                return;
            }
            Parsed::Request(req) => req,
        };
        let established = match (&mut self.route, &req.dest) {
            (Route::Reverse(addr), _) => {
                reply.upstream_open(*addr, false);
                true
            }
            (Route::Forward(route), Some(dest)) => {
                match route.pick(dest, !self.waited, reply) {
                    Pick::Opened => {}
                    Pick::Wait => {
                        self.waited = true;
                        self.state = State::Resolving;
                        reply.pause_reading(true);
                        return;
                    }
                    Pick::Refuse(status, reason, cause) => {
                        self.waited = false;
                        self.fail(reply, status, reason, &cause);
                        return;
                    }
                }
                false
            }
            (Route::Forward(_), None) => {
                // Forward-mode parsing always gives a destination.
                self.fail(reply, 400, "bad_request", "no destination");
                return;
            }
        };
        self.waited = false;
        let rest = self.inbuf.split_off(req.head_len);
        self.inbuf = Vec::new();
        reply.upstream_write(&req.upstream_head);
        let deadline = Instant::now()
            + match &self.route {
                Route::Forward(r) => r.connect_timeout(),
                Route::Reverse(_) => self.timeout,
            };
        reply.wake_at(Some(deadline));
        let no_body = req.body.is_done();
        self.state = State::Busy(Exchange {
            req_body: req.body,
            retry_head: Some(req.upstream_head),
            reused: None,
            idempotent: req.idempotent,
            established,
            head_method: req.head_method,
            minor: req.minor,
            close: req.close,
            resp: Resp::Head(Vec::new()),
            deadline,
        });
        let rest_all = &rest[..];
        let rest = if no_body {
            rest_all
        } else {
            match self.forward_body(rest_all, reply) {
                Some(r) => r,
                None => return,
            }
        };
        if let State::Busy(ex) = &mut self.state {
            // The request is kept for a retry while it is whole in hand and small: no body,
            // or a body that came with the head.
            let body = &rest_all[..rest_all.len() - rest.len()];
            match &mut ex.retry_head {
                Some(bytes) if ex.req_body.is_done() && body.len() <= MAX_RETRY_BODY => {
                    bytes.extend_from_slice(body);
                }
                kept => *kept = None,
            }
        }
        self.inbuf.extend_from_slice(rest);
        let body_done = matches!(&self.state, State::Busy(ex) if ex.req_body.is_done());
        // Read on while the body streams; hold the next request until this one is answered.
        reply.pause_reading(body_done);
    }

    /// Send the request-body part of `data` upstream; the bytes after the body (`None` when
    /// the body was malformed and the connection is closing).
    fn forward_body<'d>(&mut self, mut data: &'d [u8], reply: &mut Reply) -> Option<&'d [u8]> {
        let State::Busy(ex) = &mut self.state else {
            return None;
        };
        while !data.is_empty() && !ex.req_body.is_done() {
            match ex.req_body.advance(data) {
                Ok(step) => {
                    reply.upstream_write(&data[..step.len]);
                    data = &data[step.len..];
                }
                Err(e) => {
                    let reason = format!("bad chunked request body: {e}");
                    info!(
                        target: "onerecord::http",
                        remote:% = self.remote, status = 400, reason = reason.as_str();
                        "request refused"
                    );
                    if matches!(ex.resp, Resp::Head(ref b) if b.is_empty()) {
                        reply.write(&response::simple(400, &reason));
                    }
                    reply.upstream_release(false);
                    reply.wake_at(None);
                    self.state = State::Closed;
                    reply.close();
                    return None;
                }
            }
        }
        Some(data)
    }

    /// Relay response body bytes to the client; finish when the body ends.
    fn relay_body(&mut self, mut data: &[u8], reply: &mut Reply) {
        let State::Busy(ex) = &mut self.state else {
            return;
        };
        let Resp::Body {
            body,
            dechunk,
            reusable,
            ..
        } = &mut ex.resp
        else {
            return;
        };
        while !data.is_empty() && !body.is_done() {
            match body.advance(data) {
                Ok(step) => {
                    if step.payload || !*dechunk {
                        reply.write(&data[..step.len]);
                    }
                    data = &data[step.len..];
                }
                Err(e) => {
                    let cause = format!("{}: bad chunked response: {e}", self.label());
                    self.log(0, "bad_response", &cause);
                    self.abort(reply);
                    return;
                }
            }
        }
        if body.is_done() {
            // Bytes after the response: the upstream connection is out of step, not reused.
            *reusable &= data.is_empty();
            self.maybe_finish(reply);
        }
    }

    /// Close out the exchange when both the request and the response are complete (or the
    /// response is complete and the client connection closes anyway).
    fn maybe_finish(&mut self, reply: &mut Reply) {
        let State::Busy(ex) = &mut self.state else {
            return;
        };
        let (close_client, reusable) = match &ex.resp {
            Resp::Body {
                body,
                close_client,
                reusable,
                ..
            } if body.is_done() => (*close_client, *reusable),
            _ => return,
        };
        if !ex.req_body.is_done() {
            // The response came before the whole request body: the client connection
            // closes after it (its head said so) and the upstream one is not reused.
            reply.upstream_release(false);
            reply.wake_at(None);
            self.state = State::Closed;
            reply.close();
            return;
        }
        reply.upstream_release(reusable);
        reply.wake_at(None);
        if close_client || ex.close || self.close_after {
            self.state = State::Closed;
            reply.close();
            return;
        }
        self.state = State::Idle;
        self.next_request(reply);
    }

    /// Answer `status` with `cause` (logged; `reason` counted for the destination), give up
    /// the upstream connection and close.
    fn fail(&mut self, reply: &mut Reply, status: u16, reason: &'static str, cause: &str) {
        self.log(status, reason, cause);
        reply.write(&response::simple(status, cause));
        reply.upstream_release(false);
        reply.wake_at(None);
        self.state = State::Closed;
        reply.close();
    }

    /// The WARN line of an upstream failure; `status` is what the client got (`0`: the
    /// client connection was closed instead). The forward proxy counts `reason` for the
    /// destination and logs under `onerecord::partner`.
    fn log(&self, status: u16, reason: &'static str, cause: &str) {
        match &self.route {
            Route::Reverse(upstream) => warn!(
                target: "onerecord::upstream",
                upstream:% = upstream, remote:% = self.remote, status = status, cause = cause;
                "upstream failed"
            ),
            Route::Forward(r) => {
                r.count(Event::Failure(reason));
                warn!(
                    target: "onerecord::partner",
                    partner = r.label().as_str(), remote:% = self.remote, status = status,
                    reason = reason, cause = cause;
                    "partner request failed"
                );
            }
        }
    }

    /// Drop the exchange without an answer (a response has started or the request is
    /// broken): close both connections.
    fn abort(&mut self, reply: &mut Reply) {
        reply.upstream_release(false);
        reply.wake_at(None);
        self.state = State::Closed;
        reply.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::UpstreamOp;

    fn handler(timeout: Duration) -> ProxyHandler {
        let mut cfg = HttpProxyConfig::new("127.0.0.1:8080".parse().unwrap());
        cfg.upstream_timeout = timeout;
        let proxy = HttpProxy::new(cfg).unwrap();
        ProxyHandler {
            limits: HeadLimits {
                max_request_line: 8192,
                max_head: 32768,
                max_headers: 100,
            },
            timeout: proxy.cfg.upstream_timeout,
            route: Route::Reverse(proxy.cfg.upstream),
            added: Added::default(),
            remote: "192.0.2.1:5000".parse().unwrap(),
            inbuf: Vec::new(),
            state: State::Idle,
            close_after: false,
            waited: false,
        }
    }

    /// The upstream operations of a reply, as text: `open`, `open fresh`, `write <bytes>`,
    /// `release reuse`, `release`.
    fn ops(reply: &Reply) -> Vec<String> {
        reply
            .upstream
            .iter()
            .map(|op| match op {
                UpstreamOp::Open { fresh: false, .. } => "open".to_string(),
                UpstreamOp::Open { fresh: true, .. } => "open fresh".to_string(),
                UpstreamOp::Write(v) => format!("write {}", String::from_utf8_lossy(v)),
                UpstreamOp::Release { reuse: true } => "release reuse".to_string(),
                UpstreamOp::Release { reuse: false } => "release".to_string(),
            })
            .collect()
    }

    fn out(reply: &Reply) -> String {
        String::from_utf8_lossy(&reply.out).into_owned()
    }

    const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn a_pipelined_request_waits_for_the_response_before_it() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(&[GET_A, GET_B].concat(), &mut r);
        let sent = ops(&r);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            sent[0] == "open" && sent[1].starts_with("write GET /a "),
            "{sent:?}"
        );
        assert_eq!(r.pause, Some(true), "reading pauses while /a is in flight");

        let mut r = Reply::default();
        h.on_upstream_data(OK, &mut r);
        assert_eq!(out(&r), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let sent = ops(&r);
        assert_eq!(sent[..2], ["release reuse", "open"], "{sent:?}");
        assert!(sent[2].starts_with("write GET /b "), "{sent:?}");
        assert!(!r.close);
    }

    #[test]
    fn an_upstream_connection_that_sends_more_than_the_response_is_not_reused() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(GET_A, &mut r);
        let mut r = Reply::default();
        h.on_upstream_data(&[OK, b"HTTP/1.1 200 OK\r\n"].concat(), &mut r);
        assert_eq!(out(&r), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(ops(&r), ["release"]);
    }

    #[test]
    fn a_stale_pooled_connection_is_retried_once_on_a_new_one_then_502() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(b"DELETE /a HTTP/1.1\r\nHost: h\r\n\r\n", &mut r);
        // A later call learns that the connection came from the pool.
        let mut r = Reply {
            upstream_reused: Some(true),
            ..Reply::default()
        };
        h.on_wake(&mut r);
        let mut r = Reply::default();
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        let sent = ops(&r);
        assert_eq!(sent[0], "open fresh", "{sent:?}");
        assert!(sent[1].starts_with("write DELETE /a "), "{sent:?}");
        assert!(r.out.is_empty() && !r.close);

        let mut r = Reply::default();
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        assert!(
            out(&r).starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{}",
            out(&r)
        );
        assert!(
            out(&r).ends_with("upstream 127.0.0.1:8080 closed the connection before a response\n")
        );
        assert!(r.close);
    }

    #[test]
    fn a_small_body_that_came_with_its_head_is_sent_again_on_a_retry() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
            &mut r,
        );
        let mut r = Reply {
            upstream_reused: Some(true),
            ..Reply::default()
        };
        h.on_wake(&mut r);
        let mut r = Reply::default();
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        let sent = ops(&r);
        assert_eq!(sent[0], "open fresh", "{sent:?}");
        assert!(
            sent[1].starts_with("write POST /a ") && sent[1].ends_with("\r\n\r\nhi"),
            "{sent:?}"
        );
    }

    #[test]
    fn a_body_still_streaming_is_not_retried() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(
            b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhi",
            &mut r,
        );
        let mut r = Reply {
            upstream_reused: Some(true),
            ..Reply::default()
        };
        h.on_data(b"the", &mut r);
        let mut r = Reply::default();
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        assert!(
            !ops(&r).iter().any(|op| op.starts_with("open")),
            "{:?}",
            ops(&r)
        );
        assert!(out(&r).starts_with("HTTP/1.1 502 "), "{}", out(&r));
    }

    #[test]
    fn a_post_on_a_new_connection_is_not_retried() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            &mut r,
        );
        let mut r = Reply::default();
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        assert!(
            !ops(&r).iter().any(|op| op.starts_with("open")),
            "{:?}",
            ops(&r)
        );
        assert!(out(&r).starts_with("HTTP/1.1 502 "), "{}", out(&r));
    }

    #[test]
    fn no_response_head_within_the_timeout_gives_504_and_no_reuse() {
        let mut h = handler(Duration::from_millis(1));
        let mut r = Reply::default();
        h.on_data(GET_A, &mut r);
        assert!(matches!(r.wake_at, Some(Some(_))), "the deadline is armed");
        std::thread::sleep(Duration::from_millis(5));
        let mut r = Reply::default();
        h.on_wake(&mut r);
        assert!(
            out(&r).starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
            "{}",
            out(&r)
        );
        assert_eq!(ops(&r), ["release"]);
        assert!(r.close);
    }

    #[test]
    fn an_early_timer_only_rearms_the_deadline() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(GET_A, &mut r);
        let mut r = Reply::default();
        h.on_wake(&mut r);
        assert!(r.out.is_empty() && !r.close && ops(&r).is_empty());
        assert!(matches!(r.wake_at, Some(Some(_))));
    }

    #[test]
    fn a_response_before_the_whole_request_body_closes_both_sides() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
            &mut r,
        );
        assert_eq!(r.pause, Some(false), "the body is still being read");
        let mut r = Reply::default();
        h.on_upstream_data(
            b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
            &mut r,
        );
        assert!(out(&r).contains("Connection: close\r\n"), "{}", out(&r));
        assert_eq!(ops(&r), ["release"]);
        assert!(r.close);
    }

    #[test]
    fn close_notify_during_an_exchange_closes_after_the_response() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(GET_A, &mut r);
        let mut r = Reply::default();
        h.on_peer_closed(&mut r);
        assert!(!r.close, "the response is still to come");
        let mut r = Reply::default();
        h.on_upstream_data(OK, &mut r);
        assert!(out(&r).contains("Connection: close\r\n"), "{}", out(&r));
        assert_eq!(ops(&r), ["release reuse"]);
        assert!(r.close);
    }

    #[test]
    fn interim_responses_are_relayed_and_the_final_one_follows_in_the_same_read() {
        let mut h = handler(Duration::from_secs(60));
        let mut r = Reply::default();
        h.on_data(
            b"PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            &mut r,
        );
        let mut r = Reply::default();
        h.on_upstream_data(b"HTTP/1.1 100 Continue\r\n\r\n", &mut r);
        assert_eq!(out(&r), "HTTP/1.1 100 Continue\r\n\r\n");
        let mut r = Reply::default();
        h.on_data(b"hi", &mut r);
        assert_eq!(ops(&r), ["write hi"]);
        let mut r = Reply::default();
        h.on_upstream_data(
            &[b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n", OK].concat(),
            &mut r,
        );
        assert_eq!(
            out(&r),
            "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        );
        assert_eq!(ops(&r), ["release reuse"]);
    }

    /// Pieces of `bytes` cut at `cuts` (taken modulo the length).
    fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
    }

    /// Drive one handler through pipelined requests and their responses, both cut at the
    /// given places: (bytes to the client, bytes to the upstream, releases with reuse).
    fn exchange(client_cuts: &[usize], upstream_cuts: &[usize]) -> (Vec<u8>, Vec<u8>, usize) {
        let requests = [
            GET_A,
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            b"PUT /l HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nwxyz",
            GET_B,
        ]
        .concat();
        let mut responses = vec![
            pieces(OK, upstream_cuts),
            pieces(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                upstream_cuts,
            ),
            pieces(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                upstream_cuts,
            ),
            pieces(OK, upstream_cuts),
        ]
        .into_iter();
        let mut h = handler(Duration::from_secs(60));
        let (mut out, mut up, mut reused) = (Vec::new(), Vec::new(), 0);
        let mut note = |r: &Reply, out: &mut Vec<u8>, up: &mut Vec<u8>| {
            out.extend_from_slice(&r.out);
            for op in &r.upstream {
                match op {
                    UpstreamOp::Write(v) => up.extend_from_slice(v),
                    UpstreamOp::Release { reuse: true } => reused += 1,
                    _ => {}
                }
            }
        };
        for piece in pieces(&requests, client_cuts) {
            let mut r = Reply::default();
            h.on_data(&piece, &mut r);
            note(&r, &mut out, &mut up);
            while matches!(&h.state, State::Busy(ex) if ex.req_body.is_done()) {
                for part in responses.next().expect("a response per request") {
                    let mut r = Reply::default();
                    h.on_upstream_data(&part, &mut r);
                    note(&r, &mut out, &mut up);
                }
            }
        }
        (out, up, reused)
    }

    proptest::proptest! {
        /// However the client's and the upstream's bytes are cut, the handler sends the same
        /// bytes both ways and pools the upstream connection after every exchange.
        #[test]
        fn exchanges_do_not_depend_on_how_the_bytes_are_cut(
            client_cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..12),
            upstream_cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            let whole = exchange(&[], &[]);
            proptest::prop_assert_eq!(whole.2, 4);
            proptest::prop_assert_eq!(exchange(&client_cuts, &upstream_cuts), whole);
        }
    }

    #[test]
    fn pipelined_exchanges_give_the_expected_bytes() {
        let (out, up, reused) = exchange(&[], &[]);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
             HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        );
        let up = String::from_utf8(up).unwrap();
        assert_eq!(
            up.matches("x-forwarded-proto: https\r\n").count(),
            4,
            "{up}"
        );
        assert!(
            up.contains("\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\nPUT /l "),
            "{up}"
        );
        assert!(up.contains("\r\n\r\nwxyzGET /b "), "{up}");
        assert_eq!(reused, 4);
    }

    #[test]
    fn bad_configuration_is_refused_naming_the_field() {
        let base = HttpProxyConfig::new("127.0.0.1:1".parse().unwrap());
        let cases = [
            (
                HttpProxyConfig {
                    client_cert_header: Some("x-cert\r\nx-evil".into()),
                    ..base.clone()
                },
                "client_cert_header",
            ),
            (
                HttpProxyConfig {
                    client_cert_header: Some("X-Forwarded-For".into()),
                    ..base.clone()
                },
                "client_cert_header",
            ),
            (
                HttpProxyConfig {
                    fallback_host: Some("a b".into()),
                    ..base.clone()
                },
                "fallback_host",
            ),
            (
                HttpProxyConfig {
                    max_head: 0,
                    ..base.clone()
                },
                "max_head",
            ),
            (
                HttpProxyConfig {
                    upstream_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "upstream_timeout",
            ),
        ];
        for (cfg, field) in cases {
            let err = HttpProxy::new(cfg).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        assert!(HttpProxy::new(base).is_ok());
    }
}
