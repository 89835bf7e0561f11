//! `rustls-mio-server`: the baseline the gateway is measured against. A plain rustls
//! (buffered `ServerConnection`, ring provider, default settings) TLS server on one mio event
//! loop, written the way rustls' own mio example is: read until the socket would block,
//! `process_new_packets`, read plaintext, write TLS until it would block. It answers every
//! HTTP/1.x request with a fixed 200 response and keeps HTTP/1.1 connections alive.
//!
//!     rustls-mio-server --listen 127.0.0.1:8443 --cert server.pem --key server.key
//!         [--client-ca ca.pem] [--tls13-only]
//!
//! With `--client-ca` a client certificate is required (mTLS). Resumption: rustls' defaults
//! (stateful session-ID cache for TLS 1.2, two TLS 1.3 tickets) plus stateless tickets from
//! ring's `Ticketer`, the same kind of resumption the gateway offers. Runs until killed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// The fixed response body (the same bytes `scripts/bench-peers.sh` gives nginx).
const BODY: &str = "{\"status\":\"ok\"}\n";
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Open connections at most; beyond it new connections are closed at once.
const MAX_CONNECTIONS: usize = 50_000;
/// Connections without traffic for this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const LISTENER: Token = Token(usize::MAX);

/// Plain rustls + mio TLS server answering a fixed HTTP response (benchmark baseline).
#[derive(Parser, Debug)]
#[command(name = "rustls-mio-server", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Require a client certificate issued by a CA in this bundle (mTLS).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Only TLS 1.3 (default: TLS 1.3 and 1.2).
    #[arg(long)]
    tls13_only: bool,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(v)
}

fn config(cli: &Cli) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(&cli.cert)?;
    let key_bytes = std::fs::read(&cli.key).map_err(|e| format!("{}: {e}", cli.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("{}: {e}", cli.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if cli.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("versions: {e}"))?;
    let builder = match &cli.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate/key: {e}"))?;
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("ticketer: {e}"))?;
    Ok(Arc::new(cfg))
}

struct Conn {
    tcp: TcpStream,
    tls: ServerConnection,
    request: Vec<u8>,
    close_after_write: bool,
    last: Instant,
}

/// What to do with a connection after it was driven.
enum Next {
    Keep,
    Close,
}

fn response() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Answer every complete request head in `c.request`. Bodies are not expected (GET).
fn answer(c: &mut Conn, reply: &[u8]) -> io::Result<()> {
    while let Some(end) = c.request.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = &c.request[..end + 4];
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let http10 = text.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
        let close = if http10 {
            !text.contains("connection: keep-alive")
        } else {
            text.contains("connection: close")
        };
        c.request.drain(..end + 4);
        c.tls.writer().write_all(reply)?;
        if close {
            c.close_after_write = true;
            c.tls.send_close_notify();
            c.request.clear();
            break;
        }
    }
    if c.request.len() > MAX_HEAD {
        return Err(io::Error::other("request head too large"));
    }
    Ok(())
}

/// Read, process, answer, write: until the socket would block.
fn drive(c: &mut Conn, reply: &[u8]) -> Next {
    c.last = Instant::now();
    let mut eof = false;
    loop {
        match c.tls.read_tls(&mut c.tcp) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => {
                if c.tls.process_new_packets().is_err() {
                    // The alert rustls queued goes out before the close.
                    let _ = c.tls.write_tls(&mut c.tcp);
                    return Next::Close;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match c.tls.reader().read(&mut buf) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            if !c.close_after_write {
                                c.request.extend_from_slice(&buf[..n]);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return Next::Close,
                    }
                }
                if !c.close_after_write && answer(c, reply).is_err() {
                    return Next::Close;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
    while c.tls.wants_write() {
        match c.tls.write_tls(&mut c.tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
    if eof || c.close_after_write {
        if eof && !c.close_after_write {
            c.tls.send_close_notify();
            let _ = c.tls.write_tls(&mut c.tcp);
        }
        return Next::Close;
    }
    Next::Keep
}

fn serve(cli: &Cli) -> Result<(), String> {
    let cfg = config(cli)?;
    let reply = response();
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut listener = TcpListener::bind(cli.listen).map_err(|e| format!("{}: {e}", cli.listen))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register: {e}"))?;
    eprintln!(
        "rustls-mio-server listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut last_sweep = Instant::now();
    loop {
        match poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut tcp, _)) => {
                            if conns.len() >= MAX_CONNECTIONS {
                                continue;
                            }
                            let Ok(tls) = ServerConnection::new(cfg.clone()) else {
                                continue;
                            };
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
                                        tls,
                                        request: Vec::new(),
                                        close_after_write: false,
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
                Some(c) => matches!(drive(c, &reply), Next::Close),
                None => false,
            };
            if close {
                if let Some(mut c) = conns.remove(&t) {
                    let _ = poll.registry().deregister(&mut c.tcp);
                }
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            conns.retain(|_, c| c.last.elapsed() < IDLE_TIMEOUT);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rustls-mio-server: {e}");
            ExitCode::from(2)
        }
    }
}
