//! The gateway against real peers nobody here wrote: `openssl s_client`, `curl` and
//! `openssl s_server`, over loopback.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{GET10, Gateway, Pki, free_port, read_all, s_client, text};

fn mtls_server(pki: &Pki, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--cert".to_string(),
        pki.path("server.pem"),
        "--key".to_string(),
        pki.path("server.key"),
        "--client-ca".to_string(),
        pki.path("ca.pem"),
        "--require-client-cert".to_string(),
        "--crl".to_string(),
        pki.path("crl.der"),
        "--crl-allow-unknown".to_string(),
        "--workers".to_string(),
        "2".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start("server", &refs)
}

fn with_client_cert<'a>(pki: &'a Pki, name: &str, storage: &'a mut Vec<String>) -> Vec<&'a str> {
    storage.clear();
    storage.extend([
        "-CAfile".to_string(),
        pki.path("ca.pem"),
        "-verify_return_error".to_string(),
        "-cert".to_string(),
        pki.path(&format!("{name}.pem")),
        "-key".to_string(),
        pki.path(&format!("{name}.key")),
    ]);
    storage.iter().map(String::as_str).collect()
}

#[test]
fn openssl_tls11_is_refused_and_tls12_and_tls13_are_accepted() {
    let pki = Pki::new();
    let gw = mtls_server(&pki, &[]);
    let mut st = Vec::new();

    let mut args = with_client_cert(&pki, "client", &mut st);
    args.push("-tls1_1");
    let out = text(&s_client(gw.addr, &args, GET10));
    assert!(
        out.contains("alert protocol version") || out.contains("no protocols available"),
        "TLS 1.1 must be refused:\n{out}"
    );

    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let mut args = with_client_cert(&pki, "client", &mut st);
        args.push(flag);
        let o = s_client(gw.addr, &args, GET10);
        let out = text(&o);
        assert!(
            out.contains(&format!("Protocol  : {version}"))
                || out.contains(&format!(", {version}, ")),
            "{version} handshake:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(
            out.contains("HTTP/1.0 200 OK"),
            "answered over {version}:\n{out}"
        );
        assert!(
            out.contains("\"common_name\": \"acme-cargo\""),
            "identity in the answer:\n{out}"
        );
    }
    assert!(
        gw.log().contains("failure=protocol_version"),
        "refusal logged:\n{}",
        gw.log()
    );
}

#[test]
fn openssl_mtls_refusals_carry_the_right_alert() {
    let pki = Pki::new();
    let gw = mtls_server(&pki, &[]);
    let mut st = Vec::new();
    let no_cert = [
        "-CAfile".to_string(),
        pki.path("ca.pem"),
        "-verify_return_error".to_string(),
    ];
    let no_cert: Vec<&str> = no_cert.iter().map(String::as_str).collect();

    let mut a = no_cert.clone();
    a.push("-tls1_3");
    let out = text(&s_client(gw.addr, &a, GET10));
    assert!(
        out.contains("alert certificate required"),
        "1.3 without cert:\n{out}"
    );
    assert!(!out.contains("HTTP/1.0 200"), "{out}");

    let mut a = no_cert.clone();
    a.push("-tls1_2");
    let out = text(&s_client(gw.addr, &a, GET10));
    assert!(
        out.contains("alert handshake failure"),
        "1.2 without cert:\n{out}"
    );

    for (who, alert, failure) in [
        ("expired", "alert certificate expired", "failure=expired"),
        ("stranger", "alert unknown ca", "failure=unknown_ca"),
        ("revoked", "alert certificate revoked", "failure=revoked"),
    ] {
        for v in ["-tls1_3", "-tls1_2"] {
            let mut args = with_client_cert(&pki, who, &mut st);
            args.push(v);
            let out = text(&s_client(gw.addr, &args, GET10));
            assert!(out.contains(alert), "{who} {v}: expected {alert:?}:\n{out}");
            assert!(
                !out.contains("HTTP/1.0 200"),
                "{who} {v} must get no answer:\n{out}"
            );
        }
        assert!(
            gw.log().contains(failure),
            "{failure} logged:\n{}",
            gw.log()
        );
    }
    let mut args = with_client_cert(&pki, "client", &mut st);
    args.push("-tls1_3");
    let out = text(&s_client(gw.addr, &args, GET10));
    assert!(
        out.contains("HTTP/1.0 200 OK"),
        "valid client accepted:\n{out}"
    );
}

#[test]
fn openssl_session_resumption_is_reused() {
    let pki = Pki::new();
    // One worker: TLS 1.2 session IDs live in the policy's cache, which all workers
    // share anyway; tickets work across workers and instances.
    let gw = mtls_server(&pki, &[]);
    for v in ["-tls1_3", "-tls1_2"] {
        let sess = pki.dir.path().join(format!("sess{v}"));
        let sess = sess.display().to_string();
        let mut st = Vec::new();
        let mut args = with_client_cert(&pki, "client", &mut st);
        args.extend([v, "-sess_out", &sess]);
        let first = text(&s_client(gw.addr, &args, GET10));
        assert!(
            first.contains("New, TLSv1."),
            "first connection is new ({v}):\n{first}"
        );
        let mut st2 = Vec::new();
        let mut args = with_client_cert(&pki, "client", &mut st2);
        args.extend([v, "-sess_in", &sess]);
        let second = text(&s_client(gw.addr, &args, GET10));
        assert!(
            second.contains("Reused, TLSv1."),
            "second connection resumes ({v}):\n{second}"
        );
        assert!(
            second.contains("\"resumed\": true"),
            "the gateway says resumed ({v}):\n{second}"
        );
    }
}

#[test]
fn plaintext_http_on_the_tls_port_gets_400() {
    let pki = Pki::new();
    let gw = mtls_server(&pki, &[]);
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{}/", gw.addr.port()))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    assert!(body.contains("requires HTTPS"), "{body}");
    // And a raw socket sees the server close after the answer.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /logistics-objects HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_all(&mut s, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400"));
    // The line reaches the test through a pipe and a reader thread: wait for it (bounded).
    gw.wait_for_log("failure=plaintext", Duration::from_secs(10));
}

/// A peer that keeps sending after the gateway refused it still reads the whole refusal and
/// a clean end of stream: the gateway drains its input instead of closing into a TCP reset
/// (which would destroy the refusal before the peer reads it).
#[test]
fn refused_peer_that_keeps_sending_reads_the_refusal_and_a_clean_close() {
    let pki = Pki::new();
    let gw = mtls_server(&pki, &[]);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /logistics-objects HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        .unwrap();
    // Let the gateway answer and shut its side down, then keep sending the "body".
    std::thread::sleep(Duration::from_millis(300));
    let junk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    for _ in 0..3 {
        match s.write(&junk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent > 0,
        "the gateway must still accept input while lingering"
    );
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("requires HTTPS"), "{text}");
    assert!(end.is_ok(), "clean end of stream, not a reset: {end:?}");
}

/// An upstream that answers every HTTP request with what it received, then closes.
fn http_upstream() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("upstream saw {} bytes", req.len());
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
        req
    });
    (port, t)
}

#[test]
fn curl_with_client_certificate_through_the_gateway_to_an_upstream() {
    let pki = Pki::new();
    let (up, upstream) = http_upstream();
    let up_addr = format!("127.0.0.1:{up}");
    let gw = mtls_server(&pki, &["--upstream", &up_addr]);
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
        .arg(format!(
            "https://localhost:{port}/logistics-objects/awb-123"
        ))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = upstream.join().unwrap();
    let req = String::from_utf8_lossy(&req);
    assert!(
        req.starts_with("GET /logistics-objects/awb-123 HTTP/1.1\r\n"),
        "upstream got:\n{req}"
    );
    assert_eq!(body, format!("upstream saw {} bytes", req.len()));

    // Without a client certificate curl gets nothing through.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert", &pki.path("ca.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate required"));
}

struct SServer(std::process::Child);

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `openssl s_server` on a free loopback port; if another process takes the port
/// between probing and binding, try again on another (bounded).
fn s_server(args: &[&str]) -> (SServer, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut server = SServer(
            Command::new("openssl")
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
                .args(["-naccept", "100"])
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
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (server, port);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = server.0.kill();
    }
    panic!("openssl s_server did not start");
}

#[test]
fn client_mode_forwards_plain_tcp_over_mtls_to_openssl_s_server_and_resumes() {
    let pki = Pki::new();
    let (server, port) = s_server(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
        "-CAfile",
        &pki.path("ca.pem"),
        "-Verify",
        "1",
        "-verify_return_error",
        "-www",
    ]);
    let gw = Gateway::start(
        "client",
        &[
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--server-name",
            "localhost",
            "--ca",
            &pki.path("ca.pem"),
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
            "--workers",
            "1",
        ],
    );
    let mut pages = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(GET10).unwrap();
        let page = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(10))).into_owned();
        assert!(
            page.starts_with("HTTP/1.0 200 ok"),
            "s_server page:\n{page}"
        );
        assert!(
            page.contains("Client certificate"),
            "s_server saw our certificate:\n{page}"
        );
        pages.push(page);
    }
    assert!(pages[0].contains("New, TLSv1.3"), "{}", pages[0]);
    assert!(
        pages[1..].iter().all(|p| p.contains("Reused, TLSv1.3")),
        "later connections resume:\n{}",
        pages[2]
    );
    drop(server);
}

/// The gateway raises its open-files soft limit to the hard limit at start (each connection
/// needs a descriptor), and warns when `--max-connections` cannot be reached.
#[test]
fn open_files_limit_is_raised_to_the_hard_limit() {
    let pki = Pki::new();
    let mut child = Command::new("prlimit")
        .arg("--nofile=64:4096")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["server", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args([
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
        ])
        .args(["--max-connections", "10000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.extend_from_slice(&buf[..n]),
            }
            if log.windows(13).any(|w| w == b"listening on ") {
                break;
            }
        }
        String::from_utf8_lossy(&log).into_owned()
    });
    let log = reader.join().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, 4096, "{line}");
    assert!(
        log.contains("open-files limit is 4096") && log.contains("--max-connections 10000"),
        "warns that 10000 connections cannot fit: {log}"
    );
}
