//! The async flavour over a real socket: `AsyncTlsStream` over a `TcpStream` shim whose every
//! read and write first yields once (`Poll::Pending`), driven by a minimal executor, doing
//! mTLS against the io-mio server.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use common::{Net, Pki, wall};
use embedded_io_async::{Read, Write};
use onerecord_tls::{TlsVersion, Versions};
use onerecord_tls_embedded::{AsyncTlsStream, MAX_PLAINTEXT, MIN_INCOMING, Tls};
use onerecord_tls_mio::{Backend, IdentityResponder, Limits, Listener, Mode, ServerConfig};

/// Poll `f` to completion (bounded), waking nobody: every `Pending` is retried at once.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future never completed");
}

/// Returns `Pending` once, then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// An async transport over a blocking socket that yields before every operation.
struct AsyncNet {
    net: Net,
    yields: usize,
}

impl embedded_io_async::ErrorType for AsyncNet {
    type Error = embedded_io::ErrorKind;
}

impl Read for AsyncNet {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        YieldOnce(false).await;
        self.yields += 1;
        embedded_io::Read::read(&mut self.net, buf)
    }
}

impl Write for AsyncNet {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        YieldOnce(false).await;
        self.yields += 1;
        embedded_io::Write::write(&mut self.net, buf)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        embedded_io::Write::flush(&mut self.net)
    }
}

#[test]
fn async_stream_mtls_to_io_mio_server() {
    let pki = Pki::new();
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().expect("addr"),
            mode: Mode::Terminate {
                policies: pki.server_policies(),
                backend: Backend::Service(Arc::new(IdentityResponder)),
            },
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .expect("io-mio server");
    let policy = pki.client_policy(Versions::Tls13AndTls12);
    let (mut i, mut o, mut p) = (
        vec![0u8; MIN_INCOMING],
        vec![0u8; 4096],
        vec![0u8; MAX_PLAINTEXT],
    );
    let tls = Tls::client(&policy, "localhost", wall(), &mut i[..], &mut o[..]).expect("client");
    let io = AsyncNet {
        net: Net::connect(server.local_addrs()[0]),
        yields: 0,
    };
    let mut s = AsyncTlsStream::new(tls, io, wall, &mut p[..]);
    let (version, body) = block_on(async {
        let version = s.handshake().await.expect("handshake").version;
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        let mut body = Vec::new();
        let mut buf = [0u8; 700];
        loop {
            match s.read(&mut buf).await.expect("read") {
                0 => break,
                n => body.extend_from_slice(&buf[..n]),
            }
        }
        (version, body)
    });
    assert_eq!(version, TlsVersion::Tls13);
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(
        body.contains("device-1"),
        "the server saw the client certificate"
    );
    let (_, io, _) = s.into_parts();
    assert!(
        io.yields > 5,
        "the transport really suspended: {}",
        io.yields
    );
}
