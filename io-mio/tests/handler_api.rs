//! The handler API with a real client (curl) over loopback: a handler that answers later
//! (from another thread through its waker, or at a time it set), one that answers when its
//! upstream connection does (the worker's pool of kept-alive upstream connections), and the
//! callback when a connection is gone.
//!
//! The upstream is a small line server in the test ("PING x" -> "PONG x <connection number>"),
//! counting the TCP connections it accepts.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use onerecord_tls::{ServerPolicy, Time};
use onerecord_tls_mio::{
    Backend, Handler, Limits, Listener, Mode, Peer, Reply, ServerConfig, ServerHandle, Service,
    UpstreamEnd,
};
use onerecord_tls_tests::{Ca, LeafSpec};

/// The line upstream: answers each `PING x` line with `PONG x N` (N: which accepted
/// connection carried it, from 1), closes after `PING bye`. Returns its address and the
/// count of connections accepted.
fn line_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    let Some(what) = line.strip_prefix("PING ") else {
                        return;
                    };
                    if w.write_all(format!("PONG {what} {n}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    if what == "/bye" {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// What the test handler shares with the test.
#[derive(Default)]
struct Seen {
    closed: AtomicUsize,
}

struct Relay {
    upstream: SocketAddr,
    seen: Arc<Seen>,
}

impl Service for Relay {
    fn accept(&self, _: &Peer<'_>) -> Option<Box<dyn Handler>> {
        Some(Box::new(RelayHandler {
            upstream: self.upstream,
            seen: self.seen.clone(),
            head: Vec::new(),
            line: Vec::new(),
            later: None,
        }))
    }
}

/// One request at a time: `GET /path`; `/later` is answered from another thread, `/timer`
/// at a time set by the handler, `/down` goes to a port nobody listens on, anything else
/// through the upstream.
struct RelayHandler {
    upstream: SocketAddr,
    seen: Arc<Seen>,
    head: Vec<u8>,
    line: Vec<u8>,
    later: Option<Arc<std::sync::Mutex<Option<String>>>>,
}

fn respond(reply: &mut Reply, status: &str, body: &str) {
    reply.write(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

impl Handler for RelayHandler {
    fn on_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.head.extend_from_slice(data);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
        self.head.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        match path.as_str() {
            "/later" => {
                let slot = Arc::new(std::sync::Mutex::new(None));
                self.later = Some(slot.clone());
                let waker = reply.waker();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    *slot.lock().unwrap() = Some("answered from another thread".into());
                    waker.wake();
                });
            }
            "/timer" => reply.wake_at(Some(Instant::now() + Duration::from_millis(50))),
            "/down" => {
                // A port that was free a moment ago.
                let free = TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                reply.upstream_open(free, false);
            }
            _ => {
                reply.upstream_open(self.upstream, false);
                reply.upstream_write(format!("PING {path}\n").as_bytes());
            }
        }
    }

    fn on_wake(&mut self, reply: &mut Reply) {
        match self.later.take() {
            Some(slot) => {
                let answer = slot.lock().unwrap().take().unwrap_or_default();
                respond(reply, "200 OK", &answer);
            }
            None => respond(reply, "200 OK", "answered at the time set"),
        }
    }

    fn on_upstream_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.line.extend_from_slice(data);
        if let Some(nl) = self.line.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.line[..nl]).into_owned();
            self.line.clear();
            let reused = reply.upstream_reused() == Some(true);
            reply.upstream_release(true);
            respond(reply, "200 OK", &format!("{line} reused={reused}"));
        }
    }

    fn on_upstream_closed(&mut self, end: UpstreamEnd, reply: &mut Reply) {
        respond(reply, "502 Bad Gateway", &format!("upstream {end}"));
    }

    fn on_closed(&mut self) {
        self.seen.closed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Setup {
    server: ServerHandle,
    ca_file: tempfile::NamedTempFile,
    seen: Arc<Seen>,
    accepted: Arc<AtomicUsize>,
}

fn setup() -> Setup {
    let ca = Ca::new("Handler API CA");
    let server_id = ca.issue(&LeafSpec::server().around_wall_clock());
    let policy = ServerPolicy::builder(server_id.chain.clone(), server_id.key())
        .build(Time::now())
        .unwrap();
    let (upstream, accepted) = line_upstream();
    let seen = Arc::new(Seen::default());
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: Mode::Terminate {
                policies: policy.into_set(),
                backend: Backend::Service(Arc::new(Relay {
                    upstream,
                    seen: seen.clone(),
                })),
            },
        }],
        // One worker: one pool, so reuse is deterministic.
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(ca.pem().as_bytes()).unwrap();
    Setup {
        server,
        ca_file,
        seen,
        accepted,
    }
}

/// curl fetching `paths` over one kept-alive connection; the bodies, in order.
fn curl(s: &Setup, paths: &[&str]) -> Vec<String> {
    let port = s.server.local_addrs()[0].port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(s.ca_file.path())
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next")
                .args(["--cacert"])
                .arg(s.ca_file.path())
                .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
        }
        cmd.args(["-w", "\n", &format!("https://localhost:{port}{p}")]);
    }
    let out = cmd.output().expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    assert_eq!(lines.len(), paths.len(), "one body per request: {stdout:?}");
    lines
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn upstream_connections_are_pooled_across_requests_and_client_connections() {
    let s = setup();
    let first = curl(&s, &["/a", "/b", "/c"]);
    assert_eq!(
        first,
        [
            "PONG /a 1 reused=false",
            "PONG /b 1 reused=true",
            "PONG /c 1 reused=true"
        ]
    );
    // A second client connection gets the same upstream connection from the pool.
    let second = curl(&s, &["/d"]);
    assert_eq!(second, ["PONG /d 1 reused=true"]);
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    // Workers publish their counters after each round of events.
    wait_for("the counters", || {
        let c = s.server.metrics().snapshot().counters;
        (c.upstream_connects, c.upstream_reuses) == (1, 3)
    });
    wait_for("on_closed for both connections", || {
        s.seen.closed.load(Ordering::SeqCst) == 2
    });
}

#[test]
fn an_idle_pooled_connection_the_upstream_closed_is_not_lent_again() {
    let s = setup();
    // The upstream closes its connection after answering /bye: the pool sees the end of
    // stream while the connection is idle and drops it.
    assert_eq!(curl(&s, &["/bye"]), ["PONG /bye 1 reused=false"]);
    // The end of stream reaches the worker within a poll; give it time.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(curl(&s, &["/x"]), ["PONG /x 2 reused=false"]);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_handler_answers_later_from_another_thread_or_its_timer() {
    let s = setup();
    let bodies = curl(&s, &["/later", "/timer", "/later"]);
    assert_eq!(
        bodies,
        [
            "answered from another thread",
            "answered at the time set",
            "answered from another thread"
        ]
    );
    wait_for("on_closed", || s.seen.closed.load(Ordering::SeqCst) == 1);
}

#[test]
fn an_upstream_that_cannot_be_reached_is_reported_to_the_handler() {
    let s = setup();
    let bodies = curl(&s, &["/down", "/a"]);
    assert!(
        bodies[0].starts_with("upstream unreachable: "),
        "got {:?}",
        bodies[0]
    );
    // The connection goes on: the next request is served.
    assert_eq!(bodies[1], "PONG /a 1 reused=false");
    wait_for("the error counter", || {
        s.server.metrics().snapshot().counters.upstream_errors >= 1
    });
}
