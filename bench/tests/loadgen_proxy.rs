//! The load generator's proxy mode (`--proxy`, the application side of
//! `scripts/bench-egress.sh`) against a real plain HTTP/1.1 server: the front-door benchmark's
//! `http-upstream`, which answers absolute-form requests like any other and counts the TCP
//! connections it accepts. The requests must all travel on `--concurrency` kept-alive
//! connections, and a non-200 answer must fail the run instead of being counted.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const UPSTREAM: &str = env!("CARGO_BIN_EXE_http-upstream");
const LOADGEN: &str = env!("CARGO_BIN_EXE_onerecord-loadgen");

/// The upstream process, killed on drop.
struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `http-upstream` on a port the kernel picks; returns it, its pid and its port.
fn start(stats: &std::path::Path, extra: &[&str]) -> (Upstream, u32, u16) {
    let mut child = Command::new(UPSTREAM)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--stats")
        .arg(stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start http-upstream");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let up = Upstream(child);
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("log line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("port in {line:?}"));
    (up, pid, port)
}

/// Run the load generator, killing it if it outlives `limit`.
fn loadgen(args: &[String], limit: Duration) -> Output {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start onerecord-loadgen");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The upstream's counts once they stop changing (the file is rewritten every 100 ms).
fn settled_stats(path: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if (text == last && !text.is_empty()) || Instant::now() > deadline {
            return serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
        last = text;
    }
}

fn args(proxy: u16, pid: u32) -> Vec<String> {
    [
        "--proxy",
        &format!("127.0.0.1:{proxy}"),
        "--connect",
        "127.0.0.1:8443",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--timeout",
        "5",
        "--proxy-pid",
        &pid.to_string(),
        "--label",
        "pooled",
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn proxy_mode_keeps_its_connections_alive_and_reads_every_response() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let (_up, pid, port) = start(&stats, &[]);
    let out = loadgen(&args(port, pid), Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout}: {e}"));
    assert_eq!(r["mode"], "proxy", "{r}");
    assert_eq!(r["auth"], "plain", "{r}");
    assert_eq!(r["failures"], 0, "{r}");
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests > 100, "{r}");
    // The proxy's CPU is read apart and added on the client side.
    let own = r["client_cpu_us_per_req"].as_f64().unwrap();
    let proxy = r["proxy_cpu_us_per_req"].as_f64().unwrap();
    let side = r["client_side_cpu_us_per_req"].as_f64().unwrap();
    assert!((side - own - proxy).abs() < 1e-6, "{r}");
    assert!(r["server_cpu_us"].is_null(), "no --server-pid: {r}");
    // Four connections carried the warm-up and every measured request (and those cut off
    // when the window ended): nothing was reopened.
    let s = settled_stats(&stats);
    assert_eq!(s["connections"], 4, "{s}");
    let answered = s["requests"].as_u64().unwrap();
    assert!(
        answered >= requests + 4 && answered <= requests + 8,
        "{s} against {r}"
    );
}

#[test]
fn proxy_mode_fails_on_a_non_200_answer() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    // Without the header it requires, the upstream answers 400 to every request.
    let (_up, pid, port) = start(&stats, &["--require-header", "x-client-cert"]);
    let out = loadgen(&args(port, pid), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr.contains("http: status 400"), "{stderr}");
}
