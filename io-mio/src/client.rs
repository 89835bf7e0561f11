//! Outbound client: blocking TLS/mTLS connections over `std::net::TcpStream` with the
//! policy's session cache (a second connection to a server resumes) and a pool that hands
//! idle kept-alive connections out again.
//!
//! Use it for request/response protocols (HTTP keep-alive) where a connection can serve
//! many requests; return a connection with [`Client::release`] once its response has been
//! read completely.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onerecord_tls::{ClientPolicy, Event, Now, PeerIdentity, Session};

use crate::queue::Queue;

type PoolKey = (SocketAddr, String);

/// A connection factory with a pool of idle connections.
#[derive(Clone)]
pub struct Client {
    policy: ClientPolicy,
    pool: Arc<Mutex<HashMap<PoolKey, Vec<ClientStream>>>>,
    /// Idle connections kept per server.
    pub max_idle_per_server: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Read/write timeout of the underlying socket (bounds the handshake too).
    pub io_timeout: Duration,
}

impl Client {
    /// A client with this policy (its session cache gives resumption).
    pub fn new(policy: ClientPolicy) -> Self {
        Self {
            policy,
            pool: Arc::default(),
            max_idle_per_server: 8,
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(10),
        }
    }

    /// A connection to `addr` for `server_name`: an idle pooled one when available, else a
    /// new one (resumed when the session cache has a ticket for the name). The handshake is
    /// complete when this returns.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> io::Result<ClientStream> {
        let key = (addr, server_name.to_string());
        while let Some(mut s) = self
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.get_mut(&key)?.pop())
        {
            if s.last_used.elapsed() < self.idle_timeout && s.still_open() {
                s.reused = true;
                return Ok(s);
            }
        }
        let tcp = TcpStream::connect_timeout(&addr, self.io_timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(self.io_timeout))?;
        tcp.set_write_timeout(Some(self.io_timeout))?;
        let session = Session::client(&self.policy, server_name, Now::system())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut s = ClientStream {
            key,
            tcp,
            session,
            inbox: Queue::default(),
            peer_closed: false,
            reused: false,
            last_used: Instant::now(),
        };
        s.handshake()?;
        Ok(s)
    }

    /// Give a connection back for reuse. Connections that are closed or still hold unread
    /// data are dropped instead.
    pub fn release(&self, mut stream: ClientStream) {
        if stream.peer_closed
            || stream.session.is_terminal()
            || stream.session.close_sent()
            || !stream.inbox.is_empty()
        {
            return;
        }
        stream.last_used = Instant::now();
        stream.session.release_buffers();
        if let Ok(mut p) = self.pool.lock() {
            let v = p.entry(stream.key.clone()).or_default();
            if v.len() < self.max_idle_per_server {
                v.push(stream);
            }
        }
    }

    /// Idle connections currently pooled (all servers).
    pub fn idle(&self) -> usize {
        self.pool
            .lock()
            .map(|p| p.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// One client connection: `Read` and `Write` carry application data.
pub struct ClientStream {
    key: PoolKey,
    tcp: TcpStream,
    session: Session,
    /// Decrypted bytes not yet read.
    inbox: Queue,
    peer_closed: bool,
    reused: bool,
    last_used: Instant,
}

fn tls_error(e: onerecord_tls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())
}

impl ClientStream {
    /// The verified server.
    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.session.peer_identity()
    }

    /// `true` when this connection came from the pool (no handshake was needed).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The session (statistics, negotiated parameters).
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while !self.session.transmit().is_empty() {
            let n = self.tcp.write(self.session.transmit())?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.session.transmitted(n);
        }
        Ok(())
    }

    /// Read once from the socket and process; `Ok(false)` at end of stream.
    fn pump(&mut self) -> io::Result<bool> {
        let buf = self.session.receive_buffer();
        if buf.is_empty() {
            return Err(io::Error::other("TLS receive buffer at its bound"));
        }
        let n = self.tcp.read(buf)?;
        if n == 0 {
            let r = self.session.received_eof();
            self.flush_tls()?;
            r.map_err(tls_error)?;
            return Ok(false);
        }
        self.session.received(n);
        let inbox = &mut self.inbox;
        let mut closed = false;
        let r = self.session.process(Now::system(), |ev| match ev {
            Event::Data(d) => inbox.extend(d),
            Event::PeerClosed | Event::Closed => closed = true,
            Event::Established(_) => {}
        });
        if closed {
            self.peer_closed = true;
        }
        self.flush_tls()?;
        r.map_err(tls_error)?;
        Ok(true)
    }

    fn handshake(&mut self) -> io::Result<()> {
        self.session
            .process(Now::system(), |_| {})
            .map_err(tls_error)?;
        self.flush_tls()?;
        while !self.session.is_established() {
            if !self.pump()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// `false` when the server closed the idle connection (checked without blocking).
    fn still_open(&mut self) -> bool {
        if self.tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let open = match self.tcp.peek(&mut b) {
            Ok(0) => false,
            Ok(_) => {
                // Bytes arrived while idle (a ticket, a close_notify): process them.
                let _ = self.tcp.set_nonblocking(false);
                let _ = self.tcp.set_read_timeout(Some(Duration::from_millis(100)));
                let ok = self.pump().is_ok();
                ok && !self.peer_closed && !self.session.is_terminal()
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        let _ = self.tcp.set_nonblocking(false);
        open
    }

    /// Send `close_notify` and close.
    pub fn close(mut self) -> io::Result<()> {
        self.session.close();
        let _ = self.session.process(Now::system(), |_| {});
        self.flush_tls()
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.inbox.is_empty() {
            if self.peer_closed || !self.pump()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.inbox.len());
        buf[..n].copy_from_slice(&self.inbox.pending()[..n]);
        self.inbox.consume(n);
        Ok(n)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .session
            .send(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        self.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}
