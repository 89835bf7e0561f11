//! Pure buffer mode: received bytes in, bytes to send out, over caller-owned fixed
//! buffers. No transport, no clock, no allocation of our own.

use onerecord_tls::Fixed;
use onerecord_tls::{
    ClientPolicy, Event, Instant, PeerIdentity, Reason, ServerPolicies, Session, Time,
};

use crate::error::{Buffer, Error};

/// TLS record header: type, version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// Largest TLS record overhead of the ONE Record suites: TLS 1.2 AES-GCM adds a 5-byte header,
/// an 8-byte explicit nonce and a 16-byte tag (TLS 1.3 adds 5 + 1 + 16 = 22).
pub const RECORD_OVERHEAD: usize = 29;
/// Largest plaintext in one record (2^14).
pub const MAX_PLAINTEXT: usize = 16_384;

/// Follows the record framing of the bytes received (TLS record headers are never
/// encrypted), so that a stream can feed the session one record at a time and a too-small
/// buffer can be reported with the size the current record needs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Framer {
    header: [u8; HEADER_LEN],
    have: usize,
    body_left: usize,
    largest: usize,
}

impl Framer {
    /// Bytes to read to finish the current header or record body (never 0).
    pub(crate) fn next_len(&self) -> usize {
        if self.have == HEADER_LEN {
            self.body_left.max(1)
        } else {
            HEADER_LEN - self.have
        }
    }

    /// Account for `bytes`, received in order.
    pub(crate) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.have < HEADER_LEN {
                let n = (HEADER_LEN - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == HEADER_LEN {
                    self.body_left =
                        usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    self.largest = self.largest.max(HEADER_LEN + self.body_left);
                    if self.body_left == 0 {
                        self.have = 0;
                    }
                }
            } else {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                if self.body_left == 0 {
                    self.have = 0;
                }
            }
        }
    }

    /// The largest record (header included) seen so far.
    pub(crate) fn largest(&self) -> usize {
        self.largest
    }

    /// For an incomplete record: `(bytes of it received, its full length)`.
    pub(crate) fn partial(&self) -> Option<(usize, usize)> {
        match self.have {
            0 => None,
            HEADER_LEN => {
                let total =
                    HEADER_LEN + usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                Some((total - self.body_left, total))
            }
            n => Some((n, HEADER_LEN)),
        }
    }
}

/// One TLS session over two caller-owned fixed buffers, driven like the core's `Session`:
/// the same run-loop names (`receive`, `process`, `transmit`, `transmitted`, `received_eof`).
///
/// `B` is any byte storage that never grows: `&mut [u8]`, `[u8; N]`, or a boxed slice.
///
/// # Run loop
///
/// 1. Received bytes: [`Tls::receive`] (or [`Tls::receive_buffer`] + [`Tls::received`]);
///    end of stream: [`Tls::received_eof`].
/// 2. After every input (and after [`Tls::send`], [`Tls::close`], a timer), call
///    [`Tls::process`]; it reports `Established` (before any data), `Data`, `PeerClosed`,
///    `Closed`.
/// 3. Send [`Tls::transmit`] and acknowledge with [`Tls::transmitted`] (or copy out with
///    [`Tls::transmit_into`]). Do this after a failed `process` too: it holds the alert.
///
/// A buffer that is too small ends the session with [`Error::BufferTooSmall`] naming the
/// buffer and the size required; nothing panics and nothing stalls.
pub struct Tls<B: AsMut<[u8]> + AsRef<[u8]>> {
    session: Session<Fixed<B>>,
    framer: Framer,
    incoming_capacity: usize,
    outgoing_capacity: usize,
    write_cap: usize,
    /// Set when this adapter ended the session (a full incoming buffer the core reported no
    /// error for): every later call reports it.
    failed: Option<Error>,
}

impl<B: AsMut<[u8]> + AsRef<[u8]>> Tls<B> {
    /// A client session to `server_name` over the given buffers. For mTLS, the policy holds
    /// the client certificate ([`onerecord_tls::ClientPolicyBuilder::client_cert`]);
    /// its session cache (fixed size) lets the next connection to the same name resume.
    pub fn client(
        policy: &ClientPolicy,
        server_name: &str,
        now: Time,
        incoming: B,
        outgoing: B,
    ) -> Result<Self, Error> {
        let (ic, oc) = (incoming.as_ref().len(), outgoing.as_ref().len());
        let session = Session::client_with_buffers(
            policy,
            server_name,
            now,
            Fixed(incoming),
            Fixed(outgoing),
        )
        .map_err(Error::Config)?;
        Ok(Self::wrap(session, ic, oc))
    }

    /// A server session over the given buffers; the policy is chosen by SNI.
    pub fn server(policies: &ServerPolicies, now: Time, incoming: B, outgoing: B) -> Self {
        let (ic, oc) = (incoming.as_ref().len(), outgoing.as_ref().len());
        let session = Session::server_with_buffers(policies, now, Fixed(incoming), Fixed(outgoing));
        Self::wrap(session, ic, oc)
    }

    fn wrap(session: Session<Fixed<B>>, ic: usize, oc: usize) -> Self {
        Self {
            session,
            framer: Framer::default(),
            incoming_capacity: ic,
            outgoing_capacity: oc,
            write_cap: oc.saturating_sub(RECORD_OVERHEAD).min(MAX_PLAINTEXT),
            failed: None,
        }
    }

    /// Cap the plaintext of each record [`Tls::send`] produces (at least 1). rustls encrypts
    /// every record through a heap buffer of the record's size, so this bounds that transient
    /// allocation. The default is the outgoing buffer's size less one record's overhead, at
    /// most 16 KiB.
    pub fn with_write_cap(mut self, max_plaintext: usize) -> Self {
        self.write_cap = max_plaintext.clamp(1, MAX_PLAINTEXT);
        self
    }

    /// The plaintext cap per record (see [`Tls::with_write_cap`]).
    pub fn write_cap(&self) -> usize {
        self.write_cap
    }

    /// Free space in the incoming buffer; write received bytes there, then [`Tls::received`].
    /// Empty when the buffer is full (then [`Tls::process`] reports what is required).
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        self.session.receive_buffer()
    }

    /// `n` bytes were written into [`Tls::receive_buffer`].
    pub fn received(&mut self, n: usize) {
        let buf = self.session.receive_buffer();
        let n = n.min(buf.len());
        self.framer.advance(&buf[..n]);
        self.session.received(n);
    }

    /// Copy received bytes in. Returns how many fit; offer the rest again after
    /// [`Tls::process`].
    pub fn receive(&mut self, data: &[u8]) -> usize {
        let buf = self.session.receive_buffer();
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.received(n);
        n
    }

    /// The transport reached end of stream: `Ok` after a clean close, otherwise the session
    /// fails (truncation is never silent).
    pub fn received_eof(&mut self) -> Result<(), Error> {
        self.session.received_eof().map_err(Error::Tls)
    }

    /// Advance the session with the bytes received so far; report events to `on_event`.
    /// `now` is checked against certificate validity and the handshake deadline.
    pub fn process(&mut self, now: Time, on_event: impl FnMut(Event<'_>)) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let incoming_full = self.session.receive_buffer().is_empty();
        match self.session.process(now, on_event) {
            Ok(()) => {
                // After the handshake, rustls reports an incomplete record as "idle", so a
                // record larger than the buffer would stall silently: a buffer still full
                // after processing can never make progress.
                if !self.session.is_terminal() && self.session.receive_buffer().is_empty() {
                    let e = self.incoming_too_small(self.incoming_capacity + 1);
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                Ok(())
            }
            Err(e) => Err(self.translate(e, incoming_full)),
        }
    }

    fn translate(&self, e: onerecord_tls::Error, incoming_full: bool) -> Error {
        let Reason::BufferLimit {
            required, limit, ..
        } = *e.reason()
        else {
            return Error::Tls(e);
        };
        if incoming_full {
            self.incoming_too_small(required)
        } else {
            Error::BufferTooSmall {
                buffer: Buffer::Outgoing,
                required,
                capacity: limit,
            }
        }
    }

    fn incoming_too_small(&self, required: usize) -> Error {
        // The buffer is full of bytes that cannot be discarded yet (a handshake message being
        // reassembled, then the record in progress): it needs room for all of them plus the
        // rest of that record.
        let required = match self.framer.partial() {
            Some((got, total)) => (self.incoming_capacity - got + total).max(required),
            None => required.max(self.incoming_capacity + HEADER_LEN),
        };
        Error::BufferTooSmall {
            buffer: Buffer::Incoming,
            required,
            capacity: self.incoming_capacity,
        }
    }

    /// Bytes to send to the peer (handshake flights, records, alerts).
    pub fn transmit(&self) -> &[u8] {
        self.session.transmit()
    }

    /// `n` bytes of [`Tls::transmit`] were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.session.transmitted(n);
    }

    /// Copy bytes to send into `out`, marking them sent. Returns how many.
    pub fn transmit_into(&mut self, out: &mut [u8]) -> usize {
        let pending = self.session.transmit();
        let n = pending.len().min(out.len());
        out[..n].copy_from_slice(&pending[..n]);
        self.session.transmitted(n);
        n
    }

    /// Encrypt application data (at most [`Tls::write_cap`] bytes per record). Returns the
    /// bytes accepted: fewer than `data.len()` when the outgoing buffer is full (send
    /// [`Tls::transmit`], then the rest). An outgoing buffer that cannot hold even a one-byte
    /// record is [`Error::BufferTooSmall`].
    pub fn send(&mut self, data: &[u8]) -> Result<usize, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(self.write_cap);
            let m = self.session.send(&data[done..done + n])?;
            done += m;
            if m < n {
                break;
            }
        }
        Ok(done)
    }

    /// Queue `close_notify` (then send [`Tls::transmit`]).
    pub fn close(&mut self) {
        self.session.close();
    }

    /// The verified peer, once established.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.session.peer_identity()
    }

    /// `true` once the handshake completed.
    pub fn is_established(&self) -> bool {
        self.session.is_established()
    }

    /// `true` when the session is over (closed or failed).
    pub fn is_terminal(&self) -> bool {
        self.failed.is_some() || self.session.is_terminal()
    }

    /// The error that ended the session, if one did.
    pub fn error(&self) -> Option<Error> {
        if let Some(e) = &self.failed {
            return Some(e.clone());
        }
        self.session.error().map(|e| Error::Tls(e.clone()))
    }

    /// When [`Tls::process`] must be called even if nothing arrives (handshake deadline), on
    /// the clock of the `now` passed in (a [`Time`] alone: the wall clock).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// The largest TLS record received so far, header included: field data for sizing the
    /// incoming buffer when the peers are known.
    pub fn largest_record_received(&self) -> usize {
        self.framer.largest()
    }

    /// Sizes of the incoming and outgoing buffers.
    pub fn buffer_sizes(&self) -> (usize, usize) {
        (self.incoming_capacity, self.outgoing_capacity)
    }

    /// The core session (statistics, flags, identity).
    pub fn session(&self) -> &Session<Fixed<B>> {
        &self.session
    }

    /// The core session, mutably (key update, half-close).
    pub fn session_mut(&mut self) -> &mut Session<Fixed<B>> {
        &mut self.session
    }

    pub(crate) fn framer(&self) -> &Framer {
        &self.framer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_follows_records_split_anywhere() {
        let mut wire = [0u8; 20]; // records of 3, 0 and 2 bytes
        wire[..5].copy_from_slice(&[22, 3, 3, 0, 3]);
        wire[8..13].copy_from_slice(&[23, 3, 3, 0, 0]);
        wire[13..18].copy_from_slice(&[23, 3, 3, 0, 2]);
        for split in 0..wire.len() {
            let mut f = Framer::default();
            f.advance(&wire[..split]);
            f.advance(&wire[split..]);
            assert_eq!(f.partial(), None, "split at {split}");
            assert_eq!(f.next_len(), HEADER_LEN);
        }
        let mut f = Framer::default();
        f.advance(&wire[..7]);
        assert_eq!(f.partial(), Some((7, 8)));
        assert_eq!(f.next_len(), 1);
        f.advance(&wire[7..15]);
        assert_eq!(f.partial(), Some((2, 5)));
        assert_eq!(f.next_len(), 3);
    }
}
