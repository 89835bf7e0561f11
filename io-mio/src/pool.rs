//! A worker's pool of kept-alive upstream connections, lent to handlers
//! ([`crate::Reply::upstream_open`]) and given back when an exchange is complete.
//!
//! Each pooled connection has a slot whose key is its poll token (side
//! [`Side::Upstream`]), registered once for its whole life: lending it to another client
//! connection changes the slot's owner, not the registration, so reuse costs no system call.
//! An event on a lent connection goes to its owner; on an idle one it means the upstream
//! closed it or sent something unasked, and it is closed. Idle connections are kept per
//! upstream address, newest last, at most [`Limits::upstream_idle_max`] each, and closed after
//! [`Limits::upstream_idle_timeout`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry};

use crate::config::Limits;
use crate::conn::Sock;
use crate::metrics::Counters;
use crate::table::{Key, Side, Slab};

/// An upstream connection lent to a client connection.
pub(crate) struct Lent {
    pub(crate) sock: Sock,
    pub(crate) slot: Key,
    pub(crate) addr: SocketAddr,
    /// It came from the pool (an earlier exchange used it).
    pub(crate) reused: bool,
}

struct Slot {
    addr: SocketAddr,
    /// The client connection it is lent to; `None` while idle.
    owner: Option<Key>,
    /// The connection while idle, and since when.
    idle: Option<(Sock, Instant)>,
}

/// What an event on an upstream token concerns.
pub(crate) enum Owner {
    /// The client connection the upstream connection is lent to.
    Conn(Key),
    /// Nobody (idle, handled here, or stale).
    None,
}

#[derive(Default)]
pub(crate) struct Pool {
    slots: Slab<Slot>,
    idle: HashMap<SocketAddr, Vec<Key>>,
    /// When idle connections were last checked for their timeout.
    swept: Option<Instant>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Lend `owner` an upstream connection to `addr`: the newest idle one, unless `fresh`,
    /// else a new one (connecting, non-blocking).
    pub(crate) fn lend(
        &mut self,
        addr: SocketAddr,
        fresh: bool,
        owner: Key,
        registry: &Registry,
        counters: &mut Counters,
    ) -> io::Result<Lent> {
        if !fresh && let Some(list) = self.idle.get_mut(&addr) {
            while let Some(k) = list.pop() {
                if let Some(slot) = self.slots.get_mut(k)
                    && let Some((sock, _)) = slot.idle.take()
                {
                    slot.owner = Some(owner);
                    counters.upstream_reuses += 1;
                    return Ok(Lent {
                        sock,
                        slot: k,
                        addr,
                        reused: true,
                    });
                }
            }
        }
        let mut stream = TcpStream::connect(addr)?;
        let slot = self
            .slots
            .insert_with(|_| Slot {
                addr,
                owner: Some(owner),
                idle: None,
            })
            .ok_or_else(|| io::Error::other("upstream table full"))?;
        if let Err(e) = registry.register(
            &mut stream,
            slot.token(Side::Upstream),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.slots.remove(slot);
            return Err(e);
        }
        counters.upstream_connects += 1;
        Ok(Lent {
            sock: Sock::new(stream, false),
            slot,
            addr,
            reused: false,
        })
    }

    /// Take back a lent connection: idle in the pool when `reuse` and it is sound, closed
    /// otherwise. A full pool closes its oldest idle connection for it.
    pub(crate) fn give_back(
        &mut self,
        lent: Lent,
        reuse: bool,
        now: Instant,
        limits: &Limits,
        registry: &Registry,
    ) {
        let mut lent = lent;
        if !(reuse && limits.upstream_idle_max > 0 && lent.sock.reusable()) {
            self.close(lent, registry);
            return;
        }
        let list = self.idle.entry(lent.addr).or_default();
        let oldest = if list.len() >= limits.upstream_idle_max {
            Some(list.remove(0))
        } else {
            None
        };
        list.push(lent.slot);
        if let Some(slot) = self.slots.get_mut(lent.slot) {
            slot.owner = None;
            slot.idle = Some((lent.sock, now));
        }
        if let Some(k) = oldest {
            self.close_slot(k, registry);
        }
    }

    /// Close a lent connection.
    pub(crate) fn close(&mut self, mut lent: Lent, registry: &Registry) {
        let _ = registry.deregister(lent.sock.stream_mut());
        self.slots.remove(lent.slot);
    }

    /// An event on upstream slot `slot`: who it is for. An event that says an idle
    /// connection was closed or sent something closes it.
    pub(crate) fn event(
        &mut self,
        slot: Key,
        event: &mio::event::Event,
        registry: &Registry,
    ) -> Owner {
        let Some(s) = self.slots.get_mut(slot) else {
            return Owner::None;
        };
        if let Some(owner) = s.owner {
            return Owner::Conn(owner);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            let addr = s.addr;
            if let Some(list) = self.idle.get_mut(&addr) {
                list.retain(|k| *k != slot);
            }
            self.close_slot(slot, registry);
        }
        Owner::None
    }

    /// Close idle connections older than the idle timeout (checked at most once a second),
    /// or all of them (`all`, at shutdown).
    pub(crate) fn sweep(&mut self, now: Instant, limits: &Limits, registry: &Registry, all: bool) {
        if !all
            && self
                .swept
                .is_some_and(|t| now < t + std::time::Duration::from_secs(1))
        {
            return;
        }
        self.swept = Some(now);
        let mut expired = Vec::new();
        for list in self.idle.values_mut() {
            list.retain(|k| {
                let old = self
                    .slots
                    .get_mut(*k)
                    .and_then(|s| s.idle.as_ref())
                    .is_none_or(|(_, since)| all || now >= *since + limits.upstream_idle_timeout);
                if old {
                    expired.push(*k);
                }
                !old
            });
        }
        self.idle.retain(|_, l| !l.is_empty());
        for k in expired {
            self.close_slot(k, registry);
        }
    }

    fn close_slot(&mut self, k: Key, registry: &Registry) {
        if let Some(mut s) = self.slots.remove(k)
            && let Some((sock, _)) = s.idle.as_mut()
        {
            let _ = registry.deregister(sock.stream_mut());
        }
    }
}
