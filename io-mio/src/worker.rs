//! A worker: one thread with its own `mio::Poll`, its share of the listening sockets, a
//! table of connections and their deadlines. It accepts (with the connection cap), turns
//! readiness into wakeups of connections ([`crate::conn::drive`]), fires deadlines, publishes
//! counters, and drains on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Poll, Token};

use crate::audit::End;
use crate::config::{Limits, Mode};
use crate::conn::{Conn, Ctx, Done, SCRATCH, Wake, drive};
use crate::metrics::{Counters, Metrics};
use crate::pool::{Owner, Pool};
use crate::service::WakeQueue;
use crate::table::{Deadlines, Key, RESERVED, Side, Slab};

/// The token of the worker's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// The pool slot an upstream token names (to check that the connection still holds it).
fn key_slot(t: Token) -> Option<Key> {
    Key::from_token(t).map(|(k, _)| k)
}

/// The token of listener `i`.
pub(crate) fn listener_token(i: usize) -> Token {
    Token(RESERVED + i)
}

/// What the handle and every worker share.
pub(crate) struct Shared {
    /// The mode of each listener, for new connections.
    pub(crate) modes: Vec<RwLock<Mode>>,
    /// Set by [`crate::ServerHandle::shutdown`].
    pub(crate) shutdown: AtomicBool,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
}

pub(crate) struct Worker {
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
    /// Kept-alive upstream connections lent to handlers.
    pool: Pool,
    /// Connections whose handlers were woken from other threads.
    wake: Arc<WakeQueue>,
    /// The read buffer for plain sides and upstreams (see [`Ctx::scratch`]).
    scratch: Vec<u8>,
    /// When the pool's idle gauge was last published.
    idle_published: Option<Instant>,
}

impl Worker {
    /// Worker `id`, polling `poll` with `listeners` registered in it (listener `i` under
    /// [`listener_token`]`(i)`).
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listeners: Vec<TcpListener>,
        shared: Arc<Shared>,
        waker: Arc<mio::Waker>,
    ) -> Self {
        let counters = shared.metrics.worker();
        Self {
            id,
            poll,
            listeners: listeners.into_iter().map(Some).collect(),
            shared,
            conns: Slab::new(),
            deadlines: Deadlines::new(),
            counters,
            local: Counters::default(),
            dirty: Vec::new(),
            draining: None,
            accept_retry: None,
            accept_warned: None,
            pool: Pool::new(),
            wake: Arc::new(WakeQueue::new(waker)),
            scratch: vec![0; SCRATCH],
            idle_published: None,
        }
    }

    /// The event loop, until shutdown has drained every connection.
    pub(crate) fn run(&mut self) {
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
                    for key in self.wake.take() {
                        if let Some(c) = self.conns.get_mut(key) {
                            c.woken = true;
                            if !c.queued {
                                c.queued = true;
                                self.dirty.push(key);
                            }
                        }
                    }
                    continue;
                }
                if t.0 >= RESERVED {
                    self.accept(t.0 - RESERVED);
                    continue;
                }
                let Some((mut key, side)) = Key::from_token(t) else {
                    continue;
                };
                if side == Side::Upstream {
                    match self.pool.event(key, ev, self.poll.registry()) {
                        Owner::Conn(owner) => key = owner,
                        Owner::None => continue,
                    }
                }
                let Some(c) = self.conns.get_mut(key) else {
                    continue; // stale token of a closed connection
                };
                if let Some(s) = c.sock(side, key_slot(t)) {
                    s.ready(ev);
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
        // The pool's gauge, when it changed, at most once a second (the loop wakes at least
        // that often).
        let now = Instant::now();
        let idle = if self.pool.changed
            && self
                .idle_published
                .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            self.pool.changed = false;
            self.idle_published = Some(now);
            Some(self.pool.idle_by_label())
        } else {
            None
        };
        if self.local == Counters::default() && idle.is_none() {
            return;
        }
        if let Ok(mut c) = self.counters.lock() {
            c.add(&std::mem::take(&mut self.local));
            if let Some(idle) = idle {
                c.upstream_idle = idle;
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.publish();
        let all = self.draining.is_some();
        self.pool
            .sweep(now, &self.shared.limits, self.poll.registry(), all);
        if self.shared.shutdown.load(Ordering::Relaxed) && self.draining.is_none() {
            self.begin_drain(now);
        }
        if let Some(d) = self.draining
            && now >= d
        {
            for key in self.conns.keys() {
                if let Some(c) = self.conns.get_mut(key) {
                    c.ended(End::DrainTimeout);
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
                c.begin_drain();
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
                crate::audit::log_over_capacity(remote, self.shared.limits.max_connections);
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
        let prepared = Conn::prepare(mode, stream)?;
        let now = Instant::now();
        let key = self
            .conns
            .insert_with(|key| Conn::new(key, listener, prepared, remote, now))
            .ok_or_else(|| io::Error::other("connection table full"))?;
        let Some(c) = self.conns.get_mut(key) else {
            return Err(io::Error::other("connection vanished"));
        };
        if let Err(e) = c.register(self.poll.registry()) {
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
        c.log_close();
        c.closed(self.poll.registry(), &mut self.pool);
        c.deregister(self.poll.registry());
        // The TLS bytes were counted as they passed (see `conn::drive`).
        let mut stats = c.stats().clone();
        stats.tls_bytes_received = 0;
        stats.tls_bytes_sent = 0;
        self.local.sessions.add(&stats);
        self.local.closed += 1;
        self.shared.metrics.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Advance one connection; remove it when it is finished.
    fn step(&mut self, key: Key, wake: Wake) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            pool: &mut self.pool,
            counters: &mut self.local,
            limits: &self.shared.limits,
            wake: &self.wake,
            scratch: &mut self.scratch,
        };
        let mut done = drive(c, wake, now, &mut ctx);
        if let Done::ConnectUpstream(addr) = done {
            c.connect_upstream(ctx.registry, addr, ctx.counters);
            // Drive again now that the upstream exists (its events will follow).
            done = drive(c, Wake::Io, now, &mut ctx);
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
            // Asked once per connection, answered in `step`.
            Done::Wait | Done::ConnectUpstream(_) => self.schedule(key, now),
        }
    }

    fn schedule(&mut self, key: Key, now: Instant) {
        let limits = &self.shared.limits;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = c.next_deadline(now, limits);
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
