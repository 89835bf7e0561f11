//! A blocking TLS stream over an `embedded-io` transport, itself `embedded_io::Read` +
//! `Write` so that an HTTP client can sit on top.

use embedded_io::{ErrorType, Read, Write};
use onerecord_tls::{Event, PeerIdentity};

use crate::clock::Clock;
use crate::error::{Buffer, Error};
use crate::tls::Tls;

/// Upper bound on transport reads while waiting for one event (a handshake is a few dozen
/// records; each read makes progress or fails, so this only guards against a bug).
const MAX_READS: usize = 1 << 20;

/// A TLS connection over a blocking transport `T`, with caller-owned buffers `B` and a clock
/// `C`.
///
/// The stream reads the transport one TLS record at a time (headers are never encrypted), so
/// the plaintext of one `process` step never exceeds one record: the plaintext buffer needs
/// to hold one record's plaintext (16 KiB from a generic peer; less when the peer is known
/// to send smaller records). A record whose plaintext does not fit is
/// [`Error::BufferTooSmall`] with [`Buffer::Plaintext`].
pub struct TlsStream<T, B: AsMut<[u8]> + AsRef<[u8]>, C> {
    tls: Tls<B>,
    io: T,
    clock: C,
    plain: B,
    start: usize,
    end: usize,
    overflow: Option<usize>,
    peer_closed: bool,
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> TlsStream<T, B, C> {
    /// A stream over `io` for the session `tls`; `plaintext` holds received application data
    /// until it is read.
    pub fn new(tls: Tls<B>, io: T, clock: C, plaintext: B) -> Self {
        Self {
            tls,
            io,
            clock,
            plain: plaintext,
            start: 0,
            end: 0,
            overflow: None,
            peer_closed: false,
        }
    }

    /// Run the handshake to completion (it also runs on the first read or write). Returns the
    /// verified peer.
    pub fn handshake(&mut self) -> Result<&PeerIdentity, Error<T::Error>> {
        // A client's first step produces its ClientHello without any input.
        self.process()?;
        for _ in 0..MAX_READS {
            self.flush_tls()?;
            if self.tls.is_established() {
                break;
            }
            if self.tls.is_terminal() {
                return Err(Error::Closed);
            }
            self.read_step()?;
        }
        self.flush_tls()?;
        self.tls.peer_identity().ok_or(Error::NotEstablished)
    }

    /// Read from the transport up to the end of the current record header or body, then
    /// process.
    fn read_step(&mut self) -> Result<(), Error<T::Error>> {
        let want = self.tls.framer().next_len();
        let buf = self.tls.receive_buffer();
        let n = if buf.is_empty() {
            0
        } else {
            let k = want.min(buf.len());
            let n = self.io.read(&mut buf[..k]).map_err(Error::Transport)?;
            if n == 0 {
                let r = self.tls.push_eof();
                self.flush_tls()?;
                r.map_err(Error::with_transport)?;
                self.peer_closed = true;
                return Ok(());
            }
            n
        };
        self.tls.received(n);
        self.process()
    }

    fn process(&mut self) -> Result<(), Error<T::Error>> {
        let now = self.clock.now();
        let (plain, start, end, overflow, peer_closed) = (
            self.plain.as_mut(),
            &mut self.start,
            &mut self.end,
            &mut self.overflow,
            &mut self.peer_closed,
        );
        let r = self.tls.process(now, |ev| match ev {
            Event::Data(d) => {
                if *start == *end {
                    *start = 0;
                    *end = 0;
                }
                let free = plain.len() - *end;
                if d.len() > free {
                    *overflow = Some(*end - *start + d.len());
                } else {
                    plain[*end..*end + d.len()].copy_from_slice(d);
                    *end += d.len();
                }
            }
            Event::PeerClosed | Event::Closed => *peer_closed = true,
            Event::Established(_) => {}
        });
        self.flush_tls()?;
        r.map_err(Error::with_transport)?;
        if let Some(required) = self.overflow.take() {
            let capacity = self.plain.as_ref().len();
            self.tls.session_mut().close();
            let _ = self.flush_tls();
            return Err(Error::BufferTooSmall {
                buffer: Buffer::Plaintext,
                required,
                capacity,
            });
        }
        Ok(())
    }

    /// Write everything the session holds for the peer to the transport.
    fn flush_tls(&mut self) -> Result<(), Error<T::Error>> {
        while !self.tls.pending().is_empty() {
            let n = self
                .io
                .write(self.tls.pending())
                .map_err(Error::Transport)?;
            if n == 0 {
                return Err(Error::WriteZero);
            }
            self.tls.sent(n);
        }
        Ok(())
    }

    /// Send `close_notify` and flush; the transport stays open (read until it ends, or drop
    /// it). Returns the transport error if the alert could not be written.
    pub fn close(&mut self) -> Result<(), Error<T::Error>> {
        self.tls.close();
        self.flush_tls()?;
        self.io.flush().map_err(Error::Transport)
    }

    /// The session (identity, statistics).
    pub fn tls(&self) -> &Tls<B> {
        &self.tls
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.io
    }

    /// Give the transport and the buffers back.
    pub fn into_parts(self) -> (Tls<B>, T, B) {
        (self.tls, self.io, self.plain)
    }

    /// The verified peer, once established.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.tls.peer_identity()
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
        if !self.tls.is_established() {
            self.handshake()?;
        }
        for _ in 0..MAX_READS {
            if self.start < self.end {
                let n = (self.end - self.start).min(buf.len());
                buf[..n].copy_from_slice(&self.plain.as_ref()[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if self.peer_closed || self.tls.is_terminal() {
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
        if !self.tls.is_established() {
            self.handshake()?;
        }
        self.flush_tls()?;
        let n = self.tls.send(buf).map_err(Error::with_transport)?;
        self.flush_tls()?;
        if n == 0 {
            // The buffer was empty after the flush above, so a record fits unless the
            // buffer is smaller than one record.
            let (_, capacity) = self.tls.buffer_sizes();
            return Err(Error::BufferTooSmall {
                buffer: Buffer::Outgoing,
                required: crate::tls::RECORD_OVERHEAD + 1,
                capacity,
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.flush_tls()?;
        self.io.flush().map_err(Error::Transport)
    }
}
