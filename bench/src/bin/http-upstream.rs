//! `http-upstream`: the plain HTTP/1.1 upstream behind the reverse proxies that
//! `scripts/bench-peers.sh` compares (nginx with `proxy_pass`, the gateway in HTTP mode). One
//! mio event loop; every request gets the same small `200` response with `Content-Length`, and
//! connections stay open (HTTP/1.1 keep-alive) so that a proxy can pool them. It is meant to
//! cost the proxies under test as little as it can, so that their CPU is what is compared.
//!
//!     http-upstream --listen 127.0.0.1:0 [--stats FILE] [--require-header NAME]...
//!
//! Prints `http-upstream listening on ADDR` on stderr. With `--stats` it rewrites FILE (at
//! most ten times a second, when something changed) with one JSON object:
//! `{"connections": N, "requests": M}`, the TCP connections accepted and requests answered so
//! far, so the script can show how many upstream connections each proxy opened. Request heads
//! are parsed with `httparse`; a request body framed by `Content-Length` is read and dropped;
//! `Transfer-Encoding` in a request, a malformed head or one over 16 KiB gets `400` and a
//! close. With `--require-header`, a request without a non-empty header of that name gets
//! `400` (the connection stays open), so a proxy that does not pass the client certificate
//! shows up as failed requests instead of cheap ones. Runs until killed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// The response body (the same bytes the TLS servers of `scripts/bench-peers.sh` answer).
const BODY: &str = "{\"status\":\"ok\"}\n";
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed at most per request.
const MAX_HEADERS: usize = 64;
/// Open connections at most; beyond it new connections are closed at once.
const MAX_CONNECTIONS: usize = 50_000;
/// Unsent response bytes above which a connection is not read until they are written.
const MAX_PENDING: usize = 256 * 1024;
/// Connections without traffic for this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const LISTENER: Token = Token(usize::MAX);

/// Plain HTTP/1.1 keep-alive upstream answering a fixed `200` (benchmark of reverse proxies).
#[derive(Parser, Debug)]
#[command(name = "http-upstream", version, about)]
struct Cli {
    /// Address to listen on (port 0: the kernel picks one; see the log line).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Rewrite this file with the connections accepted and requests answered so far.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Answer `400` to a request without a non-empty header of this name (repeatable).
    #[arg(long, value_name = "NAME")]
    require_header: Vec<String>,
}

/// One client (proxy) connection.
struct Conn {
    tcp: TcpStream,
    ex: Exchange,
    last: Instant,
}

/// The bytes of one connection, without the socket.
#[derive(Default)]
struct Exchange {
    /// Received bytes not yet parsed.
    input: Vec<u8>,
    /// Request body bytes still to be read and dropped.
    body_left: u64,
    /// Response bytes not yet written.
    output: Vec<u8>,
    /// Close once `output` is written.
    close_after_write: bool,
}

/// What one request head asks for.
enum Head {
    /// A well-formed request: head length, body length, close after the response, HEAD, and
    /// whether a required header is missing.
    Request {
        len: usize,
        body: u64,
        close: bool,
        head_only: bool,
        missing: bool,
    },
    /// More bytes needed.
    Partial,
    /// Malformed, too large or framed in a way this server does not take.
    Bad,
}

fn parse(buf: &[u8], required: &[String]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Head::Bad,
    };
    if len > MAX_HEAD {
        return Head::Bad;
    }
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut body: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Bad;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                return Head::Bad;
            };
            if body.is_some_and(|b| b != n) {
                return Head::Bad;
            }
            body = Some(n);
        }
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let missing = required.iter().any(|name| {
        !req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name) && !h.value.is_empty())
    });
    Head::Request {
        len,
        body: body.unwrap_or(0),
        close,
        head_only: req.method == Some("HEAD"),
        missing,
    }
}

fn response(head_only: bool, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
        BODY.len(),
        if close { "Connection: close\r\n" } else { "" },
        if head_only { "" } else { BODY }
    )
    .into_bytes()
}

const MISSING_HEADER: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\nrequired header missing\n";

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";

/// Answer every complete request in `c.input`; returns the number answered.
fn answer(c: &mut Exchange, required: &[String]) -> u64 {
    let mut answered = 0;
    loop {
        if c.body_left > 0 {
            let n = usize::try_from(c.body_left)
                .unwrap_or(usize::MAX)
                .min(c.input.len());
            c.input.drain(..n);
            c.body_left -= n as u64;
            if c.body_left > 0 {
                return answered;
            }
        }
        if c.close_after_write || c.input.is_empty() {
            return answered;
        }
        match parse(&c.input, required) {
            Head::Partial => return answered,
            Head::Bad => {
                c.output.extend_from_slice(BAD_REQUEST);
                c.close_after_write = true;
                c.input.clear();
                return answered;
            }
            Head::Request {
                len,
                body,
                close,
                head_only,
                missing,
            } => {
                c.input.drain(..len);
                c.body_left = body;
                if missing {
                    c.output.extend_from_slice(MISSING_HEADER);
                } else {
                    c.output.extend_from_slice(&response(head_only, close));
                }
                answered += 1;
                if close {
                    c.close_after_write = true;
                    c.input.clear();
                }
            }
        }
    }
}

/// What to do with a connection after it was driven.
enum Next {
    Keep,
    Close,
}

/// Write what is pending, then read and answer until the socket would block.
fn drive(c: &mut Conn, requests: &mut u64, required: &[String]) -> Next {
    c.last = Instant::now();
    let (tcp, c) = (&mut c.tcp, &mut c.ex);
    loop {
        while !c.output.is_empty() {
            match tcp.write(&c.output) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        if c.close_after_write {
            return Next::Close;
        }
        let mut buf = [0u8; 16 * 1024];
        match tcp.read(&mut buf) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                *requests += answer(c, required);
                if c.output.len() > MAX_PENDING {
                    // Loop to write; reading resumes once the output drained.
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if c.output.is_empty() {
                    return Next::Keep;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

fn write_stats(path: &PathBuf, connections: u64, requests: u64) {
    let tmp = path.with_extension("tmp");
    let text = format!("{{\"connections\": {connections}, \"requests\": {requests}}}\n");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn serve(cli: &Cli) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut listener = TcpListener::bind(cli.listen).map_err(|e| format!("{}: {e}", cli.listen))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register: {e}"))?;
    eprintln!(
        "http-upstream listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut last_tick = Instant::now();
    let (mut accepted, mut requests) = (0u64, 0u64);
    let mut written = None;
    if let Some(p) = &cli.stats {
        write_stats(p, 0, 0);
        written = Some((0, 0));
    }
    loop {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut tcp, _)) => {
                            accepted += 1;
                            if conns.len() >= MAX_CONNECTIONS {
                                continue;
                            }
                            let _ = tcp.set_nodelay(true);
                            next_token = (next_token + 1) % (usize::MAX - 1);
                            let token = next_token;
                            if poll
                                .registry()
                                .register(
                                    &mut tcp,
                                    Token(token),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_ok()
                            {
                                conns.insert(
                                    token,
                                    Conn {
                                        tcp,
                                        ex: Exchange::default(),
                                        last: Instant::now(),
                                    },
                                );
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Out of descriptors and the like: try again on the next event.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let t = ev.token().0;
            let close = match conns.get_mut(&t) {
                Some(c) => matches!(drive(c, &mut requests, &cli.require_header), Next::Close),
                None => false,
            };
            if close {
                if let Some(mut c) = conns.remove(&t) {
                    let _ = poll.registry().deregister(&mut c.tcp);
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            conns.retain(|_, c| c.last.elapsed() < IDLE_TIMEOUT);
            if let Some(p) = &cli.stats {
                if written != Some((accepted, requests)) {
                    write_stats(p, accepted, requests);
                    written = Some((accepted, requests));
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-upstream: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_answers(input: &[u8]) -> (u64, String, bool) {
        let mut c = Exchange {
            input: input.to_vec(),
            ..Exchange::default()
        };
        let n = answer(&mut c, &[]);
        (
            n,
            String::from_utf8_lossy(&c.output).into_owned(),
            c.close_after_write,
        )
    }

    #[test]
    fn pipelined_requests_with_bodies_each_get_one_response() {
        let (n, out, close) = conn_answers(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(n, 3, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert!(!close);
    }

    #[test]
    fn a_request_split_anywhere_is_answered_once_and_its_body_dropped() {
        let req = b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 1..req.len() {
            let mut c = Exchange {
                input: req[..cut].to_vec(),
                ..Exchange::default()
            };
            let mut n = answer(&mut c, &[]);
            c.input.extend_from_slice(&req[cut..]);
            n += answer(&mut c, &[]);
            assert_eq!(n, 1, "cut at {cut}");
            assert!(c.input.is_empty() && c.body_left == 0, "cut at {cut}");
            assert!(!c.close_after_write, "cut at {cut}");
        }
    }

    #[test]
    fn smuggling_shapes_and_oversized_heads_get_400_and_close() {
        for bad in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n",
        ] {
            let (n, out, close) = conn_answers(bad);
            assert_eq!(n, 0, "{bad:?}");
            assert!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out}");
            assert!(close, "{bad:?}");
        }
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        let (_, out, close) = conn_answers(&big);
        assert!(out.starts_with("HTTP/1.1 400") && close, "{out}");
    }

    #[test]
    fn connection_close_and_http10_end_the_connection_after_the_response() {
        for req in [
            &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            let (n, out, close) = conn_answers(req);
            assert_eq!(n, 1);
            assert!(out.contains("Connection: close\r\n"), "{out}");
            assert!(close);
        }
        let (_, _, close) = conn_answers(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!close);
        let (_, out, _) = conn_answers(b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(out.ends_with("\r\n\r\n"), "HEAD has no body: {out}");
    }

    #[test]
    fn fixed_answers_are_framed_by_their_content_length() {
        for answer in [BAD_REQUEST, MISSING_HEADER, &response(false, false)] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{text}");
        }
    }

    #[test]
    fn a_required_header_missing_or_empty_gets_400_and_the_connection_stays() {
        let required = ["x-client-cert".to_string()];
        for (req, ok) in [
            (
                &b"GET / HTTP/1.1\r\nX-Client-Cert: -----BEGIN%20\r\n\r\n"[..],
                true,
            ),
            (b"GET / HTTP/1.1\r\nx-client-cert:\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
        ] {
            let mut c = Exchange {
                input: req.to_vec(),
                ..Exchange::default()
            };
            assert_eq!(answer(&mut c, &required), 1);
            let out = String::from_utf8_lossy(&c.output);
            assert_eq!(out.starts_with("HTTP/1.1 200"), ok, "{out}");
            assert!(!c.close_after_write);
        }
    }
}
