//! The `--metrics` HTTP endpoint: `GET /metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks for it), `/healthz` (the process is alive) and `/readyz` (listening with a
//! loaded policy; 503 while draining).
//!
//! One thread runs a small `mio` event loop, so a client that connects and sends nothing (or
//! reads slowly) never delays another scrape: each connection has a deadline
//! ([`CONN_TIMEOUT`]), the request head is bounded ([`MAX_REQUEST`]), and at most
//! [`MAX_CONNS`] are open (at the cap the oldest gives way to the newest). One request per
//! connection (`Connection: close`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::exposition::Status;

/// How long one connection may take to send its request and read the answer.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (`431` beyond).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most connections open at once.
pub const MAX_CONNS: usize = 64;

const LISTENER: Token = Token(0);

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The answer, once the request is complete, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
}

/// Bind `addr` (errors are the caller's: a configuration error) and serve from a thread.
pub fn serve(addr: SocketAddr, status: Arc<Status>) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || run(poll, listener, status))?;
    Ok(())
}

fn run(mut poll: Poll, listener: TcpListener, status: Arc<Status>) {
    let mut events = Events::with_capacity(128);
    let mut conns: BTreeMap<usize, Conn> = BTreeMap::new();
    let mut next = 1usize;
    loop {
        let now = Instant::now();
        let timeout = conns
            .values()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min();
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!("metrics endpoint: poll failed: {e}");
            return;
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(&poll, &listener, &mut conns, &mut next);
            } else if let Some(c) = conns.get_mut(&ev.token().0)
                && advance(c, &status)
            {
                close(&poll, &mut conns, ev.token().0);
            }
        }
        let now = Instant::now();
        let late: Vec<usize> = conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            close(&poll, &mut conns, k);
        }
    }
}

fn accept(
    poll: &Poll,
    listener: &TcpListener,
    conns: &mut BTreeMap<usize, Conn>,
    next: &mut usize,
) {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: the gateway's own listeners matter more; the
                // next readiness event retries.
                warn!("metrics endpoint: accept failed: {e}");
                return;
            }
        };
        if conns.len() >= MAX_CONNS {
            // The oldest connection gives way: an idle client cannot lock scrapes out.
            if let Some(&oldest) = conns.keys().next() {
                close(poll, conns, oldest);
            }
        }
        let key = *next;
        *next = next.wrapping_add(1).max(1);
        if poll
            .registry()
            .register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            continue;
        }
        // Registration announces what is already there on the next poll.
        conns.insert(
            key,
            Conn {
                stream,
                deadline: Instant::now() + CONN_TIMEOUT,
                request: Vec::new(),
                response: None,
            },
        );
    }
}

fn close(poll: &Poll, conns: &mut BTreeMap<usize, Conn>, key: usize) {
    if let Some(mut c) = conns.remove(&key) {
        let _ = poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(Shutdown::Both);
    }
}

/// Read what is there, answer once the request is complete, write what fits. `true` when
/// the connection is finished.
fn advance(c: &mut Conn, status: &Arc<Status>) -> bool {
    if c.response.is_none() {
        let mut buf = [0u8; 2048];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    c.request.extend_from_slice(&buf[..n]);
                    if c.request.len() > MAX_REQUEST {
                        c.response = Some((
                            plain(
                                431,
                                "Request Header Fields Too Large",
                                "request too large\n",
                            ),
                            0,
                        ));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        if c.response.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&c.request) {
                Ok(httparse::Status::Partial) => return false,
                Ok(httparse::Status::Complete(_)) => c.response = Some((answer(&req, status), 0)),
                Err(_) => c.response = Some((plain(400, "Bad Request", "bad request\n"), 0)),
            }
        }
    }
    let Some((out, written)) = c.response.as_mut() else {
        return false;
    };
    while *written < out.len() {
        match c.stream.write(&out[*written..]) {
            Ok(0) => return true,
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    true
}

fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    extra: &str,
    body: &str,
    head: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    response(code, reason, "text/plain; charset=utf-8", "", body, false)
}

fn answer(req: &httparse::Request, status: &Arc<Status>) -> Vec<u8> {
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let head = method == "HEAD";
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" | "/healthz" | "/readyz" if method != "GET" && !head => response(
            405,
            "Method Not Allowed",
            TEXT,
            "Allow: GET, HEAD\r\n",
            "method not allowed\n",
            false,
        ),
        "/metrics" => {
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            });
            let (body, content_type) = status.render(openmetrics);
            response(200, "OK", content_type, "", &body, head)
        }
        "/healthz" => response(200, "OK", TEXT, "", "ok\n", head),
        "/readyz" if status.is_ready() => response(200, "OK", TEXT, "", "ready\n", head),
        "/readyz" => response(
            503,
            "Service Unavailable",
            TEXT,
            "",
            "not ready (starting or draining)\n",
            head,
        ),
        _ => response(
            404,
            "Not Found",
            TEXT,
            "",
            "not found: try /metrics, /healthz, /readyz\n",
            head,
        ),
    }
}
