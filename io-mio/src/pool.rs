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
//!
//! A TLS upstream connection ([`crate::Reply::upstream_open_tls`]) keeps its client session
//! while idle: its destination is the address, the server name and the policy, so a
//! connection made with one client certificate never serves a request meant for another.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry};
use onerecord_tls::{ClientPolicy, Now, Session};

use crate::config::Limits;
use crate::conn::Sock;
use crate::metrics::Counters;
use crate::table::{Key, Side, Slab};

/// Where a pooled connection goes: an address, and for TLS the server name and the policy
/// ([`ClientPolicy::id`]) it was made under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dest {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<(String, usize)>,
}

impl Dest {
    /// The destination as metrics name it: `server_name:port` for TLS, `ip:port` otherwise.
    pub(crate) fn label(&self) -> String {
        match &self.tls {
            Some((name, _)) => format!("{name}:{}", self.addr.port()),
            None => self.addr.to_string(),
        }
    }
}

/// The client session of a TLS upstream connection.
pub(crate) struct TlsUp {
    pub(crate) session: Session,
    /// The handler was told the handshake completed.
    pub(crate) told: bool,
}

/// An upstream connection lent to a client connection.
pub(crate) struct Lent {
    pub(crate) sock: Sock,
    pub(crate) slot: Key,
    pub(crate) dest: Dest,
    /// It came from the pool (an earlier exchange used it).
    pub(crate) reused: bool,
    /// The TLS session, for a TLS upstream.
    pub(crate) tls: Option<Box<TlsUp>>,
}

struct Idle {
    sock: Sock,
    tls: Option<Box<TlsUp>>,
    since: Instant,
}

struct Slot {
    dest: Dest,
    /// The client connection it is lent to; `None` while idle.
    owner: Option<Key>,
    /// The connection while idle.
    idle: Option<Idle>,
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
    idle: HashMap<Dest, Vec<Key>>,
    /// When idle connections were last checked for their timeout.
    swept: Option<Instant>,
    /// The idle connections changed since the gauge was last read ([`Pool::idle_by_label`]).
    pub(crate) changed: bool,
}

impl Pool {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Lend `owner` an upstream connection to `dest` (a TLS one under `policy` when `dest`
    /// names a server): the newest idle one, unless `fresh`, else a new one (connecting,
    /// non-blocking; for TLS with a new client session, resuming when the policy's cache can).
    pub(crate) fn lend(
        &mut self,
        dest: Dest,
        policy: Option<&ClientPolicy>,
        fresh: bool,
        owner: Key,
        registry: &Registry,
        counters: &mut Counters,
    ) -> io::Result<Lent> {
        if !fresh && let Some(list) = self.idle.get_mut(&dest) {
            while let Some(k) = list.pop() {
                if let Some(slot) = self.slots.get_mut(k)
                    && let Some(idle) = slot.idle.take()
                {
                    slot.owner = Some(owner);
                    counters.upstream_reuses += 1;
                    self.changed = true;
                    return Ok(Lent {
                        sock: idle.sock,
                        slot: k,
                        dest,
                        reused: true,
                        tls: idle.tls,
                    });
                }
            }
        }
        let tls = match (&dest.tls, policy) {
            (Some((name, _)), Some(policy)) => {
                let session = Session::client(policy, name, Now::system())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                Some(Box::new(TlsUp {
                    session,
                    told: false,
                }))
            }
            (None, _) => None,
            (Some(_), None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a TLS upstream needs a client policy",
                ));
            }
        };
        let addr = dest.addr;
        let mut stream = TcpStream::connect(addr)?;
        let slot = self
            .slots
            .insert_with(|_| Slot {
                dest: dest.clone(),
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
            dest,
            reused: false,
            tls,
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
        let tls_sound = lent.tls.as_ref().is_none_or(|t| {
            let s = &t.session;
            s.is_established()
                && !s.close_sent()
                && !s.peer_closed()
                && !s.is_terminal()
                && s.transmit().is_empty()
        });
        if !(reuse && tls_sound && limits.upstream_idle_max > 0 && lent.sock.reusable()) {
            self.close(lent, registry);
            return;
        }
        if let Some(t) = lent.tls.as_mut() {
            t.session.release_buffers();
        }
        let list = self.idle.entry(lent.dest.clone()).or_default();
        let oldest = if list.len() >= limits.upstream_idle_max {
            Some(list.remove(0))
        } else {
            None
        };
        list.push(lent.slot);
        self.changed = true;
        if let Some(slot) = self.slots.get_mut(lent.slot) {
            slot.owner = None;
            slot.idle = Some(Idle {
                sock: lent.sock,
                tls: lent.tls,
                since: now,
            });
        }
        if let Some(k) = oldest {
            self.close_slot(k, registry);
        }
    }

    /// Close a lent connection (a TLS one with `close_notify`, written if the socket takes
    /// it at once).
    pub(crate) fn close(&mut self, mut lent: Lent, registry: &Registry) {
        say_goodbye(&mut lent.sock, lent.tls.as_deref_mut());
        let _ = registry.deregister(lent.sock.stream_mut());
        self.slots.remove(lent.slot);
    }

    /// Idle connections per destination label (see [`Dest::label`]).
    pub(crate) fn idle_by_label(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (dest, list) in &self.idle {
            if !list.is_empty() {
                *out.entry(dest.label()).or_default() += list.len() as u64;
            }
        }
        out
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
            let dest = s.dest.clone();
            if let Some(list) = self.idle.get_mut(&dest) {
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
                    .is_none_or(|i| all || now >= i.since + limits.upstream_idle_timeout);
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
            && let Some(idle) = s.idle.as_mut()
        {
            self.changed = true;
            say_goodbye(&mut idle.sock, idle.tls.as_deref_mut());
            let _ = registry.deregister(idle.sock.stream_mut());
        }
    }
}

/// Before closing a TLS upstream connection: `close_notify`, if the socket takes it now.
fn say_goodbye(sock: &mut Sock, tls: Option<&mut TlsUp>) {
    let Some(t) = tls else {
        return;
    };
    if !t.session.is_established() || t.session.close_sent() || t.session.is_terminal() {
        return;
    }
    t.session.close();
    let _ = t.session.process(Now::system(), |_| {});
    let out = t.session.transmit();
    if !out.is_empty() {
        let _ = sock.stream_mut().write(out);
    }
}
