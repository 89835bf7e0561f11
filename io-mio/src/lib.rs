//! mio adapter for [`onerecord_tls`]: a multi-worker TLS/mTLS server (terminating to an
//! in-process [`Service`] or a TCP upstream with an optional PROXY protocol v2 header), the
//! plain-to-TLS forwarder used by the gateway's client mode, and an outbound client with a
//! session cache and a pool of kept-alive connections.
//!
//! # Server in a few lines
//!
//! ```no_run
//! use std::sync::Arc;
//! use onerecord_tls::{ServerPolicy, Time, pki};
//! use onerecord_tls_mio::{Backend, IdentityResponder, Limits, Listener, Mode, ServerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chain = pki::certificates_from_file("server.pem")?;
//! let key = pki::private_key_from_file("server.key")?;
//! let policy = ServerPolicy::builder(chain, key).build(Time::now())?;
//! let server = onerecord_tls_mio::start(ServerConfig {
//!     listeners: vec![Listener {
//!         addr: "127.0.0.1:8443".parse()?,
//!         mode: Mode::Terminate {
//!             policies: policy.into_set(),
//!             backend: Backend::Service(Arc::new(IdentityResponder)),
//!         },
//!     }],
//!     workers: 0,
//!     limits: Limits::default(),
//!     reuse_port: false,
//! })?;
//! println!("listening on {:?}", server.local_addrs());
//! server.join();
//! # Ok(()) }
//! ```
//!
//! # How a connection is driven
//!
//! The modules, each one concern, importing one way (`server` -> `worker` -> `conn`):
//! `config` (what to run), `server` (the handle and start-up), `worker` (one thread's event
//! loop), `conn` (one connection's lifecycle and drain order), `audit` (its log lines),
//! `queue` (byte queues), `pool` (each worker's kept-alive upstream connections for
//! handlers); `service`, `http` (the identity responder) and `http_proxy` (the HTTP/1.1
//! reverse proxy, [`HttpProxy`]) and `http_forward` (the egress
//! forward proxy, [`ForwardProxy`]) on the application side, `client` (outbound).
//!
//! Every worker owns a `mio::Poll`, a handle on each listening socket (one socket per address,
//! held exclusively; with [`ServerConfig::reuse_port`], one `SO_REUSEPORT` socket per worker,
//! the kernel spreading new connections over them) and a slab of connections whose tokens
//! carry a generation. Sockets are registered once for read and write readiness (mio is
//! edge-triggered): the adapter remembers readiness, reads and writes until `WouldBlock`, and
//! stops reading a side whose output is backed up (backpressure) without re-registering.
//! Each wakeup runs the core session's drain order: read TLS, run the session (`process`,
//! route its events), feed plaintext, write TLS, pump the plain side, finish.
//! Deadlines (handshake, idle, linger) live in a per-worker heap; the poll timeout is the
//! nearest one.
//!
//! Memory per connection is bounded by the session's buffers (incoming at most
//! [`onerecord_tls::DEFAULT_MAX_INCOMING`], outgoing at most
//! [`onerecord_tls::DEFAULT_MAX_OUTGOING`]) plus [`Limits::max_buffered`] per
//! direction of plaintext; idle established connections give their buffers back.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
pub mod client;
mod config;
mod conn;
pub mod http;
mod http_forward;
mod http_proxy;
pub mod metrics;
mod pool;
pub mod proxy;
mod queue;
mod server;
pub mod service;
mod table;
pub mod tickets;
mod worker;

pub use client::{Client, ClientStream};
pub use config::{Backend, Limits, Listener, Mode, ServerConfig, SniBackends};
pub use conn::PLAINTEXT_BODY;
pub use http::IdentityResponder;
pub use http_forward::{
    DestinationStats, ForwardProxy, ForwardProxyConfig, ForwardProxyConfigError,
    OTHER_DESTINATIONS, Partner,
};
pub use http_proxy::{HttpProxy, HttpProxyConfig, HttpProxyConfigError};
pub use metrics::{Counters, Histogram, Metrics, Snapshot};
pub use server::{ServerHandle, start};
pub use service::{Handler, Peer, Reply, ReplyWaker, Service, ServiceFn, UpstreamEnd};
