//! The PROXY v2 header the `onerecord-gateway` binary writes to a byte-stream upstream
//! (`--upstream ADDR --proxy-protocol`), read by an upstream that parses it with the `ppp`
//! crate: the client certificate travels as ghostunnel's `tls-full` sub-TLV (0x28 inside
//! `PP2_TYPE_SSL`, the leaf in DER), byte for byte what curl or openssl presented.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{GET10, Gateway, Pki, s_client, text};
use ppp::v2::{Header, TypeLengthValues};

/// `PP2_TYPE_SSL`.
const SSL: u8 = 0x20;
/// ghostunnel's `PP2_SUBTYPE_SSL_CLIENT_CERT`.
const SSL_CLIENT_CERT: u8 = 0x28;

/// What the upstream read from one header.
#[derive(Debug)]
struct Seen {
    /// `PP2_TYPE_SSL` client flags.
    client_flags: u8,
    /// Every `PP2_SUBTYPE_SSL_CLIENT_CERT` value, in order.
    certs: Vec<Vec<u8>>,
    /// The first bytes after the header.
    request: String,
}

/// Read exactly `n` bytes, or `None` when the connection ends first.
fn read_exact(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Parse one connection's PROXY v2 header with `ppp` and answer the request behind it.
fn serve(mut s: TcpStream) -> Option<Seen> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = read_exact(&mut s, 16)?;
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    head.extend(read_exact(&mut s, len)?);
    let h = Header::try_from(head.as_slice()).expect("a PROXY v2 header ppp parses");
    let ssl = h
        .tlvs()
        .map(|t| t.expect("well-formed TLV"))
        .find(|t| t.kind == SSL)
        .expect("PP2_TYPE_SSL present");
    let certs = TypeLengthValues::from(&ssl.value[5..])
        .map(|t| t.expect("well-formed sub-TLV"))
        .filter(|t| t.kind == SSL_CLIENT_CERT)
        .map(|t| t.value.to_vec())
        .collect();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = "upstream-ok";
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    Some(Seen {
        client_flags: ssl.value[0],
        certs,
        request: String::from_utf8_lossy(&req).into_owned(),
    })
}

/// An upstream that parses `n` PROXY v2 connections, one at a time, and reports each.
fn upstream(n: usize) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let Ok(s) = s else { return };
            if let Some(seen) = serve(s) {
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
    });
    (addr, rx)
}

/// The DER of the first certificate in a PEM file, as openssl reads it.
fn der_of(pem: &str) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-in", pem, "-outform", "DER"])
        .output()
        .expect("openssl x509");
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.len() > 100, "a certificate's DER");
    out.stdout
}

fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(15))
        .expect("the upstream parsed a header")
}

#[test]
fn proxy_v2_carries_the_client_certificate_der_as_ghostunnel_tls_full_does() {
    let pki = Pki::new();
    let (up, rx) = upstream(4);
    let up = up.to_string();
    let gw = Gateway::server_with_ca(&pki, &["--upstream", &up, "--proxy-protocol"]);
    let port = gw.addr.port();
    let client_der = der_of(&pki.path("client.pem"));

    // curl with a client certificate: the sub-TLV is that certificate, byte for byte.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert", &pki.path("ca.pem")])
        .args(["--cert", &pki.path("client.pem")])
        .args(["--key", &pki.path("client.key")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/awb-1"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "upstream-ok");
    let seen = next(&rx);
    assert_eq!(seen.client_flags, 0x01 | 0x02 | 0x04, "{seen:?}");
    assert_eq!(seen.certs, vec![client_der.clone()], "curl's certificate");
    assert!(
        seen.request.starts_with("GET /awb-1 HTTP/1.1\r\n"),
        "{seen:?}"
    );

    // openssl without a client certificate: no certificate sub-TLV, no certificate flags.
    let out = text(&s_client(
        gw.addr,
        &["-CAfile", &pki.path("ca.pem"), "-tls1_3"],
        GET10,
    ));
    assert!(out.contains("upstream-ok"), "{out}");
    let seen = next(&rx);
    assert_eq!(seen.client_flags, 0x01, "{seen:?}");
    assert!(seen.certs.is_empty(), "no certificate, no 0x28: {seen:?}");

    // openssl with a certificate, then resuming that session (no certificate on the wire):
    // the certificate verified in the original handshake is carried both times.
    let sess = pki.path("pp.sess");
    for (mode, flags) in [("-sess_out", 0x01 | 0x02 | 0x04), ("-sess_in", 0x01 | 0x04)] {
        let out = text(&s_client(
            gw.addr,
            &[
                "-CAfile",
                &pki.path("ca.pem"),
                "-cert",
                &pki.path("client.pem"),
                "-key",
                &pki.path("client.key"),
                "-tls1_3",
                mode,
                &sess,
            ],
            GET10,
        ));
        assert!(out.contains("upstream-ok"), "{out}");
        let resumed = mode == "-sess_in";
        assert!(
            out.contains(if resumed {
                "Reused, TLSv1.3"
            } else {
                "New, TLSv1.3"
            }),
            "{out}"
        );
        let seen = next(&rx);
        assert_eq!(seen.client_flags, flags, "{mode}: {seen:?}");
        assert_eq!(seen.certs, vec![client_der.clone()], "{mode}");
    }
}
