//! The gateway under abuse: the real `onerecord-gateway` binary over loopback, attacked by
//! slow and stalled clients, floods past its connection cap, garbage and half-open
//! handshakes, a reader that never reads, certificate rotation under load and a shutdown
//! with requests in flight. Each scenario is bounded, stops by itself, asserts its property
//! and prints one `figures:` line (`cargo test -p onerecord-tls-mio --test hostile --
//! --nocapture`). Sizes can be scaled with `HOSTILE_*` variables (see `tests/README.md`).

mod common;
mod hostile_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, free_port, text};
use hostile_support::*;
use onerecord_tls::{Session, Time, Versions};
use onerecord_tls_mio::Client;

const ACTIVE: &str = "onerecord_connections_active";

/// Both workers still run and nothing panicked (a worker that panicked logs it on stderr).
fn assert_healthy(gw: &common::Gateway, workers: usize) {
    let log = gw.log();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert_eq!(
        worker_threads(gw.child.id()),
        workers,
        "no worker thread died"
    );
}

fn metrics_addr() -> (SocketAddr, String) {
    let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (a, a.to_string())
}

/// The first flight of a real client (a ClientHello), without a connection.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let policy = client_policy(pki, "client", Versions::Tls13AndTls12, false);
    let mut s = Session::client(&policy, "localhost", Time::now()).unwrap();
    s.process(Time::now(), |_| {}).unwrap();
    s.transmit().to_vec()
}

/// Well-behaved mTLS clients making requests until `stop`: (requests ok, failures, errors).
fn good_clients(
    pki: &Pki,
    addr: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, usize, Vec<String>)>> {
    (0..n)
        .map(|i| {
            // Half resume through the session cache, half do full handshakes every time.
            let policy = client_policy(pki, "client", Versions::Tls13AndTls12, i % 2 == 0);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(policy);
                client.io_timeout = Duration::from_secs(10);
                let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                    match client.connect(addr, "localhost") {
                        Ok(mut s) => {
                            for _ in 0..2 {
                                match request(&mut s) {
                                    Ok(body) if body.contains("acme-cargo") => ok += 1,
                                    Ok(body) => {
                                        failed += 1;
                                        errors.push(format!("unexpected body {body}"));
                                    }
                                    Err(e) => {
                                        failed += 1;
                                        errors.push(format!("request: {e}"));
                                        break;
                                    }
                                }
                            }
                            let _ = s.close();
                        }
                        Err(e) => {
                            failed += 1;
                            errors.push(format!("connect: {e}"));
                        }
                    }
                }
                (ok, failed, errors)
            })
        })
        .collect()
}

#[test]
fn slow_loris_is_cut_at_the_handshake_timeout_while_good_clients_are_served() {
    let _serial = serial();
    let wanted = env_usize("HOSTILE_LORIS", 1000);
    let good_n = env_usize("HOSTILE_LORIS_CLIENTS", 50);
    // This process and the gateway each hold one descriptor per connection.
    let have = raise_nofile(wanted as u64 + 1024) as usize;
    let loris_n = wanted.min(have.saturating_sub(4 * good_n + 256));
    if loris_n < wanted {
        println!("slow_loris: scaled to {loris_n} connections by RLIMIT_NOFILE {have}");
    }
    assert!(
        loris_n >= 100,
        "RLIMIT_NOFILE {have} is too low for this scenario"
    );
    let pki = Pki::new();
    let (maddr, m) = metrics_addr();
    let timeout = Duration::from_secs(3);
    let gw = mtls_gateway(
        &pki,
        &[
            "--handshake-timeout",
            "3",
            "--workers",
            "2",
            "--metrics",
            &m,
        ],
    );
    let pid = gw.child.id();
    let hello = client_hello(&pki);
    let base_rss = rss_kib(pid);
    let start = Instant::now();

    struct Loris {
        s: TcpStream,
        opened: Instant,
        sent: usize,
        dribble: bool,
        closed: Option<Duration>,
    }
    let mut loris = Vec::with_capacity(loris_n);
    for i in 0..loris_n {
        let s = TcpStream::connect(gw.addr).expect("loris connect");
        s.set_nonblocking(true).unwrap();
        loris.push(Loris {
            s,
            opened: Instant::now(),
            sent: 0,
            dribble: i % 2 == 0,
            closed: None,
        });
    }
    let opened_in = start.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let good = good_clients(&pki, gw.addr, good_n, stop.clone());

    // Dribble one byte a second into half of them, nothing into the others; note when the
    // gateway closes each one.
    let mut buf = [0u8; 4096];
    let watch = Instant::now();
    let mut peak_open_rss = 0;
    while watch.elapsed() < timeout + Duration::from_secs(5) {
        let mut open = 0;
        for l in loris.iter_mut().filter(|l| l.closed.is_none()) {
            match l.s.read(&mut buf) {
                Ok(0) => l.closed = Some(l.opened.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => l.closed = Some(l.opened.elapsed()),
            }
            if l.closed.is_none()
                && l.dribble
                && l.sent < hello.len()
                && l.opened.elapsed() >= Duration::from_secs(l.sent as u64)
            {
                match l.s.write(&hello[l.sent..l.sent + 1]) {
                    Ok(n) => l.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => l.closed = Some(l.opened.elapsed()),
                }
            }
            if l.closed.is_none() {
                open += 1;
            }
        }
        peak_open_rss = peak_open_rss.max(rss_kib(pid));
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Keep the good clients going a little after the last loris is gone.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    for t in good {
        let (o, f, e) = t.join().unwrap();
        ok += o;
        failed += f;
        errors.extend(e);
    }
    let peak = peak_rss_kib(pid);
    let closes: Vec<Duration> = loris.iter().filter_map(|l| l.closed).collect();
    let earliest = closes.iter().min().copied().unwrap_or_default();
    let latest = closes.iter().max().copied().unwrap_or_default();
    let logged = Instant::now();
    while gw.log_count("failure=timeout") < loris_n && logged.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let timeouts = gw.log_count("failure=timeout");
    let active = wait_metric(maddr, ACTIVE, 0.0, Duration::from_secs(5));
    let fig = Figures {
        scenario: "slow_loris",
        connections: loris_n + ok / 2,
        failures: failed + (loris_n - closes.len()),
        peak_rss_kib: peak,
        elapsed: start.elapsed(),
        extra: format!(
            "loris={loris_n} opened_in_ms={} good_clients={good_n} good_requests={ok} \
             closed_after_s={:.2}..{:.2} timeout_refusals={timeouts} rss_base_kib={base_rss} \
             rss_with_loris_kib={peak_open_rss}",
            opened_in.as_millis(),
            earliest.as_secs_f64(),
            latest.as_secs_f64()
        ),
    };
    fig.print();

    assert_eq!(
        failed,
        0,
        "well-behaved clients failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(ok >= 2 * good_n, "too few good requests: {ok}");
    assert_eq!(closes.len(), loris_n, "every stalled connection is closed");
    assert!(
        earliest >= timeout - Duration::from_millis(300),
        "closed before the handshake timeout: {earliest:?}"
    );
    assert!(
        latest <= timeout + Duration::from_millis(2500),
        "closed too long after the handshake timeout: {latest:?}"
    );
    assert!(
        timeouts >= loris_n,
        "refusals logged as timeouts: {timeouts}"
    );
    assert_eq!(active, Some(0.0), "no connection left behind");
    assert_healthy(&gw, 2);
    // Bounded memory: a stalled connection costs a session with its first buffers; allow
    // 32 KiB per connection on top of the idle process (measured: about 10 KiB).
    let bound = base_rss + 32 * (loris_n + good_n) as u64;
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB over the bound {bound} KiB"
    );
}

#[test]
fn flood_past_max_connections_is_refused_fast_and_accept_resumes() {
    let _serial = serial();
    let max = 20;
    let wanted = env_usize("HOSTILE_FLOOD", 1000);
    let have = raise_nofile(wanted as u64 + 512) as usize;
    let flood_n = wanted.min(have.saturating_sub(256));
    if flood_n < wanted {
        println!("flood: scaled to {flood_n} connections by RLIMIT_NOFILE {have}");
    }
    let pki = Pki::new();
    let (maddr, m) = metrics_addr();
    let gw = mtls_gateway(
        &pki,
        &["--max-connections", "20", "--workers", "2", "--metrics", &m],
    );
    let pid = gw.child.id();
    let start = Instant::now();
    let hello = client_hello(&pki);
    let policy = client_policy(&pki, "client", Versions::Tls13AndTls12, true);
    let mut client = Client::new(policy);
    client.io_timeout = Duration::from_secs(5);
    let mut held: Vec<_> = (0..max)
        .map(|_| {
            client
                .connect(gw.addr, "localhost")
                .expect("connect under the cap")
        })
        .collect();
    for s in &mut held {
        request(s).expect("request under the cap");
    }
    assert_eq!(
        wait_metric(maddr, ACTIVE, max as f64, Duration::from_secs(5)),
        Some(max as f64)
    );

    // The flood: every excess connection sends a ClientHello and must be closed at once,
    // without a byte of handshake.
    let flood_start = Instant::now();
    let mut flood = Vec::with_capacity(flood_n);
    for _ in 0..flood_n {
        let mut s = TcpStream::connect(gw.addr).expect("connect (the kernel accepts)");
        let at = Instant::now();
        let _ = s.write_all(&hello);
        s.set_nonblocking(true).unwrap();
        flood.push((s, at, None::<Duration>, 0usize));
    }
    let mut buf = [0u8; 4096];
    while flood_start.elapsed() < Duration::from_secs(10) {
        let mut open = 0;
        for (s, at, closed, got) in flood.iter_mut().filter(|f| f.2.is_none()) {
            match s.read(&mut buf) {
                Ok(0) => *closed = Some(at.elapsed()),
                Ok(n) => *got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
                Err(_) => *closed = Some(at.elapsed()),
            }
        }
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let flood_time = flood_start.elapsed();
    let refused: Vec<Duration> = flood.iter().filter_map(|f| f.2).collect();
    let slowest = refused.iter().max().copied().unwrap_or_default();
    let answered: usize = flood.iter().map(|f| f.3).sum();
    drop(flood);

    // The established connections keep working.
    let mut failures = 0;
    for s in &mut held {
        if request(s).is_err() {
            failures += 1;
        }
    }
    // Load drops: half of them leave; new connections are accepted again.
    for s in held.drain(..max / 2) {
        let _ = s.close();
    }
    assert_eq!(
        wait_metric(maddr, ACTIVE, (max / 2) as f64, Duration::from_secs(5)),
        Some((max / 2) as f64),
        "closed connections are counted out"
    );
    let resumed_at = Instant::now();
    for _ in 0..max / 2 {
        match client.connect(gw.addr, "localhost") {
            Ok(mut s) => {
                if request(&mut s).is_err() {
                    failures += 1;
                }
                held.push(s);
            }
            Err(_) => failures += 1,
        }
    }
    let refill = resumed_at.elapsed();
    // At the cap again: the next one is refused.
    let over = client.connect(gw.addr, "localhost");
    let logged = Instant::now();
    while gw.log_count("over capacity") <= flood_n && logged.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let capacity_lines = gw.log_count("over capacity");
    let fig = Figures {
        scenario: "connection_flood",
        connections: max + flood_n + max / 2 + 1,
        failures: failures + (flood_n - refused.len()) + answered,
        peak_rss_kib: peak_rss_kib(pid),
        elapsed: start.elapsed(),
        extra: format!(
            "max_connections={max} flood={flood_n} refused={} slowest_refusal_ms={} \
             flood_total_ms={} refill_ms={} over_capacity_logged={capacity_lines}",
            refused.len(),
            slowest.as_millis(),
            flood_time.as_millis(),
            refill.as_millis()
        ),
    };
    fig.print();
    assert_eq!(refused.len(), flood_n, "every excess connection is closed");
    assert_eq!(answered, 0, "no handshake byte for an excess connection");
    assert!(
        slowest < Duration::from_secs(1),
        "refusals must be fast: {slowest:?}"
    );
    assert_eq!(failures, 0, "established connections and refills must work");
    assert!(
        over.is_err(),
        "back at the cap, a new connection is refused"
    );
    assert_healthy(&gw, 2);
    assert!(
        capacity_lines > flood_n,
        "refusals are logged: {capacity_lines}"
    );
    for s in held {
        let _ = s.close();
    }
}

/// What a hostile connection must see.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Closed well before the handshake timeout, with this plaintext alert (or none).
    Prompt(Option<u8>),
    /// Closed well before the handshake timeout; any alert.
    PromptAny,
    /// Closed at the handshake timeout (nothing decidable arrived).
    AtTimeout,
    /// Closed, promptly or at the timeout.
    Closed,
    /// The engine's client decrypted this alert from the gateway, then the gateway closed.
    Encrypted(onerecord_tls::Alert),
}

struct Outcome {
    name: String,
    expect: Expect,
    ending: Ending,
    alert13: Option<onerecord_tls::Alert>,
}

impl Outcome {
    fn check(&self, timeout: Duration) -> Result<(), String> {
        let e = &self.ending;
        let prompt = e.closed && e.after < timeout / 2;
        let at_timeout = e.closed
            && e.after >= timeout - Duration::from_millis(400)
            && e.after <= timeout + Duration::from_millis(2500);
        let ok = match self.expect {
            Expect::Prompt(alert) => prompt && e.plaintext_alert().map(|(_, d)| d) == alert,
            Expect::PromptAny => prompt,
            Expect::AtTimeout => at_timeout,
            Expect::Closed => prompt || at_timeout,
            Expect::Encrypted(a) => prompt && self.alert13 == Some(a),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{}: expected {:?}, got closed={} after={:?} alert={:?} alert13={:?} bytes={}",
                self.name,
                self.expect,
                e.closed,
                e.after,
                e.plaintext_alert(),
                self.alert13,
                e.bytes.len()
            ))
        }
    }
}

/// Connect, send `bytes`, optionally half-close, and wait for the gateway to close.
fn raw_case(addr: SocketAddr, name: &str, bytes: Vec<u8>, fin: bool, expect: Expect) -> Outcome {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(&bytes);
    if fin {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    Outcome {
        name: name.to_string(),
        expect,
        ending: wait_close(&mut s, Duration::from_secs(7)),
        alert13: None,
    }
}

/// A record header announcing `len` bytes, and `body` bytes of filler.
fn record(kind: u8, len: u16, body: usize) -> Vec<u8> {
    let mut r = vec![kind, 0x03, 0x03];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend(std::iter::repeat_n(0x41, body));
    r
}

/// A TLS connection driven by the engine's client; `inject` is written after `stage`
/// (`0`: after the ClientHello was answered, `1`: once established).
fn tls_case(
    addr: SocketAddr,
    policy: &onerecord_tls::ClientPolicy,
    name: &str,
    stage: u8,
    inject: Vec<u8>,
    fin: bool,
    expect: Expect,
) -> Outcome {
    let mut c = RawTls::connect(addr, policy).expect("connect");
    if stage == 0 {
        let hello = c.output();
        c.tcp.write_all(&hello).unwrap();
        c.read_for(Duration::from_secs(3), |c| {
            !c.session.transmit().is_empty() || c.session.is_established()
        })
        .expect("server flight");
    } else {
        c.handshake(Duration::from_secs(5)).expect("handshake");
    }
    let _ = c.tcp.write_all(&inject);
    if fin {
        let _ = c.tcp.shutdown(std::net::Shutdown::Write);
    }
    let ending = wait_close(&mut c.tcp, Duration::from_secs(7));
    let _ = c.feed(&ending.bytes);
    Outcome {
        name: name.to_string(),
        expect,
        alert13: c.peer_alert(),
        ending,
    }
}

/// Run a handshake, sending the client's records only up to record `cut` (and half of it
/// when `half`), then half-close (`fin`) or drop the socket. `None` when the handshake
/// finished before the cut (all records sent).
fn cut_case(
    addr: SocketAddr,
    policy: &onerecord_tls::ClientPolicy,
    cut: usize,
    half: bool,
    fin: bool,
) -> Option<Ending> {
    let mut c = RawTls::connect(addr, policy).expect("connect");
    let mut sent = 0;
    let start = Instant::now();
    'run: while start.elapsed() < Duration::from_secs(5) {
        let out = c.output();
        for r in records(&out) {
            if sent == cut {
                if half {
                    let _ = c.tcp.write_all(&r[..r.len() / 2]);
                }
                break 'run;
            }
            c.tcp.write_all(&r).expect("write");
            sent += 1;
        }
        if c.session.is_established() {
            if sent < cut {
                return None;
            }
            break;
        }
        c.read_for(Duration::from_secs(2), |c| {
            !c.session.transmit().is_empty() || c.session.is_established()
        })
        .ok()?;
    }
    if fin {
        let _ = c.tcp.shutdown(std::net::Shutdown::Write);
        Some(wait_close(&mut c.tcp, Duration::from_secs(5)))
    } else {
        Some(Ending {
            closed: true,
            ..Ending::default()
        })
    }
}

fn openssl_client(addr: SocketAddr, args: &[String], script: &[(&[u8], u64)]) -> String {
    let mut child = std::process::Command::new("timeout")
        .args(["15", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut input = child.stdin.take().unwrap();
    for (bytes, pause_ms) in script {
        std::thread::sleep(Duration::from_millis(*pause_ms));
        let _ = input.write_all(bytes);
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(input);
    text(&child.wait_with_output().expect("s_client output"))
}

#[test]
fn garbage_and_half_open_connections_get_an_alert_or_a_close_and_workers_survive() {
    let _serial = serial();
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    // Chains deeper than webpki's limit (6 intermediates) and a legal one, under anchors the
    // gateway trusts.
    deep_chain(&dir, "deep", 7);
    deep_chain(&dir, "shallow", 3);
    let mut bundle = pki.ca.pem();
    for r in ["deep-root.pem", "shallow-root.pem"] {
        bundle.push_str(&std::fs::read_to_string(dir.join(r)).unwrap());
    }
    std::fs::write(dir.join("ca.pem"), bundle).unwrap();
    let (maddr, m) = metrics_addr();
    let timeout = Duration::from_secs(3);
    let gw = mtls_gateway(
        &pki,
        &[
            "--handshake-timeout",
            "3",
            "--workers",
            "2",
            "--metrics",
            &m,
        ],
    );
    let addr = gw.addr;
    let pid = gw.child.id();
    assert_eq!(worker_threads(pid), 2, "two workers at the start");
    let start = Instant::now();
    let hello = client_hello(&pki);
    let p13 = client_policy(&pki, "client", Versions::Tls13Only, false);
    let p12 = client_policy(&pki, "client", Versions::Tls12Only, false);

    let mut threads: Vec<std::thread::JoinHandle<Outcome>> = Vec::new();
    let mut spawn_raw = |name: String, bytes: Vec<u8>, fin: bool, expect: Expect| {
        threads.push(std::thread::spawn(move || {
            raw_case(addr, &name, bytes, fin, expect)
        }));
    };
    // Stalled: nothing, a truncated record held open.
    spawn_raw("silent connection".into(), vec![], false, Expect::AtTimeout);
    spawn_raw(
        "truncated ClientHello, held open".into(),
        hello[..hello.len() / 2].to_vec(),
        false,
        Expect::AtTimeout,
    );
    spawn_raw(
        "ClientHello header only, held open".into(),
        hello[..3].to_vec(),
        false,
        Expect::AtTimeout,
    );
    // Truncated then end of stream.
    spawn_raw(
        "truncated ClientHello, then FIN".into(),
        hello[..hello.len() / 2].to_vec(),
        true,
        Expect::PromptAny,
    );
    spawn_raw(
        "record header only, then FIN".into(),
        hello[..5].to_vec(),
        true,
        Expect::PromptAny,
    );
    // Malformed first bytes with a documented answer.
    spawn_raw(
        "not TLS at all".into(),
        b"\x00\x01\x02 hello? \xff\xfe".to_vec(),
        false,
        Expect::Prompt(None),
    );
    spawn_raw(
        "SSLv2 ClientHello".into(),
        vec![0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0, 0, 0, 0x10],
        false,
        Expect::Prompt(Some(70)),
    );
    spawn_raw(
        "application data before a handshake".into(),
        record(0x17, 5, 5),
        false,
        Expect::Prompt(Some(10)),
    );
    spawn_raw(
        "ServerHello from a client".into(),
        [record(0x16, 4, 0), vec![0x02, 0, 0, 0]].concat(),
        false,
        Expect::Prompt(Some(10)),
    );
    spawn_raw(
        "empty handshake record".into(),
        record(0x16, 0, 0),
        false,
        Expect::Prompt(Some(50)),
    );
    spawn_raw(
        "oversized first record (18,438 bytes announced)".into(),
        record(0x16, 0x4801, 1000),
        false,
        Expect::Prompt(Some(22)),
    );
    // Random bytes, deterministic seeds, with and without a TLS-looking start.
    let mut rng = Rng(0x0e4e_c04d);
    for i in 0..16 {
        let len = rng.range(16, 4096);
        let mut bytes = rng.bytes(len);
        if i % 4 == 0 {
            bytes[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        }
        spawn_raw(
            format!("random bytes #{i}"),
            bytes,
            i % 2 == 1,
            Expect::Closed,
        );
    }
    // Inside a TLS connection. Past the first record, rustls answers a record header over
    // 18,437 bytes with `decode_error` (its `InvalidMessage::MessageTooLarge`); the
    // admission parser answers the same on the first record with `record_overflow`.
    let tls = |name: &str, p: &onerecord_tls::ClientPolicy, stage, inject, fin, expect| {
        let (name, p) = (name.to_string(), p.clone());
        std::thread::spawn(move || tls_case(addr, &p, &name, stage, inject, fin, expect))
    };
    use onerecord_tls::Alert;
    threads.push(tls(
        "TLS 1.2: oversized record after the ServerHelloDone",
        &p12,
        0,
        record(0x16, 0x4801, 100),
        false,
        Expect::Prompt(Some(50)),
    ));
    threads.push(tls(
        "TLS 1.3: oversized record before the client Finished",
        &p13,
        0,
        record(0x17, 0x4801, 100),
        false,
        Expect::Encrypted(Alert::DecodeError),
    ));
    threads.push(tls(
        "TLS 1.3: oversized record once established",
        &p13,
        1,
        record(0x17, 0x4801, 100),
        false,
        Expect::Encrypted(Alert::DecodeError),
    ));
    threads.push(tls(
        "TLS 1.2: oversized record once established",
        &p12,
        1,
        record(0x17, 0x4801, 100),
        false,
        Expect::Encrypted(Alert::DecodeError),
    ));
    threads.push(tls(
        "TLS 1.3: forged record once established",
        &p13,
        1,
        [record(0x17, 195, 0), Rng(7).bytes(195)].concat(),
        false,
        Expect::Encrypted(Alert::BadRecordMac),
    ));
    threads.push(tls(
        "TLS 1.3: truncated record once established, then FIN",
        &p13,
        1,
        record(0x17, 64, 10),
        true,
        Expect::PromptAny,
    ));
    threads.push(tls(
        "TLS 1.3: stall after the ServerHello",
        &p13,
        0,
        vec![],
        false,
        Expect::AtTimeout,
    ));

    // A real peer: OpenSSL renegotiating TLS 1.2 (`R`), and chains too deep / deep enough.
    let ossl_args = |who: &str, v: &str| -> Vec<String> {
        let mut a = vec![
            "-CAfile".into(),
            pki.path("ca.pem"),
            "-verify_return_error".into(),
            v.into(),
        ];
        if who.ends_with("-leaf") {
            let base = who.trim_end_matches("-leaf");
            a.extend([
                "-cert".into(),
                pki.path(&format!("{base}-leaf.pem")),
                "-cert_chain".into(),
                pki.path(&format!("{base}-chain.pem")),
                "-key".into(),
                pki.path(&format!("{base}.key")),
            ]);
        } else {
            a.extend([
                "-cert".into(),
                pki.path(&format!("{who}.pem")),
                "-key".into(),
                pki.path(&format!("{who}.key")),
            ]);
        }
        a
    };
    let reneg_args = ossl_args("client", "-tls1_2");
    let reneg = std::thread::spawn(move || {
        openssl_client(
            addr,
            &reneg_args,
            &[(b"R\n", 300), (b"GET / HTTP/1.0\r\n\r\n", 700)],
        )
    });
    let get: &[(&[u8], u64)] = &[(b"GET / HTTP/1.0\r\n\r\n", 300)];
    let ossl_args_ign = |who: &str, v: &str| {
        let mut a = ossl_args(who, v);
        a.push("-ign_eof".into());
        a
    };
    let deep13 = openssl_client(addr, &ossl_args_ign("deep-leaf", "-tls1_3"), get);
    let deep12 = openssl_client(addr, &ossl_args_ign("deep-leaf", "-tls1_2"), get);
    let shallow = openssl_client(addr, &ossl_args_ign("shallow-leaf", "-tls1_3"), get);

    // A handshake cut after every client record (and in the middle of each), with FIN or
    // an abrupt close, for both versions.
    let mut cut_failures = Vec::new();
    let mut cuts = 0;
    for (v, p) in [("1.3", &p13), ("1.2", &p12)] {
        for fin in [true, false] {
            for cut in 0..16 {
                let mut finished = false;
                for half in [false, true] {
                    match cut_case(addr, p, cut, half, fin) {
                        None => finished = true,
                        Some(e) => {
                            cuts += 1;
                            if fin && !(e.closed && e.after < timeout / 2) {
                                cut_failures.push(format!(
                                    "TLS {v} cut at record {cut} (half={half}): closed={} after={:?}",
                                    e.closed, e.after
                                ));
                            }
                        }
                    }
                }
                if finished {
                    break;
                }
            }
        }
    }

    let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let reneg = reneg.join().unwrap();
    let mut failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.check(timeout).err())
        .collect();
    failures.extend(cut_failures);
    if !(reneg.contains("RENEGOTIATING") && reneg.contains("no renegotiation"))
        || reneg.contains("HTTP/1.0 200")
    {
        failures.push(format!("renegotiation must be refused:\n{reneg}"));
    }
    for (name, out) in [("deep 1.3", &deep13), ("deep 1.2", &deep12)] {
        if !out.contains("alert certificate unknown") || out.contains("HTTP/1.0 200") {
            failures.push(format!("{name}: chain too deep must be refused:\n{out}"));
        }
    }
    if !shallow.contains("HTTP/1.0 200 OK") {
        failures.push(format!("a 3-intermediate chain is accepted:\n{shallow}"));
    }

    // Afterwards: both workers alive, good connections served, nothing left open.
    let workers = worker_threads(pid);
    let mut good_ok = 0;
    for i in 0..12 {
        let p = if i % 2 == 0 { &p13 } else { &p12 };
        let mut c = RawTls::connect(addr, p).unwrap();
        if c.handshake(Duration::from_secs(5)).is_ok() {
            let req = {
                c.session.send(GET11).unwrap();
                c.output()
            };
            c.tcp.write_all(&req).unwrap();
            let _ = c.read_for(Duration::from_secs(5), |c| {
                c.data.windows(10).any(|w| w == b"acme-cargo")
            });
            if String::from_utf8_lossy(&c.data).contains("acme-cargo") {
                good_ok += 1;
            }
            c.session.close();
            let bye = c.output();
            let _ = c.tcp.write_all(&bye);
        }
    }
    let active = wait_metric(maddr, ACTIVE, 0.0, Duration::from_secs(8));
    for o in &outcomes {
        println!(
            "  {:<55} closed={} after_ms={} alert={:?} alert13={:?}",
            o.name,
            o.ending.closed,
            o.ending.after.as_millis(),
            o.ending.plaintext_alert(),
            o.alert13
        );
    }
    let verdict = |out: &str| {
        if out.contains("HTTP/1.0 200 OK") {
            "served".to_string()
        } else {
            out.lines()
                .find(|l| l.contains("alert") || l.contains("no renegotiation"))
                .map_or("closed".to_string(), |l| {
                    l.split(':').nth(5).unwrap_or(l).to_string()
                })
        }
    };
    println!(
        "  {:<55} {}",
        "openssl -tls1_2, `R` (renegotiate)",
        verdict(&reneg)
    );
    println!(
        "  {:<55} {}",
        "client chain, 7 intermediates, TLS 1.3",
        verdict(&deep13)
    );
    println!(
        "  {:<55} {}",
        "client chain, 7 intermediates, TLS 1.2",
        verdict(&deep12)
    );
    println!(
        "  {:<55} {}",
        "client chain, 3 intermediates, TLS 1.3",
        verdict(&shallow)
    );
    let fig = Figures {
        scenario: "garbage_half_open",
        connections: outcomes.len() + cuts + 4 + 12,
        failures: failures.len() + (12 - good_ok),
        peak_rss_kib: peak_rss_kib(pid),
        elapsed: start.elapsed(),
        extra: format!(
            "cases={} handshake_cuts={cuts} workers_after={workers} good_after={good_ok}/12",
            outcomes.len() + 4
        ),
    };
    fig.print();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(workers, 2, "no worker thread died");
    assert_healthy(&gw, 2);
    assert_eq!(good_ok, 12, "the gateway still serves");
    assert_eq!(active, Some(0.0), "no connection left behind");
}

/// The byte at `offset` of the upstream's stream.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

#[test]
fn slow_reader_stalls_the_upstream_within_the_per_connection_bound() {
    let _serial = serial();
    let n = env_usize("HOSTILE_SLOW_READERS", 20);
    const OFFER: usize = 48 << 20;
    let pki = Pki::new();
    // The upstream offers OFFER bytes on every connection as fast as it can.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap().to_string();
    up.set_nonblocking(true).unwrap();
    let counters: Arc<Mutex<Vec<Arc<AtomicUsize>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (counters, stop) = (counters.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let Ok((s, _)) = up.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(64 * 1024);
                s.set_write_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let written = Arc::new(AtomicUsize::new(0));
                counters.lock().unwrap().push(written.clone());
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut off = 0;
                    let mut chunk = vec![0u8; 64 * 1024];
                    while off < OFFER && !stop.load(Ordering::Relaxed) {
                        let len = chunk.len().min(OFFER - off);
                        for (i, b) in chunk[..len].iter_mut().enumerate() {
                            *b = pattern(off + i);
                        }
                        match s.write(&chunk[..len]) {
                            Ok(0) => break,
                            Ok(k) => {
                                off += k;
                                written.store(off, Ordering::Relaxed);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        })
    };
    let gw = mtls_gateway(&pki, &["--upstream", &up_addr, "--workers", "2"]);
    let pid = gw.child.id();
    let start = Instant::now();
    let base = rss_kib(pid);
    let policy = client_policy(&pki, "client", Versions::Tls13AndTls12, false);
    // Readers with a small receive window that read nothing after the handshake.
    let mut readers: Vec<RawTls> = (0..n)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(16 * 1024).unwrap();
            sock.connect(&gw.addr.into()).unwrap();
            let mut c = RawTls::over(sock.into(), &policy).unwrap();
            c.handshake(Duration::from_secs(10)).expect("handshake");
            c
        })
        .collect();
    // Wait until every upstream is stalled (no progress for 1 s), bounded.
    let total = || -> (usize, Vec<usize>) {
        let v: Vec<usize> = counters
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (v.iter().sum(), v)
    };
    let mut last = (usize::MAX, Vec::new());
    let mut stable_since = Instant::now();
    let wait = Instant::now();
    let mut stalled = false;
    while wait.elapsed() < Duration::from_secs(20) {
        let now = total();
        if now.0 != last.0 || now.1.len() < n {
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(1) {
            stalled = true;
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    let stalled_in = wait.elapsed();
    let (sum, per_conn) = total();
    let rss_stalled = rss_kib(pid);
    let growth = rss_stalled.saturating_sub(base);
    // One reader now reads everything: every byte arrives, in order, then close_notify.
    let mut r = readers.remove(0);
    let drain_start = Instant::now();
    let _ = r.read_for(Duration::from_secs(30), |c| {
        c.data.len() >= OFFER || c.session.peer_closed()
    });
    let drain = drain_start.elapsed();
    let intact = r.data.len() == OFFER && r.data.iter().enumerate().all(|(i, b)| *b == pattern(i));
    let _ = r.read_for(Duration::from_secs(5), |c| c.session.peer_closed());
    let clean_end = r.session.peer_closed();
    let peak = peak_rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    drop(readers);
    acceptor.join().unwrap();
    let per_conn_bound_kib = 256;
    let fig = Figures {
        scenario: "slow_reader",
        connections: n,
        failures: usize::from(!intact) + usize::from(!clean_end),
        peak_rss_kib: peak,
        elapsed: start.elapsed(),
        extra: format!(
            "offered_per_conn_mib={} stalled_after_kib={}..{} stalled_in_ms={} \
             rss_base_kib={base} rss_stalled_kib={rss_stalled} growth_per_conn_kib={} \
             drained_mib={:.1} in_ms={}",
            OFFER >> 20,
            per_conn.iter().min().unwrap_or(&0) / 1024,
            per_conn.iter().max().unwrap_or(&0) / 1024,
            stalled_in.as_millis(),
            growth / n as u64,
            r.data.len() as f64 / (1 << 20) as f64,
            drain.as_millis()
        ),
    };
    fig.print();
    assert_eq!(per_conn.len(), n, "one upstream connection per reader");
    // The stall point is set by kernel socket buffers (autotuned, several MiB on loopback);
    // what matters is that the upstream stops long before it has sent everything.
    assert!(
        stalled && per_conn.iter().all(|w| *w < OFFER / 2),
        "the upstream must be stalled by backpressure: {per_conn:?} (sum {sum})"
    );
    assert!(
        growth <= per_conn_bound_kib * n as u64,
        "RSS grew {growth} KiB for {n} stalled readers (bound {per_conn_bound_kib} KiB each)"
    );
    assert!(
        intact,
        "the drained stream is complete and in order ({} bytes)",
        r.data.len()
    );
    assert!(clean_end, "the stream ends with close_notify");
    assert_healthy(&gw, 2);
}

/// One connection attempt of a rotation client.
struct Attempt {
    start: Instant,
    end: Instant,
    ok: bool,
    /// Server certificate serial of a full handshake.
    server_serial: Option<String>,
    error: String,
}

/// A client connecting continuously (new connection, one request, close) until `stop`.
fn rotation_client(
    policy: onerecord_tls::ClientPolicy,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pause: Duration,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Attempt>> {
    std::thread::spawn(move || {
        let mut client = Client::new(policy);
        client.io_timeout = Duration::from_secs(10);
        let mut out = Vec::new();
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
            let start = Instant::now();
            let mut a = Attempt {
                start,
                end: start,
                ok: false,
                server_serial: None,
                error: String::new(),
            };
            match client.connect(addr, "localhost") {
                Ok(mut s) => {
                    a.server_serial = s
                        .identity()
                        .filter(|id| id.handshake != onerecord_tls::HandshakeKind::Resumed)
                        .and_then(|id| id.leaf.as_ref())
                        .map(|l| l.serial_hex());
                    match request(&mut s) {
                        Ok(_) => a.ok = true,
                        Err(e) => a.error = format!("request: {e}"),
                    }
                    let _ = s.close();
                }
                Err(e) => a.error = format!("connect: {e}"),
            }
            a.end = Instant::now();
            out.push(a);
            done.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(pause);
        }
        out
    })
}

#[test]
fn rotation_under_load_refuses_only_what_the_new_policy_refuses() {
    use onerecord_tls_tests::{Ca, LeafSpec, wall_secs};
    let _serial = serial();
    let n = env_usize("HOSTILE_ROTATION_CLIENTS", 100);
    let pki = Pki::new();
    let dir = pki.dir.path();
    let write = |name: &str, data: &[u8]| {
        // Write then rename, as a deployment tool would.
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    let victim = pki
        .ca
        .issue(&LeafSpec::client("victim-cargo").around_wall_clock());
    write("victim.pem", victim.chain_pem.as_bytes());
    write("victim.key", victim.key_pem.as_bytes());
    let ca2 = Ca::new("Rotated-in CA");
    let newcomer = ca2.issue(&LeafSpec::client("new-cargo").around_wall_clock());
    write("newcomer.pem", newcomer.chain_pem.as_bytes());
    write("newcomer.key", newcomer.key_pem.as_bytes());
    write("live.pem", pki.server.chain_pem.as_bytes());
    write("live.key", pki.server.key_pem.as_bytes());
    write("trust.pem", pki.ca.pem().as_bytes());
    write("live-crl.der", &std::fs::read(dir.join("crl.der")).unwrap());
    let (maddr, m) = metrics_addr();
    let gw = common::Gateway::start(
        "server",
        &[
            "--cert",
            &pki.path("live.pem"),
            "--key",
            &pki.path("live.key"),
            "--client-ca",
            &pki.path("trust.pem"),
            "--require-client-cert",
            "--crl",
            &pki.path("live-crl.der"),
            "--crl-allow-unknown",
            "--workers",
            "2",
            "--metrics",
            &m,
        ],
    );
    let pid = gw.child.id();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (The newcomer trusts the gateway's CA; its own certificate is from CA 2.)
    let with = |who: &str, cache: bool| client_policy(&pki, who, Versions::Tls13AndTls12, cache);
    let good_done = Arc::new(AtomicUsize::new(0));
    let good: Vec<_> = (0..n)
        .map(|i| {
            let p = with("client", i % 2 == 0);
            rotation_client(p, gw.addr, stop.clone(), Duration::ZERO, good_done.clone())
        })
        .collect();
    let pause = Duration::from_millis(20);
    // The victim resumes whenever it can: a resumed session must not slip past the new CRL.
    let (v_done, n_done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let victims: Vec<_> = (0..2)
        .map(|i| {
            let p = with("victim", i == 0);
            rotation_client(p, gw.addr, stop.clone(), pause, v_done.clone())
        })
        .collect();
    let newcomers: Vec<_> = (0..2)
        .map(|_| {
            let p = with("newcomer", true);
            rotation_client(p, gw.addr, stop.clone(), pause, n_done.clone())
        })
        .collect();
    // Load for 1.5 s, and (on a slow machine) until each side made a few attempts.
    let enough = |base: [usize; 3]| {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        while t.elapsed() < Duration::from_secs(20)
            && (good_done.load(Ordering::Relaxed) < base[0] + n
                || v_done.load(Ordering::Relaxed) < base[1] + 4
                || n_done.load(Ordering::Relaxed) < base[2] + 4)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    enough([0, 0, 0]);

    // Rotate everything: a new server certificate, CA 2 added, a CRL revoking the victim.
    let server2 = pki.ca.issue(&LeafSpec::server().around_wall_clock());
    write("live.pem", server2.chain_pem.as_bytes());
    write("live.key", server2.key_pem.as_bytes());
    write("trust.pem", (pki.ca.pem() + &ca2.pem()).as_bytes());
    let crl2 = pki.ca.crl_at(wall_secs(), &[victim.serial], 30);
    write("live-crl.der", crl2.as_ref());
    let signalled = Instant::now();
    gw.signal("HUP");
    gw.wait_for_log("reloaded policy", Duration::from_secs(10));
    let reloaded = Instant::now();
    enough([
        good_done.load(Ordering::Relaxed),
        v_done.load(Ordering::Relaxed),
        n_done.load(Ordering::Relaxed),
    ]);
    stop.store(true, Ordering::Relaxed);

    let join = |v: Vec<std::thread::JoinHandle<Vec<Attempt>>>| -> Vec<Attempt> {
        v.into_iter().flat_map(|t| t.join().unwrap()).collect()
    };
    let good = join(good);
    let victims = join(victims);
    let newcomers = join(newcomers);
    let old_serial = format!("{:x}", pki.server.serial);
    let new_serial = format!("{:x}", server2.serial);
    let mut problems = Vec::new();
    let good_failed: Vec<&Attempt> = good.iter().filter(|a| !a.ok).collect();
    for a in good_failed.iter().take(5) {
        problems.push(format!("good client failed: {}", a.error));
    }
    let before = |a: &&Attempt| a.end < signalled;
    let after = |a: &&Attempt| a.start > reloaded;
    let serial_is = |a: &Attempt, s: &str| {
        a.server_serial
            .as_deref()
            .is_none_or(|x| x.trim_start_matches('0').eq_ignore_ascii_case(s))
    };
    let old_cert_after = good
        .iter()
        .filter(after)
        .filter(|a| !serial_is(a, &new_serial))
        .count();
    let new_cert_before = good
        .iter()
        .filter(before)
        .filter(|a| !serial_is(a, &old_serial))
        .count();
    let new_cert_full = good
        .iter()
        .filter(after)
        .filter(|a| a.server_serial.is_some())
        .count();
    if old_cert_after > 0 || new_cert_before > 0 || new_cert_full == 0 {
        problems.push(format!(
            "server certificate: old after reload {old_cert_after}, new before {new_cert_before}, \
             full handshakes with the new one {new_cert_full}"
        ));
    }
    let v_before_ok = victims.iter().filter(before).filter(|a| a.ok).count();
    let v_before = victims.iter().filter(before).count();
    let v_after_ok: Vec<&Attempt> = victims.iter().filter(after).filter(|a| a.ok).collect();
    let v_after = victims.iter().filter(after).count();
    if v_before_ok != v_before || v_before == 0 {
        problems.push(format!(
            "victim before the reload: {v_before_ok}/{v_before} accepted"
        ));
    }
    if !v_after_ok.is_empty() || v_after == 0 {
        problems.push(format!(
            "victim after the reload: {}/{v_after} accepted (must be refused)",
            v_after_ok.len()
        ));
    }
    let n_before_ok = newcomers.iter().filter(before).filter(|a| a.ok).count();
    let n_before = newcomers.iter().filter(before).count();
    let n_after_ok = newcomers.iter().filter(after).filter(|a| a.ok).count();
    let n_after = newcomers.iter().filter(after).count();
    if n_before_ok != 0 || n_before == 0 {
        problems.push(format!(
            "newcomer before the reload: {n_before_ok}/{n_before} accepted (must be refused)"
        ));
    }
    if n_after_ok != n_after || n_after == 0 {
        problems.push(format!(
            "newcomer after the reload: {n_after_ok}/{n_after} accepted"
        ));
    }
    let active = wait_metric(maddr, ACTIVE, 0.0, Duration::from_secs(5));
    let fig = Figures {
        scenario: "rotation_under_load",
        connections: good.len() + victims.len() + newcomers.len(),
        failures: good_failed.len() + problems.len().saturating_sub(good_failed.len().min(5)),
        peak_rss_kib: peak_rss_kib(pid),
        elapsed: start.elapsed(),
        extra: format!(
            "clients={n}+2+2 good_connections={} good_failed={} reload_ms={} \
             victim_ok_before={v_before_ok}/{v_before} victim_refused_after={}/{v_after} \
             newcomer_refused_before={}/{n_before} newcomer_ok_after={n_after_ok}/{n_after}",
            good.len(),
            good_failed.len(),
            (reloaded - signalled).as_millis(),
            v_after - v_after_ok.len(),
            n_before - n_before_ok
        ),
    };
    fig.print();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(active, Some(0.0), "no connection left behind");
    assert_healthy(&gw, 2);
}

/// How one request through a draining gateway ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// The whole response arrived, intact.
    Complete,
    /// close_notify before any byte of the response (the request was not taken).
    ClosedBefore,
    /// close_notify in the middle of a response: data lost behind a clean close.
    Truncated,
    /// The connection ended without close_notify, or another error.
    Unclean,
}

const BODY: usize = 64 * 1024;

/// One request on a kept-alive connection, classified.
fn drained_request(s: &mut onerecord_tls_mio::ClientStream) -> Drained {
    if s.write_all(GET11).is_err() {
        return Drained::Unclean;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= p + 4 + BODY
        {
            let body = &got[p + 4..];
            let ok = got.starts_with(b"HTTP/1.1 200")
                && body.len() == BODY
                && body.iter().enumerate().all(|(i, b)| *b == pattern(i));
            return if ok {
                Drained::Complete
            } else {
                Drained::Unclean
            };
        }
        match s.read(&mut buf) {
            Ok(0) if got.is_empty() => return Drained::ClosedBefore,
            Ok(0) => return Drained::Truncated,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Drained::Unclean,
        }
    }
}

#[test]
fn graceful_shutdown_under_load_completes_or_closes_every_request() {
    let _serial = serial();
    let n = env_usize("HOSTILE_SHUTDOWN_CLIENTS", 40);
    let pki = Pki::new();
    // An HTTP upstream that answers each request after 100 ms with a 64 KiB body sent in
    // four pieces, so that responses are in flight at any moment.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap().to_string();
    up.set_nonblocking(true).unwrap();
    let up_stop = Arc::new(AtomicBool::new(false));
    let upstream = {
        let stop = up_stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                let Ok((mut s, _)) = up.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                std::thread::spawn(move || {
                    let body: Vec<u8> = (0..BODY).map(pattern).collect();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(k) => req.extend_from_slice(&buf[..k]),
                            }
                        }
                        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        req.drain(..end);
                        std::thread::sleep(Duration::from_millis(100));
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                        if s.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        for piece in body.chunks(BODY / 4) {
                            std::thread::sleep(Duration::from_millis(20));
                            if s.write_all(piece).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        })
    };
    let mut gw = mtls_gateway(
        &pki,
        &[
            "--upstream",
            &up_addr,
            "--workers",
            "2",
            "--drain-timeout",
            "10",
        ],
    );
    let pid = gw.child.id();
    let start = Instant::now();
    let policy = client_policy(&pki, "client", Versions::Tls13AndTls12, true);
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let policy = policy.clone();
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut client = Client::new(policy);
                client.io_timeout = Duration::from_secs(20);
                let mut log: Vec<(Instant, Instant, Drained)> = Vec::new();
                let Ok(mut s) = client.connect(addr, "localhost") else {
                    return log;
                };
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(30) {
                    let begin = Instant::now();
                    let d = drained_request(&mut s);
                    log.push((begin, Instant::now(), d));
                    if d != Drained::Complete {
                        break;
                    }
                }
                log
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    let peak_before = peak_rss_kib(pid);
    let signalled = Instant::now();
    gw.signal("TERM");
    let logs: Vec<Vec<(Instant, Instant, Drained)>> =
        clients.into_iter().map(|t| t.join().unwrap()).collect();
    let all_closed = signalled.elapsed();
    let code = gw.wait_exit(Duration::from_secs(15));
    let exited = signalled.elapsed();
    up_stop.store(true, Ordering::Relaxed);
    upstream.join().unwrap();
    let count = |d: Drained| logs.iter().flatten().filter(|r| r.2 == d).count();
    let completed = count(Drained::Complete);
    let across = logs
        .iter()
        .flatten()
        .filter(|r| r.2 == Drained::Complete && r.0 < signalled && r.1 > signalled)
        .count();
    let truncated = count(Drained::Truncated);
    let unclean = count(Drained::Unclean);
    let closed_before = count(Drained::ClosedBefore);
    let ended_clean = logs
        .iter()
        .filter(|l| l.last().is_some_and(|r| r.2 == Drained::ClosedBefore))
        .count();
    let fig = Figures {
        scenario: "graceful_shutdown",
        connections: n,
        failures: truncated + unclean + (n - ended_clean),
        peak_rss_kib: peak_before.max(peak_rss_kib(pid)),
        elapsed: start.elapsed(),
        extra: format!(
            "requests_completed={completed} completed_across_sigterm={across} \
             close_notify_before_response={closed_before} truncated={truncated} \
             unclean={unclean} all_closed_ms={} exit_ms={} exit_code={code:?}",
            all_closed.as_millis(),
            exited.as_millis()
        ),
    };
    fig.print();
    assert_eq!(
        truncated, 0,
        "a response cut by close_notify is data lost silently"
    );
    assert_eq!(unclean, 0, "every connection ends with close_notify");
    assert_eq!(ended_clean, n, "every client saw close_notify");
    assert!(completed >= n, "requests completed under load: {completed}");
    assert!(across > 0, "requests in flight at SIGTERM completed");
    assert_eq!(code, Some(0), "the gateway exits cleanly");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
