//! Host name resolution off the workers: a small pool of helper threads runs the system
//! resolver (`getaddrinfo`, which blocks), results are cached briefly, and a connection that
//! waits is woken through its [`ReplyWaker`] when the answer is in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::http_proxy::Dest;
use crate::service::ReplyWaker;

/// Helper threads running lookups.
const THREADS: usize = 2;

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Most cached or pending destinations; beyond it, expired entries are dropped first and
/// then the whole cache.
const MAX_ENTRIES: usize = 4096;

/// A lookup's result: the address to connect to, or why there is none.
pub(crate) type Lookup = Result<SocketAddr, String>;

pub(crate) struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<HashMap<Dest, Entry>>,
    ttl: Duration,
    jobs: Mutex<Sender<Dest>>,
}

enum Entry {
    Pending(Vec<ReplyWaker>),
    Done { until: Instant, result: Lookup },
}

impl Resolver {
    /// A resolver caching answers for `ttl`, with its helper threads started.
    pub(crate) fn new(ttl: Duration) -> Self {
        let (tx, rx) = channel::<Dest>();
        let inner = Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            ttl,
            jobs: Mutex::new(tx),
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let rx = Arc::clone(&rx);
            let weak = Arc::downgrade(&inner);
            let _ = std::thread::Builder::new()
                .name(format!("onerecord-dns-{i}"))
                .spawn(move || helper(rx, weak));
        }
        Self { inner }
    }

    /// The address of `dest` if known (an IP literal, or a fresh cached answer); otherwise a
    /// lookup is started (or joined) and `waker` woken when it is done: call again then.
    pub(crate) fn lookup(&self, dest: &Dest, waker: impl FnOnce() -> ReplyWaker) -> Option<Lookup> {
        if let Ok(ip) = dest.host.parse::<IpAddr>() {
            return Some(Ok(SocketAddr::new(ip, dest.port)));
        }
        let now = Instant::now();
        let Ok(mut entries) = self.inner.entries.lock() else {
            return Some(Err("resolver unavailable".into()));
        };
        match entries.get_mut(dest) {
            Some(Entry::Done { until, result }) if *until > now => return Some(result.clone()),
            Some(Entry::Pending(wakers)) => {
                wakers.push(waker());
                return None;
            }
            _ => {}
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| matches!(e, Entry::Done { until, .. } if *until > now));
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, e| matches!(e, Entry::Pending(_)));
            }
        }
        let sent = self
            .inner
            .jobs
            .lock()
            .map(|tx| tx.send(dest.clone()).is_ok())
            .unwrap_or(false);
        if !sent {
            return Some(Err("resolver unavailable".into()));
        }
        entries.insert(dest.clone(), Entry::Pending(vec![waker()]));
        None
    }
}

/// One helper thread: resolve what comes until the resolver is gone.
fn helper(rx: Arc<Mutex<Receiver<Dest>>>, inner: Weak<Inner>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(dest) = job else { return };
        let result = resolve(&dest);
        let Some(inner) = inner.upgrade() else { return };
        let ttl = if result.is_ok() {
            inner.ttl
        } else {
            NEGATIVE_TTL.min(inner.ttl)
        };
        let wakers = match inner.entries.lock() {
            Ok(mut entries) => {
                let done = Entry::Done {
                    until: Instant::now() + ttl,
                    result,
                };
                match entries.insert(dest, done) {
                    Some(Entry::Pending(w)) => w,
                    _ => Vec::new(),
                }
            }
            Err(_) => return,
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The system resolver's first address for `dest`.
fn resolve(dest: &Dest) -> Lookup {
    match (dest.host.as_str(), dest.port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| "no address".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Reply;

    fn detached() -> ReplyWaker {
        Reply::default().waker()
    }

    #[test]
    fn an_ip_literal_needs_no_lookup() {
        let r = Resolver::new(Duration::from_secs(30));
        let d = Dest {
            host: "::1".into(),
            port: 8443,
        };
        let got = r.lookup(&d, || panic!("no waker needed"));
        assert_eq!(got, Some(Ok("[::1]:8443".parse().unwrap())));
    }

    #[test]
    fn a_name_is_looked_up_off_thread_then_cached() {
        let r = Resolver::new(Duration::from_secs(30));
        let d = Dest {
            host: "localhost".into(),
            port: 1,
        };
        let mut answer = r.lookup(&d, detached);
        let deadline = Instant::now() + Duration::from_secs(10);
        while answer.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            answer = r.lookup(&d, detached);
        }
        let addr = answer
            .expect("resolved within 10 s")
            .expect("localhost resolves");
        assert!(addr.ip().is_loopback(), "{addr}");
        // Cached: answered at once.
        assert_eq!(r.lookup(&d, || panic!("cached")), Some(Ok(addr)));
    }
}
