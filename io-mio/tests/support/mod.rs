//! Shared by the HTTP tests: the Python upstream (`tests/upstream/echo_server.py`), which
//! echoes what reached it and counts its connections and requests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The Python upstream, killed on drop.
pub struct Upstream {
    child: Child,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Calls of [`Upstream::stats`] so far (each is a connection and a request).
    stats_calls: std::cell::Cell<u64>,
}

impl Upstream {
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/echo_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port: u16 = line.trim().parse().expect("port");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stats_calls: std::cell::Cell::new(0),
        }
    }

    /// (TCP connections accepted, requests answered) so far, not counting those of this
    /// function (it asks over a connection of its own).
    pub fn stats(&self) -> (u64, u64) {
        self.stats_calls.set(self.stats_calls.get() + 1);
        let own = self.stats_calls.get();
        let mut s = TcpStream::connect(self.addr).expect("upstream");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: u\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("stats");
        let body = text.split("\r\n\r\n").nth(1).expect("stats body");
        let v: Value = serde_json::from_str(body).expect("stats json");
        (
            v["connections"].as_u64().unwrap() - own,
            v["requests"].as_u64().unwrap() - own,
        )
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
