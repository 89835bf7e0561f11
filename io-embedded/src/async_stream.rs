//! The async flavour of [`crate::TlsStream`]: the same stream over an `embedded-io-async`
//! transport (e.g. an embassy-net TCP socket), itself `embedded_io_async::Read + Write`.
//! The TLS work itself is synchronous CPU work inside each call; only the transport awaits.

use embedded_io_async::{ErrorType, Read, Write};
use onerecord_tls::PeerIdentity;

use crate::clock::Clock;
use crate::error::Error;
use crate::stream::{Core, MAX_READS};
use crate::tls::Tls;

/// A TLS connection over an async transport `T`, with caller-owned buffers `B` and a clock
/// `C`. Same buffers, limits and errors as [`crate::TlsStream`].
pub struct AsyncTlsStream<T, B: AsMut<[u8]> + AsRef<[u8]>, C> {
    core: Core<B, C>,
    io: T,
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> AsyncTlsStream<T, B, C> {
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
    pub async fn handshake(&mut self) -> Result<&PeerIdentity, Error<T::Error>> {
        let r = self.core.process();
        self.flush_tls().await?;
        r.map_err(Error::with_transport)?;
        for _ in 0..MAX_READS {
            if self.core.tls.is_established() {
                break;
            }
            if self.core.tls.is_terminal() {
                return Err(self.core.not_established().with_transport());
            }
            self.read_step().await?;
        }
        self.core.tls.peer_identity().ok_or(Error::NotEstablished)
    }

    async fn read_step(&mut self) -> Result<(), Error<T::Error>> {
        let r = match self.core.read_target() {
            Some(buf) => match self.io.read(buf).await.map_err(Error::Transport)? {
                0 => self.core.on_eof(),
                n => self.core.on_read(n),
            },
            None => self.core.on_read(0),
        };
        self.flush_tls().await?;
        r.map_err(Error::with_transport)
    }

    async fn flush_tls(&mut self) -> Result<(), Error<T::Error>> {
        while !self.core.tls.transmit().is_empty() {
            let n = self
                .io
                .write(self.core.tls.transmit())
                .await
                .map_err(Error::Transport)?;
            if n == 0 {
                return Err(Error::WriteZero);
            }
            self.core.tls.transmitted(n);
        }
        Ok(())
    }

    /// Send `close_notify` and flush.
    pub async fn close(&mut self) -> Result<(), Error<T::Error>> {
        self.core.tls.close();
        self.flush_tls().await?;
        self.io.flush().await.map_err(Error::Transport)
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
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> ErrorType
    for AsyncTlsStream<T, B, C>
{
    type Error = Error<T::Error>;
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> Read for AsyncTlsStream<T, B, C> {
    /// Waits until application data arrives; `Ok(0)` once the peer sent `close_notify`.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.core.tls.is_established() {
            self.handshake().await?;
        }
        for _ in 0..MAX_READS {
            let n = self.core.take_plain(buf);
            if n > 0 {
                return Ok(n);
            }
            if self.core.finished().map_err(Error::with_transport)? {
                return Ok(0);
            }
            self.read_step().await?;
        }
        Ok(0)
    }
}

impl<T: Read + Write, B: AsMut<[u8]> + AsRef<[u8]>, C: Clock> Write for AsyncTlsStream<T, B, C> {
    /// Encrypts at most one outgoing buffer's worth and writes it before returning.
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.core.tls.is_established() {
            self.handshake().await?;
        }
        self.flush_tls().await?;
        let n = self.core.send(buf).map_err(Error::with_transport)?;
        self.flush_tls().await?;
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.flush_tls().await?;
        self.io.flush().await.map_err(Error::Transport)
    }
}
