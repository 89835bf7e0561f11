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
