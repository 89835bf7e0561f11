//! A gateway process started with full control of its arguments, environment and working
//! directory (the common fixture always adds `--listen 127.0.0.1:0`), killed on drop, with
//! its stderr collected line by line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The gateway binary as a command (stdin closed), not yet started.
pub fn gateway_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onerecord-gateway"));
    cmd.args(args).env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// Run the gateway to its exit, bounded by `timeout 10` (exit 124 when it kept running).
pub fn run_to_exit(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("10")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway")
}

/// A running process whose stderr (and stdout) lines are collected.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
    out: Arc<Mutex<String>>,
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut l = into.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Proc {
    /// Start `cmd` with piped stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start onerecord-gateway");
        let log = Arc::new(Mutex::new(String::new()));
        let out = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), log.clone());
        collect(child.stdout.take().unwrap(), out.clone());
        Self { child, log, out }
    }

    /// Start the gateway with `args` in `cwd` (when given) with extra environment.
    pub fn gateway(args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let mut cmd = gateway_command(args);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Wait (bounded) until stderr contains `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never logged {needle:?}; log:\n{}", self.log());
    }

    /// Wait for the `listening on ADDR` line (text log format); the address.
    pub fn listening(&self) -> SocketAddr {
        self.wait_for_log("listening on ", Duration::from_secs(20));
        let log = self.log();
        let line = log.lines().find(|l| l.contains("listening on ")).unwrap();
        line.rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .trim_end_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("listen address in {line:?}"))
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

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server`, killed on drop.
pub struct SServer(pub Child);

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `openssl s_server -www` on a free loopback port; if another process takes the port
/// between probing and binding, try again on another (bounded).
pub fn s_server(args: &[&str]) -> (SServer, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut server = SServer(
            Command::new("openssl")
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
                .args(["-naccept", "100", "-www"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        for _ in 0..200 {
            if let Ok(Some(_)) = server.0.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (server, port);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = server.0.kill();
    }
    panic!("openssl s_server did not start");
}

/// Send `request` through a local plain-TCP port and read the answer until EOF (bounded).
pub fn through(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the local port");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(request);
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while start.elapsed() < Duration::from_secs(10) {
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
    String::from_utf8_lossy(&out).into_owned()
}

/// Run `openssl` with `args` (bounded); its stdout, panicking on failure.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serial (lowercase hex) and SPKI SHA-256 (hex) of a PEM certificate, computed by openssl.
pub fn serial_and_spki(pem_file: &str) -> (String, String) {
    let serial = openssl(&["x509", "-in", pem_file, "-noout", "-serial"]);
    let serial = serial
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_ascii_lowercase();
    let pubkey = openssl(&["x509", "-in", pem_file, "-noout", "-pubkey"]);
    let dir = tempfile::tempdir().unwrap();
    let pk = dir.path().join("pub.pem");
    std::fs::write(&pk, pubkey).unwrap();
    let der = dir.path().join("pub.der");
    let pk_s = pk.display().to_string();
    let der_s = der.display().to_string();
    openssl(&[
        "pkey", "-pubin", "-in", &pk_s, "-outform", "DER", "-out", &der_s,
    ]);
    let digest = openssl(&["dgst", "-sha256", "-r", &der_s]);
    let spki = digest.split_whitespace().next().unwrap().to_string();
    (serial, spki)
}
