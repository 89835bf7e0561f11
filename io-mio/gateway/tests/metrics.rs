//! The `--metrics` endpoint of the real `onerecord-gateway` binary, over loopback: no
//! head-of-line blocking, 404/405, `/healthz` and `/readyz`, what the metrics report (CRL
//! dates, certificate expiry per file, reloads, bytes of open connections, refusals for
//! capacity, the handshake histogram, build and process), and the validity of both text
//! formats.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, Pki, free_port, http_get, read_response, sample, scrape};
use onerecord_tls_mio::Client;

fn metrics_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A gateway (identity responder, no client authentication unless `extra` asks for it) with
/// its metrics endpoint up.
fn gateway(pki: &Pki, maddr: SocketAddr, extra: &[&str]) -> Gateway {
    let m = maddr.to_string();
    let mut args = vec![
        "--cert".to_string(),
        pki.path("server.pem"),
        "--key".to_string(),
        pki.path("server.key"),
        "--workers".to_string(),
        "2".to_string(),
        "--metrics".to_string(),
        m,
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start("server", &refs);
    gw.wait_for_log("metrics on", Duration::from_secs(5));
    gw
}

/// Send a raw request to the metrics endpoint; the whole answer (until the server closes,
/// bounded) and how long it took.
fn request(addr: SocketAddr, req: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

fn get(addr: SocketAddr, path: &str) -> String {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .0
}

/// A `GET /metrics` asking for OpenMetrics; the response head and body.
fn scrape_openmetrics(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,\
          text/plain;version=0.0.4;q=0.5\r\n\r\n",
    )
    .unwrap();
    let resp = read_response(&mut s).expect("metrics response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.to_string(), body.to_string())
}

/// The value of the first sample of `name` whose label block contains every one of `labels`
/// (each written `key="value"`).
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (lbls, v) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|want| lbls.contains(want))
            .then(|| v.trim().parse().ok())?
    })
}

/// Scrape until `done` holds (bounded: workers publish their counters at least once a
/// second); the last scrape.
fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let t = scrape(addr);
        if done(&t) || start.elapsed() > Duration::from_secs(5) {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unix seconds of an OpenSSL date (`Mar  1 01:21:03 2027 GMT`), read by `date`.
fn unix_of(openssl_date: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "-d", openssl_date, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date of {openssl_date:?}"))
}

/// One field (`notAfter`, `nextUpdate`, ...) that `openssl <cmd> -noout -<flag>` prints for
/// `file`, as unix seconds.
fn openssl_date(cmd: &str, extra: &[&str], file: &str, flag: &str) -> i64 {
    let out = Command::new("openssl")
        .arg(cmd)
        .args(extra)
        .args(["-in", file, "-noout", &format!("-{}", flag.to_lowercase())])
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let date = text
        .trim()
        .split_once('=')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| panic!("openssl {cmd} -{flag}: {text}"));
    unix_of(&date)
}

fn wall() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn an_idle_client_on_the_metrics_port_does_not_delay_a_scrape() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let _gw = gateway(&pki, maddr, &[]);
    // Clients that connect and never send a byte (a port scanner, a stuck scraper).
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(maddr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        let (resp, took) = request(
            maddr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        // A serial server makes each scrape wait for the idle clients' read timeouts
        // (seconds); an event loop answers in milliseconds. Generous for a loaded machine.
        assert!(
            took < Duration::from_millis(500),
            "scrape {i} took {took:?} while idle clients held connections: {resp:?}"
        );
        assert!(resp.starts_with("HTTP/1.1 200"), "scrape {i}: {resp}");
        assert!(resp.contains("onerecord_connections_active"), "{resp}");
    }
    drop(idle);
}

#[test]
fn idle_clients_beyond_the_connection_cap_cannot_lock_scrapes_out() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let _gw = gateway(&pki, maddr, &[]);
    // More idle connections than the endpoint keeps open (64): the oldest give way.
    let idle: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(maddr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (resp, took) = request(
        maddr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        took < Duration::from_millis(1000),
        "took {took:?}: {resp:?}"
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(idle);
}

#[test]
fn metrics_endpoint_answers_404_for_unknown_paths_and_405_for_other_methods() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let _gw = gateway(&pki, maddr, &[]);
    let status = |r: &str| r.lines().next().unwrap_or("").to_string();

    let r = get(maddr, "/");
    assert!(status(&r).starts_with("HTTP/1.1 404"), "{r}");
    let r = get(maddr, "/metricsx");
    assert!(status(&r).starts_with("HTTP/1.1 404"), "{r}");
    for method in ["POST", "PUT", "DELETE"] {
        let (r, _) = request(
            maddr,
            &format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        );
        assert!(status(&r).starts_with("HTTP/1.1 405"), "{method}: {r}");
        assert!(r.contains("Allow: GET, HEAD"), "{method}: {r}");
    }
    let r = get(maddr, "/metrics?debug=1");
    assert!(status(&r).starts_with("HTTP/1.1 200"), "{r}");
    // HEAD: the head of the answer, no body.
    let (r, _) = request(maddr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status(&r).starts_with("HTTP/1.1 200"), "{r}");
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{r}"
    );
    assert!(body.is_empty(), "HEAD has no body: {body:?}");
    // Not HTTP at all.
    let (r, _) = request(maddr, "\x16\x03\x01\x00\x05hello\r\n\r\n");
    assert!(status(&r).starts_with("HTTP/1.1 400"), "{r}");
}

#[test]
fn healthz_and_readyz_answer_200_while_serving() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let _gw = gateway(&pki, maddr, &[]);
    let r = get(maddr, "/healthz");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = get(maddr, "/readyz");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("ready\n"), "{r}");
}

#[test]
fn readyz_turns_503_while_draining_and_healthz_stays_200() {
    let pki = Pki::new();
    // An upstream that accepts and holds the stream: the drain waits for it.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let holder = std::thread::spawn(move || {
        upstream.set_nonblocking(true).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok((s, _)) = upstream.accept() {
                std::thread::sleep(Duration::from_secs(4));
                drop(s);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let maddr = metrics_addr();
    let mut gw = gateway(&pki, maddr, &["--upstream", &up, "--drain-timeout", "8"]);
    let mut c = Client::new(pki.client_policy(None));
    c.io_timeout = Duration::from_secs(5);
    let mut s = c.connect(gw.addr, "localhost").expect("TLS to the gateway");
    s.write_all(b"hello").unwrap();
    assert!(get(maddr, "/readyz").starts_with("HTTP/1.1 200"));

    gw.signal("TERM");
    gw.wait_for_log("shutting down", Duration::from_secs(5));
    let r = get(maddr, "/readyz");
    assert!(r.starts_with("HTTP/1.1 503"), "draining: {r}");
    let r = get(maddr, "/healthz");
    assert!(r.starts_with("HTTP/1.1 200"), "draining: {r}");
    drop(s);
    holder.join().unwrap();
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        gw.log()
    );
}

#[test]
fn bytes_are_counted_while_a_connection_is_still_open() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let gw = gateway(&pki, maddr, &[]);
    let mut c = Client::new(pki.client_policy(None));
    c.io_timeout = Duration::from_secs(5);
    let mut s = c.connect(gw.addr, "localhost").expect("TLS");
    let r = http_get(&mut s, "/").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let recv = "onerecord_bytes_total{direction=\"received\"}";
    let sent = "onerecord_bytes_total{direction=\"sent\"}";
    let text = scrape_until(maddr, |t| {
        sample(t, recv).unwrap_or(0) > 0 && sample(t, sent).unwrap_or(0) > 0
    });
    assert_eq!(
        sample(&text, "onerecord_connections_active"),
        Some(1),
        "{text}"
    );
    // At least a ClientHello and the request in; a ServerHello, certificate and the
    // response out.
    assert!(sample(&text, recv).unwrap_or(0) > 200, "{text}");
    assert!(sample(&text, sent).unwrap_or(0) > 500, "{text}");
    let before = sample(&text, sent).unwrap();
    // More traffic on the same open connection is counted too.
    let r = http_get(&mut s, "/again").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let text = scrape_until(maddr, |t| sample(t, sent).unwrap_or(0) > before);
    assert!(sample(&text, sent).unwrap_or(0) > before, "{text}");
    assert_eq!(
        sample(&text, "onerecord_connections_active"),
        Some(1),
        "{text}"
    );
    drop(s);
}

#[test]
fn a_connection_refused_for_capacity_is_not_a_handshake_failure() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let gw = gateway(&pki, maddr, &["--max-connections", "1"]);
    let mut c = Client::new(pki.client_policy(None));
    c.io_timeout = Duration::from_secs(5);
    let mut held = c.connect(gw.addr, "localhost").expect("within the cap");
    assert!(
        http_get(&mut held, "/")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    for _ in 0..2 {
        let mut raw = TcpStream::connect(gw.addr).unwrap();
        let got = common::read_all(&mut raw, Duration::from_secs(3));
        assert!(got.is_empty());
    }
    let over = "onerecord_connections_refused_total{reason=\"over_capacity\"}";
    let text = scrape_until(maddr, |t| sample(t, over) == Some(2));
    assert_eq!(sample(&text, over), Some(2), "{text}");
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("onerecord_handshake_failures_total{"))
        .collect();
    assert!(!failures.is_empty(), "{text}");
    for l in &failures {
        assert!(l.ends_with(" 0"), "no handshake failed: {l}\n{text}");
    }
    drop(held);
}

#[test]
fn the_handshake_duration_histogram_counts_every_handshake() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let gw = gateway(&pki, maddr, &[]);
    // Full, then resumed handshakes (the client's session cache), then a TLS 1.2 one.
    let c = Client::new(pki.client_policy(None));
    for _ in 0..3 {
        let mut s = c.connect(gw.addr, "localhost").expect("TLS");
        assert!(http_get(&mut s, "/").unwrap().starts_with("HTTP/1.1 200"));
    }
    let out = common::s_client(
        gw.addr,
        &["-tls1_2"],
        b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    assert!(common::text(&out).contains("200 OK"));
    let handshakes = |t: &str| -> u64 {
        t.lines()
            .filter(|l| l.starts_with("onerecord_handshakes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let count = "onerecord_handshake_duration_seconds_count";
    let text = scrape_until(maddr, |t| handshakes(t) == 4 && sample(t, count) == Some(4));
    assert_eq!(handshakes(&text), 4, "{text}");
    assert!(
        value(
            &text,
            "onerecord_handshakes_total",
            &["version=\"TLSv1.3\"", "kind=\"resumed\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, count), Some(4), "{text}");
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("onerecord_handshake_duration_seconds_bucket{le=\"")?;
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    assert!(buckets.len() >= 5, "{text}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(
        buckets.last().unwrap(),
        &("+Inf".to_string(), 4),
        "{buckets:?}"
    );
    let sum = value(&text, "onerecord_handshake_duration_seconds_sum", &[]).unwrap();
    // Four loopback handshakes: more than nothing, less than the handshake timeout each.
    assert!(sum > 0.0 && sum < 40.0, "sum {sum}");
}

#[test]
fn metrics_report_crl_dates_and_certificate_expiry_per_file() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let (crl, ca, cert) = (
        pki.path("crl.der"),
        pki.path("ca.pem"),
        pki.path("server.pem"),
    );
    let _gw = gateway(
        &pki,
        maddr,
        &["--client-ca", &ca, "--require-client-cert", "--crl", &crl],
    );
    let text = scrape(maddr);

    let file = |f: &str| format!("file=\"{f}\"");
    let next = openssl_date("crl", &["-inform", "DER"], &crl, "nextUpdate");
    let this = openssl_date("crl", &["-inform", "DER"], &crl, "lastUpdate");
    let got = value(
        &text,
        "onerecord_crl_next_update_timestamp_seconds",
        &[&file(&crl), "CN=Gateway Test CA\""],
    );
    assert_eq!(got, Some(next as f64), "{text}");
    let got = value(
        &text,
        "onerecord_crl_this_update_timestamp_seconds",
        &[&file(&crl)],
    );
    assert_eq!(got, Some(this as f64), "{text}");
    let age = value(&text, "onerecord_crl_age_seconds", &[&file(&crl)]).expect("CRL age");
    let expected = (wall() - this) as f64;
    assert!(
        (age - expected).abs() <= 60.0,
        "age {age}, expected about {expected}"
    );

    let not_after = "onerecord_certificate_not_after_timestamp_seconds";
    let got = value(&text, not_after, &[&file(&cert), "role=\"cert\""]);
    let want = openssl_date("x509", &[], &cert, "endDate");
    assert_eq!(got, Some(want as f64), "{text}");
    let got = value(&text, not_after, &[&file(&ca), "role=\"ca\""]);
    let want = openssl_date("x509", &[], &ca, "endDate");
    assert_eq!(got, Some(want as f64), "{text}");
}

#[test]
fn metrics_report_reloads_build_and_process() {
    let test_start = wall();
    let pki = Pki::new();
    let maddr = metrics_addr();
    let gw = gateway(&pki, maddr, &[]);
    let text = scrape(maddr);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        value(&text, "onerecord_build_info", &[&version]),
        Some(1.0),
        "{text}"
    );

    let rss = value(&text, "process_resident_memory_bytes", &[]).expect("rss");
    assert!(rss > 1e6 && rss < 2e9, "rss {rss}");
    let fds = value(&text, "process_open_fds", &[]).expect("open fds");
    let max = value(&text, "process_max_fds", &[]).expect("max fds");
    // stdio, the listeners of two workers, their polls, the metrics socket...
    assert!(fds >= 5.0 && fds < max, "fds {fds} of {max}");
    let cpu = value(&text, "process_cpu_seconds_total", &[]).expect("cpu");
    assert!((0.0..60.0).contains(&cpu), "cpu {cpu}");
    let started = value(&text, "process_start_time_seconds", &[]).expect("start time");
    assert!(
        started >= (test_start - 2) as f64 && started <= (wall() + 1) as f64,
        "start {started}"
    );

    let last = "onerecord_reload_last_success_timestamp_seconds";
    let first = value(&text, last, &[]).expect("last success");
    assert!(first >= (test_start - 2) as f64, "{text}");
    assert_eq!(
        value(&text, "onerecord_reload_last_successful", &[]),
        Some(1.0)
    );

    // A good reload moves the time; a bad one counts a failure and keeps the policy.
    std::thread::sleep(Duration::from_millis(1100));
    gw.signal("HUP");
    gw.wait_for_log("reloaded policy", Duration::from_secs(5));
    let text = scrape(maddr);
    assert!(value(&text, last, &[]).unwrap() > first, "{text}");

    pki.replace_file("server.pem", b"not a certificate\n");
    gw.signal("HUP");
    gw.wait_for_log("reload failed", Duration::from_secs(5));
    let text = scrape(maddr);
    let failures = "onerecord_reload_failures_total{trigger=\"signal\"}";
    assert_eq!(sample(&text, failures), Some(1), "{text}");
    assert_eq!(
        value(&text, "onerecord_reload_last_successful", &[]),
        Some(0.0)
    );
    // The dates are still those of the policy in use.
    let not_after = "onerecord_certificate_not_after_timestamp_seconds";
    assert!(
        value(&text, not_after, &["role=\"cert\""]).is_some(),
        "{text}"
    );
}

/// A strict reading of the exposition: every sample belongs to the family declared by the
/// `# TYPE` line before it (with the suffixes its type allows), families are contiguous and
/// declared once, label blocks are well formed, values are numbers, no series repeats, and
/// histogram buckets are cumulative with `+Inf` equal to `_count`. With `openmetrics` also:
/// counters are named `_total`, and `# EOF` ends the text.
fn check_exposition(text: &str, openmetrics: bool) -> Result<usize, String> {
    let mut declared: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut samples = 0;
    let mut saw_eof = false;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    while let Some(line) = lines.next() {
        if saw_eof {
            return Err(format!("text after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("TYPE: {line}"))?;
            let allowed: &[&str] = if openmetrics {
                &["counter", "gauge", "histogram", "info", "unknown"]
            } else {
                &["counter", "gauge", "histogram", "untyped"]
            };
            if !allowed.contains(&kind) || !name_ok(name) {
                return Err(format!("bad TYPE line {line:?}"));
            }
            if !declared.insert(name.to_string()) {
                return Err(format!("family {name} declared twice"));
            }
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !name_ok(name) {
                return Err(format!("bad HELP line {line:?}"));
            }
            // The TYPE line follows its HELP line.
            match lines.peek() {
                Some(next) if next.starts_with(&format!("# TYPE {name} ")) => continue,
                _ => return Err(format!("HELP {name} not followed by its TYPE")),
            }
        }
        if line.starts_with('#') {
            return Err(format!("unexpected comment {line:?}"));
        }
        // A sample: name, optional {labels}, a value.
        let (family, kind) = current
            .clone()
            .ok_or(format!("sample before TYPE: {line}"))?;
        let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line:?}"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let (key, after) = r.split_once("=\"").ok_or(format!("label: {line:?}"))?;
                if !name_ok(key) {
                    return Err(format!("label name {key:?} in {line:?}"));
                }
                // The value runs to the first unescaped quote.
                let mut val = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => val.push(c),
                            other => return Err(format!("escape {other:?} in {line:?}")),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => val.push(c),
                        None => return Err(format!("unterminated label in {line:?}")),
                    }
                };
                labels.push((key.to_string(), val));
                r = &after[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no value: {line:?}"))?
            .trim();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| format!("value {v:?} in {line:?}"))?,
        };
        let suffixes: &[&str] = match (kind.as_str(), openmetrics) {
            ("counter", true) => &["_total", "_created"],
            ("info", true) => &["_info"],
            ("histogram", _) => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        let suffix = suffixes
            .iter()
            .find(|s| name.strip_suffix(*s) == Some(family.as_str()))
            .ok_or(format!(
                "sample {name} outside its family {family} ({kind})"
            ))?;
        let key = format!("{name}{labels:?}");
        if !series.insert(key.clone()) {
            return Err(format!("series repeated: {line:?}"));
        }
        if *suffix == "_bucket" {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or(format!("bucket without le: {line:?}"))?;
            let bound = if le.1 == "+Inf" {
                f64::INFINITY
            } else {
                le.1.parse().map_err(|_| format!("le {:?}", le.1))?
            };
            buckets.entry(family.clone()).or_default().push((bound, v));
        }
        if *suffix == "_count" {
            counts.insert(family.clone(), v);
        }
        samples += 1;
    }
    if openmetrics && !saw_eof {
        return Err("no # EOF at the end".to_string());
    }
    for (family, b) in &buckets {
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{family}: buckets not cumulative {b:?}"));
        }
        match b.last() {
            Some((bound, v)) if bound.is_infinite() && Some(v) == counts.get(family) => {}
            _ => return Err(format!("{family}: +Inf bucket is not _count")),
        }
    }
    Ok(samples)
}

#[test]
fn the_exposition_is_valid_prometheus_text_and_openmetrics() {
    let pki = Pki::new();
    let maddr = metrics_addr();
    let (crl, ca) = (pki.path("crl.der"), pki.path("ca.pem"));
    let gw = gateway(
        &pki,
        maddr,
        &["--client-ca", &ca, "--crl", &crl, "--crl-allow-unknown"],
    );
    // Some traffic, so the histogram and counters are not all zero.
    let c = Client::new(pki.client_policy(Some("client")));
    let mut s = c.connect(gw.addr, "localhost").expect("TLS");
    assert!(http_get(&mut s, "/").unwrap().starts_with("HTTP/1.1 200"));
    drop(s);

    let text = scrape_until(maddr, |t| {
        sample(t, "onerecord_handshake_duration_seconds_count") == Some(1)
    });
    let n = check_exposition(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(n > 40, "{n} samples");
    // The checker is not a rubber stamp.
    assert!(check_exposition("x 1\n", false).is_err());
    assert!(check_exposition("# TYPE x counter\ny 1\n", false).is_err());
    assert!(check_exposition("# TYPE x gauge\nx{a=\"1} 1\n", false).is_err());
    assert!(check_exposition("# TYPE x counter\nx_total 1\n", true).is_err());

    let (head, body) = scrape_openmetrics(maddr);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let m = check_exposition(&body, true).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(m > 40, "{m} samples");
    let plain = get(maddr, "/metrics");
    assert!(
        plain
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{plain}"
    );
}
