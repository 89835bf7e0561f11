//! The application interface: what a gateway author programs against.
//!
//! A [`Service`] is asked once per connection, after the handshake and before any application
//! byte, whether to accept the verified peer; an accepted connection gets a [`Handler`] that
//! receives the decrypted bytes and answers through a [`Reply`], at once or later: when its
//! upstream connection answers (the worker keeps a pool of kept-alive upstream connections,
//! [`Reply::upstream_open`]), at a time it set, or when another thread wakes it. The
//! connection stays open for as many requests as the peer sends (connection reuse) until
//! either side closes; the handler hears when it is gone ([`Handler::on_closed`]).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use onerecord_tls::{ClientPolicy, PeerIdentity};

use crate::table::Key;

/// The peer of a connection, as known when the handshake completed.
#[derive(Debug)]
pub struct Peer<'a> {
    /// The verified identity (certificate, negotiated parameters, resumption).
    pub identity: &'a PeerIdentity,
    /// The remote address.
    pub remote: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
}

/// Decides on each new connection and makes its handler. Shared by all workers.
pub trait Service: Send + Sync + 'static {
    /// Accept the peer (return its handler) or refuse it (`None`: the connection gets
    /// `close_notify` and is closed, and a line is logged).
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>>;
}

/// One accepted connection's application logic.
///
/// Every method runs on the connection's worker thread and answers through a [`Reply`]. A
/// handler need not answer in the call that brought the request: it may answer when its
/// upstream connection answers ([`Handler::on_upstream_data`]), when its timer is due, or
/// when another thread wakes it ([`Reply::waker`], then [`Handler::on_wake`]).
pub trait Handler: Send {
    /// Decrypted bytes from the peer (any split: a request may arrive in pieces, several
    /// requests may arrive together). Answer through `reply`.
    fn on_data(&mut self, data: &[u8], reply: &mut Reply);

    /// The peer sent `close_notify`. The default closes this side too.
    fn on_peer_closed(&mut self, reply: &mut Reply) {
        reply.close();
    }

    /// The handler's waker was woken ([`Reply::waker`], from any thread) or its timer
    /// ([`Reply::wake_at`]) is due. Several wakes before the call make one call.
    fn on_wake(&mut self, reply: &mut Reply) {
        let _ = reply;
    }

    /// Bytes the upstream connection ([`Reply::upstream_open`]) sent. The adapter reads the
    /// upstream only while the peer's side has room (see [`Reply::backlog`]).
    fn on_upstream_data(&mut self, data: &[u8], reply: &mut Reply) {
        let _ = (data, reply);
    }

    /// The TLS upstream connection ([`Reply::upstream_open_tls`]) completed its handshake:
    /// the partner is verified as `identity` (`identity.resumed()`: the session was
    /// resumed). Not called for a pooled connection established earlier, nor for plain TCP.
    fn on_upstream_established(&mut self, identity: &PeerIdentity, reply: &mut Reply) {
        let _ = (identity, reply);
    }

    /// The upstream connection ended or could not be set up. It is gone (never pooled);
    /// [`Reply::upstream_open`] makes a new one.
    fn on_upstream_closed(&mut self, end: UpstreamEnd, reply: &mut Reply) {
        let _ = (end, reply);
    }

    /// Graceful shutdown began. The default closes the connection (`close_notify` after what
    /// is queued); a handler in the middle of an exchange may finish it and close then (the
    /// server's drain timeout bounds it).
    fn on_drain(&mut self, reply: &mut Reply) {
        reply.close();
    }

    /// The connection is gone, for whatever reason (closed by either side, failed, timed
    /// out, drained). Called once, last; an upstream connection it held is already closed.
    fn on_closed(&mut self) {}
}

/// Why an upstream connection ended (see [`Handler::on_upstream_closed`]).
#[derive(Debug)]
pub enum UpstreamEnd {
    /// It could not be connected (refused, unreachable, ...).
    ConnectFailed(io::Error),
    /// The upstream closed it (end of stream).
    Eof,
    /// Reading or writing failed (reset, ...).
    Failed(io::Error),
    /// The TLS session with the upstream failed: in the handshake (the partner refused us,
    /// [`onerecord_tls::Reason::PeerAlert`] with its alert, or it failed
    /// verification, with the alert we sent), by the handshake timeout, or later.
    Tls(onerecord_tls::Error),
}

impl std::fmt::Display for UpstreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamEnd::ConnectFailed(e) => write!(f, "unreachable: {e}"),
            UpstreamEnd::Eof => f.write_str("closed the connection"),
            UpstreamEnd::Failed(e) => write!(f, "connection failed: {e}"),
            UpstreamEnd::Tls(e) => write!(f, "TLS failed: {e}"),
        }
    }
}

/// A request to the adapter about the handler's upstream connection, in call order.
#[derive(Debug)]
pub(crate) enum UpstreamOp {
    Open {
        addr: SocketAddr,
        fresh: bool,
        /// For TLS: the server name and the policy.
        tls: Option<(String, ClientPolicy)>,
    },
    Write(Vec<u8>),
    Release {
        reuse: bool,
    },
}

/// What a handler sends back, and what it asks of the adapter, in one call.
#[derive(Debug, Default)]
pub struct Reply {
    pub(crate) out: Vec<u8>,
    pub(crate) close: bool,
    /// Bytes queued towards the peer before this call.
    pub(crate) backlog: usize,
    pub(crate) waker: Option<ReplyWaker>,
    /// `Some(t)`: the timer was set (`t`) or cancelled (`None`) in this call.
    pub(crate) wake_at: Option<Option<Instant>>,
    pub(crate) pause: Option<bool>,
    pub(crate) upstream: Vec<UpstreamOp>,
    /// Whether the upstream connection held at the start of the call came from the pool.
    pub(crate) upstream_reused: Option<bool>,
    /// Bytes queued for the upstream before this call.
    pub(crate) upstream_backlog: usize,
}

impl Reply {
    /// Queue bytes for the peer. Bytes written in one call go out together (one record when
    /// they fit in one); the adapter applies backpressure by not reading more from this peer
    /// while too much is queued.
    pub fn write(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// Send `close_notify` after what was written, then close the connection.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Bytes queued so far in this reply.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// `true` when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Bytes queued towards the peer and not yet taken by the session: what earlier calls
    /// wrote plus this call's. A handler that produces output on its own (from a waker) uses
    /// it to hold back while the peer is slow.
    pub fn backlog(&self) -> usize {
        self.backlog + self.out.len()
    }

    /// A handle that schedules [`Handler::on_wake`] for this connection, from any thread.
    /// Waking a connection that is gone does nothing.
    pub fn waker(&self) -> ReplyWaker {
        self.waker.clone().unwrap_or_else(ReplyWaker::detached)
    }

    /// Call [`Handler::on_wake`] at `at` (replacing an earlier time); `None` cancels.
    pub fn wake_at(&mut self, at: Option<Instant>) {
        self.wake_at = Some(at);
    }

    /// Stop (`true`) or resume (`false`) reading from the peer. While paused,
    /// [`Handler::on_data`] may still get bytes already read and decrypted (at most the
    /// session's receive buffer); nothing more is read from the socket.
    pub fn pause_reading(&mut self, paused: bool) {
        self.pause = Some(paused);
    }

    /// Take a kept-alive connection to `addr` from this worker's pool, or connect a new one
    /// (`fresh`: always a new one). A connection holds at most one upstream connection:
    /// opening while one is held closes the held one. A failure to connect comes later, as
    /// [`Handler::on_upstream_closed`] with [`UpstreamEnd::ConnectFailed`].
    pub fn upstream_open(&mut self, addr: SocketAddr, fresh: bool) {
        self.upstream.push(UpstreamOp::Open {
            addr,
            fresh,
            tls: None,
        });
    }

    /// Like [`Reply::upstream_open`], over TLS: a client session to `server_name` under
    /// `policy` (mTLS when the policy has a client certificate; resumed through the policy's
    /// session cache when it can be), the partner verified against the policy's anchors, CRLs
    /// and identity rules before any of its bytes reach [`Handler::on_upstream_data`].
    /// Pooled per address, server name and policy, where "the same policy" is the same
    /// [`ClientPolicy`] or a clone of it ([`ClientPolicy::id`]): build one per partner and
    /// keep it. Bytes written before the handshake completes are sent after it; a TLS
    /// failure comes as [`UpstreamEnd::Tls`], the handshake bounded by the policy's
    /// handshake timeout.
    pub fn upstream_open_tls(
        &mut self,
        addr: SocketAddr,
        server_name: &str,
        policy: &ClientPolicy,
        fresh: bool,
    ) {
        self.upstream.push(UpstreamOp::Open {
            addr,
            fresh,
            tls: Some((server_name.to_string(), policy.clone())),
        });
    }

    /// Queue bytes for the upstream connection, written as it accepts them. While more than
    /// [`Limits::max_buffered`](crate::Limits::max_buffered) is queued the adapter stops
    /// reading from the peer. Without an upstream connection the bytes are dropped.
    pub fn upstream_write(&mut self, data: &[u8]) {
        if let Some(UpstreamOp::Write(v)) = self.upstream.last_mut() {
            v.extend_from_slice(data);
        } else {
            self.upstream.push(UpstreamOp::Write(data.to_vec()));
        }
    }

    /// Give the upstream connection back: to this worker's pool when `reuse` (the exchange
    /// on it is complete and it may carry another; it is closed instead when bytes for it
    /// are still queued or the pool is full), closed otherwise.
    pub fn upstream_release(&mut self, reuse: bool) {
        self.upstream.push(UpstreamOp::Release { reuse });
    }

    /// Whether the upstream connection held when this call began came from the pool
    /// (`Some(true)`) or was connected for this connection (`Some(false)`); `None` when none
    /// was held. In [`Handler::on_upstream_closed`]: the connection that ended.
    pub fn upstream_reused(&self) -> Option<bool> {
        self.upstream_reused
    }

    /// Bytes queued for the upstream and not yet written: earlier calls' plus this call's.
    pub fn upstream_backlog(&self) -> usize {
        let mine: usize = self
            .upstream
            .iter()
            .map(|op| match op {
                UpstreamOp::Write(v) => v.len(),
                _ => 0,
            })
            .sum();
        self.upstream_backlog + mine
    }
}

/// Schedules [`Handler::on_wake`] for one connection from any thread (see [`Reply::waker`]).
#[derive(Clone)]
pub struct ReplyWaker {
    pub(crate) key: Key,
    pub(crate) queue: Option<Arc<WakeQueue>>,
}

impl std::fmt::Debug for ReplyWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyWaker").finish_non_exhaustive()
    }
}

impl ReplyWaker {
    fn detached() -> Self {
        Self {
            key: Key {
                index: usize::MAX,
                generation: 0,
            },
            queue: None,
        }
    }

    /// Schedule [`Handler::on_wake`] on the connection's worker.
    pub fn wake(&self) {
        if let Some(q) = &self.queue {
            q.push(self.key);
        }
    }
}

/// The connections to wake on one worker, and the worker's poll waker.
pub(crate) struct WakeQueue {
    keys: Mutex<Vec<Key>>,
    waker: Arc<mio::Waker>,
}

impl WakeQueue {
    pub(crate) fn new(waker: Arc<mio::Waker>) -> Self {
        Self {
            keys: Mutex::new(Vec::new()),
            waker,
        }
    }

    fn push(&self, key: Key) {
        let first = match self.keys.lock() {
            Ok(mut k) => {
                k.push(key);
                k.len() == 1
            }
            Err(_) => return,
        };
        if first {
            let _ = self.waker.wake();
        }
    }

    /// The connections woken since the last call.
    pub(crate) fn take(&self) -> Vec<Key> {
        match self.keys.lock() {
            Ok(mut k) => std::mem::take(&mut *k),
            Err(_) => Vec::new(),
        }
    }
}

/// A [`Service`] from a closure that makes a handler for every peer it accepts.
pub struct ServiceFn<F>(pub F);

impl<F> Service for ServiceFn<F>
where
    F: Fn(&Peer<'_>) -> Option<Box<dyn Handler>> + Send + Sync + 'static,
{
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        (self.0)(peer)
    }
}
