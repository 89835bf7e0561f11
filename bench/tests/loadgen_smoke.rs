//! Smoke test of the load generator (a few seconds, no timing assertions): it drives an
//! in-process gateway (`onerecord-tls-mio` with the identity responder, mTLS required) and
//! the `rustls-mio-server` baseline in every mode, and every run must complete handshakes
//! and requests with zero failures. A run against a server that refuses the client must
//! report the refusal instead of numbers. `openssl s_server -www` checks responses framed by
//! the connection's end against a real peer.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onerecord_tls::{ServerPolicy, Time, TrustStore, pki};
use onerecord_tls_mio::{Backend, IdentityResponder, Limits, Listener, Mode, ServerConfig};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_onerecord-loadgen");
const BASELINE: &str = env!("CARGO_BIN_EXE_rustls-mio-server");

fn gen_pki(dir: &Path) {
    let out = Command::new(LOADGEN)
        .arg("--gen-pki")
        .arg(dir)
        .output()
        .expect("run onerecord-loadgen --gen-pki");
    assert!(out.status.success(), "{out:?}");
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
}

/// Run the load generator with a hard wall-clock bound.
fn loadgen(addr: SocketAddr, dir: &Path, mtls: bool, extra: &[&str]) -> Output {
    let mut cmd = Command::new(LOADGEN);
    cmd.arg("--connect")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .args([
            "--duration",
            "1",
            "--concurrency",
            "4",
            "--timeout",
            "5",
            "--json",
        ])
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .args(extra);
    let out = Captured::new();
    out.attach(&mut cmd);
    if mtls {
        cmd.arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client.key"));
    }
    let child = cmd.spawn().expect("spawn onerecord-loadgen");
    wait_bounded(child, &out, Duration::from_secs(120))
}

/// Wait for `child` at most `limit`, then collect what it wrote to `out` (its stdout and
/// stderr go to files, so a chatty child can never block on a full pipe).
fn wait_bounded(mut child: Child, out: &Captured, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("onerecord-loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(out.stdout.path()).expect("stdout file"),
        stderr: std::fs::read(out.stderr.path()).expect("stderr file"),
    }
}

/// Files that receive a child's stdout and stderr.
struct Captured {
    stdout: tempfile::NamedTempFile,
    stderr: tempfile::NamedTempFile,
}

impl Captured {
    fn new() -> Self {
        Self {
            stdout: tempfile::NamedTempFile::new().expect("temp file"),
            stderr: tempfile::NamedTempFile::new().expect("temp file"),
        }
    }

    /// Point `cmd`'s stdout and stderr at the files.
    fn attach(&self, cmd: &mut Command) {
        cmd.stdout(self.stdout.reopen().expect("reopen"))
            .stderr(self.stderr.reopen().expect("reopen"));
    }
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Every mode completes its work with no failure, and the server CPU was read.
fn all_modes(addr: SocketAddr, dir: &Path, mtls: bool, auth: &str) {
    let full = report(&loadgen(addr, dir, mtls, &["--mode", "full"]));
    assert_eq!(full["auth"], auth, "{full}");
    assert_eq!(n(&full, "failures"), 0, "{full}");
    assert!(n(&full, "handshakes_full") > 0, "{full}");
    assert_eq!(n(&full, "handshakes_resumed"), 0, "{full}");
    assert!(n(&full, "requests") > 0, "{full}");
    assert!(full["server_cpu_us"].as_u64().is_some(), "{full}");
    assert!(full["latency_p99_us"].as_u64().is_some(), "{full}");

    let resumed = report(&loadgen(addr, dir, mtls, &["--mode", "resumed"]));
    assert_eq!(n(&resumed, "failures"), 0, "{resumed}");
    assert!(n(&resumed, "handshakes_resumed") > 0, "{resumed}");
    assert_eq!(n(&resumed, "handshakes_full"), 0, "{resumed}");
    assert!(n(&resumed, "requests") > 0, "{resumed}");

    let ka = report(&loadgen(addr, dir, mtls, &["--mode", "keepalive"]));
    assert_eq!(n(&ka, "failures"), 0, "{ka}");
    assert!(n(&ka, "requests") > 0, "{ka}");
    assert_eq!(
        n(&ka, "handshakes_full") + n(&ka, "handshakes_resumed"),
        0,
        "{ka}"
    );

    let idle = report(&loadgen(
        addr,
        dir,
        mtls,
        &["--mode", "idle", "--idle", "40"],
    ));
    assert_eq!(n(&idle, "failures"), 0, "{idle}");
    assert_eq!(n(&idle, "idle_open"), 40, "{idle}");
    assert!(idle["bytes_per_idle_conn"].as_f64().is_some(), "{idle}");
}

#[test]
fn loadgen_drives_the_gateway_in_every_mode_without_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    gen_pki(d);
    let chain = pki::certificates_from_file(d.join("server.pem")).expect("server.pem");
    let key = pki::private_key_from_file(d.join("server.key")).expect("server.key");
    let anchors = TrustStore::from_pem_file(d.join("ca.pem")).expect("ca.pem");
    let policy = ServerPolicy::builder(chain, key)
        .require_client_auth(anchors)
        .build(Time::now())
        .expect("server policy");
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().expect("addr"),
            mode: Mode::Terminate {
                policies: policy.into_set(),
                backend: Backend::Service(Arc::new(IdentityResponder)),
            },
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .expect("start gateway");
    let addr = server.local_addrs()[0];

    all_modes(addr, d, true, "mtls");

    // Without a client certificate the gateway refuses every handshake: the load generator
    // reports the refusal and exits with status 2 instead of printing numbers.
    let refused = loadgen(addr, d, false, &["--mode", "full"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("certificate_required"), "{stderr}");

    server.shutdown();
    server.join();
}

/// Kills the child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn loadgen_drives_the_rustls_mio_baseline_in_every_mode_without_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    gen_pki(d);
    // A free port: bind, read it, release it (the baseline binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Killed(
        Command::new(BASELINE)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--cert")
            .arg(d.join("server.pem"))
            .arg("--key")
            .arg(d.join("server.key"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rustls-mio-server"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "rustls-mio-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // CPU and RSS are read from the baseline's process here.
    let pid = server.0.id().to_string();
    let run = |mode: &str| {
        let mut cmd = Command::new(LOADGEN);
        cmd.arg("--connect")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .args(["--duration", "1", "--concurrency", "4", "--json"])
            .args(["--server-pid", &pid, "--mode", mode, "--idle", "40"]);
        let out = Captured::new();
        out.attach(&mut cmd);
        report(&wait_bounded(
            cmd.spawn().expect("spawn"),
            &out,
            Duration::from_secs(120),
        ))
    };
    let full = run("full");
    assert_eq!(n(&full, "failures"), 0, "{full}");
    assert!(n(&full, "handshakes_full") > 0, "{full}");
    let resumed = run("resumed");
    assert_eq!(n(&resumed, "failures"), 0, "{resumed}");
    assert!(n(&resumed, "handshakes_resumed") > 0, "{resumed}");
    let ka = run("keepalive");
    assert_eq!(n(&ka, "failures"), 0, "{ka}");
    assert!(n(&ka, "requests") > 0, "{ka}");
    let idle = run("idle");
    assert_eq!(n(&idle, "failures"), 0, "{idle}");
    assert_eq!(n(&idle, "idle_open"), 40, "{idle}");
    assert!(n(&idle, "server_rss_end") > 0, "{idle}");
}

#[test]
fn loadgen_reads_openssl_s_server_responses_framed_by_the_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    gen_pki(d);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // `-www` answers HTTP/1.0 without a Content-Length and closes; `-Verify 1` requires a
    // client certificate.
    let server = Killed(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-Verify", "1", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(d.join("server.pem"))
            .arg("-key")
            .arg(d.join("server.key"))
            .arg("-CAfile")
            .arg(d.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server (scripts/install-deps.sh installs openssl)"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.0.id().to_string();
    for mode in ["full", "resumed"] {
        let r = report(&loadgen(
            addr,
            d,
            true,
            &["--mode", mode, "--server-pid", &pid],
        ));
        assert_eq!(n(&r, "failures"), 0, "{r}");
        assert!(n(&r, "requests") > 0, "{r}");
        if mode == "resumed" {
            assert!(n(&r, "handshakes_resumed") > 0, "{r}");
        }
    }
    // s_server closes after each response: a kept-alive run must say so, not count requests.
    let ka = loadgen(
        addr,
        d,
        true,
        &["--mode", "keepalive", "--server-pid", &pid],
    );
    assert_ne!(ka.status.code(), Some(0), "{ka:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ka.stdout),
        String::from_utf8_lossy(&ka.stderr)
    );
    assert!(
        text.contains("does not keep the connection alive"),
        "{text}"
    );
}
