//! The server: listeners, worker event loops, the connection table, timers, limits,
//! backpressure, graceful shutdown and hot reload.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use onerecord_tls::{
    CertInfo, ClientPolicy, Error, Event, Now, PeerIdentity, Reason, ServerPolicies, Session, Time,
};

use crate::metrics::{Counters, Metrics};
use crate::service::{Handler, Peer, Reply, Service};
use crate::table::{Deadlines, Key, RESERVED, Side, Slab};

const WAKER: Token = Token(usize::MAX);

fn listener_token(i: usize) -> Token {
    Token(RESERVED + i)
}

/// The body of the `400` answer to plaintext HTTP on a TLS port.
pub const PLAINTEXT_BODY: &str =
    "This is a TLS endpoint: ONE Record requires HTTPS. Use https:// to connect.\n";

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
    /// Address to bind (port 0 picks a free port; see [`ServerHandle::local_addrs`]).
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
    /// once, without `SO_REUSEPORT`, and held exclusively: [`start`] fails with
    /// `AddrInUse` when another socket listens there, and no later process can join.
    pub reuse_port: bool,
}

struct Shared {
    modes: Vec<RwLock<Mode>>,
    shutdown: AtomicBool,
    limits: Limits,
    metrics: Metrics,
}

/// A running server: reload its policies, read its metrics, shut it down.
pub struct ServerHandle {
    shared: Arc<Shared>,
    wakers: Vec<Arc<Waker>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    local_addrs: Vec<SocketAddr>,
}

impl ServerHandle {
    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Use `mode` for new connections on listener `index`; open connections keep the policy
    /// they started with. Returns `false` when there is no such listener.
    pub fn reload(&self, index: usize, mode: Mode) -> bool {
        let Some(slot) = self.shared.modes.get(index) else {
            return false;
        };
        record_certificates(&self.shared.metrics, index, &self.local_addrs, &mode);
        match slot.write() {
            Ok(mut m) => *m = mode,
            Err(poisoned) => *poisoned.into_inner() = mode,
        }
        true
    }

    /// The mode listener `index` uses for new connections.
    pub fn mode(&self, index: usize) -> Option<Mode> {
        let slot = self.shared.modes.get(index)?;
        Some(match slot.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }

    /// Start a graceful shutdown: stop accepting, send `close_notify` to open connections
    /// once their pending data is out, and close everything after the drain timeout.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Wait for the workers to finish (after [`ServerHandle::shutdown`]).
    pub fn join(&self) {
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
        self.join();
    }
}

fn record_certificates(metrics: &Metrics, index: usize, addrs: &[SocketAddr], mode: &Mode) {
    let label = addrs.get(index).map(|a| a.to_string()).unwrap_or_default();
    if let Ok(mut certs) = metrics.certificates.lock() {
        certs.retain(|(l, _)| !l.starts_with(&label));
        if let Mode::Terminate { policies, .. } = mode {
            for (i, p) in policies.policies().enumerate() {
                let name = if i == 0 {
                    label.clone()
                } else {
                    format!("{label}#{i}")
                };
                certs.push((name, p.certificate().not_after));
            }
        }
    }
}

/// Bind and listen on `addr`; with `reuse_port`, set `SO_REUSEPORT` so that other sockets
/// (of this process or, deliberately, of another) can bind the same address.
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // SO_REUSEADDR only allows binding over connections in TIME_WAIT (a quick restart); on
    // Unix it never lets two sockets listen on one address.
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    if reuse_port {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT is not available on this platform",
        ));
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An error of `addr`'s socket, naming the address.
fn at(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{addr}: {e}"))
}

/// Bind the listeners and start the workers.
pub fn start(config: ServerConfig) -> io::Result<ServerHandle> {
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    // Bind every worker's socket now, so errors (address in use) are reported to the caller
    // and a port 0 resolves to one port shared by all workers.
    //
    // By default an address is bound once, without SO_REUSEPORT, and every worker registers
    // a duplicate of that one socket in its own poll: the port is this process's alone (a
    // second gateway gets AddrInUse instead of silently taking a share of the traffic, and
    // Linux lets no later SO_REUSEPORT socket join one bound without it). A new connection
    // can wake every idle worker (edge-triggered, each accepts until WouldBlock); the losers
    // find nothing to accept, a cost that is small next to a handshake. A probe bind
    // followed by SO_REUSEPORT sockets would leave a window for another process to join.
    //
    // With `reuse_port`, each worker binds its own SO_REUSEPORT socket (the kernel spreads
    // connections over them) and so can another process: the explicit opt-in for a
    // zero-downtime binary replacement.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::new();
    for l in &config.listeners {
        let first = bind(l.addr, config.reuse_port).map_err(|e| at(l.addr, e))?;
        let actual = first.local_addr()?;
        local_addrs.push(actual);
        for w in sockets.iter_mut().skip(1) {
            let s = if config.reuse_port {
                bind(actual, true)
            } else {
                first.try_clone()
            };
            w.push(s.map_err(|e| at(actual, e))?);
        }
        sockets[0].push(first);
    }
    let metrics = Metrics::default();
    for (i, l) in config.listeners.iter().enumerate() {
        record_certificates(&metrics, i, &local_addrs, &l.mode);
    }
    let shared = Arc::new(Shared {
        modes: config
            .listeners
            .iter()
            .map(|l| RwLock::new(l.mode.clone()))
            .collect(),
        shutdown: AtomicBool::new(false),
        limits: config.limits.clone(),
        metrics,
    });
    let mut wakers = Vec::new();
    let mut threads = Vec::new();
    for (id, listeners) in sockets.into_iter().enumerate() {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        wakers.push(waker);
        let mut ls = Vec::new();
        for (i, std_l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(std_l);
            poll.registry()
                .register(&mut l, listener_token(i), Interest::READABLE)?;
            ls.push(Some(l));
        }
        let counters = shared.metrics.worker();
        let mut worker = Worker {
            id,
            poll,
            listeners: ls,
            shared: shared.clone(),
            conns: Slab::new(),
            deadlines: Deadlines::new(),
            counters,
            local: Counters::default(),
            dirty: Vec::new(),
            draining: None,
            accept_retry: None,
            accept_warned: None,
            last_rotation_check: Instant::now(),
        };
        let t = std::thread::Builder::new()
            .name(format!("onerecord-worker-{id}"))
            .spawn(move || worker.run())?;
        threads.push(t);
    }
    Ok(ServerHandle {
        shared,
        wakers,
        threads: Mutex::new(threads),
        local_addrs,
    })
}

/// One socket of a connection and what is known about its readiness.
struct Sock {
    stream: TcpStream,
    readable: bool,
    writable: bool,
    connected: bool,
    eof: bool,
    write_closed: bool,
}

impl Sock {
    fn new(stream: TcpStream, connected: bool) -> Self {
        Self {
            stream,
            readable: connected,
            writable: connected,
            connected,
            eof: false,
            write_closed: false,
        }
    }

    /// After an event on a socket still connecting: did the connect complete or fail?
    fn check_connected(&mut self) -> io::Result<()> {
        if self.connected {
            return Ok(());
        }
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                let _ = self.stream.set_nodelay(true);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(e),
        }
    }
}

enum App {
    /// Handshake not finished.
    Waiting,
    /// An in-process handler.
    Handler(Box<dyn Handler>),
    /// Bytes go to and come from the plain socket.
    Plain,
    /// Refused by the application: nothing is delivered.
    Refused,
}

/// A byte queue with a read offset.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    off: usize,
}

impl Queue {
    fn pending(&self) -> &[u8] {
        &self.buf[self.off..]
    }
    fn len(&self) -> usize {
        self.buf.len() - self.off
    }
    fn is_empty(&self) -> bool {
        self.off == self.buf.len()
    }
    fn extend(&mut self, d: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.off = 0;
        }
        self.buf.extend_from_slice(d);
    }
    fn consume(&mut self, n: usize) {
        self.off = (self.off + n).min(self.buf.len());
        if self.is_empty() {
            self.buf.clear();
            self.off = 0;
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        }
    }
    /// Queue `v`, taking the vector itself when nothing is pending (no copy).
    fn append(&mut self, v: Vec<u8>) {
        if self.is_empty() {
            self.buf = v;
            self.off = 0;
        } else {
            self.extend(&v);
        }
    }
    /// Give the memory back while empty (an idle connection holds no buffer).
    fn release(&mut self) {
        if self.is_empty() {
            self.buf = Vec::new();
            self.off = 0;
        }
    }
}

struct Conn {
    key: Key,
    listener: usize,
    mode: Mode,
    tls: Sock,
    plain: Option<Sock>,
    session: Session,
    remote: SocketAddr,
    local: SocketAddr,
    app: App,
    /// Decrypted bytes for the plain side.
    to_plain: Queue,
    /// Plaintext for the TLS side, not yet accepted by the session.
    to_tls: Queue,
    /// Bytes to write raw on the TLS socket (the `400` answer to plaintext HTTP).
    raw_out: Queue,
    /// Send `close_notify` once `to_tls` is empty.
    close_after_flush: bool,
    /// Graceful shutdown of a proxied stream: the upstream's input is ended once what the
    /// client sent so far is forwarded, and its end of stream closes the connection.
    draining: bool,
    /// When `close_notify` or an alert went out (linger starts).
    closing_since: Option<Instant>,
    last_activity: Instant,
    deadline: Option<Instant>,
    queued: bool,
    counted_failure: bool,
    /// Our side is shut down; the peer's remaining input is read and dropped until it closes
    /// (or the linger deadline), so that closing never resets the connection under an alert
    /// the peer has not read yet (a close with unread input sends a TCP RST).
    lingering: Option<usize>,
    /// When the TCP connection was accepted: the handshake duration and the audit line's
    /// duration start here.
    opened: Instant,
    /// The access line was logged: a close line follows at removal.
    audited: bool,
    /// Why the connection ended, as first known (audit; see [`End`]).
    end: Option<End>,
}

/// Why an accepted connection ended, for its close line in `onerecord::access`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// The peer sent `close_notify` first.
    PeerCloseNotify,
    /// The transport ended without the peer's `close_notify`.
    PeerEof,
    /// Our side finished first: the upstream, the local client or the application ended
    /// the stream, and `close_notify` went out.
    Closed,
    /// No traffic for the idle timeout.
    IdleTimeout,
    /// Graceful shutdown closed it.
    Drain,
    /// Graceful shutdown: still open at the drain timeout, cut.
    DrainTimeout,
    /// A TLS or I/O error ended it (the detail is logged as `error`).
    Error(String),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            Self::PeerCloseNotify => "peer_close_notify",
            Self::PeerEof => "peer_eof",
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Drain => "drain",
            Self::DrainTimeout => "drain_timeout",
            Self::Error(_) => "error",
        }
    }
}

/// What a timer firing means for a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    Io,
    Timer,
}

struct Worker {
    id: usize,
    poll: Poll,
    listeners: Vec<Option<TcpListener>>,
    shared: Arc<Shared>,
    conns: Slab<Conn>,
    deadlines: Deadlines,
    counters: Arc<Mutex<Counters>>,
    /// Counters not yet published to `counters`.
    local: Counters,
    dirty: Vec<Key>,
    draining: Option<Instant>,
    accept_retry: Option<Instant>,
    /// When an accept failure was last logged, and how many were not logged since.
    accept_warned: Option<(Instant, u64)>,
    last_rotation_check: Instant,
}

/// Rounds of work one connection gets per wakeup before others get a turn.
const ROUNDS: usize = 32;

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        debug!("worker {} started", self.id);
        loop {
            let now = Instant::now();
            let mut timeout = self
                .deadlines
                .next()
                .map(|d| d.saturating_duration_since(now));
            if let Some(r) = self.accept_retry {
                let t = r.saturating_duration_since(now);
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            if let Some(d) = self.draining {
                let t = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            if !self.dirty.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            // Publish counters at least once a second while idle.
            let timeout =
                Some(timeout.map_or(Duration::from_secs(1), |t| t.min(Duration::from_secs(1))));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("worker {}: poll failed: {e}", self.id);
                break;
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if t.0 >= RESERVED {
                    self.accept(t.0 - RESERVED);
                    continue;
                }
                let Some((key, side)) = Key::from_token(t) else {
                    continue;
                };
                let Some(c) = self.conns.get_mut(key) else {
                    continue; // stale token of a closed connection
                };
                let s = match side {
                    Side::Tls => Some(&mut c.tls),
                    Side::Plain => c.plain.as_mut(),
                };
                if let Some(s) = s {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        s.readable = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        s.writable = true;
                    }
                }
                if !c.queued {
                    c.queued = true;
                    self.dirty.push(key);
                }
            }
            let dirty = std::mem::take(&mut self.dirty);
            for key in dirty {
                if let Some(c) = self.conns.get_mut(key) {
                    c.queued = false;
                }
                self.step(key, Wake::Io);
            }
            let now = Instant::now();
            while let Some(key) = self.deadlines.pop_due(now) {
                match self.conns.get_mut(key).and_then(|c| c.deadline) {
                    Some(d) if d <= now => self.step(key, Wake::Timer),
                    // The deadline moved later since this entry was queued.
                    Some(d) => self.deadlines.push(d, key),
                    None => {}
                }
            }
            if self.accept_retry.is_some_and(|r| r <= now) {
                self.accept_retry = None;
                for i in 0..self.listeners.len() {
                    self.accept(i);
                }
            }
            self.housekeeping(now);
            if self.draining.is_some() && self.conns.len() == 0 {
                break;
            }
        }
        self.publish();
        debug!("worker {} stopped", self.id);
    }

    fn publish(&mut self) {
        if self.local == Counters::default() {
            return;
        }
        if let Ok(mut c) = self.counters.lock() {
            c.add(&std::mem::take(&mut self.local));
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.publish();
        if now.duration_since(self.last_rotation_check) >= Duration::from_secs(1) {
            self.last_rotation_check = now;
            let wall = Time::now();
            for m in &self.shared.modes {
                if let Ok(m) = m.read()
                    && let Mode::Terminate { policies, .. } = &*m
                {
                    for p in policies.policies() {
                        if let Some(k) = p.ticket_keys() {
                            k.rotate_if_due(wall);
                        }
                    }
                }
            }
        }
        if self.shared.shutdown.load(Ordering::Relaxed) && self.draining.is_none() {
            self.begin_drain(now);
        }
        if let Some(d) = self.draining
            && now >= d
        {
            for key in self.conns.keys() {
                if let Some(c) = self.conns.get_mut(key) {
                    c.end.get_or_insert(End::DrainTimeout);
                }
                self.remove(key);
            }
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        self.draining = Some(now + self.shared.limits.drain_timeout);
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        for key in self.conns.keys() {
            if let Some(c) = self.conns.get_mut(key) {
                if c.session.is_established() {
                    c.end.get_or_insert(End::Drain);
                }
                if c.session.is_established()
                    && c.plain.is_some()
                    && matches!(c.mode, Mode::Terminate { .. })
                {
                    // A proxied stream may be in the middle of a response: a close_notify
                    // now would cut it. End the upstream's input instead; the upstream
                    // finishes what it owes, and its end of stream closes this connection
                    // (close_notify after the last byte). The drain timeout bounds it.
                    c.draining = true;
                } else if c.session.is_established() {
                    c.close_after_flush = true;
                } else {
                    c.session.close();
                }
            }
            self.step(key, Wake::Io);
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(Some(listener)) = self.listeners.get(index) else {
                return;
            };
            let (stream, remote) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or similar: the pending connection stays in the
                    // backlog; try again shortly (no new edge would wake us for it). Logged at
                    // most once a second per worker.
                    let now = Instant::now();
                    self.local.accept_errors += 1;
                    match &mut self.accept_warned {
                        Some((at, quiet)) if now < *at + Duration::from_secs(1) => *quiet += 1,
                        w => {
                            let quiet = w.map_or(0, |(_, q)| q);
                            warn!(
                                "accept on listener {index} failed: {e} ({quiet} more failures not logged)"
                            );
                            *w = Some((now, 0));
                        }
                    }
                    self.accept_retry = Some(now + Duration::from_millis(50));
                    return;
                }
            };
            self.local.accepted += 1;
            let active = self.shared.metrics.active.clone();
            // Take a slot atomically: workers accept concurrently, and a load-then-add would
            // let two of them pass the cap together.
            let max = self.shared.limits.max_connections;
            let took = active.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
            if took.is_err() {
                self.local.refused_capacity += 1;
                info!(
                    target: "onerecord::refused",
                    "refused remote={remote} reason=\"over capacity\" max_connections={}",
                    self.shared.limits.max_connections
                );
                drop(stream);
                continue;
            }
            let mode = match self.shared.modes[index].read() {
                Ok(m) => m.clone(),
                Err(p) => p.into_inner().clone(),
            };
            if let Err(e) = self.open(index, mode, stream, remote) {
                active.fetch_sub(1, Ordering::Relaxed);
                warn!("cannot set up connection from {remote}: {e}");
            }
        }
    }

    fn open(
        &mut self,
        listener: usize,
        mode: Mode,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let now = Instant::now();
        let tls_now = Now::new(Time::now(), onerecord_tls::Instant::from_std(now));
        let (tls, plain, session) = match &mode {
            Mode::Terminate { policies, .. } => (
                Sock::new(stream, true),
                None,
                Session::server(policies, tls_now),
            ),
            Mode::Originate {
                policy,
                connect,
                server_name,
            } => {
                let session = Session::client(policy, server_name, tls_now)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                let out = TcpStream::connect(*connect)?;
                (
                    Sock::new(out, false),
                    Some(Sock::new(stream, true)),
                    session,
                )
            }
        };
        let registry = self.poll.registry();
        let key = self
            .conns
            .insert_with(|key| Conn {
                key,
                listener,
                mode,
                tls,
                plain,
                session,
                remote,
                local,
                app: App::Waiting,
                to_plain: Queue::default(),
                to_tls: Queue::default(),
                raw_out: Queue::default(),
                close_after_flush: false,
                draining: false,
                closing_since: None,
                last_activity: now,
                deadline: None,
                queued: false,
                counted_failure: false,
                lingering: None,
                opened: now,
                audited: false,
                end: None,
            })
            .ok_or_else(|| io::Error::other("connection table full"))?;
        let Some(c) = self.conns.get_mut(key) else {
            return Err(io::Error::other("connection vanished"));
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let mut res = registry.register(&mut c.tls.stream, key.token(Side::Tls), both);
        if res.is_ok()
            && let Some(p) = c.plain.as_mut()
        {
            res = registry.register(&mut p.stream, key.token(Side::Plain), both);
        }
        if let Err(e) = res {
            warn!("cannot register connection from {remote}: {e}");
            self.remove(key);
            return Ok(());
        }
        // The ClientHello is often already there: try at once.
        self.step(key, Wake::Io);
        Ok(())
    }

    fn remove(&mut self, key: Key) {
        let Some(mut c) = self.conns.remove(key) else {
            return;
        };
        log_close(&c);
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut c.tls.stream);
        if let Some(p) = c.plain.as_mut() {
            let _ = registry.deregister(&mut p.stream);
        }
        // The TLS bytes were counted as they passed (see `drive`).
        let mut stats = c.session.stats().clone();
        stats.tls_bytes_received = 0;
        stats.tls_bytes_sent = 0;
        self.local.sessions.add(&stats);
        self.local.closed += 1;
        self.shared.metrics.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Advance one connection; remove it when it is finished.
    fn step(&mut self, key: Key, wake: Wake) {
        let now = Instant::now();
        let limits = self.shared.limits.clone();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut new_plain: Option<SocketAddr> = None;
        let done = drive(c, wake, now, &limits, &mut self.local, &mut new_plain);
        if let Some(addr) = new_plain {
            match connect_upstream(&self.poll, c, addr) {
                Ok(()) => {}
                Err(e) => {
                    self.local.upstream_errors += 1;
                    warn!("upstream {addr} unreachable for {}: {e}; closing", c.remote);
                    c.app = App::Refused;
                    c.close_after_flush = true;
                }
            }
            // Drive again now that the upstream exists (its events will follow).
            let done = drive(c, Wake::Io, now, &limits, &mut self.local, &mut None);
            self.after_drive(key, done, now);
            return;
        }
        self.after_drive(key, done, now);
    }

    fn after_drive(&mut self, key: Key, done: Done, now: Instant) {
        match done {
            Done::Remove => self.remove(key),
            Done::Again => {
                if let Some(c) = self.conns.get_mut(key)
                    && !c.queued
                {
                    c.queued = true;
                    self.dirty.push(key);
                }
                self.schedule(key, now);
            }
            Done::Wait => self.schedule(key, now),
        }
    }

    fn schedule(&mut self, key: Key, now: Instant) {
        let limits = &self.shared.limits;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = if let Some(since) = c.closing_since {
            Some(since + limits.linger)
        } else if !c.session.is_established() {
            c.session.poll_timeout().map(|t| t.to_std().max(now))
        } else {
            Some(c.last_activity + limits.idle_timeout)
        };
        let previous = c.deadline;
        c.deadline = deadline;
        if let Some(d) = deadline {
            // A later deadline is found when the earlier entry fires; only an earlier one
            // needs a new entry.
            if previous.is_none_or(|p| d < p || p <= now) {
                self.deadlines.push(d, key);
            }
        }
    }
}

fn connect_upstream(poll: &Poll, c: &mut Conn, addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    poll.registry().register(
        &mut s,
        c.key.token(Side::Plain),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    c.plain = Some(Sock::new(s, false));
    Ok(())
}

enum Done {
    /// Keep it; wait for events or its deadline.
    Wait,
    /// Keep it; it has more work now (it used up its rounds).
    Again,
    /// Finished: close it.
    Remove,
}

/// Most input a lingering connection may make us read and drop before it is closed anyway.
const LINGER_DISCARD_MAX: usize = 256 * 1024;

/// Read and drop what a lingering peer still sends. `true` when the connection can go: the
/// peer closed, failed, or sent more than [`LINGER_DISCARD_MAX`].
fn discard_input(c: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.tls.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let total = c.lingering.unwrap_or(0) + n;
                c.lingering = Some(total);
                if total > LINGER_DISCARD_MAX {
                    return true;
                }
            }
            Err(e) if is_would_block(&e) => {
                c.tls.readable = false;
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Everything one wakeup does for one connection. `new_plain` is set when the upstream must
/// be connected (the caller owns the registry).
fn drive(
    c: &mut Conn,
    wake: Wake,
    now: Instant,
    limits: &Limits,
    counters: &mut Counters,
    new_plain: &mut Option<SocketAddr>,
) -> Done {
    let tls_now = Now::new(Time::now(), onerecord_tls::Instant::from_std(now));
    if wake == Wake::Timer {
        if let Some(since) = c.closing_since {
            if now >= since + limits.linger {
                return Done::Remove;
            }
        } else if c.session.is_established() && now >= c.last_activity + limits.idle_timeout {
            counters.idle_timeouts += 1;
            c.end.get_or_insert(End::IdleTimeout);
            debug!("closing idle connection from {}", c.remote);
            c.close_after_flush = true;
        }
    }
    if c.lingering.is_some() {
        return if discard_input(c) {
            Done::Remove
        } else {
            Done::Wait
        };
    }
    // Connects in progress.
    if !c.tls.connected && (c.tls.writable || c.tls.readable) {
        if let Err(e) = c.tls.check_connected() {
            counters.upstream_errors += 1;
            match &c.mode {
                Mode::Originate { connect, .. } => warn!(
                    target: "onerecord::partner",
                    "cannot reach partner {connect} for {}: {e}", c.remote
                ),
                Mode::Terminate { .. } => warn!("cannot reach TLS server for {}: {e}", c.remote),
            }
            return Done::Remove;
        }
    }
    if let Some(p) = c.plain.as_mut()
        && !p.connected
        && (p.writable || p.readable)
        && let Err(e) = p.check_connected()
    {
        counters.upstream_errors += 1;
        warn!("upstream unreachable for {}: {e}", c.remote);
        c.app = App::Refused;
        c.close_after_flush = true;
        p.eof = true;
        p.write_closed = true;
    }

    let mut first = true;
    for _ in 0..ROUNDS {
        let mut progress = first;
        first = false;
        let input_ok =
            c.to_plain.len() < limits.max_buffered && c.to_tls.len() < limits.max_buffered;

        // 1. TLS bytes in.
        if c.tls.connected && c.tls.readable && !c.tls.eof && !c.session.is_terminal() && input_ok {
            let buf = c.session.receive_buffer();
            if !buf.is_empty() {
                match c.tls.stream.read(buf) {
                    Ok(0) => {
                        c.tls.eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        c.session.received(n);
                        // Counted as the bytes pass, so open connections show up.
                        counters.sessions.tls_bytes_received += n as u64;
                        c.last_activity = now;
                        progress = true;
                    }
                    Err(e) if is_would_block(&e) => c.tls.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        debug!("read from {} failed: {e}", c.remote);
                        c.tls.eof = true;
                        progress = true;
                    }
                }
            }
        }

        // 2. The session.
        if progress && !c.session.is_terminal() {
            process(c, tls_now, counters, new_plain);
            if c.tls.eof && !c.session.is_terminal() && !c.session.peer_closed() {
                let _ = c.session.received_eof();
                note_failure(c, counters);
            }
        }

        // 3. Plaintext into the session.
        if c.session.is_established() && !c.session.close_sent() && !c.session.is_terminal() {
            while !c.to_tls.is_empty() {
                match c.session.send(c.to_tls.pending()) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.to_tls.consume(n);
                        progress = true;
                    }
                    Err(e) => {
                        debug!("send to {} failed: {e}", c.remote);
                        c.to_tls = Queue::default();
                        break;
                    }
                }
            }
            if c.to_tls.is_empty() && c.close_after_flush {
                c.end.get_or_insert(End::Closed);
                c.session.close();
                let _ = c.session.process(tls_now, |_| {});
                progress = true;
            }
        } else if c.close_after_flush && !c.session.is_established() && !c.session.is_terminal() {
            c.session.close();
        }

        // 4. TLS bytes out.
        while c.tls.connected
            && c.tls.writable
            && (!c.raw_out.is_empty() || !c.session.transmit().is_empty())
        {
            let (data, raw) = if !c.raw_out.is_empty() {
                (c.raw_out.pending(), true)
            } else {
                (c.session.transmit(), false)
            };
            match c.tls.stream.write(data) {
                Ok(0) => {
                    c.tls.writable = false;
                    c.tls.eof = true;
                }
                Ok(n) => {
                    if raw {
                        c.raw_out.consume(n);
                    } else {
                        c.session.transmitted(n);
                        counters.sessions.tls_bytes_sent += n as u64;
                    }
                    progress = true;
                }
                Err(e) if is_would_block(&e) => c.tls.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write to {} failed: {e}", c.remote);
                    c.end.get_or_insert(End::Error(format!("write: {e}")));
                    return Done::Remove;
                }
            }
        }

        // 5. The plain side.
        if let Some(p) = c.plain.as_mut()
            && p.connected
        {
            if c.draining && p.write_closed {
                // Sent after the drain began: the upstream's input is already closed.
                c.to_plain = Queue::default();
            }
            while p.writable && !c.to_plain.is_empty() {
                match p.stream.write(c.to_plain.pending()) {
                    Ok(0) => p.writable = false,
                    Ok(n) => {
                        c.to_plain.consume(n);
                        progress = true;
                    }
                    Err(e) if is_would_block(&e) => p.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("plain-side write for {} failed: {e}", c.remote);
                        counters.upstream_errors += 1;
                        c.to_plain = Queue::default();
                        p.write_closed = true;
                        p.eof = true;
                        c.close_after_flush = true;
                    }
                }
            }
            if c.to_plain.is_empty()
                && !p.write_closed
                && (c.session.peer_closed() || c.session.is_terminal() || c.draining)
            {
                let _ = p.stream.shutdown(Shutdown::Write);
                p.write_closed = true;
                progress = true;
            }
            let can_take = c.to_tls.len() < limits.max_buffered
                && c.session.transmit().len() < limits.max_buffered
                && !c.session.close_sent()
                && !c.session.is_terminal();
            if p.readable && !p.eof && can_take {
                let mut buf = [0u8; 16 * 1024];
                match p.stream.read(&mut buf) {
                    Ok(0) => {
                        p.eof = true;
                        c.close_after_flush = true;
                        progress = true;
                    }
                    Ok(n) => {
                        c.to_tls.extend(&buf[..n]);
                        c.last_activity = now;
                        progress = true;
                    }
                    Err(e) if is_would_block(&e) => p.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        debug!("plain-side read for {} failed: {e}", c.remote);
                        p.eof = true;
                        c.close_after_flush = true;
                        progress = true;
                    }
                }
            }
            if p.eof && !c.session.is_established() && matches!(c.mode, Mode::Originate { .. }) {
                // The local client left before the TLS connection was up.
                return Done::Remove;
            }
        }

        if !progress {
            break;
        }
        if c.session.is_terminal() && c.session.transmit().is_empty() && c.raw_out.is_empty() {
            break;
        }
    }

    // Finished?
    let flushed = c.session.transmit().is_empty() && c.raw_out.is_empty();
    if (c.session.error().is_some() || c.session.close_sent()) && c.closing_since.is_none() {
        c.closing_since = Some(now);
    }
    if c.session.error().is_some() {
        // The alert (or the 400) is out: close. Otherwise linger until it is.
        if c.tls.eof {
            return Done::Remove;
        }
        if flushed {
            let _ = c.tls.stream.shutdown(Shutdown::Write);
            c.lingering = Some(0);
            return if discard_input(c) {
                Done::Remove
            } else {
                Done::Wait
            };
        }
        return Done::Wait;
    }
    if c.session.is_terminal() || (c.session.close_sent() && (c.session.peer_closed() || c.tls.eof))
    {
        // Both close_notifys exchanged, or ours is queued and the peer is gone.
        let plain_done = c
            .plain
            .as_ref()
            .is_none_or(|p| p.write_closed || c.to_plain.is_empty());
        if flushed && plain_done {
            let _ = c.tls.stream.shutdown(Shutdown::Write);
            return Done::Remove;
        }
        if c.tls.eof && !flushed {
            return Done::Remove;
        }
    }
    if c.tls.eof
        && !c.session.is_established()
        && c.session.error().is_none()
        && c.session.is_terminal()
    {
        return Done::Remove;
    }
    // Work left that readiness will not announce again.
    let more_input = c.tls.readable
        && !c.tls.eof
        && !c.session.is_terminal()
        && c.to_plain.len() < limits.max_buffered
        && c.to_tls.len() < limits.max_buffered;
    if more_input {
        return Done::Again;
    }
    if c.session.is_established() && c.to_tls.is_empty() && flushed && c.to_plain.is_empty() {
        c.session.release_buffers();
        c.to_tls.release();
        c.to_plain.release();
        c.raw_out.release();
    }
    Done::Wait
}

fn note_failure(c: &mut Conn, counters: &mut Counters) {
    if c.counted_failure {
        return;
    }
    let Some(err) = c.session.error() else {
        return;
    };
    c.counted_failure = true;
    c.end.get_or_insert_with(|| match err.reason() {
        Reason::UnexpectedEof => End::PeerEof,
        _ => End::Error(err.to_string()),
    });
    if let Mode::Originate { connect, .. } = &c.mode {
        partner_failed(*connect, c.remote, c.session.server_name(), err);
        return;
    }
    if c.session.is_established() {
        debug!("connection from {} ended: {err}", c.remote);
        return;
    }
    if matches!(err.reason(), Reason::PlaintextHttp) {
        counters.plaintext_http += 1;
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{PLAINTEXT_BODY}",
            PLAINTEXT_BODY.len()
        );
        c.raw_out.extend(resp.as_bytes());
    }
    let alert = err
        .alert_sent()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    // The certificate the peer presented (not trusted: it was refused), when there was one.
    let presented = err
        .presented_certificate()
        .map_or_else(String::new, |cert| {
            format!(
                " peer_cn={:?} peer_uri={:?} peer_serial={} peer_issuer={:?}",
                cert.common_names.first().map_or("-", String::as_str),
                cert.uris.first().map_or("-", String::as_str),
                cert.serial_hex(),
                cert.issuer
            )
        });
    info!(
        target: "onerecord::refused",
        "refused remote={} sni={:?} reason={:?} failure={} alert={} error=\"{}\"{}",
        c.remote,
        c.session.server_name().unwrap_or("-"),
        err.reason(),
        err.failure().label(),
        alert,
        err,
        presented
    );
}

/// Run the session over the received bytes and route its events.
fn process(c: &mut Conn, now: Now, counters: &mut Counters, new_plain: &mut Option<SocketAddr>) {
    let Conn {
        session,
        app,
        to_plain,
        to_tls,
        mode,
        remote,
        local,
        close_after_flush,
        listener,
        opened,
        audited,
        end,
        ..
    } = c;
    let mut reply = Reply::default();
    let mut peer_closed = false;
    let res = session.process(now, |ev| match ev {
        Event::Established(id) => {
            counters.handshake(id.version, id.resumed(), opened.elapsed());
            log_access(mode, *remote, *local, id);
            *audited = true;
            match mode {
                Mode::Terminate { backend, .. } => match backend {
                    Backend::Service(service) => {
                        let peer = Peer {
                            identity: id,
                            remote: *remote,
                            local: *local,
                        };
                        match service.accept(&peer) {
                            Some(h) => *app = App::Handler(h),
                            None => {
                                counters.refused_by_service += 1;
                                info!(
                                    target: "onerecord::refused",
                                    "refused remote={remote} reason=\"refused by application\" cn={:?} listener={listener}",
                                    id.common_name()
                                );
                                *app = App::Refused;
                                *close_after_flush = true;
                            }
                        }
                    }
                    Backend::Upstream {
                        addr,
                        proxy_protocol,
                    } => {
                        if *proxy_protocol {
                            match crate::proxy::header(*remote, *local, id) {
                                Ok(h) => to_plain.extend(&h),
                                Err(e) => warn!("PROXY header for {remote}: {e}"),
                            }
                        }
                        *new_plain = Some(*addr);
                        *app = App::Plain;
                    }
                },
                Mode::Originate { .. } => *app = App::Plain,
            }
        }
        Event::Data(d) => match app {
            App::Handler(h) => h.on_data(d, &mut reply),
            App::Plain | App::Waiting => to_plain.extend(d),
            App::Refused => {}
        },
        Event::PeerClosed => {
            peer_closed = true;
            end.get_or_insert(End::PeerCloseNotify);
        }
        Event::Closed => {}
    });
    if peer_closed {
        match app {
            App::Handler(h) => h.on_peer_closed(&mut reply),
            _ => {
                if closes_with_peer(mode) {
                    *close_after_flush = true;
                }
            }
        }
    }
    if !reply.out.is_empty() {
        to_tls.append(core::mem::take(&mut reply.out));
    }
    if reply.close {
        *close_after_flush = true;
    }
    if res.is_err() {
        note_failure(c, counters);
    }
}

/// A peer's close_notify in proxy modes is forwarded as a half-close of the plain side, and
/// our close_notify follows when the plain side ends; in service mode the handler decides.
fn closes_with_peer(mode: &Mode) -> bool {
    !matches!(
        mode,
        Mode::Terminate {
            backend: Backend::Upstream { .. },
            ..
        } | Mode::Originate { .. }
    )
}

/// `"-"` for a field with no value in the audit lines.
fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// The access line of an established connection (`onerecord::access`, INFO): who connected
/// and how. Server side: the client's address and certificate; client mode: the partner's.
fn log_access(mode: &Mode, remote: SocketAddr, local: SocketAddr, id: &PeerIdentity) {
    let leaf = id.leaf.as_ref();
    let cn = or_dash(id.common_name());
    let uri = or_dash(id.uris().first().map(String::as_str));
    let serial = leaf.map_or_else(|| "-".to_string(), CertInfo::serial_hex);
    let spki = leaf.map_or_else(|| "-".to_string(), |l| l.spki_sha256.to_string());
    let sni = or_dash(id.server_name.as_deref());
    match mode {
        Mode::Terminate { .. } => info!(
            target: "onerecord::access",
            remote:% = remote, local:% = local, sni = sni, version:% = id.version,
            resumed = id.resumed(), cn = cn, uri = uri, serial = serial.as_str(),
            spki = spki.as_str();
            "accepted"
        ),
        Mode::Originate { connect, .. } => info!(
            target: "onerecord::access",
            partner:% = connect, client:% = remote, sni = sni, version:% = id.version,
            resumed = id.resumed(), cn = cn, uri = uri, serial = serial.as_str(),
            spki = spki.as_str();
            "connected"
        ),
    }
}

/// The close line of a connection whose access line was logged: how long it lasted, the
/// application bytes each way and why it ended.
fn log_close(c: &Conn) {
    if !c.audited {
        return;
    }
    let end = c.end.clone().unwrap_or_else(|| {
        if let Some(e) = c.session.error() {
            End::Error(e.to_string())
        } else if c.session.peer_closed() {
            End::PeerCloseNotify
        } else if c.tls.eof {
            End::PeerEof
        } else {
            End::Closed
        }
    });
    let error = match &end {
        End::Error(e) => e.as_str(),
        _ => "-",
    };
    let stats = c.session.stats();
    let peer = match &c.mode {
        Mode::Terminate { .. } => c.remote,
        Mode::Originate { connect, .. } => *connect,
    };
    let cn = or_dash(c.session.peer_identity().and_then(|id| id.common_name()));
    info!(
        target: "onerecord::access",
        remote:% = peer, cn = cn, duration_ms = c.opened.elapsed().as_millis() as u64,
        bytes_in = stats.app_bytes_received, bytes_out = stats.app_bytes_sent,
        end = end.label(), error = error;
        "closed"
    );
}

/// In client mode a failed TLS connection to the partner is the operator's business: the
/// partner refused our certificate, its certificate failed verification or its identity
/// check, or it broke the protocol. A WARN naming the partner (`onerecord::partner`).
fn partner_failed(partner: SocketAddr, client: SocketAddr, sni: Option<&str>, err: &Error) {
    let alert = err
        .alert_sent()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    warn!(
        target: "onerecord::partner",
        partner:% = partner, sni = or_dash(sni), client:% = client, reason:? = err.reason(),
        failure = err.failure().label(), alert_sent = alert.as_str(), error:% = err;
        "TLS connection to partner {partner} failed"
    );
}
