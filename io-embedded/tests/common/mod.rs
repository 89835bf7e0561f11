//! Test support: a tiny `embedded-io` shim over `std::net::TcpStream`, a test PKI written to
//! a temporary directory for `openssl`, an `openssl s_server` runner, and in-memory helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use onerecord_tls::{ClientPolicy, ServerPolicies, ServerPolicy, Time, Versions};
use onerecord_tls_tests::{Ca, Identity, KeyKind, LeafSpec};

/// The adapter's transport over a real socket: `embedded_io::Read + Write` for `TcpStream`.
pub struct Net(pub TcpStream);

impl Net {
    /// Connect to `addr` with 10-second read and write timeouts (no test can hang).
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Self(s)
    }
}

/// `std::io::Error` has no `embedded_io::Error` impl; its kind is enough here.
fn kind(e: std::io::Error) -> embedded_io::ErrorKind {
    use embedded_io::ErrorKind as K;
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => K::TimedOut,
        std::io::ErrorKind::ConnectionReset => K::ConnectionReset,
        std::io::ErrorKind::BrokenPipe => K::BrokenPipe,
        _ => K::Other,
    }
}

impl embedded_io::ErrorType for Net {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for Net {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        std::io::Read::read(&mut self.0, buf).map_err(kind)
    }
}

impl embedded_io::Write for Net {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        std::io::Write::write(&mut self.0, buf).map_err(kind)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        std::io::Write::flush(&mut self.0).map_err(kind)
    }
}

/// The wall clock, as the adapter's `Clock`.
pub fn wall() -> Time {
    Time::now()
}

/// A CA, a server certificate for `localhost` and a device client certificate, valid around
/// the wall clock (real peers use the real time), also written as PEM files.
pub struct Pki {
    pub ca: Ca,
    pub server: Identity,
    pub client: Identity,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_keys(KeyKind::EcdsaP256)
    }

    /// The same with RSA-2048 keys (larger certificate flights, fixed-size signatures).
    pub fn with_rsa() -> Self {
        Self::with_keys(KeyKind::Rsa2048)
    }

    fn with_keys(key: KeyKind) -> Self {
        let ca = Ca::new("Embedded Test CA");
        let server = ca.issue(&LeafSpec::server().around_wall_clock().key(key));
        let client = ca.issue(&LeafSpec::client("device-1").around_wall_clock().key(key));
        let dir = std::env::temp_dir().join(format!(
            "onerecord-embedded-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        server.write_files(&dir, "server");
        client.write_files(&dir, "client");
        Self {
            ca,
            server,
            client,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The device's client policy: trusts the CA, presents the client certificate.
    pub fn client_policy(&self, versions: Versions) -> ClientPolicy {
        ClientPolicy::builder(self.ca.trust())
            .versions(versions)
            .client_cert(self.client.chain.clone(), self.client.key())
            .build(wall())
            .expect("client policy")
    }

    /// A server policy requiring client certificates from the CA.
    pub fn server_policies(&self) -> ServerPolicies {
        ServerPolicy::builder(self.server.chain.clone(), self.server.key())
            .require_client_auth(self.ca.trust())
            .build(wall())
            .expect("server policy")
            .into_set()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// A running `openssl s_server`, killed on drop; its output lines are collected.
pub struct SServer {
    child: Child,
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl SServer {
    /// Start `openssl s_server -accept 127.0.0.1:<free port> <args>` and wait for `ACCEPT`;
    /// retried on a fresh port if the port was taken meanwhile.
    pub fn start(args: &[&str]) -> Self {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let mut child = Command::new("openssl")
                .arg("s_server")
                .args(["-accept", &addr.to_string()])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the openssl command is needed (scripts/install-deps.sh)");
            let (tx, rx) = mpsc::channel();
            for stream in [
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
                Box::new(child.stderr.take().expect("stderr")),
            ] {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            }
            let mut s = Self {
                child,
                addr,
                lines: rx,
                seen: Vec::new(),
            };
            if s.wait_for("ACCEPT", Duration::from_secs(10)) {
                return s;
            }
        }
        panic!("openssl s_server did not start");
    }

    /// Wait until a line containing `needle` was printed.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    pub fn output(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
