//! Support for the hostile-network scenarios in `hostile.rs`: process figures read from
//! `/proc`, a raw TLS client driven step by step over a real socket (the engine's own client
//! session), an HTTP/1.1 request helper, the metrics scrape, a deterministic byte generator
//! and deep certificate chains.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use onerecord_tls::Certificate;
use onerecord_tls::pki;
use onerecord_tls::{ClientPolicy, Error, Event, Reason, Session, Time, TrustStore, Versions};
use onerecord_tls_tests::{Ca, LeafSpec};

use crate::common::{Gateway, Pki};

/// One scenario at a time: each starts its own gateway, and the figures (RSS, time) of one
/// must not include the load of another on this small machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Take the scenario lock (a failed scenario does not block the others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scale factor from the environment: `name` if set and valid, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => (1024, 1024),
    }
}

/// Raise this process's soft descriptor limit to `want` (at most the hard limit) with
/// `prlimit` (util-linux); gateways started afterwards inherit it. Returns the soft limit now.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile();
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    let _ = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={target}:"),
        ])
        .status();
    nofile().0
}

/// A `VmXxx:` field of `/proc/<pid>/status`, in KiB (0 when unreadable).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set (VmHWM) of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmHWM:")
}

/// Current resident set (VmRSS) of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmRSS:")
}

/// Live gateway worker threads (named `onerecord-worker-N`, truncated by the kernel).
pub fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("onerecord-work"))
        })
        .count()
}

/// One scenario's figures, printed as one line (`cargo test -- --nocapture` shows them).
pub struct Figures {
    /// Scenario name.
    pub scenario: &'static str,
    /// Connections made against the gateway.
    pub connections: usize,
    /// Failures that were not expected (the assertions require 0).
    pub failures: usize,
    /// Peak RSS of the gateway process, KiB.
    pub peak_rss_kib: u64,
    /// Wall time of the scenario.
    pub elapsed: Duration,
    /// Scenario-specific figures.
    pub extra: String,
}

impl Figures {
    /// Print the line.
    pub fn print(&self) {
        println!(
            "figures: scenario={} connections={} failures={} peak_rss_kib={} time_s={:.1} {}",
            self.scenario,
            self.connections,
            self.failures,
            self.peak_rss_kib,
            self.elapsed.as_secs_f64(),
            self.extra
        );
    }
}

/// splitmix64: a small deterministic generator for garbage input.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}

/// Start an mTLS gateway on the test PKI (`ca.pem`, `crl.der`) with extra arguments.
pub fn mtls_gateway(pki: &Pki, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--cert".to_string(),
        pki.path("server.pem"),
        "--key".to_string(),
        pki.path("server.key"),
        "--client-ca".to_string(),
        pki.path("ca.pem"),
        "--require-client-cert".to_string(),
        "--crl".to_string(),
        pki.path("crl.der"),
        "--crl-allow-unknown".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start("server", &refs)
}

/// A client policy trusting the test CA and presenting `<who>.pem` / `<who>.key` of the PKI
/// (`cache`: with a session cache, so later connections resume).
pub fn client_policy(pki: &Pki, who: &str, versions: Versions, cache: bool) -> ClientPolicy {
    let chain = read_chain(&pki.path(&format!("{who}.pem")));
    let key = std::fs::read(pki.path(&format!("{who}.key"))).expect("key file");
    let key = pki::private_key_from_pem(&key).expect("key");
    let trust = TrustStore::from_pem(pki.ca.pem().as_bytes()).expect("trust");
    let mut b = ClientPolicy::builder(trust)
        .versions(versions)
        .client_cert(chain, key);
    if !cache {
        b = b.session_cache(None);
    }
    b.build(Time::now()).expect("client policy")
}

/// Certificates of a PEM file.
pub fn read_chain(path: &str) -> Vec<Certificate<'static>> {
    let pem = std::fs::read(path).expect("chain file");
    pki::certificates_from_pem(&pem, "chain").expect("chain")
}

/// The request the well-behaved clients send.
pub const GET11: &[u8] = b"GET /logistics-objects HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Send one HTTP/1.1 request and read the whole response (head and `Content-Length` body,
/// bounded to 1 MiB); `Ok(body)` for a `200`.
pub fn request(s: &mut (impl Read + Write)) -> io::Result<String> {
    s.write_all(GET11)?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("response head too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("status: {head}")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other("no content-length"))?;
    if len > 1 << 20 {
        return Err(io::Error::other("body too long"));
    }
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned())
}

/// A value of the gateway's Prometheus endpoint (`name` with its labels, exactly as printed).
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}

/// Wait (bounded) until `metric(addr, name) == want`; the last value seen.
pub fn wait_metric(addr: SocketAddr, name: &str, want: f64, within: Duration) -> Option<f64> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        last = metric(addr, name);
        if last == Some(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

/// How a connection ended, seen from the client.
#[derive(Debug, Default)]
pub struct Ending {
    /// Raw bytes the server sent after the point of interest.
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) within the wait.
    pub closed: bool,
    /// Time from the point of interest to the close.
    pub after: Duration,
}

impl Ending {
    /// The first plaintext alert record the server sent (`(level, description)`).
    pub fn plaintext_alert(&self) -> Option<(u8, u8)> {
        let mut rest = &self.bytes[..];
        while rest.len() >= 5 {
            let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
            if rest[0] == 0x15 && len == 2 && rest.len() >= 7 {
                return Some((rest[5], rest[6]));
            }
            rest = rest.get(5 + len..).unwrap_or_default();
        }
        None
    }
}

/// Read from `s` until the server closes or `within` passes (bounded), from now.
pub fn wait_close(s: &mut TcpStream, within: Duration) -> Ending {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let start = Instant::now();
    let mut e = Ending::default();
    let mut buf = [0u8; 16384];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => {
                e.closed = true;
                break;
            }
            Ok(n) => e.bytes.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                e.closed = true;
                break;
            }
        }
    }
    e.after = start.elapsed();
    e
}

/// A TLS client over a real socket, driven one flight at a time by the test: the engine's
/// client session, so a test can stop after any record, inject bytes, or decrypt the alert
/// the server answers with.
pub struct RawTls {
    /// The socket.
    pub tcp: TcpStream,
    /// The client session.
    pub session: Session,
    /// Application data received.
    pub data: Vec<u8>,
}

impl RawTls {
    /// Connect to `addr` (SNI `localhost`) without starting the handshake.
    pub fn connect(addr: SocketAddr, policy: &ClientPolicy) -> io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::over(tcp, policy)
    }

    /// Use an already connected socket.
    pub fn over(tcp: TcpStream, policy: &ClientPolicy) -> io::Result<Self> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_millis(50)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let session = Session::client(policy, "localhost", Time::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            tcp,
            session,
            data: Vec::new(),
        })
    }

    /// Run the session and take what it wants to send (not sent yet).
    pub fn output(&mut self) -> Vec<u8> {
        let data = &mut self.data;
        let _ = self.session.process(Time::now(), |ev| {
            if let Event::Data(d) = ev {
                data.extend_from_slice(d);
            }
        });
        let out = self.session.transmit().to_vec();
        self.session.transmitted(out.len());
        out
    }

    /// Feed server bytes to the session.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let n = self.session.receive(bytes);
            bytes = &bytes[n..];
            let data = &mut self.data;
            self.session.process(Time::now(), |ev| {
                if let Event::Data(d) = ev {
                    data.extend_from_slice(d);
                }
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Read what arrives within `within` (stops early at EOF or when `done` holds after a
    /// read); `Ok(false)` at EOF.
    pub fn read_for(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> io::Result<bool> {
        let start = Instant::now();
        let mut buf = [0u8; 16384];
        while start.elapsed() < within {
            match self.tcp.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.feed(&buf[..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))?;
                    if done(self) {
                        return Ok(true);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Complete the handshake (bounded by `within`).
    pub fn handshake(&mut self, within: Duration) -> io::Result<()> {
        let start = Instant::now();
        while !self.session.is_established() {
            if start.elapsed() > within {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let out = self.output();
            self.tcp.write_all(&out)?;
            if self.session.is_established() {
                break;
            }
            if !self.read_for(Duration::from_millis(200), |s| {
                s.session.is_established() || !s.session.transmit().is_empty()
            })? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let out = self.output();
        self.tcp.write_all(&out)
    }

    /// The alert the server sent, as decoded by the session (`Reason::PeerAlert`).
    pub fn peer_alert(&self) -> Option<onerecord_tls::Alert> {
        match self.session.error()?.reason() {
            Reason::PeerAlert(a) => Some(*a),
            _ => None,
        }
    }
}

/// Split a byte stream into whole TLS records (a trailing partial record is returned last).
pub fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = if bytes.len() >= 5 {
            5 + u16::from_be_bytes([bytes[3], bytes[4]]) as usize
        } else {
            bytes.len()
        };
        let len = len.min(bytes.len());
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

/// A client certificate issued under `depth` intermediate CAs below a new root, written in
/// `dir` as `<name>-root.pem` (the anchor), `<name>.pem` (leaf, then intermediates from the
/// leaf up), `<name>-leaf.pem`, `<name>-chain.pem` (the intermediates) and `<name>.key`.
pub fn deep_chain(dir: &std::path::Path, name: &str, depth: usize) {
    let root = Ca::new(&format!("{name} root"));
    std::fs::write(dir.join(format!("{name}-root.pem")), root.pem()).expect("write");
    let mut ca = root;
    for i in 0..depth {
        ca = ca.intermediate(&format!("{name} intermediate {i}"));
    }
    let leaf = ca.issue(&LeafSpec {
        cn: format!("{name} leaf"),
        ..LeafSpec::client(name).around_wall_clock()
    });
    std::fs::write(dir.join(format!("{name}-leaf.pem")), &leaf.leaf_pem).expect("write");
    std::fs::write(
        dir.join(format!("{name}-chain.pem")),
        ca.intermediates_pem(),
    )
    .expect("write");
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.chain_pem).expect("write");
    std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).expect("write");
}
