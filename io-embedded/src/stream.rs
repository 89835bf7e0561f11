//! A blocking TLS stream over an `embedded-io` transport, itself `embedded_io::Read` +
//! `Write` so that an HTTP client can sit on top. The async flavour is in
//! [`crate::async_stream`]; both share the transport-free part here.

use embedded_io::{ErrorType, Read, Write};
use onerecord_tls::{Event, PeerIdentity};

use crate::clock::Clock;
use crate::error::{Buffer, Error};
use crate::tls::{RECORD_OVERHEAD, Tls};

/// Upper bound on transport reads while waiting for one event (a handshake is a few dozen
/// records; each read makes progress or fails, so this only guards against a bug).
pub(crate) const MAX_READS: usize = 1 << 20;

/// Everything of a stream except the transport: the session, the clock and the plaintext
/// buffer. The blocking and async streams drive it the same way.
pub(crate) struct Core<B: AsMut<[u8]> + AsRef<[u8]>, C> {
    pub(crate) tls: Tls<B>,
    clock: C,
    plain: B,
    start: usize,
    end: usize,
    peer_closed: bool,
    /// Set when the stream itself ended the session (plaintext buffer overflow).
    failed: Option<Error>,
}

impl<B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> Core<B, C> {
    pub(crate) fn new(tls: Tls<B>, clock: C, plain: B) -> Self {
        Self {
            tls,
            clock,
            plain,
            start: 0,
            end: 0,
            peer_closed: false,
            failed: None,
        }
    }

    /// Where the next transport read goes: up to the end of the current record header or
    /// body (so one processing step yields at most one record of plaintext). `None` when the
    /// incoming buffer is full (then [`Core::on_read`] with 0 reports the size required).
    pub(crate) fn read_target(&mut self) -> Option<&mut [u8]> {
        let want = self.tls.framer().next_len();
        let buf = self.tls.receive_buffer();
        if buf.is_empty() {
            None
        } else {
            let k = want.min(buf.len());
            Some(&mut buf[..k])
        }
    }

    /// `n` bytes were read into [`Core::read_target`]; process them.
    pub(crate) fn on_read(&mut self, n: usize) -> Result<(), Error> {
        self.tls.received(n);
        self.process()
    }

    /// The transport ended: fine after the peer's `close_notify`, an error otherwise.
    pub(crate) fn on_eof(&mut self) -> Result<(), Error> {
        self.tls.received_eof()?;
        self.peer_closed = true;
        Ok(())
    }

    /// Run the session over what was received, collecting application data.
    pub(crate) fn process(&mut self) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let now = self.clock.now();
        let (plain, start, end, peer_closed) = (
            self.plain.as_mut(),
            &mut self.start,
            &mut self.end,
            &mut self.peer_closed,
        );
        let mut overflow = None;
        self.tls.process(now, |ev| match ev {
            Event::Data(d) => {
                if *start == *end {
                    *start = 0;
                    *end = 0;
                }
                if d.len() > plain.len() - *end {
                    overflow = Some(*end - *start + d.len());
                } else {
                    plain[*end..*end + d.len()].copy_from_slice(d);
                    *end += d.len();
                }
            }
            Event::PeerClosed | Event::Closed => *peer_closed = true,
            Event::Established(_) => {}
        })?;
        if let Some(required) = overflow {
            // The data cannot be delivered: the stream ends here (no close_notify, which
            // would tell the peer everything arrived).
            let e = Error::BufferTooSmall {
                buffer: Buffer::Plaintext,
                required,
                capacity: self.plain.as_ref().len(),
            };
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Copy buffered plaintext out; 0 when there is none.
    pub(crate) fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.end - self.start).min(buf.len());
        buf[..n].copy_from_slice(&self.plain.as_ref()[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// `Ok(true)` when no more plaintext will come (the peer closed cleanly); the error when
    /// the session failed; `Ok(false)` while data may still arrive.
    pub(crate) fn finished(&self) -> Result<bool, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(e) = self.tls.error() {
            return Err(e);
        }
        Ok(self.peer_closed || self.tls.is_terminal())
    }

    /// Error for a session that ended before the handshake completed.
    pub(crate) fn not_established(&self) -> Error {
        self.failed
            .clone()
            .or_else(|| self.tls.error())
            .unwrap_or(Error::Closed)
    }

    /// Encrypt what fits of `buf`; 0 is a too-small outgoing buffer (it was flushed before).
    pub(crate) fn send(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let n = self.tls.send(buf)?;
        if n == 0 && !buf.is_empty() {
            let (_, capacity) = self.tls.buffer_sizes();
            return Err(Error::BufferTooSmall {
                buffer: Buffer::Outgoing,
                required: RECORD_OVERHEAD + 1,
                capacity,
            });
        }
        Ok(n)
    }

    pub(crate) fn into_parts(self) -> (Tls<B>, B) {
        (self.tls, self.plain)
    }
}

/// A TLS connection over a blocking transport `T`, with caller-owned buffers `B` and a clock
/// `C`.
///
/// The stream reads the transport one TLS record at a time (headers are never encrypted), so
/// the plaintext of one `process` step never exceeds one record: the plaintext buffer needs
/// to hold one record's plaintext (16 KiB from a generic peer; less when the peer is known
/// to send smaller records). A record whose plaintext does not fit is
/// [`Error::BufferTooSmall`] with [`Buffer::Plaintext`], and ends the stream.
///
/// Waiting is bounded by the transport: give it a read timeout (the handshake deadline is
/// checked on every step, but a blocked read is the transport's to end).
pub struct TlsStream<T, B: AsMut<[u8]> + AsRef<[u8]>, C> {
    core: Core<B, C>,
    io: T,
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> TlsStream<T, B, C> {
    /// A stream over `io` for the session `tls`; `plaintext` holds received application data
    /// until it is read.
    pub fn new(tls: Tls<B>, io: T, clock: C, plaintext: B) -> Self {
        Self {
            core: Core::new(tls, clock, plaintext),
            io,
        }
    }

    /// Run the handshake to completion (it also runs on the first read or write). Returns the
    /// verified peer.
    pub fn handshake(&mut self) -> Result<&PeerIdentity, Error<T::Error>> {
        // A client's first step produces its ClientHello without any input.
        let r = self.core.process();
        self.flush_tls()?;
        r.map_err(Error::with_transport)?;
        for _ in 0..MAX_READS {
            if self.core.tls.is_established() {
                break;
            }
            if self.core.tls.is_terminal() {
                return Err(self.core.not_established().with_transport());
            }
            self.read_step()?;
        }
        self.core.tls.peer_identity().ok_or(Error::NotEstablished)
    }

    /// One transport read (at most up to the end of the current record), processed, and
    /// whatever the session then has to send, sent.
    fn read_step(&mut self) -> Result<(), Error<T::Error>> {
        let r = match self.core.read_target() {
            Some(buf) => match self.io.read(buf).map_err(Error::Transport)? {
                0 => self.core.on_eof(),
                n => self.core.on_read(n),
            },
            None => self.core.on_read(0),
        };
        self.flush_tls()?;
        r.map_err(Error::with_transport)
    }

    /// Write everything the session holds for the peer to the transport.
    fn flush_tls(&mut self) -> Result<(), Error<T::Error>> {
        while !self.core.tls.transmit().is_empty() {
            let n = self
                .io
                .write(self.core.tls.transmit())
                .map_err(Error::Transport)?;
            if n == 0 {
                return Err(Error::WriteZero);
            }
            self.core.tls.transmitted(n);
        }
        Ok(())
    }

    /// Send `close_notify` and flush; the transport stays open (read until it ends, or drop
    /// it). Returns the transport error if the alert could not be written.
    pub fn close(&mut self) -> Result<(), Error<T::Error>> {
        self.core.tls.close();
        self.flush_tls()?;
        self.io.flush().map_err(Error::Transport)
    }

    /// The session (identity, statistics).
    pub fn tls(&self) -> &Tls<B> {
        &self.core.tls
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.io
    }

    /// Give the session, the transport and the plaintext buffer back.
    pub fn into_parts(self) -> (Tls<B>, T, B) {
        let (tls, plain) = self.core.into_parts();
        (tls, self.io, plain)
    }

    /// The verified peer, once established.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.core.tls.peer_identity()
    }
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> ErrorType for TlsStream<T, B, C> {
    type Error = Error<T::Error>;
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> Read for TlsStream<T, B, C> {
    /// Blocks until application data arrives; `Ok(0)` once the peer sent `close_notify`
    /// (a transport that ends without it is an error: truncation is never silent).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.core.tls.is_established() {
            self.handshake()?;
        }
        for _ in 0..MAX_READS {
            let n = self.core.take_plain(buf);
            if n > 0 {
                return Ok(n);
            }
            if self.core.finished().map_err(Error::with_transport)? {
                return Ok(0);
            }
            self.read_step()?;
        }
        Ok(0)
    }
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> Write for TlsStream<T, B, C> {
    /// Encrypts at most one outgoing buffer's worth (records of at most the write cap) and
    /// writes it to the transport before returning.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.core.tls.is_established() {
            self.handshake()?;
        }
        self.flush_tls()?;
        let n = self.core.send(buf).map_err(Error::with_transport)?;
        self.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.flush_tls()?;
        self.io.flush().map_err(Error::Transport)
    }
}
