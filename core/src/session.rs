//! The session: one TLS connection, server or client, driven by the caller.
//!
//! # Run loop (the drain order, identical in every adapter)
//!
//! 1. Bytes from the peer: copy them into [`Session::receive_buffer`], then
//!    [`Session::received`]. End of stream: [`Session::received_eof`].
//! 2. After every input (bytes, [`Session::send`], [`Session::close`], a timer firing), call
//!    [`Session::process`] with the current time ([`crate::Now`]). It advances the handshake and reports
//!    [`Event`]s in order: `Established` (before any application byte), `Data`,
//!    `PeerClosed`, `Closed`.
//! 3. Transmit [`Session::transmit`] and acknowledge with [`Session::transmitted`]. Do this
//!    after `process` *and* after a failed `process`: the fatal alert is queued there.
//! 4. Sleep until the socket is readable or [`Session::poll_timeout`] passes.
//!
//! An `Err` from `process` is terminal: the error says why ([`Error::reason`]) and which alert
//! went to the peer ([`Error::alert_sent`]).

use core::time::Duration;

use crate::backend::engine::Engine;
use crate::buffer::{DEFAULT_MAX_INCOMING, DEFAULT_MAX_OUTGOING, Growable, Storage};
use crate::error::{ConfigError, Error, SendError};
use crate::event::Event;
use crate::identity::PeerIdentity;
use crate::policy::{ClientPolicy, ServerPolicies};
use crate::stats::Stats;
use crate::time::{Instant, Now};

/// Initial size of growable buffers (one ClientHello or a small flight).
const INITIAL_BUFFER: usize = 4096;
/// How much free space [`Session::receive_buffer`] asks for.
const READ_CHUNK: usize = 4096;

/// One TLS connection over rustls' unbuffered API, with the ONE Record policy enforced.
///
/// `S` is the buffer storage: [`Growable`] (default, bounded heap buffers) or
/// [`crate::Fixed`] (caller-owned memory that never grows).
pub struct Session<S: Storage = Growable> {
    engine: Engine<S>,
}

impl Session<Growable> {
    /// A server session. The policy is chosen from `policies` by the ClientHello's SNI once
    /// it has arrived (no TLS state and no crypto before that).
    pub fn server(policies: &ServerPolicies, now: impl Into<Now>) -> Self {
        Self::server_with_buffers(policies, now, default_incoming(), default_outgoing())
    }

    /// A client session to `server_name` (a DNS name or IP address; always sent as SNI when
    /// it is a DNS name). A second session to the same name resumes through the policy's
    /// session cache.
    pub fn client(
        policy: &ClientPolicy,
        server_name: &str,
        now: impl Into<Now>,
    ) -> Result<Self, ConfigError> {
        Self::client_with_buffers(
            policy,
            server_name,
            now,
            default_incoming(),
            default_outgoing(),
        )
    }
}

fn default_incoming() -> Growable {
    Growable::new(INITIAL_BUFFER, DEFAULT_MAX_INCOMING)
}

fn default_outgoing() -> Growable {
    Growable::new(INITIAL_BUFFER, DEFAULT_MAX_OUTGOING)
}

impl<S: Storage> Session<S> {
    /// A server session over the given buffers.
    pub fn server_with_buffers(
        policies: &ServerPolicies,
        now: impl Into<Now>,
        incoming: S,
        outgoing: S,
    ) -> Self {
        Self {
            engine: Engine::new_server(policies, now.into(), incoming, outgoing),
        }
    }

    /// A client session over the given buffers.
    pub fn client_with_buffers(
        policy: &ClientPolicy,
        server_name: &str,
        now: impl Into<Now>,
        incoming: S,
        outgoing: S,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            engine: Engine::new_client(policy, server_name, now.into(), incoming, outgoing)?,
        })
    }

    /// Free space to copy received bytes into; follow with [`Session::received`]. Empty when
    /// the incoming buffer is at its bound (then [`Session::process`] reports the limit).
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        self.engine.receive_buffer(READ_CHUNK)
    }

    /// `n` bytes were written into [`Session::receive_buffer`].
    pub fn received(&mut self, n: usize) {
        self.engine.received(n);
    }

    /// Copy `data` in (convenience over `receive_buffer` + `received`). Returns how many
    /// bytes fit; the rest must be offered again after [`Session::process`].
    #[must_use = "bytes that did not fit must be offered again"]
    pub fn receive(&mut self, data: &[u8]) -> usize {
        let spare = self.engine.receive_buffer(data.len());
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.received(n);
        n
    }

    /// The transport reached end of stream. After a clean close this is `Ok`; otherwise the
    /// session fails with [`crate::Reason::UnexpectedEof`] (truncation is never silent).
    pub fn received_eof(&mut self) -> Result<(), Error> {
        self.engine.received_eof()
    }

    /// Advance the session with the bytes received so far, reporting [`Event`]s to
    /// `on_event`. `now` is a [`Now`] or a [`crate::Time`]: its wall-clock time drives
    /// certificate validity, its monotonic instant the handshake deadline.
    ///
    /// Work is bounded by the bytes received. On `Err` the session is terminal; transmit
    /// what [`Session::transmit`] holds (the alert), then close the transport.
    pub fn process(
        &mut self,
        now: impl Into<Now>,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), Error> {
        self.engine.process(now.into(), &mut on_event)
    }

    /// TLS bytes to send to the peer (handshake flights, records, alerts).
    #[must_use = "the bytes must be sent to the peer, then acknowledged with `transmitted`"]
    pub fn transmit(&self) -> &[u8] {
        self.engine.transmit()
    }

    /// `n` bytes of [`Session::transmit`] were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.engine.transmitted(n);
    }

    /// Encrypt application data for sending (transmit afterwards). Returns the bytes
    /// accepted: fewer than `data.len()` when the outgoing buffer reached its bound
    /// (backpressure: transmit, then send the rest).
    #[must_use = "bytes not accepted must be sent again after transmitting"]
    pub fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        self.engine.send(data)
    }

    /// Queue `close_notify` (half-close: the peer may still send until it closes too).
    /// Before the handshake completed there is nothing to send and the session just ends.
    pub fn close(&mut self) {
        self.engine.close();
    }

    /// TLS 1.3: update this side's traffic keys and ask the peer to update its own
    /// (a KeyUpdate message). Returns `false` on TLS 1.2, which has no key update.
    pub fn update_keys(&mut self) -> Result<bool, SendError> {
        self.engine.update_keys()
    }

    /// When [`Session::process`] must be called even if nothing arrives (the handshake
    /// deadline, on the monotonic clock of the [`Now`] the session is driven with), or
    /// `None`.
    #[must_use = "the session must be processed again at this time"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    /// The verified peer, once established.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.engine.identity()
    }

    /// The server name: from the ClientHello (server) or as requested (client).
    pub fn server_name(&self) -> Option<&str> {
        self.engine.server_name()
    }

    /// `true` once the handshake completed.
    pub fn is_established(&self) -> bool {
        self.engine.is_established()
    }

    /// `true` while the handshake is in progress.
    pub fn is_handshaking(&self) -> bool {
        self.engine.is_handshaking()
    }

    /// `true` when the peer has sent `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.engine.peer_closed()
    }

    /// `true` when this side has queued `close_notify`.
    pub fn close_sent(&self) -> bool {
        self.engine.close_sent()
    }

    /// `true` when the session is over (closed or failed); transmit what is left, then
    /// close the transport.
    pub fn is_terminal(&self) -> bool {
        self.engine.is_terminal()
    }

    /// The error that ended the session, if any.
    pub fn error(&self) -> Option<&Error> {
        self.engine.error()
    }

    /// Counters for this session.
    pub fn stats(&self) -> &Stats {
        self.engine.stats()
    }

    /// The configured handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.engine.handshake_timeout()
    }

    /// Bytes held in the incoming and outgoing buffers (allocated capacity).
    pub fn buffer_capacity(&self) -> (usize, usize) {
        self.engine.buffer_capacity()
    }

    /// Give growable buffers back to the allocator while they are empty (an idle kept-alive
    /// connection then holds only rustls' own state). They are allocated again on use.
    pub fn release_buffers(&mut self) {
        self.engine.release_buffers();
    }
}
