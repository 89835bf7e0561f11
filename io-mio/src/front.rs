//! The client-facing side of a connection: a TLS session, or plain TCP for a listener that
//! serves local applications ([`crate::Mode::Plain`], the gateway's egress proxy). Both offer
//! the session's run-loop methods, so that `conn` drives one loop whatever the side: a plain
//! side is "established" from the start, passes bytes through unchanged, reports the peer's
//! end of stream as its close, and never fails.

use onerecord_tls::{Error, Event, Now, PeerIdentity, SendError, Session, Stats};

use crate::queue::Queue;

/// Input bytes a plain side takes per read.
const PLAIN_READ: usize = 16 * 1024;

/// A connection's client-facing side.
// The TLS session is the common case and stays inline: boxing it would cost every TLS
// connection an allocation and an indirection; the rare plain side is boxed instead.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Front {
    /// TLS: the engine's session.
    Tls(Session),
    /// Plain TCP.
    Plain(Box<Plain>),
}

/// A plain TCP side, with the session's interface.
#[derive(Default)]
pub(crate) struct Plain {
    input: Vec<u8>,
    /// Bytes of `input` read and not yet handed over.
    filled: usize,
    output: Queue,
    eof: bool,
    peer_closed: bool,
    close_sent: bool,
    stats: Stats,
}

impl Front {
    pub(crate) fn receive_buffer(&mut self) -> &mut [u8] {
        match self {
            Front::Tls(s) => s.receive_buffer(),
            Front::Plain(p) => {
                if p.input.len() < PLAIN_READ {
                    p.input.resize(PLAIN_READ, 0);
                }
                &mut p.input[p.filled..]
            }
        }
    }

    pub(crate) fn received(&mut self, n: usize) {
        match self {
            Front::Tls(s) => s.received(n),
            Front::Plain(p) => p.filled = (p.filled + n).min(p.input.len()),
        }
    }

    pub(crate) fn received_eof(&mut self) -> Result<(), Error> {
        match self {
            Front::Tls(s) => s.received_eof(),
            Front::Plain(p) => {
                p.eof = true;
                Ok(())
            }
        }
    }

    /// The session's events; a plain side reports what was read as data, then the end of
    /// stream as the peer's close.
    pub(crate) fn process(
        &mut self,
        now: Now,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), Error> {
        match self {
            Front::Tls(s) => s.process(now, on_event),
            Front::Plain(p) => {
                if p.filled > 0 {
                    on_event(Event::Data(&p.input[..p.filled]));
                    p.filled = 0;
                }
                if p.eof && !p.peer_closed {
                    p.peer_closed = true;
                    on_event(Event::PeerClosed);
                }
                Ok(())
            }
        }
    }

    pub(crate) fn transmit(&self) -> &[u8] {
        match self {
            Front::Tls(s) => s.transmit(),
            Front::Plain(p) => p.output.pending(),
        }
    }

    pub(crate) fn transmitted(&mut self, n: usize) {
        match self {
            Front::Tls(s) => s.transmitted(n),
            Front::Plain(p) => p.output.consume(n),
        }
    }

    pub(crate) fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        match self {
            Front::Tls(s) => s.send(data),
            Front::Plain(p) if p.close_sent => Err(SendError::Closed),
            Front::Plain(p) => {
                p.output.extend(data);
                Ok(data.len())
            }
        }
    }

    /// TLS: queue `close_notify`. Plain: nothing more is sent (the socket's write half is
    /// shut once the output is written).
    pub(crate) fn close(&mut self) {
        match self {
            Front::Tls(s) => s.close(),
            Front::Plain(p) => p.close_sent = true,
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<onerecord_tls::Instant> {
        match self {
            Front::Tls(s) => s.poll_timeout(),
            Front::Plain(_) => None,
        }
    }

    pub(crate) fn peer_identity(&self) -> Option<&PeerIdentity> {
        match self {
            Front::Tls(s) => s.peer_identity(),
            Front::Plain(_) => None,
        }
    }

    pub(crate) fn server_name(&self) -> Option<&str> {
        match self {
            Front::Tls(s) => s.server_name(),
            Front::Plain(_) => None,
        }
    }

    pub(crate) fn is_established(&self) -> bool {
        match self {
            Front::Tls(s) => s.is_established(),
            Front::Plain(_) => true,
        }
    }

    pub(crate) fn peer_closed(&self) -> bool {
        match self {
            Front::Tls(s) => s.peer_closed(),
            Front::Plain(p) => p.peer_closed,
        }
    }

    pub(crate) fn close_sent(&self) -> bool {
        match self {
            Front::Tls(s) => s.close_sent(),
            Front::Plain(p) => p.close_sent,
        }
    }

    pub(crate) fn is_terminal(&self) -> bool {
        match self {
            Front::Tls(s) => s.is_terminal(),
            Front::Plain(p) => p.close_sent && p.peer_closed,
        }
    }

    pub(crate) fn error(&self) -> Option<&Error> {
        match self {
            Front::Tls(s) => s.error(),
            Front::Plain(_) => None,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        match self {
            Front::Tls(s) => s.stats(),
            Front::Plain(p) => &p.stats,
        }
    }

    pub(crate) fn release_buffers(&mut self) {
        match self {
            Front::Tls(s) => s.release_buffers(),
            Front::Plain(p) => {
                if p.filled == 0 {
                    p.input = Vec::new();
                }
                p.output.release();
            }
        }
    }

    /// A plain TCP side.
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Front::Plain(_))
    }
}
