//! The server's handle and start-up: bind the listeners, start the workers, and from then on
//! reload policies, read metrics and shut down.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use log::{error, info};
use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use onerecord_tls::Time;

use crate::config::{Mode, ServerConfig};
use crate::metrics::Metrics;
use crate::worker::{Shared, WAKER, Worker, listener_token};

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
    /// they started with. Returns `false` when there is no such listener, or when `mode`
    /// could not be given new resumption state under the reload trust rule (below; the
    /// error is logged and the current mode stays).
    ///
    /// The reload trust rule: a server policy that shares ticket keys or a session cache
    /// with the one it replaces (built with
    /// [`resumption_from`](onerecord_tls::ServerPolicyBuilder::resumption_from))
    /// keeps them only while client authentication trusts the same anchors and CRLs
    /// ([`client_trust_digest`](onerecord_tls::ServerPolicy::client_trust_digest)). When the
    /// CA bundle or a CRL changed, the shared state is replaced by new state, so sessions
    /// made under the previous policy do not resume: a resumed session skips certificate
    /// verification, and a client revoked by the new CRL, or whose CA was dropped, would
    /// otherwise keep resuming. State the new policy does not share (fixed ticket keys the
    /// caller loaded for a fleet) is kept: rotate those with the CRL to end resumption
    /// fleet-wide.
    pub fn reload(&self, index: usize, mode: Mode) -> bool {
        let Some(previous) = self.mode(index) else {
            return false;
        };
        let Some(mode) = apply_trust_rule(&previous, mode) else {
            return false;
        };
        self.install(index, mode);
        true
    }

    /// [`ServerHandle::reload`] every listener with the same `mode`, compared with the mode
    /// of the first listener for the reload trust rule: the listeners keep sharing one
    /// policy (one set of ticket keys and one session cache) as they did from [`start`].
    /// Returns `false` when there is no listener or the rule's rebuild failed (logged; the
    /// current modes stay).
    pub fn reload_all(&self, mode: Mode) -> bool {
        let Some(previous) = self.mode(0) else {
            return false;
        };
        let Some(mode) = apply_trust_rule(&previous, mode) else {
            return false;
        };
        for index in 0..self.shared.modes.len() {
            self.install(index, mode.clone());
        }
        true
    }

    fn install(&self, index: usize, mode: Mode) {
        let Some(slot) = self.shared.modes.get(index) else {
            return;
        };
        record_certificates(&self.shared.metrics, index, &self.local_addrs, &mode);
        match slot.write() {
            Ok(mut m) => *m = mode,
            Err(poisoned) => *poisoned.into_inner() = mode,
        }
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

/// The reload trust rule (see [`ServerHandle::reload`]): `mode` with new resumption state in
/// every server policy that shares some with a policy of `previous` whose client trust
/// differs. `None` when a policy could not be rebuilt (logged).
fn apply_trust_rule(previous: &Mode, mode: Mode) -> Option<Mode> {
    let (
        Mode::Terminate {
            policies: old_set, ..
        },
        Mode::Terminate { policies, backend },
    ) = (previous, &mode)
    else {
        return Some(mode);
    };
    let now = Time::now();
    let mut changed = false;
    let policies = policies.try_map(|p| {
        let digest = p.client_trust_digest();
        match old_set
            .policies()
            .find(|o| p.shares_resumption_with(o) && o.client_trust_digest() != digest)
        {
            Some(o) => {
                changed = true;
                p.without_resumption_from(o, now)
            }
            None => Ok(p.clone()),
        }
    });
    match policies {
        Ok(policies) => {
            if changed {
                info!(
                    "client CA bundle or CRL changed: sessions made under the previous policy \
                     will not resume"
                );
            }
            Some(Mode::Terminate {
                policies,
                backend: backend.clone(),
            })
        }
        Err(e) => {
            error!("reload not applied: the new policy cannot get new resumption state: {e}");
            None
        }
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
        wakers.push(waker.clone());
        let mut ls = Vec::new();
        for (i, std_l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(std_l);
            poll.registry()
                .register(&mut l, listener_token(i), Interest::READABLE)?;
            ls.push(l);
        }
        let mut worker = Worker::new(id, poll, ls, shared.clone(), waker.clone());
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
