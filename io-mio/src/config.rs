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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(120),
            linger: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            max_buffered: 64 * 1024,
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
