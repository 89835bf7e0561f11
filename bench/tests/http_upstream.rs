//! The front-door benchmark's upstream (`http-upstream`) against curl: kept-alive requests on
//! one connection, counted in its `--stats` file, and `400` for a request without a header
//! it is told to require (how `scripts/bench-peers.sh` notices a proxy that does not pass
//! the client certificate).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UPSTREAM: &str = env!("CARGO_BIN_EXE_http-upstream");

/// The upstream process, killed on drop.
struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `http-upstream` on a port the kernel picks; returns it and its port.
fn start(stats: &std::path::Path) -> (Upstream, u16) {
    let mut child = Command::new(UPSTREAM)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--require-header",
            "x-client-cert",
        ])
        .arg("--stats")
        .arg(stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start http-upstream");
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
    (up, port)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until the stats file says `want` (it is rewritten every 100 ms).
fn stats_become(path: &std::path::Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.trim() == want || Instant::now() > deadline {
            return text.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn curl_keeps_one_connection_for_three_requests_and_a_missing_header_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let (_up, port) = start(&stats);
    let base = format!("http://127.0.0.1:{port}");
    // Three URLs in one curl invocation: one TCP connection, three 200s with the body.
    let out = curl(&[
        "-H",
        "X-Client-Cert: -----BEGIN%20CERTIFICATE-----",
        "-w",
        "[%{http_code} %{num_connects}]",
        &format!("{base}/a"),
        &format!("{base}/b"),
        &format!("{base}/c"),
    ]);
    assert_eq!(
        out, "{\"status\":\"ok\"}\n[200 1]{\"status\":\"ok\"}\n[200 0]{\"status\":\"ok\"}\n[200 0]",
        "kept alive"
    );
    assert_eq!(
        stats_become(&stats, r#"{"connections": 1, "requests": 3}"#),
        r#"{"connections": 1, "requests": 3}"#
    );
    // Without the required header (and with it empty): 400, not the cheap 200.
    let out = curl(&["-w", "[%{http_code}]", &format!("{base}/d")]);
    assert_eq!(out, "required header missing\n[400]");
    let out = curl(&["-H", "X-Client-Cert;", "-w", "[%{http_code}]", &base]);
    assert_eq!(out, "required header missing\n[400]");
    // Bodies framed by Content-Length are read and dropped: two POSTs on one connection,
    // the second answered as well.
    let out = curl(&[
        "-H",
        "X-Client-Cert: x",
        "--data-binary",
        "0123456789",
        "-w",
        "[%{http_code}]",
        &format!("{base}/post"),
        &format!("{base}/again"),
    ]);
    assert_eq!(
        out, "{\"status\":\"ok\"}\n[200]{\"status\":\"ok\"}\n[200]",
        "{out}"
    );
}
