//! Operating the `onerecord-gateway` binary, against real peers over loopback: the
//! connection cap, handshake and idle timeouts, hot reload (SIGHUP and `--reload-interval`),
//! session tickets shared by two instances, the PROXY v2 header to an upstream, graceful
//! drain on SIGTERM, configuration errors, and metrics.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    GET10, Gateway, Pki, URI_PREFIX, http_get, read_all, read_response, s_client, sample, scrape,
    text,
};
use onerecord_tls::{Session, Time};
use onerecord_tls_mio::{Client, ClientStream};

/// A gateway answering with the identity responder; with mTLS (and the CRL, which lets
/// certificates it does not cover through) when `mtls`.
fn gateway(pki: &Pki, mtls: bool, workers: u32, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--cert".to_string(),
        pki.path("server.pem"),
        "--key".to_string(),
        pki.path("server.key"),
        "--workers".to_string(),
        workers.to_string(),
    ];
    if mtls {
        args.extend([
            "--client-ca".to_string(),
            pki.path("ca.pem"),
            "--require-client-cert".to_string(),
            "--crl".to_string(),
            pki.path("crl.der"),
            "--crl-allow-unknown".to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start("server", &refs)
}

/// An io-mio client with its own session cache, presenting the certificate `name`.
fn client(pki: &Pki, name: Option<&str>) -> Client {
    let mut c = Client::new(pki.client_policy(name));
    c.io_timeout = Duration::from_secs(5);
    c
}

/// The serial number of the certificate the server presented on `s`.
fn server_serial(s: &ClientStream) -> u64 {
    let hex = s
        .identity()
        .and_then(|id| id.leaf.as_ref())
        .map(|c| c.serial_hex())
        .expect("server certificate");
    u64::from_str_radix(&hex, 16).expect("serial fits u64")
}

/// The first PEM block of a chain (the leaf).
fn leaf_pem(chain_pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let i = chain_pem.find(end).expect("PEM") + end.len();
    chain_pem[..i].trim().to_string()
}

/// `s_client` arguments presenting the client certificate `name`.
fn cert_args(pki: &Pki, name: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-CAfile".to_string(),
        pki.path("ca.pem"),
        "-verify_return_error".to_string(),
        "-cert".to_string(),
        pki.path(&format!("{name}.pem")),
        "-key".to_string(),
        pki.path(&format!("{name}.key")),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn s_client_with(addr: SocketAddr, args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    text(&s_client(addr, &refs, GET10))
}

fn ok_200(resp: &str) -> bool {
    resp.starts_with("HTTP/1.1 200 OK")
}

#[test]
fn max_connections_closes_the_excess_keeps_the_established_and_recovers() {
    let pki = Pki::new();
    // Two workers share the cap.
    let maddr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let m = maddr.to_string();
    let gw = gateway(&pki, true, 2, &["--max-connections", "3", "--metrics", &m]);
    let c = client(&pki, Some("client"));
    let mut held: Vec<ClientStream> = (0..3)
        .map(|i| {
            let mut s = c.connect(gw.addr, "localhost").expect("within the cap");
            let r = http_get(&mut s, "/").unwrap();
            assert!(ok_200(&r), "connection {i}:\n{r}");
            s
        })
        .collect();

    // Beyond the cap: a TLS client fails at once, a raw TCP connection is closed at once.
    for _ in 0..2 {
        let start = Instant::now();
        let r = c.connect(gw.addr, "localhost");
        assert!(r.is_err(), "a 4th connection must be refused");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "refused quickly, took {:?}",
            start.elapsed()
        );
    }
    let start = Instant::now();
    let mut raw = TcpStream::connect(gw.addr).unwrap();
    let got = read_all(&mut raw, Duration::from_secs(4));
    assert!(got.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the excess TCP connection is closed at once, took {:?}",
        start.elapsed()
    );
    assert!(
        gw.wait_for_count("reason=\"over capacity\"", 3, Duration::from_secs(3)) >= 3,
        "refusals logged:\n{}",
        gw.log()
    );

    // The metrics say so: three open, three refused for capacity (not handshake failures).
    let over = "onerecord_connections_refused_total{reason=\"over_capacity\"}";
    let start = Instant::now();
    let text = loop {
        let t = scrape(maddr);
        let done =
            sample(&t, over) == Some(3) && sample(&t, "onerecord_connections_active") == Some(3);
        if done || start.elapsed() > Duration::from_secs(3) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sample(&text, over), Some(3), "{text}");
    assert_eq!(
        sample(&text, "onerecord_connections_active"),
        Some(3),
        "{text}"
    );

    // The established connections are untouched.
    for s in held.iter_mut() {
        let r = http_get(s, "/again").unwrap();
        assert!(ok_200(&r), "{r}");
        assert!(r.contains("\"number_on_connection\":2"), "{r}");
    }

    // Load drops: a new connection is accepted again.
    held.pop().unwrap().close().unwrap();
    let start = Instant::now();
    let mut fresh = loop {
        match c.connect(gw.addr, "localhost") {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no new connection accepted after one closed: {e}"),
        }
    };
    let r = http_get(&mut fresh, "/").unwrap();
    assert!(ok_200(&r), "{r}");
}

#[test]
fn max_connections_holds_under_a_concurrent_burst_on_two_workers() {
    let pki = Pki::new();
    let gw = gateway(&pki, true, 2, &["--max-connections", "4"]);
    let c = client(&pki, Some("client"));
    let n = 12;
    let start = std::sync::Arc::new(std::sync::Barrier::new(n));
    let hold = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (c, addr) = (c.clone(), gw.addr);
            let (start, hold) = (start.clone(), hold.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                let served = c
                    .connect(addr, "localhost")
                    .and_then(|mut s| http_get(&mut s, "/").map(|r| (s, r)));
                let took = t.elapsed();
                // Keep the connection open until every thread has its answer.
                hold.wait();
                (served.map(|(_, r)| ok_200(&r)).unwrap_or(false), took)
            })
        })
        .collect();
    let results: Vec<(bool, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let served = results.iter().filter(|r| r.0).count();
    assert_eq!(served, 4, "exactly the cap is served: {results:?}");
    assert!(
        results.iter().all(|r| r.1 < Duration::from_secs(3)),
        "refusals are quick: {results:?}"
    );
}

#[test]
fn ticket_keys_rotate_on_reload_newest_encrypts_and_dropped_keys_stop_resuming() {
    use base64::Engine as _;
    let pki = Pki::new();
    let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 48]);
    let file = pki.path("rotating.keys");
    std::fs::write(&file, format!("{}\n", key(1))).unwrap();
    let a = gateway(&pki, true, 1, &["--ticket-keys", &file]);
    let b = gateway(&pki, true, 1, &["--ticket-keys", &file]);
    let resume = |gw: &Gateway, sess: &str| {
        s_client_with(
            gw.addr,
            &cert_args(&pki, "client", &["-tls1_3", "-sess_in", sess]),
        )
    };
    let reload = |gw: &Gateway| {
        let before = gw.log_count("reloaded policy");
        gw.signal("HUP");
        let after = gw.wait_for_count("reloaded policy", before + 1, Duration::from_secs(5));
        assert!(after > before, "{}", gw.log());
    };
    let old = pki.path("old.sess");
    let out = s_client_with(
        a.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_out", &old]),
    );
    assert!(out.contains("New, TLSv1.3"), "{out}");

    // Rotate: a new first key, the previous one kept below it, on both instances.
    std::fs::write(&file, format!("{}\n{}\n", key(2), key(1))).unwrap();
    reload(&a);
    reload(&b);
    let out = resume(&b, &old);
    assert!(
        out.contains("Reused, TLSv1.3"),
        "the previous key still decrypts:\n{out}"
    );
    let new = pki.path("new.sess");
    let out = s_client_with(
        b.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_out", &new]),
    );
    assert!(out.contains("New, TLSv1.3"), "{out}");

    // Drop the old key: its tickets stop resuming, tickets of the new key keep resuming
    // (so the new key is the one that encrypted after the rotation).
    std::fs::write(&file, format!("{}\n", key(2))).unwrap();
    reload(&a);
    let out = resume(&a, &old);
    assert!(
        out.contains("New, TLSv1.3"),
        "a dropped key no longer decrypts:\n{out}"
    );
    let out = resume(&a, &new);
    assert!(
        out.contains("Reused, TLSv1.3"),
        "the newest key encrypted:\n{out}"
    );
}

/// The first flight of a TLS client made by the engine (a complete ClientHello record).
fn client_hello(pki: &Pki) -> Vec<u8> {
    let policy = pki.client_policy(Some("client"));
    let mut s = Session::client(&policy, "localhost", Time::now()).unwrap();
    s.process(Time::now(), |_| {}).unwrap();
    let hello = s.transmit().to_vec();
    assert!(hello.len() > 100 && hello[0] == 22, "a handshake record");
    hello
}

/// Connect, send `first`, and measure how long the gateway takes to close.
fn time_to_close(addr: SocketAddr, first: Vec<u8>) -> JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        s.write_all(&first).unwrap();
        read_all(&mut s, Duration::from_secs(6));
        start.elapsed()
    })
}

#[test]
fn stalled_handshakes_and_idle_connections_are_closed_on_time() {
    let pki = Pki::new();
    let gw = gateway(
        &pki,
        true,
        1,
        &["--handshake-timeout", "1", "--idle-timeout", "1.5"],
    );
    let hello = client_hello(&pki);
    // A connection with a request every 0.8 s is never idle for 1.5 s: it stays open.
    let busy = {
        let (c, addr) = (client(&pki, Some("client")), gw.addr);
        std::thread::spawn(move || {
            let mut s = c.connect(addr, "localhost").unwrap();
            for i in 1..=4 {
                if i > 1 {
                    std::thread::sleep(Duration::from_millis(800));
                }
                let r = http_get(&mut s, "/").map_err(|e| format!("request {i}: {e}"))?;
                if !r.contains(&format!("\"number_on_connection\":{i}")) {
                    return Err(format!("request {i}: {r}"));
                }
            }
            Ok::<(), String>(())
        })
    };
    let silent = time_to_close(gw.addr, Vec::new());
    let half = time_to_close(gw.addr, hello[..hello.len() / 2].to_vec());

    // Meanwhile another client is served at once, and then left idle.
    let c = client(&pki, Some("client"));
    let start = Instant::now();
    let mut s = c.connect(gw.addr, "localhost").unwrap();
    let r = http_get(&mut s, "/").unwrap();
    assert!(ok_200(&r), "{r}");
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "served while others stall: {:?}",
        start.elapsed()
    );
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("close_notify, not an error");
    let idle = idle_from.elapsed();
    assert_eq!(n, 0, "nothing but close_notify");

    for (what, t) in [("silent", silent), ("half ClientHello", half)] {
        let took = t.join().unwrap();
        assert!(
            took >= Duration::from_millis(800) && took <= Duration::from_millis(2500),
            "{what} connection closed after {took:?}, timeout is 1 s"
        );
    }
    busy.join()
        .unwrap()
        .expect("an active connection is not closed as idle");
    assert!(
        idle >= Duration::from_millis(1300) && idle <= Duration::from_millis(3000),
        "idle connection closed after {idle:?}, idle timeout is 1.5 s"
    );
    assert!(
        gw.wait_for_count("failure=timeout", 2, Duration::from_secs(3)) == 2,
        "timeouts logged:\n{}",
        gw.log()
    );
}

#[test]
fn sighup_reloads_certificate_and_crl_keeps_open_connections_and_survives_a_broken_file() {
    let pki = Pki::new();
    let mut gw = gateway(&pki, true, 2, &[]);
    let old = pki.server.clone();
    let c_before = client(&pki, Some("client"));
    let mut open = c_before.connect(gw.addr, "localhost").unwrap();
    assert_eq!(server_serial(&open), old.serial);
    assert!(ok_200(&http_get(&mut open, "/").unwrap()));

    // 1. A new certificate and key, then SIGHUP.
    let new = pki.replace_server("server");
    assert_ne!(new.serial, old.serial);
    gw.signal("HUP");
    gw.wait_for_log("reloaded policy", Duration::from_secs(5));
    let mut s = client(&pki, Some("client"))
        .connect(gw.addr, "localhost")
        .unwrap();
    assert_eq!(
        server_serial(&s),
        new.serial,
        "new connections get the new certificate"
    );
    assert!(ok_200(&http_get(&mut s, "/").unwrap()));
    let out = s_client_with(gw.addr, &cert_args(&pki, "client", &["-tls1_2"]));
    assert!(
        out.contains(&leaf_pem(&new.chain_pem)),
        "s_client sees the new certificate:\n{out}"
    );
    assert!(!out.contains(&leaf_pem(&old.chain_pem)), "{out}");
    assert!(out.contains("HTTP/1.0 200 OK"), "{out}");
    let r = http_get(&mut open, "/still").unwrap();
    assert!(
        ok_200(&r) && r.contains("\"number_on_connection\":2"),
        "open connection kept:\n{r}"
    );

    // 2. A broken key file: the reload fails, is logged naming the file, the gateway keeps
    //    running with the policy it had.
    pki.replace_file("server.key", b"-----BEGIN PRIVATE KEY-----\nbroken\n");
    gw.signal("HUP");
    gw.wait_for_log("reload failed", Duration::from_secs(5));
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("server.key"),
        "the error names the file: {line}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway must not exit:\n{}",
        gw.log()
    );
    let mut s = client(&pki, Some("client"))
        .connect(gw.addr, "localhost")
        .unwrap();
    assert_eq!(
        server_serial(&s),
        new.serial,
        "still the last good certificate"
    );
    assert!(ok_200(&http_get(&mut s, "/").unwrap()));

    // 3. Key restored and a CRL that now revokes the client: refused after the reload, while
    //    the connection opened before keeps its policy.
    pki.replace_file("server.key", new.key_pem.as_bytes());
    pki.write_crl(&[pki.client.serial]);
    let reloads = gw.log_count("reloaded policy");
    gw.signal("HUP");
    let after = gw.wait_for_count("reloaded policy", reloads + 1, Duration::from_secs(5));
    assert!(after > reloads, "{}", gw.log());
    let out = s_client_with(gw.addr, &cert_args(&pki, "client", &["-tls1_3"]));
    assert!(
        out.contains("alert certificate revoked"),
        "revoked after reload:\n{out}"
    );
    assert!(!out.contains("HTTP/1.0 200"), "{out}");
    assert!(
        client(&pki, Some("client"))
            .connect(gw.addr, "localhost")
            .and_then(|mut s| http_get(&mut s, "/"))
            .is_err(),
        "the io-mio client is refused too"
    );
    let resumed = c_before
        .connect(gw.addr, "localhost")
        .and_then(|mut s| http_get(&mut s, "/"));
    assert!(
        resumed.is_err(),
        "a session cached before the revocation does not let the client back in"
    );
    let r = http_get(&mut open, "/third").unwrap();
    assert!(
        ok_200(&r) && r.contains("\"number_on_connection\":3"),
        "{r}"
    );
}

#[test]
fn reload_interval_picks_up_a_new_certificate_without_a_signal() {
    let pki = Pki::new();
    let gw = gateway(&pki, false, 1, &["--reload-interval", "1"]);
    let mut open = client(&pki, None).connect(gw.addr, "localhost").unwrap();
    assert_eq!(server_serial(&open), pki.server.serial);
    let new = pki.replace_server("server");
    let start = Instant::now();
    let seen = loop {
        let s = client(&pki, None).connect(gw.addr, "localhost").unwrap();
        let serial = server_serial(&s);
        if serial == new.serial || start.elapsed() > Duration::from_secs(5) {
            break serial;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        seen,
        new.serial,
        "new certificate within 5 s:\n{}",
        gw.log()
    );
    let r = http_get(&mut open, "/").unwrap();
    assert!(
        ok_200(&r),
        "the connection from before the reload works:\n{r}"
    );
}

#[test]
fn shared_ticket_keys_let_a_session_from_one_gateway_resume_on_another() {
    use base64::Engine as _;
    let pki = Pki::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    let fleet = pki.path("fleet.keys");
    let other = pki.path("other.keys");
    std::fs::write(
        &fleet,
        format!(
            "# fleet\n{}\n{}\n",
            b64.encode([7u8; 48]),
            b64.encode([8u8; 48])
        ),
    )
    .unwrap();
    std::fs::write(&other, format!("{}\n", b64.encode([9u8; 48]))).unwrap();
    let a = gateway(&pki, true, 1, &["--ticket-keys", &fleet]);
    let b = gateway(&pki, true, 1, &["--ticket-keys", &fleet]);
    let c = gateway(&pki, true, 1, &["--ticket-keys", &other]);

    let sess = pki.path("a.sess");
    let first = s_client_with(
        a.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_out", &sess]),
    );
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let on_b = s_client_with(
        b.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_in", &sess]),
    );
    assert!(
        on_b.contains("Reused, TLSv1.3"),
        "ticket from A resumes on B:\n{on_b}"
    );
    assert!(on_b.contains("\"resumed\": true"), "{on_b}");
    let on_c = s_client_with(
        c.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_in", &sess]),
    );
    assert!(
        on_c.contains("New, TLSv1.3"),
        "other keys: full handshake:\n{on_c}"
    );
    assert!(on_c.contains("\"resumed\": false"), "{on_c}");
}

/// What the fake upstream read from the PROXY v2 header and after it.
#[derive(Debug, Default)]
struct ProxySeen {
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    ssl_client: u8,
    ssl_verify: u32,
    cn: Option<String>,
    version: Option<String>,
    uris: Vec<String>,
    authority: Option<String>,
    request: String,
}

/// Accept one connection within `within` (the listener is non-blocking meanwhile).
fn accept_within(l: &TcpListener, within: Duration) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return s;
            }
            Err(_) if start.elapsed() < within => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("upstream: no connection: {e}"),
        }
    }
}

fn read_exact_bounded(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("upstream read");
    v
}

/// An upstream that parses the PROXY v2 header with the `ppp` crate, then answers one
/// request, for `n` connections one after the other; what it saw, per connection.
fn proxy_upstream(n: usize) -> (SocketAddr, mpsc::Receiver<ProxySeen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let mut s = accept_within(&l, Duration::from_secs(15));
            let mut head = read_exact_bounded(&mut s, 16);
            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
            head.extend(read_exact_bounded(&mut s, len));
            let h = ppp::v2::Header::try_from(head.as_slice()).expect("a PROXY v2 header");
            assert_eq!(h.command, ppp::v2::Command::Proxy);
            assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
            let mut seen = ProxySeen::default();
            if let ppp::v2::Addresses::IPv4(a) = h.addresses {
                seen.source = Some(SocketAddr::from((a.source_address, a.source_port)));
                seen.destination = Some(SocketAddr::from((
                    a.destination_address,
                    a.destination_port,
                )));
            }
            for tlv in h.tlvs() {
                let tlv = tlv.expect("well-formed TLV");
                let v = tlv.value.as_ref();
                match tlv.kind {
                    0x02 => seen.authority = Some(String::from_utf8_lossy(v).into_owned()),
                    0x20 => {
                        seen.ssl_client = v[0];
                        seen.ssl_verify = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
                        let mut sub = &v[5..];
                        while sub.len() >= 3 {
                            let n = usize::from(u16::from_be_bytes([sub[1], sub[2]]));
                            let val = String::from_utf8_lossy(&sub[3..3 + n]).into_owned();
                            match sub[0] {
                                0x21 => seen.version = Some(val),
                                0x22 => seen.cn = Some(val),
                                _ => {}
                            }
                            sub = &sub[3 + n..];
                        }
                    }
                    0xE0 => seen.uris.push(String::from_utf8_lossy(v).into_owned()),
                    _ => {}
                }
            }
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            seen.request = String::from_utf8_lossy(&req).into_owned();
            let body = "upstream-ok";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).unwrap();
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

#[test]
fn proxy_protocol_v2_header_carries_address_cn_and_uri_to_the_upstream() {
    let pki = Pki::new();
    let (up, upstream) = proxy_upstream(5);
    let up = up.to_string();
    let gw = gateway(&pki, true, 1, &["--upstream", &up, "--proxy-protocol"]);
    let port = gw.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert", &pki.path("ca.pem")])
        .args([
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
        ])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{local_ip}:%{local_port}"])
        .arg(format!("https://localhost:{port}/logistics-objects/awb-1"))
        .output()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, local) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(body, "upstream-ok");
    let curl_addr: SocketAddr = local.parse().unwrap();
    let seen = upstream
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream parsed the header");
    assert_eq!(
        seen.source,
        Some(curl_addr),
        "source address is curl's: {seen:?}"
    );
    assert_eq!(seen.destination, Some(gw.addr), "{seen:?}");
    assert_eq!(
        seen.ssl_client & 0x03,
        0x03,
        "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN: {seen:?}"
    );
    assert_eq!(seen.ssl_verify, 0, "verified: {seen:?}");
    assert_eq!(seen.cn.as_deref(), Some("acme-cargo"), "{seen:?}");
    assert!(
        seen.version
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{seen:?}"
    );
    assert_eq!(
        seen.uris,
        vec![format!("{URI_PREFIX}acme-cargo")],
        "{seen:?}"
    );
    assert_eq!(seen.authority.as_deref(), Some("localhost"), "{seen:?}");
    assert!(
        seen.request
            .starts_with("GET /logistics-objects/awb-1 HTTP/1.1\r\n"),
        "the request follows the header: {seen:?}"
    );

    // Full and resumed TLS 1.3 sessions with openssl: a resumed session (no certificate on
    // the wire) still tells the upstream who the client is, flagged as from the session.
    for (v, name) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let sess = pki.path(&format!("pp{v}.sess"));
        for (mode, resumed) in [("-sess_out", false), ("-sess_in", true)] {
            let out = s_client_with(gw.addr, &cert_args(&pki, "client", &[v, mode, &sess]));
            let flag = format!("{}, {name}", if resumed { "Reused" } else { "New" });
            assert!(out.contains(&flag), "{flag}:\n{out}");
            assert!(out.contains("upstream-ok"), "{out}");
            check_resumed_header(&upstream, resumed, name);
        }
    }
}

/// The next header the PROXY upstream parsed, for an openssl connection (full or resumed).
fn check_resumed_header(upstream: &mpsc::Receiver<ProxySeen>, resumed: bool, version: &str) {
    let seen = upstream
        .recv_timeout(Duration::from_secs(10))
        .expect("upstream parsed the header");
    let expect_flags = if resumed {
        0x01 | 0x04
    } else {
        0x01 | 0x02 | 0x04
    };
    assert_eq!(seen.ssl_client, expect_flags, "resumed={resumed}: {seen:?}");
    assert_eq!(seen.ssl_verify, 0, "resumed={resumed}: {seen:?}");
    assert_eq!(
        seen.cn.as_deref(),
        Some("acme-cargo"),
        "resumed={resumed}: {seen:?}"
    );
    assert_eq!(
        seen.uris,
        vec![format!("{URI_PREFIX}acme-cargo")],
        "resumed={resumed}: {seen:?}"
    );
    assert!(seen.request.starts_with("GET / HTTP/1.0\r\n"), "{seen:?}");
    assert_eq!(seen.version.as_deref(), Some(version), "{seen:?}");
}

/// A keep-alive HTTP upstream: `/slow` is answered after `delay` (and announced on `slow`);
/// a connection ends when the gateway ends its side.
fn slow_upstream(delay: Duration, slow: mpsc::Sender<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..4 {
            let s = accept_within(&l, Duration::from_secs(20));
            let slow = slow.clone();
            std::thread::spawn(move || serve_keep_alive(s, delay, slow));
        }
    });
    addr
}

fn serve_keep_alive(mut s: TcpStream, delay: Duration, slow: mpsc::Sender<()>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..16 {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let body = if head.starts_with("GET /slow") {
            let _ = slow.send(());
            std::thread::sleep(delay);
            "slow answer"
        } else {
            "fast answer"
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn sigterm_drains_close_notify_to_idle_connections_and_lets_a_request_in_flight_finish() {
    let pki = Pki::new();
    let (tx, rx) = mpsc::channel();
    let up = slow_upstream(Duration::from_millis(1500), tx).to_string();
    let mut gw = gateway(&pki, true, 2, &["--upstream", &up, "--drain-timeout", "4"]);
    let c = client(&pki, Some("client"));
    let mut idle = c.connect(gw.addr, "localhost").unwrap();
    let r = http_get(&mut idle, "/fast").unwrap();
    assert!(r.ends_with("fast answer"), "{r}");
    let mut busy = c.connect(gw.addr, "localhost").unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the slow request reached the upstream");

    let term = Instant::now();
    gw.signal("TERM");
    // The idle keep-alive connection gets close_notify (a clean end of stream, no error).
    let mut b = [0u8; 64];
    let n = idle.read(&mut b).expect("close_notify, not a truncation");
    assert_eq!(n, 0);
    assert!(
        term.elapsed() < Duration::from_secs(1),
        "close_notify after {:?}",
        term.elapsed()
    );
    // New connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect_timeout(&gw.addr, Duration::from_secs(1)).is_err(),
        "the listener is closed while draining"
    );
    // The request in flight gets its whole answer, then close_notify.
    let r = read_response(&mut busy).expect("the in-flight request completes");
    assert!(r.ends_with("slow answer"), "{r}");
    assert_eq!(busy.read(&mut b).expect("clean close"), 0);
    drop(idle);
    drop(busy);
    let code = gw.wait_exit(Duration::from_secs(6));
    assert_eq!(code, Some(0), "exit status:\n{}", gw.log());
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "exited within the drain timeout: {:?}",
        term.elapsed()
    );
}

/// An upstream that takes requests and never answers nor closes (for `within`).
fn mute_upstream(within: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut s = accept_within(&l, Duration::from_secs(20));
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < within {
            match s.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    addr
}

#[test]
fn sigterm_drain_closes_idle_service_connections_at_once_and_is_bounded_by_the_drain_timeout() {
    let pki = Pki::new();
    // Identity responder: an idle keep-alive connection gets close_notify, the process
    // exits as soon as it is gone.
    let mut svc = gateway(&pki, true, 2, &["--drain-timeout", "5"]);
    // A proxied stream whose upstream never finishes: the drain timeout ends it.
    let up = mute_upstream(Duration::from_secs(10)).to_string();
    let mut stuck = gateway(&pki, true, 1, &["--upstream", &up, "--drain-timeout", "1"]);
    let c = client(&pki, Some("client"));
    let mut idle = c.connect(svc.addr, "localhost").unwrap();
    assert!(ok_200(&http_get(&mut idle, "/").unwrap()));
    let mut waiting = c.connect(stuck.addr, "localhost").unwrap();
    waiting
        .write_all(b"GET /never HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let term = Instant::now();
    svc.signal("TERM");
    stuck.signal("TERM");
    let mut b = [0u8; 16];
    assert_eq!(idle.read(&mut b).expect("close_notify"), 0);
    drop(idle.close());
    assert_eq!(
        svc.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        svc.log()
    );
    let svc_took = term.elapsed();
    assert!(
        svc_took < Duration::from_secs(2),
        "service gateway exited after {svc_took:?}"
    );

    assert_eq!(
        stuck.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        stuck.log()
    );
    let stuck_took = term.elapsed();
    assert!(
        stuck_took >= Duration::from_millis(900) && stuck_took < Duration::from_millis(2500),
        "the stuck stream is given the 1 s drain timeout, then closed: {stuck_took:?}"
    );
    // The client of the stuck stream is not left hanging: its connection ends.
    let t = Instant::now();
    let _ = waiting.read(&mut b);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn bad_configuration_exits_2_and_names_the_file() {
    let pki = Pki::new();
    std::fs::write(pki.path("empty.pem"), b"").unwrap();
    std::fs::write(pki.path("garbage.crl"), b"not a CRL at all").unwrap();
    std::fs::write(pki.path("short.keys"), b"c2hvcnQ=\n").unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let args = |cert: &str, key: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--cert".to_string(),
            pki.path(cert),
            "--key".to_string(),
            pki.path(key),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (empty, crl, keys) = (
        pki.path("empty.pem"),
        pki.path("garbage.crl"),
        pki.path("short.keys"),
    );
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "missing certificate",
            args("missing.pem", "server.key", &[]),
            pki.path("missing.pem"),
        ),
        (
            "missing key",
            args("server.pem", "missing.key", &[]),
            pki.path("missing.key"),
        ),
        (
            "key of another certificate",
            args("server.pem", "client.key", &[]),
            pki.path("client.key"),
        ),
        (
            "empty CA file",
            args(
                "server.pem",
                "server.key",
                &["--client-ca", &empty, "--require-client-cert"],
            ),
            empty.clone(),
        ),
        (
            "unreadable CRL",
            args(
                "server.pem",
                "server.key",
                &["--client-ca", &pki.path("ca.pem"), "--crl", &crl],
            ),
            crl.clone(),
        ),
        (
            "ticket key of the wrong size",
            args("server.pem", "server.key", &["--ticket-keys", &keys]),
            keys.clone(),
        ),
        (
            "listen address in use",
            args("server.pem", "server.key", &["--listen", &busy_addr]),
            busy_addr.clone(),
        ),
    ];
    for (what, args, file) in cases {
        let out = Command::new("timeout")
            .arg("10")
            .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run the gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit code; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&file),
            "{what}: stderr names {file}:\n{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{what}:\n{stderr}");
    }
}

#[test]
fn metrics_count_full_and_resumed_handshakes_and_failures_by_reason() {
    let pki = Pki::new();
    let maddr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let m = maddr.to_string();
    let gw = gateway(
        &pki,
        true,
        2,
        &["--metrics", &m, "--handshake-timeout", "0.5"],
    );
    gw.wait_for_log("metrics on", Duration::from_secs(5));
    let hs =
        |v: &str, k: &str| format!("onerecord_handshakes_total{{version=\"{v}\",kind=\"{k}\"}}");
    let fail = |r: &str| format!("onerecord_handshake_failures_total{{reason=\"{r}\"}}");
    let before = scrape(maddr);
    for series in [
        hs("TLSv1.3", "full"),
        hs("TLSv1.3", "resumed"),
        fail("no_client_cert"),
    ] {
        assert_eq!(
            sample(&before, &series),
            Some(0),
            "{series} at start:\n{before}"
        );
    }

    let sess = pki.path("m.sess");
    let out = s_client_with(
        gw.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_out", &sess]),
    );
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let out = s_client_with(
        gw.addr,
        &cert_args(&pki, "client", &["-tls1_3", "-sess_in", &sess]),
    );
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
    let out = s_client_with(gw.addr, &cert_args(&pki, "client", &["-tls1_2"]));
    assert!(out.contains("HTTP/1.0 200 OK"), "{out}");
    let out = s_client_with(gw.addr, &["-tls1_3".to_string()]);
    assert!(out.contains("alert certificate required"), "{out}");
    let out = s_client_with(gw.addr, &cert_args(&pki, "revoked", &["-tls1_3"]));
    assert!(out.contains("alert certificate revoked"), "{out}");
    let mut plain = TcpStream::connect(gw.addr).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&read_all(&mut plain, Duration::from_secs(5)))
            .starts_with("HTTP/1.1 400")
    );

    let mut stalled = TcpStream::connect(gw.addr).unwrap();
    stalled.write_all(b"\x16\x03\x01").unwrap();
    assert!(read_all(&mut stalled, Duration::from_secs(5)).len() < 64);

    let expected = [
        (hs("TLSv1.3", "full"), 1),
        (hs("TLSv1.3", "resumed"), 1),
        (hs("TLSv1.2", "full"), 1),
        (hs("TLSv1.2", "resumed"), 0),
        (fail("no_client_cert"), 1),
        (fail("revoked"), 1),
        (fail("plaintext"), 1),
        (fail("unknown_ca"), 0),
        (fail("timeout"), 1),
        ("onerecord_plaintext_http_total".to_string(), 1),
        ("onerecord_connections_accepted_total".to_string(), 7),
        ("onerecord_connections_active".to_string(), 0),
    ];
    // Workers publish their counters at least once a second.
    let start = Instant::now();
    let text = loop {
        let t = scrape(maddr);
        let all = expected.iter().all(|(s, v)| sample(&t, s) == Some(*v));
        if all || start.elapsed() > Duration::from_secs(5) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (series, v) in &expected {
        assert_eq!(sample(&text, series), Some(*v), "{series}:\n{text}");
    }
    let expiry = text
        .lines()
        .find(|l| l.starts_with("onerecord_certificate_expiry_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .expect("certificate expiry gauge");
    assert!(expiry > 80 * 86_400 && expiry < 91 * 86_400, "{expiry}");
}
