//! An HTTP/1.1 forward (egress) proxy for a local application, as a [`Service`]: every
//! request in absolute form is sent over TLS (mTLS when the destination's policy has a
//! client certificate) to the host and port it names, over kept-alive connections taken
//! from the adapter's per-worker pool ([`Reply::upstream_open_tls`]).
//!
//! The request and response handling (parsing, smuggling checks, body framing, relaying,
//! timeouts, the retry of a request a pooled connection dropped) is the reverse proxy's
//! (`http_proxy`); this module adds what is particular to egress: the destination policy
//! (`pattern`), name resolution off the workers (`resolve`), the partner's TLS policy and
//! the per-destination statistics.
//!
//! What it does per request is documented on [`ForwardProxy`].

mod pattern;
mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onerecord_tls::{Alert, ClientPolicy, Reason};

use crate::http_proxy::{self, Dest, HeadLimits};
use crate::service::{Handler, Peer, Reply, Service};
use pattern::Pattern;
use resolve::Resolver;

/// Most destinations with their own statistics; requests to others are counted under
/// [`OTHER_DESTINATIONS`].
const MAX_DESTINATIONS: usize = 1024;

/// The statistics label of destinations beyond the first 1024.
pub const OTHER_DESTINATIONS: &str = "other";

/// A partner: the destinations it covers and the TLS policy used to reach them.
#[derive(Clone, Debug)]
pub struct Partner {
    /// `HOST[:PORT]` or `*.parent[:PORT]` patterns (matched as [`ForwardProxyConfig::allow`]).
    pub destinations: Vec<String>,
    /// The client certificate to present, the CA bundle, CRLs and identity rules the
    /// partner's certificate must meet. Keep one policy per partner: pooled connections
    /// and cached sessions belong to it.
    pub policy: ClientPolicy,
    /// Connect here instead of resolving the destination's name (split-horizon DNS, tests);
    /// the partner is still verified for the name in the request.
    /// [`ForwardProxyConfig::resolve`] entries take precedence.
    pub connect: Option<SocketAddr>,
}

impl Partner {
    /// A partner reached under `policy` for the `destinations` patterns, by name.
    pub fn new<S: Into<String>>(
        destinations: impl IntoIterator<Item = S>,
        policy: ClientPolicy,
    ) -> Self {
        Self {
            destinations: destinations.into_iter().map(Into::into).collect(),
            policy,
            connect: None,
        }
    }
}

/// What a [`ForwardProxy`] does. [`ForwardProxyConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ForwardProxyConfig {
    /// The TLS policy for destinations no [`Partner`] covers; `None`: those are refused
    /// (`403`).
    pub default_policy: Option<ClientPolicy>,
    /// Per-destination policies; the first entry whose pattern matches wins (list specific
    /// entries before wildcards).
    pub partners: Vec<Partner>,
    /// Where the application may go: `HOST[:PORT]` patterns, `*.parent` matching any name
    /// with one or more labels before `.parent` (not `parent` itself), ASCII case ignored; a
    /// pattern without a port matches every port. Empty: every destination with a policy.
    /// Others get `403` naming the destination.
    pub allow: Vec<String>,
    /// Connect to this address instead of resolving the name (as curl's `--resolve`):
    /// `("host:port", address)`. The partner is still verified for `host`.
    pub resolve: Vec<(String, SocketAddr)>,
    /// How long a resolved address is reused. Default 30 s (failures: 5 s at most).
    pub dns_ttl: Duration,
    /// How long a new connection may take, TCP connect and TLS handshake together, before
    /// the request gets `504` ("could not be connected within"). Default 10 s. The policy's
    /// handshake timeout, which the adapter also counts from the start of the connection,
    /// gives its own `504` ("TLS handshake timed out") when it passes first.
    pub connect_timeout: Duration,
    /// How long the partner may be silent (from the last byte exchanged) before a response
    /// is complete: `504` before the response head, the local connection closed after it.
    /// Default 60 s.
    pub upstream_timeout: Duration,
    /// Longest request line in bytes; longer gets `414`. Default 8 KiB.
    pub max_request_line: usize,
    /// Largest request head in bytes; larger gets `431`. Default 32 KiB.
    pub max_head: usize,
    /// Most header fields in a request; more gets `431`. Default 100.
    pub max_headers: usize,
}

impl ForwardProxyConfig {
    /// The defaults, with `default_policy` for destinations no partner entry covers.
    pub fn new(default_policy: Option<ClientPolicy>) -> Self {
        Self {
            default_policy,
            partners: Vec::new(),
            allow: Vec::new(),
            resolve: Vec::new(),
            dns_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            max_request_line: 8 * 1024,
            max_head: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// A [`ForwardProxyConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardProxyConfigError {
    /// A destination pattern that is not `HOST[:PORT]` or `*.parent[:PORT]`: the field
    /// (`allow`, `partners`, `resolve`) and the text.
    InvalidDestination {
        /// The configuration field.
        field: &'static str,
        /// The pattern as given.
        pattern: String,
    },
    /// No default policy and no partner: every request would be refused.
    NoPolicy,
    /// A limit or timeout that is zero: the named field.
    ZeroLimit(&'static str),
}

impl fmt::Display for ForwardProxyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidDestination { field, pattern } => write!(
                f,
                "{field}: {pattern:?} is not a destination (HOST[:PORT] or *.parent[:PORT])"
            ),
            Self::NoPolicy => {
                f.write_str("no TLS policy: set a default policy or at least one partner")
            }
            Self::ZeroLimit(name) => write!(f, "{name} must be greater than zero"),
        }
    }
}

impl std::error::Error for ForwardProxyConfigError {}

/// Statistics of one destination (`host:port`), since the proxy was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationStats {
    /// Requests for the destination (refused ones included).
    pub requests: u64,
    /// New TLS connections opened to it (not taken from the pool).
    pub connections: u64,
    /// Handshakes completed without resumption.
    pub handshakes_full: u64,
    /// Handshakes that resumed a cached session.
    pub handshakes_resumed: u64,
    /// Failed requests by reason: `denied` (not allowed, no policy), `dns`, `connect`,
    /// `connect_timeout`, `refused` (the partner sent an alert), `verification` (its
    /// certificate or identity failed our policy), `handshake_timeout`, `tls` (another TLS
    /// failure), `closed` (closed or reset before a response), `bad_response`,
    /// `response_timeout`.
    pub failures: BTreeMap<&'static str, u64>,
}

/// The per-destination statistics, shared by all connections of a proxy.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    map: Mutex<HashMap<String, DestinationStats>>,
}

/// One thing to count.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Request,
    Connection,
    Handshake { resumed: bool },
    Failure(&'static str),
}

impl Stats {
    pub(crate) fn count(&self, dest: &Dest, event: Event) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let key = dest.to_string();
        let entry = if map.contains_key(&key) || map.len() < MAX_DESTINATIONS {
            map.entry(key).or_default()
        } else {
            map.entry(OTHER_DESTINATIONS.to_string()).or_default()
        };
        match event {
            Event::Request => entry.requests += 1,
            Event::Connection => entry.connections += 1,
            Event::Handshake { resumed: false } => entry.handshakes_full += 1,
            Event::Handshake { resumed: true } => entry.handshakes_resumed += 1,
            Event::Failure(reason) => *entry.failures.entry(reason).or_default() += 1,
        }
    }

    fn snapshot(&self) -> BTreeMap<String, DestinationStats> {
        match self.map.lock() {
            Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => BTreeMap::new(),
        }
    }
}

/// What every connection of a proxy shares.
pub(crate) struct Shared {
    cfg: ForwardProxyConfig,
    allow: Vec<Pattern>,
    partners: Vec<(Vec<Pattern>, ClientPolicy, Option<SocketAddr>)>,
    resolve: Vec<(Dest, SocketAddr)>,
    resolver: Resolver,
    pub(crate) stats: Stats,
}

/// The HTTP/1.1 forward (egress) proxy [`Service`]: the local application sends requests
/// in absolute form (`GET http://partner.example:8443/logistics-objects/1 HTTP/1.1`, or
/// `https://`, as any HTTP client with a proxy setting does), and each one goes to that
/// host and port over TLS.
///
/// # Per request
///
/// - Destination: the target's host and port; without a port, 443 for `http://` too: every
///   request leaves over TLS, verified for that host name under the destination's policy
///   (the first [`Partner`] whose pattern matches, else
///   [`ForwardProxyConfig::default_policy`]), never in plaintext whatever the scheme says.
/// - Refused with a short text body and `Connection: close`, never forwarded: `405` for
///   CONNECT (a tunnel would let the application bypass the company's certificate and
///   policy), `400` for an origin-form target (a proxy needs absolute form) or a target
///   with userinfo or a bad port, `403` for a destination outside
///   [`ForwardProxyConfig::allow`] or without a policy (the body names it); and what the
///   reverse proxy refuses for framing (`400`, `414`, `431`: see [`crate::HttpProxy`]).
/// - Rewritten: the request goes in origin form with `Host` set to the target's authority
///   (the application's `Host` is replaced); hop-by-hop fields (`Connection` and what it
///   names, `Keep-Alive`, `TE`, `Trailer`, `Upgrade`) and every `Proxy-*` field
///   (`Proxy-Authorization`, `Proxy-Connection`, ...) are removed. Nothing is added: no
///   `x-forwarded-*` or `Forwarded` (the partner knows us by our certificate); fields the
///   application set itself go through.
/// - Names are resolved on helper threads (the workers never block), answers cached for
///   [`ForwardProxyConfig::dns_ttl`]; [`ForwardProxyConfig::resolve`] overrides.
/// - Failures, each with a body naming the destination and a WARN line (target
///   `onerecord::partner`, fields `partner`, `status`, `reason`, `cause`): `502` when the
///   name does not resolve (`cannot resolve partner.example`), the connection is refused,
///   the partner refuses us (`partner.example:8443 refused our certificate:
///   access_denied`), its certificate fails verification (`partner.example:8443 failed
///   verification: ...`), or it closes before a response; `504` when connecting takes
///   longer than [`ForwardProxyConfig::connect_timeout`], the TLS handshake longer than the
///   policy's handshake timeout, or the response longer than
///   [`ForwardProxyConfig::upstream_timeout`] (each its own text).
/// - Reuse: connections are pooled per worker by (address, server name, policy), shared by
///   all local connections; a new one resumes a cached session of the policy. A request a
///   pooled connection dropped before answering is retried once on a new connection when it
///   is whole in hand (as the reverse proxy does).
#[derive(Clone)]
pub struct ForwardProxy {
    shared: Arc<Shared>,
}

impl fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardProxy")
            .field("config", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl ForwardProxy {
    /// A proxy with `cfg`, checked: a destination pattern that does not parse (the error
    /// names its field and text), no policy at all, or a zero limit or timeout is an error.
    /// Starts the resolver's helper threads.
    pub fn new(cfg: ForwardProxyConfig) -> Result<Self, ForwardProxyConfigError> {
        let bad = |field, pattern: &str| ForwardProxyConfigError::InvalidDestination {
            field,
            pattern: pattern.to_string(),
        };
        let allow = cfg
            .allow
            .iter()
            .map(|p| Pattern::parse(p).ok_or_else(|| bad("allow", p)))
            .collect::<Result<Vec<_>, _>>()?;
        let partners = cfg
            .partners
            .iter()
            .map(|p| {
                let pats = p
                    .destinations
                    .iter()
                    .map(|d| Pattern::parse(d).ok_or_else(|| bad("partners", d)))
                    .collect::<Result<Vec<_>, _>>()?;
                if pats.is_empty() {
                    return Err(bad("partners", ""));
                }
                Ok((pats, p.policy.clone(), p.connect))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let resolve = cfg
            .resolve
            .iter()
            .map(|(d, a)| {
                http_proxy::split_authority(d)
                    .and_then(|(_, port)| port.and(Dest::parse(d)))
                    .map(|dest| (dest, *a))
                    .ok_or_else(|| bad("resolve", d))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cfg.default_policy.is_none() && partners.is_empty() {
            return Err(ForwardProxyConfigError::NoPolicy);
        }
        for (name, v) in [
            ("max_request_line", cfg.max_request_line),
            ("max_head", cfg.max_head),
            ("max_headers", cfg.max_headers),
        ] {
            if v == 0 {
                return Err(ForwardProxyConfigError::ZeroLimit(name));
            }
        }
        for (name, d) in [
            ("dns_ttl", cfg.dns_ttl),
            ("connect_timeout", cfg.connect_timeout),
            ("upstream_timeout", cfg.upstream_timeout),
        ] {
            if d.is_zero() {
                return Err(ForwardProxyConfigError::ZeroLimit(name));
            }
        }
        let resolver = Resolver::new(cfg.dns_ttl);
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                allow,
                partners,
                resolve,
                resolver,
                stats: Stats::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ForwardProxyConfig {
        &self.shared.cfg
    }

    /// The statistics per destination (`host:port`, an IPv6 host in brackets), a copy.
    /// Idle pooled connections per destination are in the adapter's
    /// [`Counters::upstream_idle`](crate::Counters).
    pub fn stats(&self) -> BTreeMap<String, DestinationStats> {
        self.shared.stats.snapshot()
    }
}

impl Service for ForwardProxy {
    /// Local applications over TLS (a TLS listener in front of the proxy).
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        self.handler(peer.remote)
    }

    /// Local applications over plain TCP ([`crate::Mode::Plain`]): what `curl -x`, Java's
    /// `http.proxyHost` and other HTTP clients' proxy settings speak.
    fn accept_plain(&self, remote: SocketAddr, _local: SocketAddr) -> Option<Box<dyn Handler>> {
        self.handler(remote)
    }
}

impl ForwardProxy {
    fn handler(&self, remote: SocketAddr) -> Option<Box<dyn Handler>> {
        let cfg = &self.shared.cfg;
        let limits = HeadLimits {
            max_request_line: cfg.max_request_line,
            max_head: cfg.max_head,
            max_headers: cfg.max_headers,
        };
        Some(http_proxy::forward_handler(
            limits,
            cfg.upstream_timeout,
            remote,
            Route {
                shared: Arc::clone(&self.shared),
                dest: None,
                target: None,
            },
        ))
    }
}

/// One local connection's view of the proxy: the destination of the exchange in flight.
pub(crate) struct Route {
    shared: Arc<Shared>,
    /// The destination of the exchange in flight.
    dest: Option<Dest>,
    /// How it is reached, once decided.
    target: Option<Target>,
}

/// How the exchange in flight reaches its destination.
struct Target {
    addr: SocketAddr,
    policy: ClientPolicy,
}

/// What to do with a request.
pub(crate) enum Pick {
    /// Its connection was asked for ([`Route::open`] done).
    Opened,
    /// The name is being resolved: call again after the next wake.
    Wait,
    /// Refuse it: the status, the failure reason for the statistics, the body text.
    Refuse(u16, &'static str, String),
}

impl Route {
    /// The destination label of the exchange in flight.
    pub(crate) fn label(&self) -> String {
        self.dest
            .as_ref()
            .map_or_else(|| "partner".to_string(), Dest::to_string)
    }

    /// Count `event` for the exchange in flight.
    pub(crate) fn count(&self, event: Event) {
        if let Some(d) = &self.dest {
            self.shared.stats.count(d, event);
        }
    }

    /// How long a new connection may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.shared.cfg.connect_timeout
    }

    /// Check `dest` against the policy, resolve it, and open its connection.
    pub(crate) fn pick(&mut self, dest: &Dest, first: bool, reply: &mut Reply) -> Pick {
        let shared = Arc::clone(&self.shared);
        if first {
            shared.stats.count(dest, Event::Request);
        }
        self.target = None;
        self.dest = Some(dest.clone());
        if !shared.allow.is_empty() && !shared.allow.iter().any(|p| p.matches(dest)) {
            return Pick::Refuse(403, "denied", format!("destination {dest} is not allowed"));
        }
        let partner = shared
            .partners
            .iter()
            .find(|(pats, _, _)| pats.iter().any(|p| p.matches(dest)));
        let policy = partner
            .map(|(_, policy, _)| policy)
            .or(shared.cfg.default_policy.as_ref());
        let Some(policy) = policy.cloned() else {
            return Pick::Refuse(
                403,
                "denied",
                format!("destination {dest} has no TLS policy (no partner entry covers it)"),
            );
        };
        let found = shared
            .resolve
            .iter()
            .find(|(d, _)| d == dest)
            .map(|(_, a)| *a)
            .or(partner.and_then(|(_, _, connect)| *connect));
        let addr = match found {
            Some(a) => a,
            None => match shared.resolver.lookup(dest, || reply.waker()) {
                None => return Pick::Wait,
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    return Pick::Refuse(502, "dns", format!("cannot resolve {}: {e}", dest.host));
                }
            },
        };
        self.target = Some(Target { addr, policy });
        self.open(reply, false);
        Pick::Opened
    }

    /// Open (`fresh`: a new one) the connection of the exchange in flight.
    pub(crate) fn open(&self, reply: &mut Reply, fresh: bool) {
        if let Some(t) = &self.target {
            let host = self.dest.as_ref().map_or("", |d| d.host.as_str());
            reply.upstream_open_tls(t.addr, host, &t.policy, fresh);
        }
    }
}

/// The status, statistics reason and text for a TLS failure with the partner.
pub(crate) fn tls_failure(err: &onerecord_tls::Error) -> (u16, &'static str, String) {
    match err.reason() {
        Reason::HandshakeTimeout { after } => (
            504,
            "handshake_timeout",
            format!("TLS handshake timed out after {}s", after.as_secs_f64()),
        ),
        Reason::PeerAlert(alert) => {
            let about_us = matches!(
                alert,
                Alert::AccessDenied
                    | Alert::BadCertificate
                    | Alert::UnsupportedCertificate
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::CertificateUnknown
                    | Alert::UnknownCa
                    | Alert::CertificateRequired
                    | Alert::HandshakeFailure
            );
            let what = if about_us {
                "refused our certificate"
            } else {
                "refused the connection"
            };
            (502, "refused", format!("{what}: {}", alert.name()))
        }
        Reason::NameMismatch
        | Reason::UnknownIssuer
        | Reason::CertificateExpired { .. }
        | Reason::CertificateNotYetValid { .. }
        | Reason::Revoked
        | Reason::RevocationStatusUnknown
        | Reason::CrlExpired { .. }
        | Reason::BadCertificate
        | Reason::IdentityDenied
        | Reason::NoPeerCertificate => (
            502,
            "verification",
            format!("failed verification: {}", err.reason()),
        ),
        // Some servers (the JDK's HttpsServer before JDK 22) refuse a client certificate by
        // closing without an alert.
        Reason::UnexpectedEof => (
            502,
            "closed",
            "closed the TLS connection without an alert before answering (a server may do so \
             when it refuses our certificate)"
                .to_string(),
        ),
        _ => (502, "tls", format!("TLS failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{UpstreamEnd, UpstreamOp};
    use onerecord_tls::Time;
    use onerecord_tls_tests::Ca;

    fn policy() -> ClientPolicy {
        ClientPolicy::builder(Ca::new("Unit CA").trust())
            .build(Time::now())
            .unwrap()
    }

    fn handler(proxy: &ForwardProxy) -> Box<dyn Handler> {
        let cfg = &proxy.shared.cfg;
        http_proxy::forward_handler(
            HeadLimits {
                max_request_line: cfg.max_request_line,
                max_head: cfg.max_head,
                max_headers: cfg.max_headers,
            },
            cfg.upstream_timeout,
            "127.0.0.1:5000".parse().unwrap(),
            Route {
                shared: Arc::clone(&proxy.shared),
                dest: None,
                target: None,
            },
        )
    }

    fn out(reply: &Reply) -> String {
        String::from_utf8_lossy(&reply.out).into_owned()
    }

    const GET: &[u8] = b"GET http://p.example:8443/x HTTP/1.1\r\nHost: p.example:8443\r\n\r\n";

    #[test]
    fn a_request_opens_a_tls_connection_verified_for_the_targets_host() {
        let mut cfg = ForwardProxyConfig::new(Some(policy()));
        cfg.resolve
            .push(("p.example:8443".into(), "127.0.0.1:9443".parse().unwrap()));
        let proxy = ForwardProxy::new(cfg).unwrap();
        let mut h = handler(&proxy);
        let mut r = Reply::default();
        h.on_data(GET, &mut r);
        match &r.upstream[..] {
            [
                UpstreamOp::Open {
                    addr,
                    fresh: false,
                    tls: Some((name, _)),
                },
                UpstreamOp::Write(head),
            ] => {
                assert_eq!(addr.to_string(), "127.0.0.1:9443");
                assert_eq!(name, "p.example");
                assert!(head.starts_with(b"GET /x HTTP/1.1\r\nHost: p.example:8443\r\n"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(proxy.stats()["p.example:8443"].requests, 1);
    }

    #[test]
    fn a_connection_not_set_up_within_the_connect_timeout_gives_504() {
        let mut cfg = ForwardProxyConfig::new(Some(policy()));
        cfg.connect_timeout = Duration::from_millis(1);
        cfg.resolve
            .push(("p.example:8443".into(), "127.0.0.1:9443".parse().unwrap()));
        let proxy = ForwardProxy::new(cfg).unwrap();
        let mut h = handler(&proxy);
        h.on_data(GET, &mut Reply::default());
        std::thread::sleep(Duration::from_millis(5));
        let mut r = Reply::default();
        h.on_wake(&mut r);
        let text = out(&r);
        assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
        assert!(
            text.contains("p.example:8443 could not be connected within 0.001s"),
            "{text}"
        );
        assert!(r.close);
        assert_eq!(
            proxy.stats()["p.example:8443"].failures["connect_timeout"],
            1
        );
    }

    #[test]
    fn a_pooled_connection_that_closes_before_answering_is_retried_once_on_a_new_one() {
        let mut cfg = ForwardProxyConfig::new(Some(policy()));
        cfg.resolve
            .push(("p.example:8443".into(), "127.0.0.1:9443".parse().unwrap()));
        let proxy = ForwardProxy::new(cfg).unwrap();
        let mut h = handler(&proxy);
        h.on_data(GET, &mut Reply::default());
        let mut r = Reply {
            upstream_reused: Some(true),
            ..Reply::default()
        };
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        assert!(r.out.is_empty(), "{}", out(&r));
        assert!(matches!(
            &r.upstream[..],
            [UpstreamOp::Open { fresh: true, tls: Some(_), .. }, UpstreamOp::Write(w)]
                if w.starts_with(b"GET /x ")
        ));
        // The new one fails too: 502, no second retry.
        let mut r = Reply {
            upstream_reused: Some(false),
            ..Reply::default()
        };
        h.on_upstream_closed(UpstreamEnd::Eof, &mut r);
        let text = out(&r);
        assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
        assert!(
            text.contains("p.example:8443 closed the connection before a response"),
            "{text}"
        );
    }

    #[test]
    fn a_destination_without_a_policy_gets_403_and_a_bad_config_names_its_field() {
        let mut cfg = ForwardProxyConfig::new(None);
        cfg.partners
            .push(Partner::new(["*.partner.example"], policy()));
        let proxy = ForwardProxy::new(cfg.clone()).unwrap();
        let mut h = handler(&proxy);
        let mut r = Reply::default();
        h.on_data(GET, &mut r);
        let text = out(&r);
        assert!(text.starts_with("HTTP/1.1 403 Forbidden"), "{text}");
        assert!(
            text.contains("destination p.example:8443 has no TLS policy"),
            "{text}"
        );
        assert!(
            !r.upstream
                .iter()
                .any(|op| matches!(op, UpstreamOp::Open { .. }))
        );

        cfg.allow.push("*.*.example".into());
        let err = ForwardProxy::new(cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "allow: \"*.*.example\" is not a destination (HOST[:PORT] or *.parent[:PORT])"
        );
        assert_eq!(
            ForwardProxy::new(ForwardProxyConfig::new(None)).unwrap_err(),
            ForwardProxyConfigError::NoPolicy
        );
        let mut cfg = ForwardProxyConfig::new(Some(policy()));
        cfg.resolve
            .push(("p.example".into(), "127.0.0.1:1".parse().unwrap()));
        assert!(matches!(
            ForwardProxy::new(cfg),
            Err(ForwardProxyConfigError::InvalidDestination {
                field: "resolve",
                ..
            })
        ));
    }
}
