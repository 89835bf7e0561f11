//! The adapter over real sockets (`std::net::TcpStream` through a tiny `embedded-io` shim)
//! doing mTLS against peers: `openssl s_server` and the io-mio server, TLS 1.3 and 1.2, with
//! resumption, full 16 KiB records and too-small plaintext buffers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Net, Pki, SServer, wall};
use embedded_io::{Read, Write};
use onerecord_tls::{ClientPolicy, HandshakeKind, TlsVersion, Versions};
use onerecord_tls_embedded::{Buffer, Error, MAX_PLAINTEXT, MIN_INCOMING, Tls, TlsStream};
use onerecord_tls_mio::{
    Backend, Handler, IdentityResponder, Limits, Listener, Mode, Reply, ServerConfig, ServerHandle,
    ServiceFn,
};

const GET10: &[u8] = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";

type Stream<'a> = TlsStream<Net, &'a mut [u8], fn() -> onerecord_tls::Time>;

/// Buffers of one connection: incoming, outgoing, plaintext.
struct Bufs {
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    plaintext: Vec<u8>,
}

impl Bufs {
    fn new(incoming: usize, outgoing: usize, plaintext: usize) -> Self {
        Self {
            incoming: vec![0; incoming],
            outgoing: vec![0; outgoing],
            plaintext: vec![0; plaintext],
        }
    }

    /// The documented minimum for a generic peer, and a 4 KiB outgoing buffer.
    fn minimum() -> Self {
        Self::new(MIN_INCOMING, 4096, MAX_PLAINTEXT)
    }

    fn connect(&mut self, policy: &ClientPolicy, addr: SocketAddr) -> Stream<'_> {
        let tls = Tls::client(
            policy,
            "localhost",
            wall(),
            &mut self.incoming[..],
            &mut self.outgoing[..],
        )
        .expect("client session");
        TlsStream::new(
            tls,
            Net::connect(addr),
            wall as fn() -> _,
            &mut self.plaintext[..],
        )
    }
}

/// Read until the peer closes (close_notify) or an error; returns the bytes and the ending.
fn read_all(s: &mut Stream<'_>) -> (Vec<u8>, Result<(), Error<embedded_io::ErrorKind>>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
    panic!("peer never closed");
}

fn s_server(pki: &Pki, version_flag: &str) -> SServer {
    SServer::start(&[
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
        version_flag,
    ])
}

fn mtls_to_openssl(version_flag: &str, version: TlsVersion, name: &str) {
    let pki = Pki::new();
    let mut server = s_server(&pki, version_flag);
    let policy = pki.client_policy(Versions::Tls13AndTls12);
    for round in 0..2 {
        let mut bufs = Bufs::minimum();
        let mut s = bufs.connect(&policy, server.addr);
        let id = s.handshake().expect("handshake with openssl").clone();
        assert_eq!(id.version, version);
        if round == 0 {
            assert_eq!(id.common_name(), Some("localhost"), "verified server");
        }
        s.write_all(GET10).expect("request");
        s.flush().expect("flush");
        let (body, end) = read_all(&mut s);
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with("HTTP/1.0 200 ok"), "{body}");
        assert!(body.contains(name), "negotiated {name}:\n{body}");
        assert!(
            body.contains("Client certificate") && body.contains("device-1"),
            "openssl saw the client certificate:\n{body}"
        );
        // s_server -www closes with close_notify after the page.
        assert!(end.is_ok(), "clean close: {end:?}");
        if round == 1 {
            assert_eq!(
                id.handshake,
                HandshakeKind::Resumed,
                "second connection resumes"
            );
            assert!(
                body.contains("Reused"),
                "openssl reports the reuse:\n{body}"
            );
        } else {
            assert_eq!(id.handshake, HandshakeKind::Full);
        }
    }
    assert!(server.wait_for("ACCEPT", Duration::from_secs(1)));
}

#[test]
fn stream_mtls_to_openssl_s_server_tls13_resumes() {
    mtls_to_openssl("-tls1_3", TlsVersion::Tls13, "TLSv1.3");
}

#[test]
fn stream_mtls_to_openssl_s_server_tls12_resumes() {
    mtls_to_openssl("-tls1_2", TlsVersion::Tls12, "TLSv1.2");
}

fn mio_server(pki: &Pki, backend: Backend) -> ServerHandle {
    onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().expect("addr"),
            mode: Mode::Terminate {
                policies: pki.server_policies(),
                backend,
            },
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .expect("io-mio server")
}

#[test]
fn stream_mtls_to_io_mio_server_tls13_and_tls12_with_resumption() {
    let pki = Pki::new();
    let server = mio_server(&pki, Backend::Service(Arc::new(IdentityResponder)));
    let addr = server.local_addrs()[0];
    for (versions, version) in [
        (Versions::Tls13AndTls12, TlsVersion::Tls13),
        (Versions::Tls12Only, TlsVersion::Tls12),
    ] {
        let policy = pki.client_policy(versions);
        for round in 0..2 {
            let mut bufs = Bufs::minimum();
            let mut s = bufs.connect(&policy, addr);
            let id = s.handshake().expect("handshake with io-mio").clone();
            assert_eq!(id.version, version);
            s.write_all(GET10).expect("request");
            let (body, end) = read_all(&mut s);
            let body = String::from_utf8_lossy(&body);
            assert!(body.starts_with("HTTP/1.0 200"), "{body}");
            assert!(
                body.contains("device-1"),
                "the server saw the client certificate:\n{body}"
            );
            assert!(end.is_ok(), "clean close: {end:?}");
            let kind = if round == 0 {
                HandshakeKind::Full
            } else {
                HandshakeKind::Resumed
            };
            assert_eq!(id.handshake, kind, "{version:?} round {round}");
        }
    }
}

/// A handler that answers any request with `len` bytes in one reply, then closes.
struct Bulk {
    len: usize,
    done: bool,
}

impl Handler for Bulk {
    fn on_data(&mut self, _data: &[u8], reply: &mut Reply) {
        if !self.done {
            self.done = true;
            let body: Vec<u8> = (0..self.len).map(|i| (i % 251) as u8).collect();
            reply.write(&body);
            reply.close();
        }
    }
}

fn bulk_server(pki: &Pki, len: usize) -> ServerHandle {
    mio_server(
        pki,
        Backend::Service(Arc::new(ServiceFn(
            move |_: &onerecord_tls_mio::Peer<'_>| {
                Some(Box::new(Bulk { len, done: false }) as Box<dyn Handler>)
            },
        ))),
    )
}

#[test]
fn full_16k_records_from_io_mio_are_received_with_the_documented_minimum_buffers() {
    let pki = Pki::new();
    let len = 3 * MAX_PLAINTEXT + 100;
    let server = bulk_server(&pki, len);
    let policy = pki.client_policy(Versions::Tls13AndTls12);
    let mut bufs = Bufs::minimum();
    let mut s = bufs.connect(&policy, server.local_addrs()[0]);
    s.write_all(b"go").expect("request");
    let (body, end) = read_all(&mut s);
    assert!(end.is_ok(), "clean close: {end:?}");
    assert_eq!(body.len(), len);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(
        s.tls().largest_record_received(),
        5 + MAX_PLAINTEXT + 1 + 16,
        "full TLS 1.3 records arrived"
    );
}

#[test]
fn a_record_larger_than_the_plaintext_buffer_is_a_named_error() {
    let pki = Pki::new();
    let server = bulk_server(&pki, 3000);
    let policy = pki.client_policy(Versions::Tls13AndTls12);
    let mut bufs = Bufs::new(MIN_INCOMING, 4096, 1000);
    let mut s = bufs.connect(&policy, server.local_addrs()[0]);
    s.write_all(b"go").expect("request");
    let (body, end) = read_all(&mut s);
    assert!(body.is_empty());
    match end {
        Err(Error::BufferTooSmall {
            buffer: Buffer::Plaintext,
            required,
            capacity: 1000,
        }) => assert_eq!(required, 3000, "one record of 3000 plaintext bytes"),
        other => panic!("expected a plaintext BufferTooSmall, got {other:?}"),
    }
    // The stream stays failed: the lost data is never passed off as a clean end.
    let mut buf = [0u8; 10];
    assert!(
        s.read(&mut buf).is_err(),
        "a later read reports the failure again"
    );
    assert!(s.write(b"more").is_err());
}

#[test]
fn a_record_larger_than_the_incoming_buffer_names_its_size() {
    let pki = Pki::new();
    let server = bulk_server(&pki, MAX_PLAINTEXT);
    let policy = pki.client_policy(Versions::Tls13Only);
    // Room for the handshake, not for a full TLS 1.3 record (5 + 16384 + 1 + 16 = 16406).
    let mut bufs = Bufs::new(8000, 4096, MAX_PLAINTEXT);
    let mut s = bufs.connect(&policy, server.local_addrs()[0]);
    s.write_all(b"go").expect("request");
    let (body, end) = read_all(&mut s);
    assert!(body.is_empty(), "no data before the record");
    assert!(s.tls().is_terminal());
    match end {
        Err(Error::BufferTooSmall {
            buffer: Buffer::Incoming,
            required,
            capacity: 8000,
        }) => assert_eq!(required, 16_406, "the full record"),
        other => panic!("expected an incoming BufferTooSmall, got {other:?}"),
    }
}

#[test]
fn capped_writes_produce_records_of_at_most_the_cap() {
    let pki = Pki::new();
    let server = mio_server(&pki, Backend::Service(Arc::new(IdentityResponder)));
    let policy = pki.client_policy(Versions::Tls13Only);
    let mut bufs = Bufs::minimum();
    let tls = Tls::client(
        &policy,
        "localhost",
        wall(),
        &mut bufs.incoming[..],
        &mut bufs.outgoing[..],
    )
    .expect("client")
    .with_write_cap(512);
    let mut s: Stream<'_> = TlsStream::new(
        tls,
        Net::connect(server.local_addrs()[0]),
        wall as fn() -> _,
        &mut bufs.plaintext[..],
    );
    s.handshake().expect("handshake");
    let before = s.tls().session().stats().tls_bytes_sent;
    let header = "GET / HTTP/1.0\r\nHost: localhost\r\nX-Pad: ";
    let mut req = header.as_bytes().to_vec();
    req.extend(std::iter::repeat_n(b'a', 3000 - header.len() - 4));
    req.extend_from_slice(b"\r\n\r\n");
    let n = s.write(&req).expect("write");
    assert_eq!(n, 3000, "one write takes what the outgoing buffer holds");
    let sent = s.tls().session().stats().tls_bytes_sent - before;
    // ceil(3000 / 512) = 6 records of 22 bytes overhead each.
    assert_eq!(sent, 3000 + 6 * 22, "records of at most 512 bytes");
    let (body, end) = read_all(&mut s);
    assert!(end.is_ok(), "{end:?}");
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.0 200"));
}
