//! The README's "core in one screen": an mTLS server over a blocking `TcpStream`, driving a
//! [`Session`] through its documented run loop (bytes in, `process`, bytes out, timeouts).
//! The part between the `README` markers is the README's code block, verbatim (a test checks
//! that they do not drift, and runs `serve` against `openssl s_client` over loopback).
//!
//! Run: `cargo run -p onerecord-tls --example run_loop -- 127.0.0.1:8443 server.pem server.key
//! partners-ca.pem`, then e.g. `openssl s_client -connect 127.0.0.1:8443 -cert client.pem
//! -key client.key -CAfile ca.pem`. Each request is answered with the partner's company ID.

use std::net::TcpListener;

use onerecord_tls::{PeerIdentity, pki};

/// What the application does with a connection: here, answer each chunk of a request with
/// the partner's company ID.
pub trait App {
    /// The handshake completed: `peer` passed the policy (before any data).
    fn on_established(&mut self, peer: &PeerIdentity);
    /// Decrypted bytes from the peer; append what to send back to `reply`.
    fn on_data(&mut self, bytes: &[u8], reply: &mut Vec<u8>);
}

/// The example's application: one line per chunk received, naming the partner.
#[derive(Default)]
pub struct Greeter {
    company: String,
}

impl App for Greeter {
    fn on_established(&mut self, peer: &PeerIdentity) {
        self.company = peer.common_name().unwrap_or("anonymous").to_string();
    }

    fn on_data(&mut self, _bytes: &[u8], reply: &mut Vec<u8>) {
        reply.extend_from_slice(format!("hello {}\n", self.company).as_bytes());
    }
}

// README-BEGIN
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use onerecord_tls::{Certificate, PrivateKey};
use onerecord_tls::{
    Event, IdentityRule, Instant, Now, ServerPolicies, ServerPolicy, Session, Time, TrustStore,
};

/// Close an established connection that stays silent this long.
const IDLE: Duration = Duration::from_secs(120);

/// mTLS for ONE Record partners: a certificate from `ca_bundle` with a ONE Record ID.
pub fn policy(
    cert_chain: Vec<Certificate<'static>>, // ONE Record defaults: TLS 1.3 + 1.2, ECDHE+AEAD,
    key: PrivateKey<'static>,              // X25519/P-256/P-384, no 0-RTT
    ca_bundle: &[u8],
) -> Result<ServerPolicies, Box<dyn Error>> {
    Ok(ServerPolicy::builder(cert_chain, key)
        .require_client_auth(TrustStore::from_pem(ca_bundle)?)
        .allow(IdentityRule::UriPrefix("https://onerecord.example/".into())) // at a `/` boundary
        .build(Time::now())? // checks key/cert match and expiry
        .into_set()) // or ServerPolicies keyed by SNI
}

/// Serve one connection until it ends: Ok after a clean or idle close, Err saying why not.
/// `app` (trait `App` of core/examples/run_loop.rs) gets `on_established(peer)` and
/// `on_data(bytes, &mut reply)`.
pub fn serve(
    socket: &mut TcpStream,
    policy: &ServerPolicies,
    app: &mut impl App,
) -> Result<(), Box<dyn Error>> {
    let mut tls = Session::server(policy, Now::system());
    let mut reply = Vec::new();
    while !tls.is_terminal() {
        // 1. Bytes in, waiting at most until the handshake deadline (or the idle limit).
        let wait = tls
            .poll_timeout()
            .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()));
        socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut last_round = false;
        match socket.read(tls.receive_buffer()) {
            Ok(0) => {
                last_round = true;
                tls.received_eof()?; // Err unless the peer sent close_notify: no silent truncation
            }
            Ok(n) => tls.received(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                last_round = tls.is_established(); // idle; a handshake times out in `process`
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        // 2. Events up, in order; a refusal queues its alert for step 3.
        let result = tls.process(Now::system(), |event| match event {
            Event::Established(peer) => app.on_established(peer), // verified, before any data
            Event::Data(bytes) => app.on_data(bytes, &mut reply),
            Event::PeerClosed | Event::Closed => {}
        });
        // 3. Bytes out, all of them (write_all loops over partial writes), alert included.
        flush(socket, &mut tls)?;
        result?; // typed error: reason + alert sent
        while !reply.is_empty() && !tls.is_terminal() {
            let n = tls.send(&reply)?; // fewer than asked when the outgoing buffer is full
            reply.drain(..n);
            flush(socket, &mut tls)?;
        }
        if last_round || tls.peer_closed() {
            tls.close(); // our close_notify (answering the peer's, or ending an idle connection)
            flush(socket, &mut tls)?;
            return Ok(());
        }
    }
    Ok(())
}

fn flush(socket: &mut TcpStream, tls: &mut Session) -> Result<(), Box<dyn Error>> {
    let out = tls.transmit();
    socket.write_all(out)?;
    let n = out.len();
    tls.transmitted(n);
    Ok(())
}
// README-END

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, ca] = args.as_slice() else {
        return Err("usage: run_loop LISTEN-ADDR CERT.pem KEY.pem CLIENT-CA.pem".into());
    };
    let policy = policy(
        pki::certificates_from_file(cert)?,
        pki::private_key_from_file(key)?,
        &std::fs::read(ca)?,
    )?;
    let listener = TcpListener::bind(listen)?;
    println!("listening on {}", listener.local_addr()?);
    for socket in listener.incoming() {
        let mut socket = socket?;
        let policy = policy.clone();
        std::thread::spawn(move || {
            let peer = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match serve(&mut socket, &policy, &mut Greeter::default()) {
                Ok(()) => println!("{peer}: closed"),
                Err(e) => println!("{peer}: {e}"),
            }
        });
    }
    Ok(())
}
