//! Errors of the embedded adapter.

use core::convert::Infallible;
use core::fmt;

use onerecord_tls::{ConfigError, SendError};

/// Which caller-owned buffer was too small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// The incoming (ciphertext) buffer: it must hold a whole handshake message (the peer's
    /// certificate flight) and one whole record.
    Incoming,
    /// The outgoing (ciphertext) buffer: it must hold this side's largest handshake flight
    /// (its certificate chain, for mTLS) and one record of the write cap.
    Outgoing,
    /// The stream's plaintext buffer: it must hold the plaintext of one record from the peer.
    Plaintext,
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Incoming => "incoming",
            Self::Outgoing => "outgoing",
            Self::Plaintext => "plaintext",
        })
    }
}

/// An error of the embedded adapter. `E` is the transport's error (`Infallible` in pure
/// buffer mode, where there is no transport).
///
/// Every error is terminal for the session except [`Error::NotEstablished`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error<E = Infallible> {
    /// The TLS session failed: the reason, and which alert went to the peer.
    Tls(onerecord_tls::Error),
    /// A caller-owned buffer is too small for what the peer (or this side) needs now.
    /// `required` is the size at which this step can proceed; the session is terminal, so
    /// reconnect with a buffer of at least that size.
    BufferTooSmall {
        /// The buffer.
        buffer: Buffer,
        /// Bytes needed.
        required: usize,
        /// Its size.
        capacity: usize,
    },
    /// The policy or the server name was refused when the session was created.
    Config(ConfigError),
    /// Application data cannot be sent before the handshake completed.
    NotEstablished,
    /// This side closed the session (or it failed): nothing more can be sent.
    Closed,
    /// The transport accepted no byte of a write (`Write::write` returned 0).
    WriteZero,
    /// The transport failed.
    Transport(E),
}

impl<E> Error<E> {
    /// `true` when the error is a too-small buffer.
    pub fn is_buffer_too_small(&self) -> bool {
        matches!(self, Self::BufferTooSmall { .. })
    }
}

impl Error<Infallible> {
    /// The same error, typed for a transport with error `E`.
    pub fn with_transport<E>(self) -> Error<E> {
        match self {
            Self::Tls(e) => Error::Tls(e),
            Self::BufferTooSmall {
                buffer,
                required,
                capacity,
            } => Error::BufferTooSmall {
                buffer,
                required,
                capacity,
            },
            Self::Config(e) => Error::Config(e),
            Self::NotEstablished => Error::NotEstablished,
            Self::Closed => Error::Closed,
            Self::WriteZero => Error::WriteZero,
            Self::Transport(never) => match never {},
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotEstablished => Self::NotEstablished,
            SendError::Closed => Self::Closed,
            SendError::BufferTooSmall { required, capacity } => Self::BufferTooSmall {
                buffer: Buffer::Outgoing,
                required,
                capacity,
            },
            _ => Self::Closed,
        }
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(e) => write!(f, "tls: {e}"),
            Self::BufferTooSmall {
                buffer,
                required,
                capacity,
            } => write!(
                f,
                "the {buffer} buffer holds {capacity} bytes, {required} bytes are required"
            ),
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::NotEstablished => f.write_str("handshake not complete"),
            Self::Closed => f.write_str("session closed for sending"),
            Self::WriteZero => f.write_str("transport accepted no bytes"),
            Self::Transport(e) => write!(f, "transport: {e:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

impl<E: embedded_io::Error> embedded_io::Error for Error<E> {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind;
        match self {
            Self::Transport(e) => e.kind(),
            Self::Tls(_) => ErrorKind::InvalidData,
            Self::BufferTooSmall { .. } => ErrorKind::OutOfMemory,
            Self::Config(_) => ErrorKind::InvalidInput,
            Self::NotEstablished => ErrorKind::NotConnected,
            Self::Closed => ErrorKind::BrokenPipe,
            Self::WriteZero => ErrorKind::WriteZero,
        }
    }
}
