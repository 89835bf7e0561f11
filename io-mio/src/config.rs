//! The server's public configuration: what each listener does ([`Mode`], [`Backend`]), the
//! addresses ([`Listener`]), limits and timers ([`Limits`]) and the whole ([`ServerConfig`]).
//! Plain data: nothing here runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onerecord_tls::{ClientPolicy, ServerPolicies};

use crate::service::Service;

/// What a listener does with its connections.
#[derive(Clone)]
pub enum Mode {
    /// Terminate TLS (mTLS when the policy requires client certificates) and hand the
    /// plaintext to `backend`.
    Terminate {
        /// Policies by SNI name.
        policies: ServerPolicies,
        /// Where the decrypted stream goes.
        backend: Backend,
    },
    /// Accept plain TCP and forward it over TLS (mTLS with the policy's client certificate)
    /// to `connect`, resuming sessions across connections through the policy's cache.
    Originate {
        /// Client policy.
        policy: ClientPolicy,
        /// The remote TLS server.
        connect: SocketAddr,
        /// Name to send as SNI and to verify the server certificate against.
        server_name: String,
    },
    /// Accept plain TCP from local applications and hand each connection to `service`
    /// ([`Service::accept_plain`]): no TLS on this side, so bind it to a loopback or otherwise
    /// trusted address. The gateway's egress proxy runs here, with TLS towards the partners
    /// through [`crate::Reply::upstream_open_tls`].
    Plain {
        /// The application.
        service: Arc<dyn Service>,
    },
}

/// The destination of a terminated TLS stream.
#[derive(Clone)]
pub enum Backend {
    /// An in-process application.
    Service(Arc<dyn Service>),
    /// A TCP upstream, optionally told about the client with a PROXY protocol v2 header.
    Upstream {
        /// Upstream address.
        addr: SocketAddr,
        /// Send a PROXY v2 header with the verified identity first.
        proxy_protocol: bool,
    },
    /// One backend per site, chosen after the handshake by the server name (SNI) the client
    /// sent, with the matching of [`ServerPolicies::select`]: the exact name, then a `*.`
    /// wildcard for its parent, then the default.
    BySni(SniBackends),
}

/// Backends by server name (see [`Backend::BySni`]). Give it the same names as the
/// listener's [`ServerPolicies`], so that every site a handshake can select has a backend.
#[derive(Clone, Default)]
pub struct SniBackends {
    names: Vec<(String, Backend)>,
    default: Option<Box<Backend>>,
}

impl SniBackends {
    /// A set with an optional default backend (used when no name matches or no SNI was sent).
    pub fn new(default: Option<Backend>) -> Self {
        Self {
            names: Vec::new(),
            default: default.map(Box::new),
        }
    }

    /// Serve `name` (a DNS name, or `*.` followed by one; compared without regard to case)
    /// with `backend`. A name given twice keeps the first.
    pub fn with_name(mut self, name: &str, backend: Backend) -> Self {
        let lower = name.to_ascii_lowercase();
        if !self.names.iter().any(|(n, _)| *n == lower) {
            self.names.push((lower, backend));
        }
        self
    }

    /// The backend for `sni` (`None`: the client sent no server name).
    pub fn select(&self, sni: Option<&str>) -> Option<&Backend> {
        let Some(sni) = sni else {
            return self.default.as_deref();
        };
        let exact = self.names.iter().find(|(n, _)| n.eq_ignore_ascii_case(sni));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            self.names.iter().find(|(n, _)| {
                n.strip_prefix("*.")
                    .is_some_and(|p| p.eq_ignore_ascii_case(parent))
            })
        };
        exact
            .or_else(wildcard)
            .map(|(_, b)| b)
            .or(self.default.as_deref())
    }
}

/// One listening address.
#[derive(Clone)]
pub struct Listener {
    /// Address to bind (port 0 picks a free port; see [`crate::ServerHandle::local_addrs`]).
    pub addr: SocketAddr,
    /// What to do with connections.
    pub mode: Mode,
}

/// Limits and timers.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections across all workers. At the cap a new connection is accepted and
    /// closed at once (it never waits unanswered in the kernel backlog); accepting resumes
    /// as soon as the count drops.
    pub max_connections: usize,
    /// An established connection with no traffic for this long gets `close_notify`.
    pub idle_timeout: Duration,
    /// After `close_notify` (or a fatal alert) is sent, how long to wait for the peer's
    /// `close_notify`, end of stream, or for the alert to be written, before closing.
    pub linger: Duration,
    /// Graceful shutdown: how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Plaintext queued per direction per connection before the adapter stops reading the
    /// sending side (backpressure). With the session's own bounded buffers this bounds the
    /// memory of one connection.
    pub max_buffered: usize,
    /// Kept-alive upstream connections (see [`crate::Reply::upstream_open`]) each worker
    /// keeps idle per upstream address; beyond it the oldest idle one is closed. Keep it at
    /// or above the requests one worker has in flight at once, or connections are closed
    /// and opened again under load (one descriptor each while idle).
    pub upstream_idle_max: usize,
    /// An idle pooled upstream connection is closed after this long.
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(120),
            linger: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            max_buffered: 64 * 1024,
            upstream_idle_max: 256,
            upstream_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A server to start.
#[derive(Clone)]
pub struct ServerConfig {
    /// Listening addresses.
    pub listeners: Vec<Listener>,
    /// Worker threads, each with its own `mio::Poll`. `0` means the number of CPUs.
    pub workers: usize,
    /// Limits and timers.
    pub limits: Limits,
    /// Let other sockets with `SO_REUSEPORT` (another process of the same user, e.g. the
    /// next binary during a zero-downtime replacement) bind the same addresses and take a
    /// share of the connections. With `false` (the safe choice) each address is bound
    /// once, without `SO_REUSEPORT`, and held exclusively: [`crate::start`] fails with
    /// `AddrInUse` when another socket listens there, and no later process can join.
    pub reuse_port: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(b: Option<&Backend>) -> Option<u16> {
        match b? {
            Backend::Upstream { addr, .. } => Some(addr.port()),
            _ => None,
        }
    }

    fn up(port: u16) -> Backend {
        Backend::Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            proxy_protocol: false,
        }
    }

    #[test]
    fn sites_are_selected_as_policies_are() {
        let sites = SniBackends::new(Some(up(1)))
            .with_name("Secure.Example", up(2))
            .with_name("*.partners.example", up(3))
            .with_name("a.partners.example", up(4));
        assert_eq!(port(sites.select(Some("secure.example"))), Some(2));
        assert_eq!(port(sites.select(Some("SECURE.example"))), Some(2));
        assert_eq!(port(sites.select(Some("b.partners.example"))), Some(3));
        assert_eq!(port(sites.select(Some("a.partners.example"))), Some(4));
        // A wildcard covers one label only.
        assert_eq!(port(sites.select(Some("x.b.partners.example"))), Some(1));
        assert_eq!(port(sites.select(Some("partners.example"))), Some(1));
        assert_eq!(port(sites.select(None)), Some(1));
        let strict = SniBackends::new(None).with_name("secure.example", up(2));
        assert!(strict.select(Some("other.example")).is_none());
        assert!(strict.select(None).is_none());
    }
}
