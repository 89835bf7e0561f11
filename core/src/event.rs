//! What a session reports from [`crate::Session::process`].

use crate::identity::PeerIdentity;

/// Something that happened, reported by [`crate::Session::process`] in this order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The handshake completed and the peer passed the policy. Reported once, before any
    /// `Data`.
    Established(&'a PeerIdentity),
    /// Application data, as decrypted (one TLS record at most). Valid until the callback
    /// returns: consume or copy it there.
    Data(&'a [u8]),
    /// The peer sent `close_notify`: it sends nothing more. This side may still send, then
    /// [`crate::Session::close`].
    PeerClosed,
    /// Both sides have sent `close_notify`; the session is finished.
    Closed,
}
