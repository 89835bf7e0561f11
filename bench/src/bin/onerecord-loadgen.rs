//! `onerecord-loadgen`: drives a TLS server over loopback with the engine's own client and
//! reports handshakes/s (full, resumed), requests/s and latency (new full handshake per
//! request, resumed handshake per request, kept-alive connection), server CPU per connection
//! and per request (`--server-pid`), and server memory per idle connection.
//!
//!     onerecord-loadgen --gen-pki DIR
//!     onerecord-loadgen --connect 127.0.0.1:8443 --ca DIR/ca.pem [--cert DIR/client.pem
//!         --key DIR/client.key] --mode full|resumed|keepalive|idle --concurrency 16
//!         --duration 5 [--idle 10000] [--server-pid PID]... [--tls12|--tls13] [--json]
//!     onerecord-loadgen --proxy 127.0.0.1:3128 --connect 127.0.0.1:8443 --concurrency 8
//!         --duration 5 [--server-pid PID]... [--proxy-pid PID]... [--json]
//!     onerecord-loadgen --table results.jsonl
//!     onerecord-loadgen --frontdoor-table frontdoor.jsonl
//!     onerecord-loadgen --egress-table egress.jsonl
//!
//! Exit status: 0 when every connection and request succeeded, 1 when some failed (the report
//! is printed either way), 2 on bad arguments or when nothing could be measured.

#[path = "../loadgen/mod.rs"]
mod loadgen;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use onerecord_tls::{ClientPolicy, Time, TrustStore, Versions, pki};

use loadgen::driver::{self, Config, Mode};
use loadgen::report::Report;

/// Bound on `--concurrency` and `--idle`.
const MAX_CONNECTIONS: usize = 100_000;
/// Bound on `--duration` (seconds).
const MAX_DURATION: f64 = 3600.0;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// A new connection and full handshake per request.
    Full,
    /// A new connection resuming the previous session per request.
    Resumed,
    /// Requests one after another on kept-alive connections.
    Keepalive,
    /// Hold `--idle` established connections and read the server's memory.
    Idle,
}

/// Loopback TLS load generator (the engine's own client on one mio event loop).
#[derive(Parser, Debug)]
#[command(name = "onerecord-loadgen", version, about)]
struct Cli {
    /// Server address (HOST:PORT, loopback).
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["gen_pki", "table", "frontdoor_table", "egress_table"])]
    connect: Option<SocketAddr>,
    /// Name sent as SNI and verified in the server certificate.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// CA bundle that verifies the server.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["gen_pki", "table", "frontdoor_table", "egress_table", "proxy"])]
    ca: Option<PathBuf>,
    /// Client certificate chain (mTLS).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (mTLS).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// What each connection does.
    #[arg(long, value_enum, default_value = "full")]
    mode: ModeArg,
    /// Connections at once (`idle`: handshakes in flight at once).
    #[arg(long, value_name = "C", default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds (`idle`: seconds the connections are held before reading RSS).
    #[arg(long, value_name = "T", default_value_t = 5.0)]
    duration: f64,
    /// `idle` mode: established connections to hold open.
    #[arg(long, value_name = "K", default_value_t = 1000)]
    idle: usize,
    /// Only TLS 1.2.
    #[arg(long, conflicts_with = "tls13")]
    tls12: bool,
    /// Only TLS 1.3.
    #[arg(long)]
    tls13: bool,
    /// Server process whose CPU (utime + stime) and RSS are read; repeat to sum several.
    #[arg(long, value_name = "PID")]
    server_pid: Vec<u32>,
    /// Load an HTTP forward proxy at ADDR instead (the egress gateway): plain kept-alive
    /// HTTP/1.1 connections (`--concurrency`), each sending `GET http://NAME:PORT/PATH` one
    /// request after another, NAME from `--server-name` and PORT from `--connect` (the
    /// partner behind the proxy). No TLS on this side; `--mode`, `--ca`, `--cert` are unused.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["cert", "tls12", "tls13"])]
    proxy: Option<SocketAddr>,
    /// With `--proxy`: a process of the proxy whose CPU is read and reported apart (the client
    /// side of the network); repeat to sum several.
    #[arg(long, value_name = "PID", requires = "proxy")]
    proxy_pid: Vec<u32>,
    /// Bound on one connect, handshake or request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Request path (an HTTP/1.1 GET with keep-alive).
    #[arg(long, default_value = "/")]
    path: String,
    /// Label stored in the report (the peer's name in `--table`).
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
    /// Write a throwaway ECDSA P-256 PKI (ca, server, client) into DIR and exit.
    #[arg(long, value_name = "DIR", exclusive = true)]
    gen_pki: Option<PathBuf>,
    /// Print the comparison table of a file of JSON reports and exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    table: Option<PathBuf>,
    /// Print the front-door table (reverse proxies, medians over rounds) of a file of JSON
    /// reports and exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    frontdoor_table: Option<PathBuf>,
    /// Print the egress table (pooled through the proxy against new connections, medians
    /// over rounds) of a file of JSON reports and exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    egress_table: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("onerecord-loadgen: {msg}");
    ExitCode::from(2)
}

fn seconds(s: f64, flag: &str, max: f64) -> Result<Duration, String> {
    if !(s > 0.0 && s <= max) {
        return Err(format!("{flag}: {s} is not in (0, {max}]"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn client_policy(cli: &Cli) -> Result<ClientPolicy, String> {
    let ca = cli.ca.as_ref().ok_or("--ca is required")?;
    let trust = TrustStore::from_pem_file(ca).map_err(|e| format!("--ca: {e}"))?;
    let mut b = ClientPolicy::builder(trust).versions(if cli.tls12 {
        Versions::Tls12Only
    } else if cli.tls13 {
        Versions::Tls13Only
    } else {
        Versions::Tls13AndTls12
    });
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        let chain = pki::certificates_from_file(cert).map_err(|e| format!("--cert: {e}"))?;
        let key = pki::private_key_from_file(key).map_err(|e| format!("--key: {e}"))?;
        b = b.client_cert(chain, key);
    }
    b.build(Time::now())
        .map_err(|e| format!("client policy: {e}"))
}

fn table(path: &PathBuf, render: fn(&[serde_json::Value]) -> String) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let mut lines = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(v) => lines.push(v),
            Err(e) => return fail(format!("{}:{}: {e}", path.display(), n + 1)),
        }
    }
    print!("{}", render(&lines));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.gen_pki {
        return match loadgen::pki::generate(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    if let Some(path) = &cli.table {
        return table(path, loadgen::table::render);
    }
    if let Some(path) = &cli.frontdoor_table {
        return table(path, loadgen::frontdoor::render);
    }
    if let Some(path) = &cli.egress_table {
        return table(path, loadgen::egress::render);
    }
    let run = || -> Result<Report, String> {
        let addr = cli.connect.ok_or("--connect is required")?;
        if cli.concurrency == 0 || cli.concurrency > MAX_CONNECTIONS {
            return Err(format!("--concurrency must be in 1..={MAX_CONNECTIONS}"));
        }
        if cli.idle == 0 || cli.idle > MAX_CONNECTIONS {
            return Err(format!("--idle must be in 1..={MAX_CONNECTIONS}"));
        }
        let mode = match cli.mode {
            _ if cli.proxy.is_some() => Mode::Proxy,
            ModeArg::Full => Mode::Full,
            ModeArg::Resumed => Mode::Resumed,
            ModeArg::Keepalive => Mode::Keepalive,
            ModeArg::Idle => Mode::Idle,
        };
        let request = match cli.proxy {
            Some(_) => loadgen::plain::proxy_request(
                &format!("{}:{}", cli.server_name, addr.port()),
                &cli.path,
            ),
            None => format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: onerecord-loadgen\r\n\r\n",
                cli.path, cli.server_name
            )
            .into_bytes(),
        };
        let cfg = Config {
            addr: cli.proxy.unwrap_or(addr),
            server_name: cli.server_name.clone(),
            mode,
            concurrency: cli.concurrency,
            duration: seconds(cli.duration, "--duration", MAX_DURATION)?,
            idle: cli.idle,
            io_timeout: seconds(cli.timeout, "--timeout", 600.0)?,
            request,
            server_pids: cli.server_pid.clone(),
            proxy_pids: cli.proxy_pid.clone(),
        };
        if mode == Mode::Proxy {
            let outcome = loadgen::plain::run(&cfg)?;
            return Ok(Report::new(cli.label.clone(), &cfg, false, outcome));
        }
        let base = client_policy(&cli)?;
        let slots = if mode == Mode::Idle {
            cli.idle
        } else {
            cli.concurrency
        };
        let policies = driver::policies(&base, mode, slots)?;
        let outcome = driver::run(&cfg, policies)?;
        Ok(Report::new(
            cli.label.clone(),
            &cfg,
            cli.cert.is_some(),
            outcome,
        ))
    };
    match run() {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.human());
            }
            if report.failures() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(e),
    }
}
