//! `--mode proxy`: the local application in front of an HTTP forward proxy (the gateway's
//! egress mode). `--concurrency` plain TCP connections to the proxy, kept alive, each sending
//! the same absolute-form request (`GET http://HOST:PORT/PATH HTTP/1.1`) one after another and
//! reading each response; no TLS on this side: the proxy carries the requests over (m)TLS to
//! the partner. The phases are those of [`super::driver`]: a warm-up in which every connection
//! gets one response, then a measured window in which the CPU of the server processes
//! (`--server-pid`: the partner), of the proxy processes (`--proxy-pid`: counted on the client
//! side) and of this process is read at both ends.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::driver::{Config, Outcome};
use super::http::Response;
use super::procstat;

/// How often deadlines are checked and failed connections reopened.
const TICK: Duration = Duration::from_millis(100);
/// Attempts per connection in the warm-up before it is given up.
const WARMUP_ATTEMPTS: u32 = 3;
/// Bound on stored latencies.
const MAX_SAMPLES: usize = 1_000_000;

/// The absolute-form request for `http://{authority}{path}` (a path that does not start with
/// `/` gets one), with the partner's `Host`, as an application sends it to its HTTP proxy.
pub fn proxy_request(authority: &str, path: &str) -> Vec<u8> {
    let slash = if path.starts_with('/') { "" } else { "/" };
    format!(
        "GET http://{authority}{slash}{path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: onerecord-loadgen\r\n\r\n"
    )
    .into_bytes()
}

struct Conn {
    tcp: TcpStream,
    connected: bool,
    /// Bytes of the request written so far; `None` while no request is outstanding.
    written: Option<usize>,
    awaiting: bool,
    sent_at: Instant,
    deadline: Instant,
    resp: Response,
    ended: bool,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    warm: bool,
    attempts: u32,
    dead: bool,
    retry: bool,
}

struct Driver<'a> {
    cfg: &'a Config,
    poll: Poll,
    slots: Vec<Slot>,
    measuring: bool,
    measure_end: Instant,
    warm_pending: usize,
    out: Outcome,
}

fn label_io(what: &str, e: &io::Error) -> String {
    format!("{what}: {:?}", e.kind())
}

/// Run the proxy load of `cfg` (`cfg.addr` is the proxy, `cfg.request` the absolute-form
/// request).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    if cfg.concurrency == 0 {
        return Err("concurrency must be at least 1".into());
    }
    let mut d = Driver {
        cfg,
        poll: Poll::new().map_err(|e| format!("mio poll: {e}"))?,
        slots: (0..cfg.concurrency).map(|_| Slot::default()).collect(),
        measuring: false,
        measure_end: Instant::now(),
        warm_pending: cfg.concurrency,
        out: Outcome::default(),
    };
    d.run()?;
    Ok(d.out)
}

fn cpu(pids: &[u32]) -> Result<Option<u64>, String> {
    if pids.is_empty() {
        Ok(None)
    } else {
        procstat::cpu_micros_sum(pids).map(Some)
    }
}

fn diff(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

impl Driver<'_> {
    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.slots.len() {
            self.open(i);
        }
        let warm_limit = Instant::now() + self.cfg.io_timeout * (WARMUP_ATTEMPTS + 1);
        self.pump(warm_limit, |d| d.warm_pending == 0)?;
        if self.warm_pending > 0 {
            return Err(format!(
                "warm-up did not finish: {} of {} connections without a response; failures: {:?}",
                self.warm_pending,
                self.slots.len(),
                self.out.failures
            ));
        }
        if self.slots.iter().all(|s| s.dead) {
            return Err(format!(
                "no request succeeded; failures: {:?}",
                self.out.failures
            ));
        }
        let me = [std::process::id()];
        let (server, proxy) = (&self.cfg.server_pids, &self.cfg.proxy_pids);
        let server0 = cpu(server)?;
        let proxy0 = cpu(proxy)?;
        let me0 = procstat::cpu_micros_sum(&me).ok();
        let t0 = Instant::now();
        self.measuring = true;
        self.measure_end = t0 + self.cfg.duration;
        for i in 0..self.slots.len() {
            if self.slots[i].conn.is_some() {
                self.send_request(i);
            }
        }
        let end = self.measure_end;
        self.pump(end, |_| false)?;
        self.out.window = t0.elapsed();
        self.out.server_cpu_us = diff(server0, cpu(server)?);
        self.out.proxy_cpu_us = diff(proxy0, cpu(proxy)?);
        self.out.client_cpu_us = diff(me0, procstat::cpu_micros_sum(&me).ok());
        if !server.is_empty() {
            self.out.server_rss_end = Some(procstat::rss_bytes_sum(server)?);
        }
        for i in 0..self.slots.len() {
            self.drop_conn(i);
        }
        Ok(())
    }

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
                self.on_ready(
                    ev.token().0,
                    ev.is_readable() || ev.is_read_closed(),
                    ev.is_writable(),
                );
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.check_deadlines(now);
                for i in 0..self.slots.len() {
                    if std::mem::take(&mut self.slots[i].retry) && self.slots[i].conn.is_none() {
                        self.open(i);
                    }
                }
            }
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let late = self.slots[i]
                .conn
                .as_ref()
                .is_some_and(|c| c.awaiting && now >= c.deadline);
            if late {
                self.fail(i, "timeout: response".into());
            }
        }
    }

    fn open(&mut self, i: usize) {
        if self.measuring && Instant::now() >= self.measure_end {
            return;
        }
        let now = Instant::now();
        let conn = (|| {
            let mut tcp = TcpStream::connect(self.cfg.addr).map_err(|e| label_io("connect", &e))?;
            tcp.set_nodelay(true).map_err(|e| label_io("nodelay", &e))?;
            self.poll
                .registry()
                .register(&mut tcp, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| label_io("register", &e))?;
            Ok::<_, String>(Conn {
                tcp,
                connected: false,
                written: None,
                awaiting: false,
                sent_at: now,
                deadline: now + self.cfg.io_timeout,
                resp: Response::default(),
                ended: false,
            })
        })();
        match conn {
            Ok(c) => {
                self.slots[i].conn = Some(c);
                self.send_request(i);
            }
            Err(e) => self.after_failure(i, e),
        }
    }

    /// Start the next request on slot `i` (written as the socket allows).
    fn send_request(&mut self, i: usize) {
        let Some(c) = self.slots[i].conn.as_mut() else {
            return;
        };
        c.resp.reset();
        let now = Instant::now();
        c.written = Some(0);
        c.awaiting = true;
        c.sent_at = now;
        c.deadline = now + self.cfg.io_timeout;
        if let Err(e) = write_request(c, &self.cfg.request) {
            self.fail(i, e);
        }
    }

    fn on_ready(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(c) = self.slots.get_mut(i).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        match drive(c, readable, writable, &self.cfg.request) {
            Ok(false) => {}
            Ok(true) => self.on_response(i),
            Err(e) => self.fail(i, e),
        }
    }

    fn on_response(&mut self, i: usize) {
        let now = Instant::now();
        let Some(c) = self.slots[i].conn.as_mut() else {
            return;
        };
        c.awaiting = false;
        let keep_alive = c.resp.keep_alive() && !c.ended;
        if self.measuring {
            if now > self.measure_end {
                return;
            }
            self.out.requests += 1;
            if self.out.latencies_us.len() < MAX_SAMPLES {
                let us = now.duration_since(c.sent_at).as_micros();
                self.out
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
        if !keep_alive {
            self.fail(i, "proxy does not keep the connection alive".into());
            return;
        }
        if self.measuring {
            self.send_request(i);
        } else if !self.slots[i].warm {
            self.slots[i].warm = true;
            self.warm_pending -= 1;
        }
    }

    fn fail(&mut self, i: usize, reason: String) {
        self.drop_conn(i);
        self.after_failure(i, reason);
    }

    fn after_failure(&mut self, i: usize, reason: String) {
        *self.out.failures.entry(reason).or_default() += 1;
        let s = &mut self.slots[i];
        if self.measuring {
            s.retry = true;
            return;
        }
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

    fn drop_conn(&mut self, i: usize) {
        if let Some(mut c) = self.slots[i].conn.take() {
            let _ = self.poll.registry().deregister(&mut c.tcp);
        }
    }
}

/// Write what is left of the request, until done or the socket would block.
fn write_request(c: &mut Conn, request: &[u8]) -> Result<(), String> {
    if !c.connected {
        return Ok(());
    }
    while let Some(done) = c.written.filter(|&n| n < request.len()) {
        match c.tcp.write(request.get(done..).unwrap_or_default()) {
            Ok(0) => return Err("write: zero bytes".into()),
            Ok(n) => c.written = Some(done + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(label_io("write", &e)),
        }
    }
    Ok(())
}

/// Advance one connection: `Ok(true)` when its response is complete.
fn drive(c: &mut Conn, readable: bool, writable: bool, request: &[u8]) -> Result<bool, String> {
    if !c.connected {
        if !writable {
            return Ok(false);
        }
        match c.tcp.take_error() {
            Ok(Some(e)) | Err(e) => return Err(label_io("connect", &e)),
            Ok(None) => {}
        }
        match c.tcp.peer_addr() {
            Ok(_) => c.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(label_io("connect", &e)),
        }
    }
    write_request(c, request)?;
    if readable && !c.ended {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match c.tcp.read(&mut buf) {
                Ok(0) => {
                    c.ended = true;
                    break;
                }
                Ok(n) => {
                    if !c.awaiting {
                        return Err("unexpected data from the proxy".into());
                    }
                    c.resp
                        .feed(buf.get(..n).unwrap_or_default())
                        .map_err(|e| e.label())?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(label_io("read", &e)),
            }
        }
    }
    if !c.awaiting {
        return if c.ended {
            Err("closed by the proxy while idle".into())
        } else {
            Ok(false)
        };
    }
    c.resp.complete(c.ended).map_err(|e| e.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_absolute_form_with_the_partner_host() {
        let r = String::from_utf8(proxy_request("localhost:8443", "/x")).unwrap();
        assert!(
            r.starts_with("GET http://localhost:8443/x HTTP/1.1\r\nHost: localhost:8443\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"), "{r}");
        let r = String::from_utf8(proxy_request("p.example:1", "a")).unwrap();
        assert!(
            r.starts_with("GET http://p.example:1/a HTTP/1.1\r\n"),
            "{r}"
        );
    }
}
