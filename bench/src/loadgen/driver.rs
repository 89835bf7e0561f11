//! The load: one mio event loop on one thread drives every client connection through the
//! engine's own client [`Session`] (non-blocking sockets, no thread per connection), so the
//! client spends as little CPU as the handshakes allow and leaves the other core to the
//! server under test.
//!
//! A run has up to three phases:
//!
//! 1. **Warm-up** (not measured): every slot completes one connection and one request. In
//!    `resumed` mode this is the full handshake whose ticket the slot then resumes; in
//!    `keepalive` mode the connections stay open for the measured phase.
//! 2. **Measured window** of `--duration` seconds: server CPU and client CPU are read at both
//!    ends; only work that completes inside the window is counted; work still in flight when
//!    it ends is dropped, not counted as failed.
//! 3. `idle` mode replaces 2: open `--idle` connections (`--concurrency` handshakes in
//!    flight), one request each, then hold them open for `--duration` seconds and read the
//!    server's RSS against a baseline taken before the first one.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use onerecord_tls::{ClientPolicy, ClientSessionCache, Event, Session, Time};

use super::http::Response;
use super::procstat;

/// What each client connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new connection with a full handshake for every request.
    Full,
    /// A new connection resuming the slot's previous session for every request.
    Resumed,
    /// `--concurrency` connections, each sending requests one after another.
    Keepalive,
    /// `--idle` established connections held open: the server's memory per connection.
    Idle,
    /// Plain HTTP/1.1 kept-alive connections to a forward proxy, absolute-form requests
    /// ([`super::plain`]): the application side of the egress proxy.
    Proxy,
}

impl Mode {
    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
            Self::Keepalive => "keepalive",
            Self::Idle => "idle",
            Self::Proxy => "proxy",
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server address (loopback).
    pub addr: SocketAddr,
    /// SNI and the name the server certificate must carry.
    pub server_name: String,
    /// What each connection does.
    pub mode: Mode,
    /// Connections driven at once (`idle`: handshakes in flight at once).
    pub concurrency: usize,
    /// Measured window (`idle`: how long the connections are held before the RSS reading).
    pub duration: Duration,
    /// `idle` mode: connections to hold open.
    pub idle: usize,
    /// Bound on one connect, handshake or request.
    pub io_timeout: Duration,
    /// The request sent, whole, each time.
    pub request: Vec<u8>,
    /// Server processes whose CPU and RSS are read (summed).
    pub server_pids: Vec<u32>,
    /// `proxy` mode: processes of the forward proxy whose CPU is read (summed); they are on
    /// the client's side of the network.
    pub proxy_pids: Vec<u32>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Length of the measured window (`idle`: of the opening phase).
    pub window: Duration,
    /// Connections that completed their request inside the window.
    pub connections: u64,
    /// Full handshakes completed inside the window.
    pub handshakes_full: u64,
    /// Resumed handshakes completed inside the window.
    pub handshakes_resumed: u64,
    /// Requests answered inside the window.
    pub requests: u64,
    /// Failures by reason, in every phase.
    pub failures: BTreeMap<String, u64>,
    /// Latency of each request counted, in microseconds: connect to end of response for
    /// `full` and `resumed`, request to end of response for `keepalive` and `idle`.
    pub latencies_us: Vec<u32>,
    /// Negotiated version and suite (from the first handshake).
    pub negotiated: Option<(String, String)>,
    /// Server CPU over the window (µs), when `server_pids` was given.
    pub server_cpu_us: Option<u64>,
    /// Client (this process) CPU over the window (µs).
    pub client_cpu_us: Option<u64>,
    /// `proxy` mode: CPU of the proxy processes over the window (µs), when `proxy_pids` was
    /// given.
    pub proxy_cpu_us: Option<u64>,
    /// Server RSS at the end (bytes).
    pub server_rss_end: Option<u64>,
    /// `idle`: server RSS before the first idle connection (bytes).
    pub server_rss_baseline: Option<u64>,
    /// `idle`: server RSS right after the last connection was established (bytes).
    pub server_rss_opened: Option<u64>,
    /// `idle`: connections established and still open at the end.
    pub idle_open: u64,
}

/// Bound on stored latencies (a 10 s window at 100,000 requests/s).
const MAX_SAMPLES: usize = 1_000_000;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Attempts per slot in the warm-up before the slot is given up.
const WARMUP_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshake,
    Await,
    Idle,
}

struct Conn {
    tcp: TcpStream,
    tls: Session,
    connected: bool,
    writable: bool,
    state: State,
    opened: Instant,
    sent_at: Instant,
    deadline: Instant,
    resp: Response,
    ended: bool,
    /// Set by `drive` when the handshake completed: `Some(resumed)`.
    established: Option<bool>,
}

enum Progress {
    Pending,
    Done,
    Fail(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    IdleOpen,
    IdleHold,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    warm: bool,
    attempts: u32,
    dead: bool,
    /// Failed: open again at the next tick (never at once, so a refused connect cannot
    /// turn into a busy loop or a recursion).
    retry: bool,
}

struct Driver<'a> {
    cfg: &'a Config,
    poll: Poll,
    policies: Vec<ClientPolicy>,
    slots: Vec<Slot>,
    phase: Phase,
    measure_end: Instant,
    out: Outcome,
    warm_pending: usize,
    /// `idle`: next slot to open and connections in their handshake or first request.
    next_idle: usize,
    in_flight: usize,
}

fn time_now() -> Time {
    Time::now()
}

fn label_io(what: &str, e: &io::Error) -> String {
    format!("{what}: {:?}", e.kind())
}

/// Build the client policies: one shared policy without a session cache (every handshake
/// full), or in `resumed` mode one per slot, each with its own small cache, so that a slot
/// always resumes the session its previous connection got (concurrent slots would
/// otherwise compete for the tickets of one server name).
pub fn policies(
    base: &ClientPolicy,
    mode: Mode,
    slots: usize,
) -> Result<Vec<ClientPolicy>, String> {
    let build = |cache| {
        base.to_builder()
            .session_cache(cache)
            .build(Time::now())
            .map_err(|e| format!("client policy: {e}"))
    };
    if mode == Mode::Resumed {
        (0..slots)
            .map(|_| build(Some(ClientSessionCache::new(4))))
            .collect()
    } else {
        Ok(vec![build(None)?])
    }
}

/// Run the load described by `cfg` with `policies` (see [`policies`]).
pub fn run(cfg: &Config, policies: Vec<ClientPolicy>) -> Result<Outcome, String> {
    if cfg.concurrency == 0 || policies.is_empty() {
        return Err("concurrency must be at least 1".into());
    }
    if cfg.mode == Mode::Proxy {
        return super::plain::run(cfg);
    }
    let slots = if cfg.mode == Mode::Idle {
        cfg.idle.max(1)
    } else {
        cfg.concurrency
    };
    let mut d = Driver {
        cfg,
        poll: Poll::new().map_err(|e| format!("mio poll: {e}"))?,
        policies,
        slots: (0..slots).map(|_| Slot::default()).collect(),
        phase: Phase::Warmup,
        measure_end: Instant::now(),
        out: Outcome::default(),
        warm_pending: 0,
        next_idle: 0,
        in_flight: 0,
    };
    d.run()?;
    Ok(d.out)
}

impl Driver<'_> {
    fn run(&mut self) -> Result<(), String> {
        let warm_slots = if self.cfg.mode == Mode::Idle {
            1
        } else {
            self.slots.len()
        };
        self.warm_pending = warm_slots;
        for i in 0..warm_slots {
            self.open(i);
        }
        let warm_limit = Instant::now() + self.cfg.io_timeout * (WARMUP_ATTEMPTS + 1);
        self.pump(warm_limit, |d| d.warm_pending == 0)?;
        if self.warm_pending > 0 {
            return Err(format!(
                "warm-up did not finish: {} of {warm_slots} slots without a completed request; failures: {:?}",
                self.warm_pending, self.out.failures
            ));
        }
        if self.slots.iter().all(|s| s.dead) {
            return Err(format!(
                "no connection succeeded; failures: {:?}",
                self.out.failures
            ));
        }
        let pids = self.cfg.server_pids.clone();
        let me = [std::process::id()];
        if self.cfg.mode == Mode::Idle {
            // Let the server finish closing the warm-up connection.
            std::thread::sleep(Duration::from_millis(300));
            self.out.server_rss_baseline = opt(procstat::rss_bytes_sum(&pids), &pids)?;
        }
        let cpu0 = opt(procstat::cpu_micros_sum(&pids), &pids)?;
        let me0 = procstat::cpu_micros_sum(&me).ok();
        let t0 = Instant::now();
        if self.cfg.mode == Mode::Idle {
            self.phase = Phase::IdleOpen;
            let limit = t0 + self.cfg.io_timeout.max(Duration::from_secs(1)) * 6;
            self.top_up();
            self.pump(limit, |d| d.in_flight == 0 && d.next_idle >= d.slots.len())?;
            self.out.window = t0.elapsed();
            self.out.server_cpu_us = diff(cpu0, opt(procstat::cpu_micros_sum(&pids), &pids)?);
            self.out.client_cpu_us = diff(me0, procstat::cpu_micros_sum(&me).ok());
            self.abandon_in_flight();
            self.out.server_rss_opened = opt(procstat::rss_bytes_sum(&pids), &pids)?;
            self.phase = Phase::IdleHold;
            let hold_end = Instant::now() + self.cfg.duration;
            self.pump(hold_end, |_| false)?;
            self.out.server_rss_end = opt(procstat::rss_bytes_sum(&pids), &pids)?;
            self.out.idle_open = self.slots.iter().filter(|s| s.conn.is_some()).count() as u64;
        } else {
            self.phase = Phase::Measure;
            self.measure_end = t0 + self.cfg.duration;
            for i in 0..self.slots.len() {
                if self.slots[i].dead {
                    continue;
                }
                match self.cfg.mode {
                    Mode::Keepalive => self.send_request(i),
                    _ => self.open(i),
                }
            }
            let end = self.measure_end;
            self.pump(end, |_| false)?;
            self.out.window = t0.elapsed();
            self.out.server_cpu_us = diff(cpu0, opt(procstat::cpu_micros_sum(&pids), &pids)?);
            self.out.client_cpu_us = diff(me0, procstat::cpu_micros_sum(&me).ok());
            self.out.server_rss_end = opt(procstat::rss_bytes_sum(&pids), &pids)?;
        }
        for i in 0..self.slots.len() {
            self.drop_conn(i);
        }
        Ok(())
    }

    /// Poll and dispatch until `until` or until `done` holds.
    fn pump(&mut self, until: Instant, done: impl Fn(&Self) -> bool) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let wait = until.min(next_tick).saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("mio poll: {e}")),
            }
            for ev in events.iter() {
                let i = ev.token().0;
                self.on_ready(i, ev.is_readable() || ev.is_read_closed(), ev.is_writable());
            }
            self.top_up();
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.check_deadlines(now);
                self.retry_failed();
            }
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let late = self.slots[i]
                .conn
                .as_ref()
                .is_some_and(|c| c.state != State::Idle && now >= c.deadline);
            if late {
                let state = self.slots[i].conn.as_ref().map(|c| c.state);
                let what = match state {
                    Some(State::Handshake) => "timeout: connect or handshake",
                    _ => "timeout: response",
                };
                self.fail(i, what.to_string());
            }
        }
    }

    fn open(&mut self, i: usize) {
        if self.phase == Phase::Measure && Instant::now() >= self.measure_end {
            return;
        }
        let policy = &self.policies[i % self.policies.len()];
        let now = Instant::now();
        let conn = (|| {
            let mut tcp = TcpStream::connect(self.cfg.addr).map_err(|e| label_io("connect", &e))?;
            tcp.set_nodelay(true).map_err(|e| label_io("nodelay", &e))?;
            self.poll
                .registry()
                .register(&mut tcp, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| label_io("register", &e))?;
            let mut tls = Session::client(policy, &self.cfg.server_name, time_now())
                .map_err(|e| format!("client session: {e}"))?;
            tls.process(time_now(), |_| {})
                .map_err(|e| format!("tls: {}", e.reason()))?;
            Ok::<_, String>(Conn {
                tcp,
                tls,
                connected: false,
                writable: false,
                state: State::Handshake,
                opened: now,
                sent_at: now,
                deadline: now + self.cfg.io_timeout,
                resp: Response::default(),
                ended: false,
                established: None,
            })
        })();
        match conn {
            Ok(c) => self.slots[i].conn = Some(c),
            Err(e) => {
                self.slots[i].conn = None;
                self.after_failure(i, e);
            }
        }
    }

    /// `idle`: keep `--concurrency` new connections in flight until all are opened. A
    /// connect that fails at once only lowers `in_flight`, so this loop ends after at most
    /// one attempt per slot.
    fn top_up(&mut self) {
        if self.phase != Phase::IdleOpen {
            return;
        }
        while self.in_flight < self.cfg.concurrency && self.next_idle < self.slots.len() {
            let i = self.next_idle;
            self.next_idle += 1;
            self.in_flight += 1;
            self.open(i);
        }
    }

    /// Reopen the slots whose connection failed (warm-up and measured window).
    fn retry_failed(&mut self) {
        for i in 0..self.slots.len() {
            if std::mem::take(&mut self.slots[i].retry) && self.slots[i].conn.is_none() {
                self.open(i);
            }
        }
    }

    fn send_request(&mut self, i: usize) {
        let Some(c) = self.slots[i].conn.as_mut() else {
            return;
        };
        c.resp.reset();
        let r = match c.tls.send(&self.cfg.request) {
            Ok(n) if n == self.cfg.request.len() => flush(c),
            Ok(_) => Err("send: outgoing buffer full".to_string()),
            Err(e) => Err(format!("send: {e}")),
        };
        let now = Instant::now();
        c.state = State::Await;
        c.sent_at = now;
        c.deadline = now + self.cfg.io_timeout;
        if let Err(e) = r {
            self.fail(i, e);
        }
    }

    fn on_ready(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(c) = self.slots.get_mut(i).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        let progress = drive(c, readable, writable, &self.cfg.request);
        if let Some(resumed) = c.established.take() {
            if self.out.negotiated.is_none() {
                if let Some(id) = c.tls.peer_identity() {
                    self.out.negotiated = Some((id.version.to_string(), id.suite.name().into()));
                }
            }
            if self.phase == Phase::Measure || self.phase == Phase::IdleOpen {
                if resumed {
                    self.out.handshakes_resumed += 1;
                } else {
                    self.out.handshakes_full += 1;
                }
            }
        }
        match progress {
            Progress::Pending => {}
            Progress::Fail(e) => self.fail(i, e),
            Progress::Done => self.on_response(i),
        }
    }

    fn on_response(&mut self, i: usize) {
        let now = Instant::now();
        let Some(c) = self.slots[i].conn.as_mut() else {
            return;
        };
        let keep_alive = c.resp.keep_alive();
        let since = match self.cfg.mode {
            Mode::Full | Mode::Resumed => c.opened,
            Mode::Keepalive | Mode::Idle | Mode::Proxy => c.sent_at,
        };
        let latency = u32::try_from(now.duration_since(since).as_micros()).unwrap_or(u32::MAX);
        let counted = match self.phase {
            Phase::Measure => now <= self.measure_end,
            Phase::IdleOpen => true,
            Phase::Warmup | Phase::IdleHold => false,
        };
        if counted {
            self.out.requests += 1;
            if self.out.latencies_us.len() < MAX_SAMPLES {
                self.out.latencies_us.push(latency);
            }
        }
        let needs_keep_alive = matches!(self.cfg.mode, Mode::Keepalive | Mode::Idle);
        if needs_keep_alive && !keep_alive {
            self.fail(i, "server does not keep the connection alive".into());
            return;
        }
        match (self.phase, self.cfg.mode) {
            (Phase::Warmup, Mode::Keepalive) => {
                c.state = State::Idle;
                self.slots[i].warm = true;
                self.warm_pending -= 1;
            }
            (Phase::Warmup, _) => {
                self.close_conn(i);
                self.slots[i].warm = true;
                self.warm_pending -= 1;
            }
            (Phase::Measure, Mode::Keepalive) => {
                if counted {
                    self.send_request(i);
                }
            }
            (Phase::Measure, _) => {
                if counted {
                    self.out.connections += 1;
                }
                self.close_conn(i);
                self.open(i);
            }
            (Phase::IdleOpen, _) => {
                c.state = State::Idle;
                c.resp.release();
                c.tls.release_buffers();
                self.out.connections += 1;
                self.in_flight -= 1;
            }
            (Phase::IdleHold, _) => {}
        }
    }

    fn fail(&mut self, i: usize, reason: String) {
        self.drop_conn(i);
        self.after_failure(i, reason);
    }

    fn after_failure(&mut self, i: usize, reason: String) {
        *self.out.failures.entry(reason).or_default() += 1;
        match self.phase {
            Phase::Warmup => {
                let s = &mut self.slots[i];
                s.attempts += 1;
                if s.attempts >= WARMUP_ATTEMPTS {
                    if !s.dead && !s.warm {
                        s.dead = true;
                        self.warm_pending -= 1;
                    }
                } else {
                    s.retry = true;
                }
            }
            Phase::Measure => self.slots[i].retry = true,
            Phase::IdleOpen => self.in_flight = self.in_flight.saturating_sub(1),
            Phase::IdleHold => {}
        }
    }

    /// Send `close_notify` and close.
    fn close_conn(&mut self, i: usize) {
        if let Some(c) = self.slots[i].conn.as_mut() {
            c.tls.close();
            let _ = c.tls.process(time_now(), |_| {});
            let _ = flush(c);
        }
        self.drop_conn(i);
    }

    fn drop_conn(&mut self, i: usize) {
        if let Some(mut c) = self.slots[i].conn.take() {
            let _ = self.poll.registry().deregister(&mut c.tcp);
        }
    }

    /// `idle`: connections still in their handshake when the opening phase timed out.
    fn abandon_in_flight(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .conn
                .as_ref()
                .is_some_and(|c| c.state != State::Idle)
            {
                self.fail(i, "timeout: idle connection not established in time".into());
            }
        }
    }
}

fn opt<T>(r: Result<T, String>, pids: &[u32]) -> Result<Option<T>, String> {
    if pids.is_empty() {
        Ok(None)
    } else {
        r.map(Some)
    }
}

fn diff(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// Write what the session has to send, until done or the socket would block.
fn flush(c: &mut Conn) -> Result<(), String> {
    while c.connected && c.writable && !c.tls.transmit().is_empty() {
        match c.tcp.write(c.tls.transmit()) {
            Ok(0) => return Err("write: zero bytes".into()),
            Ok(n) => c.tls.transmitted(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(label_io("write", &e)),
        }
    }
    Ok(())
}

/// Advance one connection after a readiness event. Reads until the socket would block (the
/// amount is bounded by the response limit and the session's bounded buffers).
fn drive(c: &mut Conn, readable: bool, writable: bool, request: &[u8]) -> Progress {
    if writable {
        c.writable = true;
    }
    if !c.connected {
        if !writable {
            return Progress::Pending;
        }
        match c.tcp.take_error() {
            Ok(Some(e)) | Err(e) => return Progress::Fail(label_io("connect", &e)),
            Ok(None) => {}
        }
        match c.tcp.peer_addr() {
            Ok(_) => c.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Progress::Pending,
            Err(e) => return Progress::Fail(label_io("connect", &e)),
        }
    }
    if readable && !c.ended {
        loop {
            let buf = c.tls.receive_buffer();
            if buf.is_empty() {
                return Progress::Fail("tls: receive buffer at its bound".into());
            }
            match c.tcp.read(buf) {
                Ok(0) => {
                    c.ended = true;
                    if let Err(e) = c.tls.received_eof() {
                        let _ = flush(c);
                        return Progress::Fail(format!("tls: {}", e.reason()));
                    }
                    break;
                }
                Ok(n) => {
                    c.tls.received(n);
                    if let Err(e) = process(c) {
                        return Progress::Fail(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Fail(label_io("read", &e)),
            }
        }
    }
    if c.state == State::Handshake && c.tls.is_established() {
        match c.tls.send(request) {
            Ok(n) if n == request.len() => {}
            Ok(_) => return Progress::Fail("send: outgoing buffer full".into()),
            Err(e) => return Progress::Fail(format!("send: {e}")),
        }
        c.state = State::Await;
        c.sent_at = Instant::now();
    }
    if let Err(e) = flush(c) {
        return Progress::Fail(e);
    }
    match c.state {
        State::Await => match c.resp.complete(c.ended) {
            Ok(true) => Progress::Done,
            Ok(false) => Progress::Pending,
            Err(e) => Progress::Fail(e.label()),
        },
        State::Handshake if c.ended => {
            Progress::Fail("closed by the server during the handshake".into())
        }
        State::Idle if c.ended => Progress::Fail("closed by the server while idle".into()),
        _ => Progress::Pending,
    }
}

/// Process received bytes: note the handshake, collect the response, note the server's
/// `close_notify`. On a TLS error the alert is flushed and the error returned.
fn process(c: &mut Conn) -> Result<(), String> {
    let state = c.state;
    let resp = &mut c.resp;
    let mut established = None;
    let mut bad = None;
    let mut closed = false;
    let r = c.tls.process(time_now(), |ev| match ev {
        Event::Established(id) => established = Some(id.resumed()),
        Event::Data(d) => {
            if state == State::Idle || state == State::Handshake {
                bad = Some("unexpected data from the server".to_string());
            } else if let Err(e) = resp.feed(d) {
                bad = Some(e.label());
            }
        }
        Event::PeerClosed | Event::Closed => closed = true,
    });
    if established.is_some() {
        c.established = established;
    }
    if closed {
        c.ended = true;
    }
    if let Err(e) = r {
        let _ = flush(c);
        return Err(format!("tls: {}", e.reason()));
    }
    bad.map_or(Ok(()), Err)
}
