//! The embedded adapter on a host: a `TlsStream` over `std::net::TcpStream` (through a tiny
//! `embedded-io` shim) connects with a client certificate, sends one HTTP request and prints
//! the answer and the verified server identity. The same code runs on a device with its
//! network stack's socket in place of `TcpStream`.
//!
//!     onerecord-gateway dev --dir /tmp/pki     # or: openssl s_server -www -Verify 1 ...
//!     cargo run -p onerecord-tls-embedded --example mtls_client -- \
//!         --connect 127.0.0.1:8443 --ca /tmp/pki/ca.pem \
//!         --cert /tmp/pki/client.pem --key /tmp/pki/client.key [--name localhost] [--path /]

use std::net::TcpStream;
use std::time::Duration;

use embedded_io::{Read, Write};
use onerecord_tls::{ClientPolicy, Time, TrustStore, pki};
use onerecord_tls_embedded::{MAX_PLAINTEXT, MIN_INCOMING, Tls, TlsStream};

/// `embedded_io::Read + Write` for a `TcpStream`.
struct Net(TcpStream);

impl embedded_io::ErrorType for Net {
    type Error = embedded_io::ErrorKind;
}

impl Read for Net {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        std::io::Read::read(&mut self.0, buf).map_err(|_| embedded_io::ErrorKind::Other)
    }
}

impl Write for Net {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        std::io::Write::write(&mut self.0, buf).map_err(|_| embedded_io::ErrorKind::Other)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        std::io::Write::flush(&mut self.0).map_err(|_| embedded_io::ErrorKind::Other)
    }
}

#[allow(dead_code)]
fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// What one run saw.
pub struct Outcome {
    /// One line about the verified server.
    pub summary: String,
    /// The answer's bytes.
    pub response: Vec<u8>,
}

/// Connect to `connect` as `name` with the PEM files, send `GET path`, read the answer.
pub fn run(
    connect: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    name: &str,
    path: &str,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let now = Time::now();
    let policy = ClientPolicy::builder(TrustStore::from_pem(ca_pem)?)
        .client_cert(
            pki::certificates_from_pem(cert_pem, "client certificate")?,
            pki::private_key_from_pem(key_pem)?,
        )
        .build(now)?;

    // The device's fixed buffers: the documented minimum for a generic peer.
    let (mut incoming, mut outgoing, mut plaintext) = (
        vec![0u8; MIN_INCOMING],
        vec![0u8; 4096],
        vec![0u8; MAX_PLAINTEXT],
    );
    let tls = Tls::client(&policy, name, now, &mut incoming[..], &mut outgoing[..])?;
    let socket = TcpStream::connect(connect)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = TlsStream::new(tls, Net(socket), Time::now, &mut plaintext[..]);

    let peer = stream.handshake()?;
    let summary = format!(
        "{:?} {:?}, server CN {:?}, {:?}",
        peer.version,
        peer.suite,
        peer.common_name(),
        peer.handshake
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..100_000 {
        match stream.read(&mut buf)? {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
    }
    Ok(Outcome { summary, response })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let need = |name: &str| arg(&args, name).ok_or(format!("missing {name} (see the doc)"));
    let name = arg(&args, "--name").unwrap_or_else(|| "localhost".into());
    let path = arg(&args, "--path").unwrap_or_else(|| "/".into());
    let out = run(
        &need("--connect")?,
        &std::fs::read(need("--ca")?)?,
        &std::fs::read(need("--cert")?)?,
        &std::fs::read(need("--key")?)?,
        &name,
        &path,
    )?;
    eprintln!("connected: {}", out.summary);
    print!("{}", String::from_utf8_lossy(&out.response));
    Ok(())
}
