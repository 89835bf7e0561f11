//! The application interface: what a gateway author programs against.
//!
//! A [`Service`] is asked once per connection, after the handshake and before any application
//! byte, whether to accept the verified peer; an accepted connection gets a [`Handler`] that
//! receives the decrypted bytes and answers through a [`Reply`]. The connection stays open
//! for as many requests as the peer sends (connection reuse) until either side closes.

use std::net::SocketAddr;

use onerecord_tls::PeerIdentity;

/// The peer of a connection, as known when the handshake completed.
#[derive(Debug)]
pub struct Peer<'a> {
    /// The verified identity (certificate, negotiated parameters, resumption).
    pub identity: &'a PeerIdentity,
    /// The remote address.
    pub remote: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
}

/// Decides on each new connection and makes its handler. Shared by all workers.
pub trait Service: Send + Sync + 'static {
    /// Accept the peer (return its handler) or refuse it (`None`: the connection gets
    /// `close_notify` and is closed, and a line is logged).
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>>;
}

/// One accepted connection's application logic.
pub trait Handler: Send {
    /// Decrypted bytes from the peer (any split: a request may arrive in pieces, several
    /// requests may arrive together). Answer through `reply`.
    fn on_data(&mut self, data: &[u8], reply: &mut Reply);

    /// The peer sent `close_notify`. The default closes this side too.
    fn on_peer_closed(&mut self, reply: &mut Reply) {
        reply.close();
    }
}

/// What a handler sends back.
#[derive(Debug, Default)]
pub struct Reply {
    pub(crate) out: Vec<u8>,
    pub(crate) close: bool,
}

impl Reply {
    /// Queue bytes for the peer. Bytes written in one call go out together (one record when
    /// they fit in one); the adapter applies backpressure by not reading more from this peer
    /// while too much is queued.
    pub fn write(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// Send `close_notify` after what was written, then close the connection.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Bytes queued so far in this reply.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// `true` when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// A [`Service`] from a closure that makes a handler for every peer it accepts.
pub struct ServiceFn<F>(pub F);

impl<F> Service for ServiceFn<F>
where
    F: Fn(&Peer<'_>) -> Option<Box<dyn Handler>> + Send + Sync + 'static,
{
    fn accept(&self, peer: &Peer<'_>) -> Option<Box<dyn Handler>> {
        (self.0)(peer)
    }
}
