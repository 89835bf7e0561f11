//! Fixtures for tests against the real `onerecord-gateway` binary and real peers (openssl,
//! curl): a PKI written to a temporary directory, a gateway process that is killed on drop,
//! and helpers to run `openssl s_client`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onerecord_tls_tests::{Ca, DAY, Identity, LeafSpec, wall_secs};

/// The client certificates' URI prefix (ONE Record IDs).
pub const URI_PREFIX: &str = "https://onerecord.example/logistics-agents/";

/// One HTTP/1.0 request: the identity responder answers it and closes.
pub const GET10: &[u8] = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// Test PKI files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Identity,
    pub client: Identity,
}

impl Pki {
    /// CA, `localhost` server cert, a valid client, an expired client, a client from another
    /// CA, a revoked client and a CRL revoking it, all as files.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("Gateway Test CA");
        let server = ca.issue(&LeafSpec::server().around_wall_clock());
        let client = ca.issue(&LeafSpec::client("acme-cargo").around_wall_clock());
        let w = wall_secs();
        let expired = ca.issue(&LeafSpec::client("old-cargo").valid(w - 100 * DAY, w - DAY));
        let revoked = ca.issue(&LeafSpec::client("bad-cargo").around_wall_clock());
        let other = Ca::new("Untrusted CA");
        let stranger = other.issue(&LeafSpec::client("acme-cargo").around_wall_clock());
        let crl = ca.crl_at(w, &[revoked.serial], 30);
        let p = dir.path();
        std::fs::write(p.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(p.join("other-ca.pem"), other.pem()).unwrap();
        for (name, id) in [
            ("server", &server),
            ("client", &client),
            ("expired", &expired),
            ("revoked", &revoked),
            ("stranger", &stranger),
        ] {
            id.write_files(p, name);
        }
        std::fs::write(p.join("crl.der"), crl.as_ref()).unwrap();
        Self {
            dir,
            ca,
            server,
            client,
        }
    }

    /// A file of the PKI, as a string argument.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Issue another server certificate (for reload tests) and write it as `name`.pem/.key.
    pub fn write_server(&self, name: &str) -> Identity {
        let id = self.ca.issue(&LeafSpec::server().around_wall_clock());
        id.write_files(self.dir.path(), name);
        id
    }
}

impl Pki {
    /// Issue a client certificate (CN `name`) whose URI SANs are `uris`, written as
    /// `name`.pem/.key.
    pub fn write_client_with_uris(&self, name: &str, uris: &[&str]) {
        let id = self.ca.issue(&LeafSpec {
            uris: uris.iter().map(|u| u.to_string()).collect(),
            ..LeafSpec::client(name).around_wall_clock()
        });
        id.write_files(self.dir.path(), name);
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `onerecord-gateway`, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Start `onerecord-gateway <mode> --listen 127.0.0.1:0 <args>` and wait until it
    /// accepts connections; the port the kernel chose is read from its log, so parallel tests
    /// never race for a port.
    pub fn start(mode: &str, args: &[&str]) -> Self {
        let mut all = vec![mode, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_args(&all)
    }

    /// Start `onerecord-gateway <args>` (which must make it listen, e.g. with a `--config`
    /// file saying `listen = "127.0.0.1:0"`) and wait until it accepts connections.
    pub fn start_args(args: &[&str]) -> Self {
        let mut g = Self::spawn(args);
        g.wait_for_log("listening on ", Duration::from_secs(20));
        let log = g.log();
        let line = log.lines().find(|l| l.contains("listening on ")).unwrap();
        let addr = line.rsplit("listening on ").next().unwrap().trim();
        g.addr = addr
            .parse()
            .unwrap_or_else(|_| panic!("listen address in {line:?}"));
        g
    }

    /// Run `onerecord-gateway <args>` without waiting for anything (`addr` is unset).
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_onerecord-gateway"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start onerecord-gateway");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
        }
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait (bounded) until the log contains `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway never logged {needle:?}; log:\n{}", self.log());
    }

    /// Count of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait (bounded) until at least `n` log lines contain `needle`; the count then.
    pub fn wait_for_count(&self, needle: &str, n: usize, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            let count = self.log_count(needle);
            if count >= n || start.elapsed() >= within {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal (`HUP`, `TERM`, ...) to the gateway.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait (bounded) for the process to exit; its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// `server` on one worker with the test server certificate, `--ca ca.pem` (client
    /// certificates requested) and `extra`.
    pub fn server_with_ca(pki: &Pki, extra: &[&str]) -> Self {
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let mut args = vec!["--cert", &cert, "--key", &key, "--ca", &ca];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--workers", "1"]);
        Self::start("server", &args)
    }
}

/// Run `openssl s_client` against `addr` with extra args, feeding `stdin`; bounded by a
/// 20-second timeout.
pub fn s_client(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut input = child.stdin.take().unwrap();
    // openssl may exit (a refused handshake) before reading its input: a broken pipe here
    // is part of what is being tested, not a failure.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("s_client output")
}

/// stdout and stderr of a finished command, as one string.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Read until EOF or `within` passes (bounded).
pub fn read_all(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    out
}

impl Pki {
    /// Issue another server certificate and put it in place of `name`.pem/.key, each file
    /// replaced by a rename (a reader sees the old or the new file, never half of one).
    pub fn replace_server(&self, name: &str) -> Identity {
        let id = self.ca.issue(&LeafSpec::server().around_wall_clock());
        self.replace_file(&format!("{name}.key"), id.key_pem.as_bytes());
        self.replace_file(&format!("{name}.pem"), id.chain_pem.as_bytes());
        id
    }

    /// Write `crl.der` anew, revoking `serials`.
    pub fn write_crl(&self, serials: &[u64]) {
        let crl = self.ca.crl_at(wall_secs(), serials, 30);
        self.replace_file("crl.der", crl.as_ref());
    }

    /// Replace a file of the PKI by writing a temporary file and renaming it.
    pub fn replace_file(&self, name: &str, contents: &[u8]) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    /// A client policy trusting the test CA, with the client certificate `name` (`.pem` and
    /// `.key`) when given, and a fresh session cache.
    pub fn client_policy(&self, name: Option<&str>) -> onerecord_tls::ClientPolicy {
        use onerecord_tls::{ClientPolicy, Time, TrustStore, pki};
        let trust = TrustStore::from_pem_file(self.path("ca.pem")).expect("CA file");
        let mut b = ClientPolicy::builder(trust);
        if let Some(n) = name {
            let chain = pki::certificates_from_file(self.path(&format!("{n}.pem"))).unwrap();
            let key = pki::private_key_from_file(self.path(&format!("{n}.key"))).unwrap();
            b = b.client_cert(chain, key);
        }
        b.build(Time::now()).expect("client policy")
    }
}

/// Send an HTTP/1.1 keep-alive `GET path` on a stream and read one response (head and a
/// `Content-Length` body); the response as text.
pub fn http_get(s: &mut (impl Read + Write), path: &str) -> std::io::Result<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    s.flush()?;
    read_response(s)
}

/// Read one HTTP response with a `Content-Length` body (bounded by the stream's timeouts).
pub fn read_response(s: &mut impl Read) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&got).into_owned());
            }
        }
        if got.len() > 1 << 20 {
            return Err(std::io::Error::other("response too large"));
        }
        match s.read(&mut buf)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("end of stream after {:?}", String::from_utf8_lossy(&got)),
                ));
            }
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /metrics` from a `--metrics` endpoint; the body.
pub fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut s).expect("metrics response");
    resp.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// The value of one sample line (`name{labels}` exactly as rendered) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The directory holding the class compiled from `tests/java/<name>.java` (compiled once per
/// test process with `javac`).
pub fn java_classes(name: &str) -> std::path::PathBuf {
    static DIRS: Mutex<Vec<(String, std::path::PathBuf)>> = Mutex::new(Vec::new());
    let mut dirs = DIRS.lock().unwrap();
    if let Some((_, d)) = dirs.iter().find(|(n, _)| n == name) {
        return d.clone();
    }
    let dir = std::env::temp_dir().join(format!("onerecord-java-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = format!("{}/tests/java/{name}.java", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("javac")
        .args(["-d", &dir.display().to_string(), &src])
        .output()
        .expect("javac (a JDK) is needed: scripts/install-deps.sh installs it");
    assert!(out.status.success(), "javac {name} failed: {}", text(&out));
    dirs.push((name.to_string(), dir.clone()));
    dir
}
