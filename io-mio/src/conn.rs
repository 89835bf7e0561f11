//! One connection: its sockets, its session, its queues, its lifecycle, and what one wakeup
//! does for it ([`drive`]), in the session's documented drain order: read TLS, run the
//! session, feed plaintext, write TLS, pump the plain side (upstream or local client), finish.
//!
//! The connection owns no registry and no timer: it tells the worker what it needs by the
//! [`Done`] it returns (keep waiting, run again, connect an upstream, remove it).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use onerecord_tls::{Event, Now, Reason, Session, Time};

use crate::audit::{End, log_access, log_close, log_refused, partner_failed};
use crate::config::{Backend, Limits, Mode};
use crate::metrics::Counters;
use crate::pool::{Dest, Lent, Pool};
use crate::queue::Queue;
use crate::service::{Handler, Peer, Reply, ReplyWaker, UpstreamEnd, UpstreamOp, WakeQueue};
use crate::table::{Key, Side};

/// What a wakeup of a connection may use of its worker.
pub(crate) struct Ctx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) pool: &'a mut Pool,
    pub(crate) counters: &'a mut Counters,
    pub(crate) limits: &'a Limits,
    pub(crate) wake: &'a Arc<WakeQueue>,
    /// The worker's read buffer for the plain side and upstreams ([`SCRATCH`] bytes), kept
    /// so that no read zeroes a fresh one.
    pub(crate) scratch: &'a mut Vec<u8>,
}

/// Size of the worker's read buffer for plain sides and upstreams.
pub(crate) const SCRATCH: usize = 16 * 1024;

/// The body of the `400` answer to plaintext HTTP on a TLS port.
pub const PLAINTEXT_BODY: &str =
    "This is a TLS endpoint: ONE Record requires HTTPS. Use https:// to connect.\n";

/// Rounds of work one connection gets per wakeup before others get a turn.
const ROUNDS: usize = 32;

/// Most input a lingering connection may make us read and drop before it is closed anyway.
const LINGER_DISCARD_MAX: usize = 256 * 1024;

/// One socket of a connection and what is known about its readiness.
pub(crate) struct Sock {
    stream: TcpStream,
    readable: bool,
    writable: bool,
    connected: bool,
    eof: bool,
    write_closed: bool,
}

impl Sock {
    pub(crate) fn new(stream: TcpStream, connected: bool) -> Self {
        Self {
            stream,
            readable: connected,
            writable: connected,
            connected,
            eof: false,
            write_closed: false,
        }
    }

    /// Remember the readiness an event announced (mio is edge-triggered).
    pub(crate) fn ready(&mut self, event: &mio::event::Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.writable = true;
        }
    }

    /// The socket, to register or deregister it.
    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Connected, both directions open, nothing known to be pending: it may carry another
    /// exchange.
    ///
    /// A socket that may have unread input is read once: anything there (bytes the exchange
    /// did not account for, or the end of stream) makes it unfit.
    pub(crate) fn reusable(&mut self) -> bool {
        if !(self.connected && !self.eof && !self.write_closed) {
            return false;
        }
        if self.readable {
            let mut probe = [0u8; 1];
            match self.stream.read(&mut probe) {
                Err(e) if is_would_block(&e) => self.readable = false,
                _ => return false,
            }
        }
        true
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

/// Where the decrypted stream goes.
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

/// A connection's lifecycle on the adapter's side, in the order it is lived. The session
/// holds the TLS state (handshake, established, closed, failed; see [`TlsEnd`]); this is what
/// the adapter adds: a graceful drain, when to send `close_notify`, how long to wait for the
/// peer, and the final drain of its input. Every transition is a method of `Life`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Handshaking or carrying data; nobody asked to end it.
    Open,
    /// Graceful shutdown of a proxied stream: the upstream's input is ended once what the
    /// client sent so far is forwarded, and its end of stream closes the connection.
    Draining,
    /// The application, the plain side, the idle timer or shutdown asked to end it:
    /// `close_notify` goes out once the queued plaintext is in the session.
    CloseAfterFlush {
        /// The upstream's input was ended by a graceful drain ([`Life::Draining`] before).
        drained: bool,
    },
    /// `close_notify` or a fatal alert went out at `since`: wait up to the linger time for
    /// the peer's `close_notify`, its end of stream, or for the bytes to be written.
    Closing {
        /// When it went out (linger starts).
        since: Instant,
        /// The upstream's input was ended by a graceful drain.
        drained: bool,
    },
    /// The alert is written and our side shut down: the peer's remaining input is read and
    /// dropped until it closes (or the linger deadline), so that closing never resets the
    /// connection under an alert the peer has not read yet (a close with unread input sends
    /// a TCP RST).
    Lingering {
        /// When the alert went out (linger starts).
        since: Instant,
        /// Bytes read and dropped so far.
        discarded: usize,
    },
}

impl Life {
    /// A close was asked: `close_notify` once the queued plaintext is in the session.
    fn close_after_flush(&mut self) {
        match *self {
            Life::Open => *self = Life::CloseAfterFlush { drained: false },
            Life::Draining => *self = Life::CloseAfterFlush { drained: true },
            Life::CloseAfterFlush { .. } | Life::Closing { .. } | Life::Lingering { .. } => {}
        }
    }

    /// A graceful drain ends the upstream's input, whatever else is under way.
    fn drain(&mut self) {
        match self {
            Life::Open => *self = Life::Draining,
            Life::CloseAfterFlush { drained } | Life::Closing { drained, .. } => *drained = true,
            Life::Draining | Life::Lingering { .. } => {}
        }
    }

    /// `close_notify` or a fatal alert went out at `now`: the linger time starts.
    fn went_out(&mut self, now: Instant) {
        match *self {
            Life::Open => {
                *self = Life::Closing {
                    since: now,
                    drained: false,
                }
            }
            Life::Draining => {
                *self = Life::Closing {
                    since: now,
                    drained: true,
                }
            }
            Life::CloseAfterFlush { drained } => {
                *self = Life::Closing {
                    since: now,
                    drained,
                }
            }
            Life::Closing { .. } | Life::Lingering { .. } => {}
        }
    }

    /// The alert is written and our side shut down: drop the peer's input until it closes.
    fn linger(&mut self) {
        if let Life::Closing { since, .. } = *self {
            *self = Life::Lingering {
                since,
                discarded: 0,
            };
        }
    }

    /// A close was asked and `close_notify` is not out yet.
    fn close_asked(self) -> bool {
        matches!(self, Life::CloseAfterFlush { .. })
    }

    /// The upstream's input is to be ended by a graceful drain (while it still matters:
    /// a lingering connection no longer pumps its plain side).
    fn draining(self) -> bool {
        match self {
            Life::Draining => true,
            Life::CloseAfterFlush { drained } | Life::Closing { drained, .. } => drained,
            Life::Open | Life::Lingering { .. } => false,
        }
    }

    /// When linger started, once `close_notify` or an alert went out.
    fn closing_since(self) -> Option<Instant> {
        match self {
            Life::Closing { since, .. } | Life::Lingering { since, .. } => Some(since),
            Life::Open | Life::Draining | Life::CloseAfterFlush { .. } => None,
        }
    }
}

/// Where the TLS side stands at the end of a wakeup, as the session reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsEnd {
    /// Handshaking or carrying data, perhaps with our `close_notify` queued.
    Running,
    /// Closed: both `close_notify`s exchanged, or ours queued and the peer gone.
    Closed,
    /// Failed: the alert (or the plaintext `400`) is queued or out.
    Failed,
}

/// What a connection needs from its worker after a wakeup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Done {
    /// Keep it; wait for events or its deadline.
    Wait,
    /// Keep it; it has more work now (it used up its rounds).
    Again,
    /// Connect the upstream at this address for it (the worker owns the registry), then
    /// drive it again.
    ConnectUpstream(SocketAddr),
    /// Finished: close it.
    Remove,
}

/// What woke a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Readiness, a new connection or a request of the worker.
    Io,
    /// Its deadline passed.
    Timer,
}

/// A connection's sockets and session, before it has a key.
pub(crate) struct Prepared {
    mode: Mode,
    tls: Sock,
    plain: Option<Sock>,
    session: Session,
    local: SocketAddr,
}

/// One accepted connection.
pub(crate) struct Conn {
    key: Key,
    mode: Mode,
    tls: Sock,
    plain: Option<Sock>,
    session: Session,
    pub(crate) remote: SocketAddr,
    local: SocketAddr,
    listener: usize,
    app: App,
    life: Life,
    /// Decrypted bytes for the plain side.
    to_plain: Queue,
    /// Plaintext for the TLS side, not yet accepted by the session.
    to_tls: Queue,
    /// Bytes to write raw on the TLS socket (the `400` answer to plaintext HTTP).
    raw_out: Queue,
    last_activity: Instant,
    /// The deadline the worker's timer heap knows for this connection.
    pub(crate) deadline: Option<Instant>,
    /// In the worker's list of connections to drive.
    pub(crate) queued: bool,
    /// When the TCP connection was accepted: the handshake duration and the audit line's
    /// duration start here.
    opened: Instant,
    /// Why the connection ended, as first known (audit; see [`End`]).
    end: Option<End>,
    /// The handler's upstream connection, lent by the worker's pool; `to_plain` holds the
    /// bytes for it.
    up: Option<Lent>,
    /// An end of the handler's upstream connection not yet told to the handler.
    up_closed: Option<UpstreamEnd>,
    /// The handler's timer ([`Reply::wake_at`]).
    timer: Option<Instant>,
    /// The handler's waker was woken.
    pub(crate) woken: bool,
    /// A graceful drain began and the handler has not been told.
    drain_pending: bool,
    /// The handler paused reading from the peer.
    paused: bool,
}

impl Conn {
    /// Set up a connection for `stream`: a server session, or in client mode a client
    /// session and a connect to the partner. [`Conn::new`] makes it a connection.
    pub(crate) fn prepare(mode: Mode, stream: TcpStream) -> io::Result<Prepared> {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let now = Now::system();
        let (tls, plain, session) = match &mode {
            Mode::Terminate { policies, .. } => (
                Sock::new(stream, true),
                None,
                Session::server(policies, now),
            ),
            Mode::Originate {
                policy,
                connect,
                server_name,
            } => {
                let session = Session::client(policy, server_name, now)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                let out = TcpStream::connect(*connect)?;
                (
                    Sock::new(out, false),
                    Some(Sock::new(stream, true)),
                    session,
                )
            }
        };
        Ok(Prepared {
            mode,
            tls,
            plain,
            session,
            local,
        })
    }

    /// The connection `key` from `remote`, accepted on `listener` at `now`.
    pub(crate) fn new(
        key: Key,
        listener: usize,
        prepared: Prepared,
        remote: SocketAddr,
        now: Instant,
    ) -> Self {
        let Prepared {
            mode,
            tls,
            plain,
            session,
            local,
        } = prepared;
        Self {
            key,
            listener,
            mode,
            tls,
            plain,
            session,
            remote,
            local,
            app: App::Waiting,
            life: Life::Open,
            to_plain: Queue::default(),
            to_tls: Queue::default(),
            raw_out: Queue::default(),
            last_activity: now,
            deadline: None,
            queued: false,
            opened: now,
            end: None,
            up: None,
            up_closed: None,
            timer: None,
            woken: false,
            drain_pending: false,
            paused: false,
        }
    }

    /// Register the connection's sockets for read and write readiness.
    pub(crate) fn register(&mut self, registry: &Registry) -> io::Result<()> {
        let both = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut self.tls.stream, self.key.token(Side::Tls), both)?;
        if let Some(p) = self.plain.as_mut() {
            registry.register(&mut p.stream, self.key.token(Side::Plain), both)?;
        }
        Ok(())
    }

    /// Deregister the connection's sockets (before it is dropped).
    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.tls.stream);
        if let Some(p) = self.plain.as_mut() {
            let _ = registry.deregister(&mut p.stream);
        }
    }

    /// The socket of `side`, if it exists (for [`Side::Upstream`]: the lent upstream
    /// connection, when it is the one in pool slot `slot`).
    pub(crate) fn sock(&mut self, side: Side, slot: Option<Key>) -> Option<&mut Sock> {
        match side {
            Side::Tls => Some(&mut self.tls),
            Side::Plain => self.plain.as_mut(),
            Side::Upstream => self
                .up
                .as_mut()
                .filter(|u| Some(u.slot) == slot)
                .map(|u| &mut u.sock),
        }
    }

    /// Connect the upstream the connection asked for ([`Done::ConnectUpstream`]). When it
    /// cannot be reached the connection is closed (`close_notify` after what is queued).
    pub(crate) fn connect_upstream(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        counters: &mut Counters,
    ) {
        let connect = || -> io::Result<Sock> {
            let mut s = TcpStream::connect(addr)?;
            registry.register(
                &mut s,
                self.key.token(Side::Plain),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(Sock::new(s, false))
        };
        match connect() {
            Ok(s) => self.plain = Some(s),
            Err(e) => {
                counters.upstream_errors += 1;
                warn!(
                    "upstream {addr} unreachable for {}: {e}; closing",
                    self.remote
                );
                self.app = App::Refused;
                self.close_after_flush();
            }
        }
    }

    /// Ask for `close_notify` once the queued plaintext is in the session.
    fn close_after_flush(&mut self) {
        self.life.close_after_flush();
    }

    /// Where the TLS side stands (see [`TlsEnd`]).
    fn tls_end(&self) -> TlsEnd {
        let s = &self.session;
        if s.error().is_some() {
            TlsEnd::Failed
        } else if s.is_terminal() || (s.close_sent() && (s.peer_closed() || self.tls.eof)) {
            TlsEnd::Closed
        } else {
            TlsEnd::Running
        }
    }

    /// Record the first known reason the connection ended.
    pub(crate) fn ended(&mut self, end: End) {
        self.end.get_or_insert(end);
    }

    /// Graceful shutdown begins: end an established connection after what it carries, cut
    /// a handshake.
    pub(crate) fn begin_drain(&mut self) {
        if self.session.is_established() {
            self.ended(End::Drain);
        }
        if self.session.is_established() && matches!(self.app, App::Handler(_)) {
            // The handler decides (by default it closes): told at the next wakeup.
            self.drain_pending = true;
        } else if self.session.is_established()
            && self.plain.is_some()
            && matches!(self.mode, Mode::Terminate { .. })
        {
            // A proxied stream may be in the middle of a response: a close_notify now would
            // cut it. End the upstream's input instead; the upstream finishes what it owes,
            // and its end of stream closes this connection (close_notify after the last
            // byte). The drain timeout bounds it.
            self.life.drain();
        } else if self.session.is_established() {
            self.close_after_flush();
        } else {
            self.session.close();
        }
    }

    /// The connection's next deadline: linger once closing, the handshake timeout while
    /// handshaking, the idle timeout once established.
    pub(crate) fn next_deadline(&self, now: Instant, limits: &Limits) -> Option<Instant> {
        if let Some(since) = self.life.closing_since() {
            Some(since + limits.linger)
        } else if !self.session.is_established() {
            self.session.poll_timeout().map(|t| t.to_std().max(now))
        } else {
            let idle = self.last_activity + limits.idle_timeout;
            // A TLS upstream connection's handshake timeout.
            let up = self
                .up
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .filter(|t| !t.session.is_established() && !t.session.is_terminal())
                .and_then(|t| t.session.poll_timeout())
                .map(|t| t.to_std().max(now));
            let next = self.timer.map_or(idle, |t| t.max(now).min(idle));
            Some(up.map_or(next, |u| u.min(next)))
        }
    }

    /// The connection is going away: close its upstream connection and tell the handler.
    pub(crate) fn closed(&mut self, registry: &Registry, pool: &mut Pool) {
        if let Some(lent) = self.up.take() {
            pool.close(lent, registry);
        }
        if let App::Handler(h) = &mut self.app {
            h.on_closed();
        }
    }

    /// A fresh [`Reply`] for a handler call: what is queued and the waker.
    fn reply(&self, wake: &Arc<WakeQueue>) -> Reply {
        Reply {
            backlog: self.to_tls.len(),
            waker: Some(ReplyWaker {
                key: self.key,
                queue: Some(wake.clone()),
            }),
            upstream_reused: self.up.as_ref().map(|u| u.reused),
            upstream_backlog: if self.up.is_some() {
                self.to_plain.len()
            } else {
                0
            },
            ..Reply::default()
        }
    }

    /// The session's counters, for the worker to add up at removal.
    pub(crate) fn stats(&self) -> &onerecord_tls::Stats {
        self.session.stats()
    }

    /// The close line of the audit log, when the access line was logged (it is logged when
    /// the session reports the handshake complete, so exactly when it is established).
    pub(crate) fn log_close(&self) {
        if !self.session.is_established() {
            return;
        }
        let end = self.end.clone().unwrap_or_else(|| {
            if let Some(e) = self.session.error() {
                End::Error(e.to_string())
            } else if self.session.peer_closed() {
                End::PeerCloseNotify
            } else if self.tls.eof {
                End::PeerEof
            } else {
                End::Closed
            }
        });
        let peer = match &self.mode {
            Mode::Terminate { .. } => self.remote,
            Mode::Originate { connect, .. } => *connect,
        };
        let cn = self.session.peer_identity().and_then(|id| id.common_name());
        log_close(peer, cn, self.opened.elapsed(), self.session.stats(), &end);
    }

    /// TLS output (or the raw `400`) written out and nothing left to send.
    fn flushed(&mut self) -> bool {
        self.session.transmit().is_empty() && self.raw_out.is_empty()
    }
}

/// Everything one wakeup does for one connection, in the session's drain order.
pub(crate) fn drive(c: &mut Conn, wake: Wake, now: Instant, ctx: &mut Ctx<'_>) -> Done {
    if let Some(done) = timers_and_linger(c, wake, now, ctx.limits, ctx.counters) {
        return done;
    }
    if let Some(done) = connects(c, ctx.counters) {
        return done;
    }
    let tls_now = Now::new(Time::now(), onerecord_tls::Instant::from_std(now));
    let mut upstream = None;
    for round in 0..ROUNDS {
        let mut progress = round == 0;
        progress |= read_tls(c, now, ctx.limits, ctx.counters);
        if progress && !c.session.is_terminal() {
            progress |= run_session(c, tls_now, ctx, now, &mut upstream);
        }
        progress |= handler_notes(c, now, ctx);
        progress |= feed_plaintext(c, tls_now);
        match write_tls(c, ctx.counters) {
            Ok(p) => progress |= p,
            Err(done) => return done,
        }
        match pump_plain(c, now, ctx.limits, ctx.counters, ctx.scratch) {
            Ok(p) => progress |= p,
            Err(done) => return done,
        }
        progress |= pump_upstream(c, now, tls_now, ctx);
        if !progress || (c.session.is_terminal() && c.flushed()) {
            break;
        }
    }
    if let Some(addr) = upstream {
        return Done::ConnectUpstream(addr);
    }
    finish(c, now, ctx.limits)
}

/// Call the connection's handler, if it has one, with a fresh [`Reply`], then carry out
/// what it asked. `true` when that changed anything.
fn call(
    c: &mut Conn,
    now: Instant,
    ctx: &mut Ctx<'_>,
    f: impl FnOnce(&mut dyn Handler, &mut Reply),
) -> bool {
    let mut reply = c.reply(ctx.wake);
    let App::Handler(h) = &mut c.app else {
        return false;
    };
    f(h.as_mut(), &mut reply);
    apply(c, reply, now, ctx)
}

/// Carry out a handler's [`Reply`]: output, close, timer, pause, and the upstream
/// connection's requests in the order they were made. `true` when anything changed.
fn apply(c: &mut Conn, reply: Reply, now: Instant, ctx: &mut Ctx<'_>) -> bool {
    let Reply {
        out,
        close,
        wake_at,
        pause,
        upstream,
        ..
    } = reply;
    let mut progress = false;
    if !out.is_empty() {
        c.to_tls.append(out);
        progress = true;
    }
    if close {
        c.life.close_after_flush();
        progress = true;
    }
    if let Some(t) = wake_at {
        c.timer = t;
    }
    if let Some(p) = pause
        && p != c.paused
    {
        c.paused = p;
        progress = true;
    }
    for op in upstream {
        progress = true;
        match op {
            UpstreamOp::Open { addr, fresh, tls } => {
                if let Some(lent) = c.up.take() {
                    ctx.pool.close(lent, ctx.registry);
                }
                c.to_plain = Queue::default();
                c.up_closed = None;
                let dest = Dest {
                    addr,
                    tls: tls.as_ref().map(|(name, p)| (name.clone(), p.id())),
                };
                let policy = tls.as_ref().map(|(_, p)| p);
                match ctx
                    .pool
                    .lend(dest, policy, fresh, c.key, ctx.registry, ctx.counters)
                {
                    Ok(lent) => c.up = Some(lent),
                    Err(e) => {
                        ctx.counters.upstream_errors += 1;
                        c.up_closed = Some(UpstreamEnd::ConnectFailed(e));
                    }
                }
            }
            UpstreamOp::Write(v) => {
                if c.up.is_some() {
                    c.to_plain.append(v);
                }
            }
            UpstreamOp::Release { reuse } => {
                if let Some(lent) = c.up.take() {
                    let reuse = reuse && c.to_plain.is_empty();
                    c.to_plain = Queue::default();
                    ctx.pool
                        .give_back(lent, reuse, now, ctx.limits, ctx.registry);
                }
            }
        }
    }
    progress
}

/// Tell the handler what happened besides data: a drain began, its waker or timer fired, its
/// upstream connection ended. `true` when its answer changed anything.
fn handler_notes(c: &mut Conn, now: Instant, ctx: &mut Ctx<'_>) -> bool {
    if !matches!(c.app, App::Handler(_)) {
        return false;
    }
    let mut progress = false;
    if c.drain_pending {
        c.drain_pending = false;
        progress |= call(c, now, ctx, |h, r| h.on_drain(r));
    }
    let due = c.timer.is_some_and(|t| t <= now);
    if c.woken || due {
        c.woken = false;
        if due {
            c.timer = None;
        }
        progress |= call(c, now, ctx, |h, r| h.on_wake(r));
    }
    if let Some(end) = c.up_closed.take() {
        progress |= call(c, now, ctx, |h, r| h.on_upstream_closed(end, r));
    }
    progress
}

/// The handler's upstream connection: finish connecting, write what is queued for it, read
/// what it sends while the peer's side has room and hand it to the handler. `true` on
/// progress.
fn pump_upstream(c: &mut Conn, now: Instant, tls_now: Now, ctx: &mut Ctx<'_>) -> bool {
    let Some(u) = c.up.as_mut() else {
        return false;
    };
    let mut progress = false;
    if !u.sock.connected {
        if !(u.sock.writable || u.sock.readable) {
            return false;
        }
        if let Err(e) = u.sock.check_connected() {
            return upstream_failed(c, now, ctx, UpstreamEnd::ConnectFailed(e));
        }
        if !u.sock.connected {
            return false;
        }
        progress = true;
    }
    if u.tls.is_some() {
        return pump_upstream_tls(c, now, tls_now, ctx) || progress;
    }
    while u.sock.writable && !c.to_plain.is_empty() {
        match u.sock.stream.write(c.to_plain.pending()) {
            Ok(0) => u.sock.writable = false,
            Ok(n) => {
                c.to_plain.consume(n);
                progress = true;
            }
            Err(e) if is_would_block(&e) => u.sock.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return upstream_failed(c, now, ctx, UpstreamEnd::Failed(e)),
        }
    }
    let can_take = c.to_tls.len() < ctx.limits.max_buffered
        && c.session.transmit().len() < ctx.limits.max_buffered
        && !c.session.close_sent()
        && !c.session.is_terminal();
    if u.sock.readable && can_take {
        let mut buf = std::mem::take(ctx.scratch);
        buf.resize(SCRATCH, 0);
        let done = match u.sock.stream.read(&mut buf) {
            Ok(0) => {
                u.sock.eof = true;
                Some(UpstreamEnd::Eof)
            }
            Ok(n) => {
                c.last_activity = now;
                call(c, now, ctx, |h, r| h.on_upstream_data(&buf[..n], r));
                progress = true;
                None
            }
            Err(e) if is_would_block(&e) => {
                u.sock.readable = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                progress = true;
                None
            }
            Err(e) => Some(UpstreamEnd::Failed(e)),
        };
        *ctx.scratch = buf;
        if let Some(end) = done {
            return upstream_failed(c, now, ctx, end);
        }
    }
    progress
}

/// A TLS upstream connection: read its records while the peer's side has room, run its
/// session, encrypt the queued plaintext once established, write. The handler hears the
/// completed handshake, then the decrypted bytes, then how it ended. `true` on progress.
fn pump_upstream_tls(c: &mut Conn, now: Instant, tls_now: Now, ctx: &mut Ctx<'_>) -> bool {
    let can_take = c.to_tls.len() < ctx.limits.max_buffered
        && c.session.transmit().len() < ctx.limits.max_buffered
        && !c.session.close_sent()
        && !c.session.is_terminal();
    let Some(mut lent) = c.up.take() else {
        return false;
    };
    let Some(tls) = lent.tls.as_mut() else {
        c.up = Some(lent);
        return false;
    };
    let mut progress = false;
    let mut failed = None;
    let mut read = false;
    if lent.sock.readable && !lent.sock.eof && can_take && !tls.session.is_terminal() {
        let buf = tls.session.receive_buffer();
        if !buf.is_empty() {
            match lent.sock.stream.read(buf) {
                Ok(0) => lent.sock.eof = true,
                Ok(n) => {
                    tls.session.received(n);
                    c.last_activity = now;
                    read = true;
                }
                Err(e) if is_would_block(&e) => lent.sock.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => failed = Some(UpstreamEnd::Failed(e)),
            }
            progress = true;
        }
    }
    let mut established = None;
    let mut data = Vec::new();
    let mut peer_closed = false;
    // Run the session on new input, and while handshaking (its timeout is checked here).
    if (read || !tls.session.is_established()) && !tls.session.is_terminal() {
        let _ = tls.session.process(tls_now, |ev| match ev {
            Event::Established(id) => established = Some(id.clone()),
            Event::Data(d) => data.extend_from_slice(d),
            Event::PeerClosed => peer_closed = true,
            Event::Closed => {}
        });
    }
    if lent.sock.eof && !tls.session.is_terminal() && !tls.session.peer_closed() {
        let _ = tls.session.received_eof();
    }
    if tls.session.is_established() && !tls.session.close_sent() {
        while !c.to_plain.is_empty() {
            match tls.session.send(c.to_plain.pending()) {
                Ok(0) => break,
                Ok(n) => {
                    c.to_plain.consume(n);
                    progress = true;
                }
                Err(_) => break,
            }
        }
    }
    while lent.sock.writable && failed.is_none() && !tls.session.transmit().is_empty() {
        match lent.sock.stream.write(tls.session.transmit()) {
            Ok(0) => lent.sock.writable = false,
            Ok(n) => {
                tls.session.transmitted(n);
                progress = true;
            }
            Err(e) if is_would_block(&e) => lent.sock.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => failed = Some(UpstreamEnd::Failed(e)),
        }
    }
    let tls_error = tls.session.error().cloned();
    let ended = peer_closed || tls.session.peer_closed() || lent.sock.eof;
    let tell = established.is_some() && !tls.told;
    if tell {
        tls.told = true;
    }
    c.up = Some(lent);
    if let Some(id) = established.filter(|_| tell) {
        call(c, now, ctx, |h, r| h.on_upstream_established(&id, r));
        progress = true;
    }
    if !data.is_empty() {
        call(c, now, ctx, |h, r| h.on_upstream_data(&data, r));
        progress = true;
    }
    // The handler may have let the connection go meanwhile.
    if c.up.is_none() {
        return progress;
    }
    if let Some(err) = tls_error {
        return upstream_failed(c, now, ctx, UpstreamEnd::Tls(err));
    }
    if let Some(end) = failed {
        return upstream_failed(c, now, ctx, end);
    }
    if ended {
        return upstream_failed(c, now, ctx, UpstreamEnd::Eof);
    }
    progress
}

/// The handler's upstream connection ended: close it and tell the handler.
fn upstream_failed(c: &mut Conn, now: Instant, ctx: &mut Ctx<'_>, end: UpstreamEnd) -> bool {
    // The handler learns whether the connection that ended came from the pool (a stale
    // pooled connection is worth a retry).
    let reused = c.up.as_ref().map(|u| u.reused);
    if let Some(lent) = c.up.take() {
        ctx.pool.close(lent, ctx.registry);
    }
    c.to_plain = Queue::default();
    if !matches!(end, UpstreamEnd::Eof) {
        ctx.counters.upstream_errors += 1;
    }
    let mut reply = c.reply(ctx.wake);
    reply.upstream_reused = reused;
    if let App::Handler(h) = &mut c.app {
        h.on_upstream_closed(end, &mut reply);
        apply(c, reply, now, ctx);
    }
    true
}

/// A timer fired (linger over, or idle), or the connection lingers: handle that first.
fn timers_and_linger(
    c: &mut Conn,
    wake: Wake,
    now: Instant,
    limits: &Limits,
    counters: &mut Counters,
) -> Option<Done> {
    if wake == Wake::Timer {
        if let Some(since) = c.life.closing_since() {
            if now >= since + limits.linger {
                return Some(Done::Remove);
            }
        } else if c.session.is_established() && now >= c.last_activity + limits.idle_timeout {
            counters.idle_timeouts += 1;
            c.ended(End::IdleTimeout);
            debug!("closing idle connection from {}", c.remote);
            c.close_after_flush();
        }
    }
    if matches!(c.life, Life::Lingering { .. }) {
        return Some(if discard_input(c) {
            Done::Remove
        } else {
            Done::Wait
        });
    }
    None
}

/// Connects in progress: the partner's TLS server (client mode) or the upstream.
fn connects(c: &mut Conn, counters: &mut Counters) -> Option<Done> {
    if !c.tls.connected
        && (c.tls.writable || c.tls.readable)
        && let Err(e) = c.tls.check_connected()
    {
        counters.upstream_errors += 1;
        match &c.mode {
            Mode::Originate { connect, .. } => warn!(
                target: "onerecord::partner",
                "cannot reach partner {connect} for {}: {e}", c.remote
            ),
            Mode::Terminate { .. } => warn!("cannot reach TLS server for {}: {e}", c.remote),
        }
        return Some(Done::Remove);
    }
    if let Some(p) = c.plain.as_mut()
        && !p.connected
        && (p.writable || p.readable)
        && let Err(e) = p.check_connected()
    {
        counters.upstream_errors += 1;
        warn!("upstream unreachable for {}: {e}", c.remote);
        p.eof = true;
        p.write_closed = true;
        c.app = App::Refused;
        c.close_after_flush();
    }
    None
}

/// Phase 1, read TLS: bytes in, while the plaintext queues have room. `true` on progress.
fn read_tls(c: &mut Conn, now: Instant, limits: &Limits, counters: &mut Counters) -> bool {
    let input_ok = c.to_plain.len() < limits.max_buffered && c.to_tls.len() < limits.max_buffered;
    let can_read = c.tls.connected && c.tls.readable && !c.tls.eof && !c.paused;
    if !can_read || c.session.is_terminal() || !input_ok {
        return false;
    }
    let buf = c.session.receive_buffer();
    if buf.is_empty() {
        return false;
    }
    match c.tls.stream.read(buf) {
        Ok(0) => {
            c.tls.eof = true;
            true
        }
        Ok(n) => {
            c.session.received(n);
            // Counted as the bytes pass, so open connections show up.
            counters.sessions.tls_bytes_received += n as u64;
            c.last_activity = now;
            true
        }
        Err(e) if is_would_block(&e) => {
            c.tls.readable = false;
            false
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(e) => {
            debug!("read from {} failed: {e}", c.remote);
            c.tls.eof = true;
            true
        }
    }
}

/// Phase 2, run the session: process what was received and route its events; the end of the TLS
/// stream without `close_notify` is reported to it. `upstream` is set when the handshake finished
/// and the stream goes to a TCP upstream.
fn run_session(
    c: &mut Conn,
    now: Now,
    ctx: &mut Ctx<'_>,
    at: Instant,
    upstream: &mut Option<SocketAddr>,
) -> bool {
    let mut reply = c.reply(ctx.wake);
    let counters = &mut *ctx.counters;
    let Conn {
        session,
        app,
        to_plain,
        mode,
        remote,
        local,
        listener,
        opened,
        end,
        ..
    } = c;
    let mut peer_closed = false;
    let mut close = false;
    let res = session.process(now, |ev| match ev {
        Event::Established(id) => {
            counters.handshake(id.version, id.resumed(), opened.elapsed());
            log_access(mode, *remote, *local, id);
            match mode {
                Mode::Terminate { backend, .. } => match site_backend(backend, id) {
                    Some(Backend::Service(service)) => {
                        let peer = Peer {
                            identity: id,
                            remote: *remote,
                            local: *local,
                        };
                        match service.accept(&peer) {
                            Some(h) => *app = App::Handler(h),
                            None => {
                                counters.refused_by_service += 1;
                                crate::audit::log_refused_by_service(
                                    *remote,
                                    *listener,
                                    id.common_name(),
                                );
                                *app = App::Refused;
                                close = true;
                            }
                        }
                    }
                    Some(Backend::Upstream {
                        addr,
                        proxy_protocol,
                    }) => {
                        if *proxy_protocol {
                            match crate::proxy::header(*remote, *local, id) {
                                Ok(h) => to_plain.extend(&h),
                                Err(e) => warn!("PROXY header for {remote}: {e}"),
                            }
                        }
                        *upstream = Some(*addr);
                        *app = App::Plain;
                    }
                    Some(Backend::BySni(_)) | None => {
                        // A site without a backend: a configuration the caller should not
                        // have made (see `SniBackends`); refuse rather than guess.
                        warn!(
                            "no backend for server name {:?} on listener {listener}; closing",
                            id.server_name
                        );
                        counters.refused_by_service += 1;
                        *app = App::Refused;
                        close = true;
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
            // A proxied stream forwards the peer's close_notify as a half-close of the plain
            // side; our close_notify follows when the plain side ends.
            App::Plain => {}
            App::Waiting | App::Refused => close = true,
        }
    }
    if close {
        c.life.close_after_flush();
    }
    let progress = apply(c, reply, at, ctx);
    if res.is_err() {
        if let Some(err) = c.session.error()
            && matches!(err.reason(), Reason::PlaintextHttp)
        {
            // Plaintext HTTP on the TLS port: the answer is a plain `400`, written raw.
            ctx.counters.plaintext_http += 1;
            c.raw_out.extend(plaintext_400().as_bytes());
        }
        note_failure(c);
    }
    if c.tls.eof && !c.session.is_terminal() && !c.session.peer_closed() {
        let _ = c.session.received_eof();
        note_failure(c);
    }
    progress
}

/// The backend of the site the handshake selected (see [`Backend::BySni`]).
fn site_backend<'a>(backend: &'a Backend, id: &onerecord_tls::PeerIdentity) -> Option<&'a Backend> {
    match backend {
        Backend::BySni(sites) => sites.select(id.server_name.as_deref()),
        other => Some(other),
    }
}

/// The `400` answer to plaintext HTTP on a TLS port.
fn plaintext_400() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PLAINTEXT_BODY}",
        PLAINTEXT_BODY.len()
    )
}

/// Phase 3, feed plaintext: into the session; `close_notify` once it is all in and a close was
/// asked. `true` on progress.
fn feed_plaintext(c: &mut Conn, now: Now) -> bool {
    let close_asked = c.life.close_asked();
    if !(c.session.is_established() && !c.session.close_sent() && !c.session.is_terminal()) {
        if close_asked && !c.session.is_established() && !c.session.is_terminal() {
            c.session.close();
        }
        return false;
    }
    let mut progress = false;
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
    if c.to_tls.is_empty() && close_asked {
        c.ended(End::Closed);
        c.session.close();
        let _ = c.session.process(now, |_| {});
        progress = true;
    }
    progress
}

/// Phase 4, write TLS: the raw `400` first, then the session's output. `Ok(progress)`, or
/// `Err(Done::Remove)` when the socket failed.
fn write_tls(c: &mut Conn, counters: &mut Counters) -> Result<bool, Done> {
    let mut progress = false;
    while c.tls.connected && c.tls.writable && !c.flushed() {
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
                c.ended(End::Error(format!("write: {e}")));
                return Err(Done::Remove);
            }
        }
    }
    Ok(progress)
}

/// Phase 5, pump the plain side (upstream or local client): write the decrypted bytes, forward its
/// end of input, read what it sends while the TLS side has room. `Ok(progress)`, or
/// `Err(Done::Remove)` when the local client left before the TLS connection was up.
fn pump_plain(
    c: &mut Conn,
    now: Instant,
    limits: &Limits,
    counters: &mut Counters,
    scratch: &mut Vec<u8>,
) -> Result<bool, Done> {
    let mut progress = false;
    let mut close = false;
    let Some(p) = c.plain.as_mut() else {
        return Ok(false);
    };
    if !p.connected {
        return Ok(false);
    }
    let draining = c.life.draining();
    if draining && p.write_closed {
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
                close = true;
            }
        }
    }
    if c.to_plain.is_empty()
        && !p.write_closed
        && (c.session.peer_closed() || c.session.is_terminal() || draining)
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
        scratch.resize(SCRATCH, 0);
        let buf = &mut scratch[..];
        match p.stream.read(buf) {
            Ok(0) => {
                p.eof = true;
                close = true;
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
                close = true;
                progress = true;
            }
        }
    }
    let client_left =
        p.eof && !c.session.is_established() && matches!(c.mode, Mode::Originate { .. });
    if close {
        c.close_after_flush();
    }
    if client_left {
        // The local client left before the TLS connection was up.
        return Err(Done::Remove);
    }
    Ok(progress)
}

/// Phase 6, finish: start lingering once `close_notify` or an alert went out, close when both sides
/// are done, run again when input is left that readiness will not announce again, and give the
/// buffers back while idle.
fn finish(c: &mut Conn, now: Instant, limits: &Limits) -> Done {
    let flushed = c.flushed();
    if c.session.error().is_some() || c.session.close_sent() {
        c.life.went_out(now);
    }
    match c.tls_end() {
        // The alert (or the 400) is out: close. Otherwise linger until it is.
        TlsEnd::Failed if c.tls.eof => return Done::Remove,
        TlsEnd::Failed if flushed => {
            let _ = c.tls.stream.shutdown(Shutdown::Write);
            c.life.linger();
            return if discard_input(c) {
                Done::Remove
            } else {
                Done::Wait
            };
        }
        TlsEnd::Failed => return Done::Wait,
        TlsEnd::Closed => {
            // Both close_notifys exchanged, or ours is queued and the peer is gone.
            let plain_done = c
                .plain
                .as_ref()
                .is_none_or(|p| p.write_closed || c.to_plain.is_empty());
            if flushed && plain_done {
                let _ = c.tls.stream.shutdown(Shutdown::Write);
                return Done::Remove;
            }
            // The peer is gone and what is left cannot be written, or it left before the
            // handshake finished.
            if c.tls.eof && (!flushed || (!c.session.is_established() && c.session.is_terminal())) {
                return Done::Remove;
            }
        }
        TlsEnd::Running => {}
    }
    // Work left that readiness will not announce again.
    let more_input = c.tls.readable
        && !c.tls.eof
        && !c.paused
        && !c.session.is_terminal()
        && c.to_plain.len() < limits.max_buffered
        && c.to_tls.len() < limits.max_buffered;
    // The plain side or the upstream had more to read when the rounds ran out.
    let room = c.to_tls.len() < limits.max_buffered
        && c.session.transmit().len() < limits.max_buffered
        && !c.session.close_sent()
        && !c.session.is_terminal();
    let more_plain = room
        && (c
            .plain
            .as_ref()
            .is_some_and(|p| p.connected && p.readable && !p.eof)
            || c.up
                .as_ref()
                .is_some_and(|u| u.sock.connected && u.sock.readable));
    if more_input || more_plain {
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

/// Read and drop what a lingering peer still sends. `true` when the connection can go: the
/// peer closed, failed, or sent more than [`LINGER_DISCARD_MAX`].
fn discard_input(c: &mut Conn) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.tls.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if let Life::Lingering { discarded, .. } = &mut c.life {
                    *discarded += n;
                    if *discarded > LINGER_DISCARD_MAX {
                        return true;
                    }
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

/// Note the session's failure: why the connection ended (audit), and the log line that says
/// it (partner WARN in client mode, refusal line before the handshake finished). It runs once:
/// [`run_session`] runs only while the session is not terminal, and a failure makes it so.
fn note_failure(c: &mut Conn) {
    let Some(err) = c.session.error() else {
        return;
    };
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
    log_refused(c.remote, c.session.server_name(), err);
}
