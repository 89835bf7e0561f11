//! The unbuffered-connection driver: the one place that calls `process_tls_records`.
//!
//! Contract of rustls 0.23's unbuffered API, as used here (see `conn/unbuffered.rs`):
//! - call `process_tls_records` until it reports `BlockedHandshake` (needs bytes) or
//!   `WriteTraffic` (idle); after each state, drop `discard` bytes from the *front* of the
//!   incoming bytes (records are decrypted and reassembled in place, so processed bytes are
//!   never moved or fed again);
//! - every `EncodeTlsData` appends to the outgoing queue; `InsufficientSize` leaves the chunk
//!   in the state, so we grow and retry on the same state object (dropping it would lose it);
//! - errors are sticky; one more call after an error yields the fatal alert to encode.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CommonState, ProtocolVersion};

use super::alert_spy::{self, WriteKeys};
use super::{Clock, alerts, group_from_rustls, suite_from_rustls};
use crate::buffer::{Queue, Storage};
use crate::cert::CertInfo;
use crate::error::{Alert, Buffer, ConfigError, Error, Reason, SendError};
use crate::event::Event;
use crate::hello::{self, Admission};
use crate::identity::{HandshakeKind, LeafCache, PeerIdentity};
use crate::policy::{ClientPolicy, ServerPolicies};
use crate::spec::{DEFAULT_HANDSHAKE_TIMEOUT, LoadedCrl};
use crate::stats::Stats;
use crate::time::{Instant, Now, Time};
use crate::vocabulary::{TlsVersion, Versions};

/// The rustls connection of either role.
trait Driven {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
}

impl Driven for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

impl Driven for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

/// Application-data operations of rustls' `WriteTraffic`, for either role.
trait Writer {
    fn encrypt(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, EncryptError>;
    fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError>;
}

impl<D> Writer for rustls::unbuffered::WriteTraffic<'_, D> {
    fn encrypt(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::encrypt(self, data, out)
    }
    fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        self.queue_close_notify(out)
    }
}

/// The rustls connection of a session, once the policy is known.
enum Tls {
    Server(Box<UnbufferedServerConnection>),
    Client(Box<UnbufferedClientConnection>),
}

/// Which directions have sent `close_notify`.
#[derive(Clone, Copy, Debug, Default)]
struct Shutdown {
    /// This side queued `close_notify`.
    sent: bool,
    /// The peer sent `close_notify`.
    received: bool,
}

/// The lifecycle of a session: one value, as quinn-proto's `State`.
enum State {
    /// Server before the ClientHello was read: the policy is not chosen yet.
    AwaitingHello(ServerPolicies),
    /// rustls is handshaking.
    Handshaking(Tls),
    /// The handshake completed; application data flows until both sides closed.
    Open(Tls, Shutdown),
    /// Closed cleanly (or ended before the handshake by `close`); the rustls state is gone.
    Closed(Shutdown),
    /// Failed; the rustls state is gone. Terminal.
    Failed(Error, Shutdown),
}

/// Session state independent of the public storage type parameter.
pub(crate) struct Engine<S> {
    state: State,
    incoming: Queue<S>,
    outgoing: Queue<S>,
    clock: Option<Arc<Clock>>,
    /// The handshake deadline (monotonic), while handshaking.
    deadline: Option<Instant>,
    timeout: Duration,
    /// The verified peer; `Some` from the moment the handshake completed.
    identity: Option<PeerIdentity>,
    /// The policy's cache of parsed peer leaves (set once the policy is known).
    leaves: Option<Arc<LeafCache>>,
    /// The policy's CRLs (set once the policy is known), to name a stale one.
    crls: Option<Arc<[LoadedCrl]>>,
    /// The connection's current record encrypter, once the write side is encrypted: for an
    /// alert rustls does not send itself.
    write_keys: Option<WriteKeys>,
    /// How far the ClientHello admission has walked the incoming records.
    hello_scan: hello::HelloScan,
    server_name: Option<String>,
    stats: Stats,
    /// Application data records are handed up at most this large.
    max_send_record: usize,
}

/// Largest plaintext per record.
const MAX_PLAINTEXT: usize = 16_384;
/// TLS 1.2 AEAD record overhead (header 5 + explicit nonce 8 + tag 16); TLS 1.3 is 22.
const RECORD_OVERHEAD: usize = 29;

/// A write rustls refused for lack of room names the room it needs.
trait Grow {
    fn required_size(&self) -> Option<usize>;
}

impl Grow for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(sz) => Some(sz.required_size),
            _ => None,
        }
    }
}

impl Grow for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(sz) => Some(sz.required_size),
            _ => None,
        }
    }
}

/// What [`write_growing`] did.
enum Written {
    /// Bytes were appended.
    Some,
    /// rustls wrote nothing (already encoded, or refused for another reason than room).
    Nothing,
    /// The queue cannot grow to the `n` more bytes rustls needs.
    NoRoom(usize),
}

/// Append to `q` with `write`, growing `q` and retrying while rustls asks for more room (it
/// keeps the pending data in its state object, so the retry is on the same object).
fn write_growing<S: Storage, E: Grow>(
    q: &mut Queue<S>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Written {
    loop {
        match write(q.spare(0)) {
            Ok(n) => {
                q.commit(n);
                return Written::Some;
            }
            Err(e) => match e.required_size() {
                Some(n) => {
                    if !q.reserve_exact(n) {
                        return Written::NoRoom(n);
                    }
                }
                None => return Written::Nothing,
            },
        }
    }
}

impl<S: Storage> Engine<S> {
    fn new(
        state: State,
        incoming: S,
        outgoing: S,
        clock: Option<Arc<Clock>>,
        now: Now,
        timeout: Duration,
    ) -> Self {
        Self {
            state,
            incoming: Queue::new(incoming),
            outgoing: Queue::new(outgoing),
            clock,
            deadline: Some(now.instant.saturating_add(timeout)),
            timeout,
            identity: None,
            leaves: None,
            crls: None,
            write_keys: None,
            hello_scan: hello::HelloScan::default(),
            server_name: None,
            stats: Stats::default(),
            max_send_record: MAX_PLAINTEXT,
        }
    }

    pub(crate) fn new_client(
        policy: &ClientPolicy,
        server_name: &str,
        now: Now,
        incoming: S,
        outgoing: S,
    ) -> Result<Self, ConfigError> {
        let name = pki_types::ServerName::try_from(server_name)
            .map_err(|_| ConfigError::InvalidServerName {
                name: server_name.into(),
            })?
            .to_owned();
        let tls = policy.tls();
        let conn = tls.connect(name, now.time).map_err(|e| ConfigError::Tls {
            detail: alloc::format!("{e}"),
        })?;
        let mut e = Self::new(
            State::Handshaking(Tls::Client(Box::new(conn))),
            incoming,
            outgoing,
            Some(tls.clock().clone()),
            now,
            policy.handshake_timeout(),
        );
        e.server_name = Some(server_name.into());
        e.leaves = Some(policy.leaves().clone());
        e.crls = Some(policy.loaded_crls().clone());
        e.max_send_record = max_send_record(policy.max_fragment_size());
        Ok(e)
    }

    pub(crate) fn new_server(
        policies: &ServerPolicies,
        now: Now,
        incoming: S,
        outgoing: S,
    ) -> Self {
        let timeout = policies
            .policies()
            .map(|p| p.handshake_timeout())
            .max()
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        Self::new(
            State::AwaitingHello(policies.clone()),
            incoming,
            outgoing,
            None,
            now,
            timeout,
        )
    }

    /// `true` once the handshake completed (and ever after).
    pub(crate) fn is_established(&self) -> bool {
        self.identity.is_some()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self.state, State::AwaitingHello(_) | State::Handshaking(_))
    }

    /// `true` when the session is over (closed or failed).
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.state, State::Closed(_) | State::Failed(..))
    }

    fn shutdown(&self) -> Shutdown {
        match self.state {
            State::Open(_, s) | State::Closed(s) | State::Failed(_, s) => s,
            State::AwaitingHello(_) | State::Handshaking(_) => Shutdown::default(),
        }
    }

    pub(crate) fn peer_closed(&self) -> bool {
        self.shutdown().received
    }

    pub(crate) fn close_sent(&self) -> bool {
        self.shutdown().sent
    }

    pub(crate) fn error(&self) -> Option<&Error> {
        match &self.state {
            State::Failed(e, _) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    pub(crate) fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// The handshake deadline, while handshaking.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.is_established() {
            None
        } else {
            self.deadline
        }
    }

    pub(crate) fn receive_buffer(&mut self, want: usize) -> &mut [u8] {
        self.incoming.spare(want)
    }

    pub(crate) fn received(&mut self, n: usize) {
        self.incoming.commit(n);
        self.stats.tls_bytes_received += n as u64;
    }

    pub(crate) fn transmit(&self) -> &[u8] {
        self.outgoing.data()
    }

    pub(crate) fn transmitted(&mut self, n: usize) {
        let n = n.min(self.outgoing.len());
        self.outgoing.consume(n);
        self.stats.tls_bytes_sent += n as u64;
    }

    pub(crate) fn buffer_capacity(&self) -> (usize, usize) {
        (self.incoming.capacity(), self.outgoing.capacity())
    }

    pub(crate) fn release_buffers(&mut self) {
        self.incoming.release_if_empty();
        self.outgoing.release_if_empty();
    }

    /// The transport reached end of stream.
    pub(crate) fn received_eof(&mut self) -> Result<(), Error> {
        if let Some(err) = self.error() {
            return Err(err.clone());
        }
        if matches!(self.state, State::Closed(_)) || self.peer_closed() {
            return Ok(());
        }
        Err(self.fail(Error::new(Reason::UnexpectedEof, None)))
    }

    /// Become terminal with `err`; the rustls state is dropped.
    fn fail(&mut self, err: Error) -> Error {
        // A transport closed without close_notify after the handshake is not a handshake
        // failure; everything else is counted.
        if !(self.is_established() && matches!(err.reason(), Reason::UnexpectedEof)) {
            self.stats.record_failure(err.failure());
        }
        let shutdown = self.shutdown();
        self.state = State::Failed(err.clone(), shutdown);
        self.deadline = None;
        err
    }

    /// Queue a plaintext alert (before any rustls state exists).
    fn refuse_plain(&mut self, reason: Reason, alert: Option<Alert>, record_version: u16) -> Error {
        let mut sent = None;
        if let Some(a) = alert {
            let rec = hello::alert_record(a, record_version);
            if self.outgoing.reserve_exact(rec.len()) {
                self.outgoing.spare(rec.len())[..rec.len()].copy_from_slice(&rec);
                self.outgoing.commit(rec.len());
                sent = Some(a);
            }
        }
        self.fail(Error::new(reason, sent))
    }

    /// The ClientHello admission step (server only): choose the policy, or refuse.
    /// `Ok(false)`: the hello is not complete yet.
    fn admit(&mut self, now: Time) -> Result<bool, Error> {
        let State::AwaitingHello(policies) = &self.state else {
            return Ok(true);
        };
        let verdict = hello::inspect_incremental(self.incoming.data(), &mut self.hello_scan);
        let info = match verdict {
            Admission::NeedMore => {
                if self.incoming.is_full() {
                    let limit = self.incoming.limit();
                    return Err(self.refuse_plain(
                        Reason::BufferLimit {
                            buffer: Buffer::Incoming,
                            required: limit + 1,
                            limit,
                        },
                        Some(Alert::DecodeError),
                        0x0303,
                    ));
                }
                return Ok(false);
            }
            Admission::Refuse {
                reason,
                alert,
                record_version,
            } => {
                return Err(self.refuse_plain(reason, alert, record_version));
            }
            Admission::Hello(info) => info,
        };
        let Some(policy) = policies.select(info.server_name.as_deref()).cloned() else {
            self.server_name = info.server_name;
            return Err(self.refuse_plain(
                Reason::UnknownServerName,
                Some(Alert::UnrecognizedName),
                0x0303,
            ));
        };
        if policy.versions() == Versions::Tls13Only && !info.offers_tls13() {
            let v = info.highest_version();
            return Err(self.refuse_plain(
                Reason::ProtocolVersion {
                    highest_offered: Some(v),
                },
                Some(Alert::ProtocolVersion),
                info.record_version,
            ));
        }
        self.server_name = info.server_name;
        if let Some(keys) = policy.ticket_keys() {
            keys.rotate_if_due(now);
        }
        self.timeout = policy.handshake_timeout();
        self.max_send_record = max_send_record(policy.max_fragment_size());
        let tls = policy.tls();
        match tls.accept(now) {
            Ok(c) => {
                self.clock = Some(tls.clock().clone());
                self.leaves = Some(policy.leaves().clone());
                self.crls = Some(policy.loaded_crls().clone());
                self.state = State::Handshaking(Tls::Server(Box::new(c)));
                Ok(true)
            }
            Err(e) => Err(self.fail(Error::new(Reason::Internal, None).with_tls(e))),
        }
    }

    /// Drive rustls with the bytes received so far; report upward through `out`.
    pub(crate) fn process(
        &mut self,
        now: Now,
        out: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Error> {
        if let Some(e) = self.error() {
            return Err(e.clone());
        }
        if let Some(clock) = &self.clock {
            clock.set(now.time);
        }
        if let Some(deadline) = self.deadline {
            if !self.is_established() && now.instant >= deadline {
                let after = self.timeout;
                return Err(self.fail(Error::new(Reason::HandshakeTimeout { after }, None)));
            }
        }
        if !self.admit(now.time)? {
            return Ok(());
        }
        // The connection is taken out of the state while rustls runs, leaving `Closed` with
        // the close flags as a placeholder (so `fail` keeps them); `drive` reports how the
        // lifecycle moved, or fails (which sets the state).
        let mut tls = match core::mem::replace(&mut self.state, State::Closed(Shutdown::default()))
        {
            State::Handshaking(tls) => tls,
            State::Open(tls, shutdown) => {
                self.state = State::Closed(shutdown);
                tls
            }
            other => {
                self.state = other;
                return Ok(());
            }
        };
        let r = match &mut tls {
            Tls::Server(c) => self.drive(&mut **c, out),
            Tls::Client(c) => self.drive(&mut **c, out),
        };
        self.adopt_write_keys();
        let shutdown = self.shutdown();
        match r {
            Ok(Flow::Running) => {
                self.state = if self.is_established() {
                    State::Open(tls, shutdown)
                } else {
                    State::Handshaking(tls)
                };
                Ok(())
            }
            Ok(Flow::Closed) => {
                self.state = State::Closed(shutdown);
                self.deadline = None;
                Ok(())
            }
            // `fail` has set the state.
            Err(e) => Err(e),
        }
    }

    fn drive<C: Driven>(
        &mut self,
        conn: &mut C,
        out: &mut dyn FnMut(Event<'_>),
    ) -> Result<Flow, Error> {
        loop {
            let UnbufferedStatus { discard, state } = conn.process(self.incoming.data_mut());
            let step = match state {
                Ok(ConnectionState::ReadTraffic(mut rt)) => {
                    // `identity` is set once established (a field: `incoming` is borrowed).
                    if self.identity.is_some() {
                        while let Some(rec) = rt.next_record() {
                            match rec {
                                Ok(rec) => {
                                    self.stats.app_bytes_received += rec.payload.len() as u64;
                                    out(Event::Data(rec.payload));
                                }
                                Err(e) => {
                                    drop(rt);
                                    self.incoming.consume(discard);
                                    return Err(self.tls_failure(conn, e));
                                }
                            }
                        }
                    }
                    // Otherwise leave the record queued in rustls: the identity is reported
                    // first (below), and the next call hands the data up.
                    Step::Continue
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    match write_growing(&mut self.outgoing, |buf| enc.encode(buf)) {
                        Written::NoRoom(n) => Step::Fail(Reason::BufferLimit {
                            buffer: Buffer::Outgoing,
                            required: self.outgoing.len() + n,
                            limit: self.outgoing.limit(),
                        }),
                        Written::Some | Written::Nothing => Step::Continue,
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // The flight is already queued in `outgoing`; the caller transmits it.
                    t.done();
                    Step::Continue
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Blocked,
                Ok(ConnectionState::WriteTraffic(_)) => Step::Idle,
                Ok(ConnectionState::PeerClosed) => Step::PeerClosed,
                Ok(ConnectionState::Closed) => Step::Closed,
                Ok(_) => Step::Fail(Reason::Internal),
                Err(e) => {
                    self.incoming.consume(discard);
                    return Err(self.tls_failure(conn, e));
                }
            };
            self.incoming.consume(discard);
            if !self.is_established() && !conn.common().is_handshaking() {
                self.on_established(conn.common())?;
                if let Some(id) = &self.identity {
                    out(Event::Established(id));
                }
            }
            match step {
                Step::Continue => {}
                Step::Blocked => {
                    if self.incoming.is_full() {
                        // rustls has no way to queue an alert of ours mid-handshake (it may
                        // have to be encrypted), so none is sent and none is reported.
                        let limit = self.incoming.limit();
                        return Err(self.fail_reason(
                            Reason::BufferLimit {
                                buffer: Buffer::Incoming,
                                required: limit + 1,
                                limit,
                            },
                            None,
                        ));
                    }
                    return Ok(Flow::Running);
                }
                Step::Idle => {
                    if self.incoming.is_full() {
                        // After the handshake rustls reports an incomplete record as idle: a
                        // record larger than a fixed incoming buffer would stall silently.
                        let limit = self.incoming.limit();
                        let record = match self.incoming.data() {
                            [_, _, _, hi, lo, ..] => {
                                5 + usize::from(u16::from_be_bytes([*hi, *lo]))
                            }
                            _ => 0,
                        };
                        return Err(self.fail_reason(
                            Reason::BufferLimit {
                                buffer: Buffer::Incoming,
                                required: record.max(limit + 1),
                                limit,
                            },
                            None,
                        ));
                    }
                    return Ok(Flow::Running);
                }
                Step::PeerClosed => {
                    if let State::Closed(shutdown) = &mut self.state {
                        shutdown.received = true;
                    }
                    out(Event::PeerClosed);
                }
                Step::Closed => {
                    out(Event::Closed);
                    return Ok(Flow::Closed);
                }
                Step::Fail(reason) => return Err(self.fail_reason(reason, None)),
            }
        }
    }

    /// Keep the encrypter rustls installed during the last call, if it installed one (see
    /// `alert_spy`). Called after every call into rustls.
    fn adopt_write_keys(&mut self) {
        if let Some(k) = alert_spy::take_new_write_keys() {
            self.write_keys = Some(k);
        }
    }

    /// Queue `alert` as the connection's last record: encrypted with the current write keys
    /// when the write side is encrypted, else in plaintext. `false` when it does not fit.
    fn queue_own_alert(&mut self, alert: Alert) -> bool {
        let rec = match &self.write_keys {
            Some(keys) => match keys.fatal_alert_record(alert.code()) {
                Some(r) => r,
                None => return false,
            },
            None => hello::alert_record(alert, 0x0303).to_vec(),
        };
        if !self.outgoing.reserve_exact(rec.len()) {
            return false;
        }
        self.outgoing.spare(rec.len())[..rec.len()].copy_from_slice(&rec);
        self.outgoing.commit(rec.len());
        true
    }

    fn fail_reason(&mut self, reason: Reason, alert: Option<Alert>) -> Error {
        self.fail(Error::new(reason, alert))
    }

    /// The handshake completed: record the verified peer. A negotiated suite outside our
    /// vocabulary cannot happen (rustls only negotiates the policy's suites); if it does,
    /// the session fails with [`Reason::Internal`] rather than report a guessed suite.
    fn on_established(&mut self, conn: &CommonState) -> Result<(), Error> {
        let Some(suite) = conn.negotiated_cipher_suite().and_then(suite_from_rustls) else {
            let sent = self.queue_own_alert(Alert::InternalError);
            return Err(self.fail_reason(Reason::Internal, sent.then_some(Alert::InternalError)));
        };
        self.deadline = None;
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            _ => TlsVersion::Tls13,
        };
        let handshake = match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => HandshakeKind::Resumed,
            Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => {
                HandshakeKind::FullWithHelloRetry
            }
            _ => HandshakeKind::Full,
        };
        let chain: Vec<_> = conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let leaf = chain.first().and_then(|c| self.parse_leaf(c));
        self.stats
            .record_handshake(version, handshake == HandshakeKind::Resumed);
        self.identity = Some(PeerIdentity {
            chain,
            leaf,
            version,
            suite,
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| group_from_rustls(g.name())),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: self.server_name.clone(),
            handshake,
        });
        Ok(())
    }

    fn parse_leaf(&self, der: &[u8]) -> Option<CertInfo> {
        match &self.leaves {
            Some(cache) => cache.parse(der).ok(),
            None => CertInfo::parse(der).ok(),
        }
    }

    /// rustls reported `e`: encode the alert it queued, then become terminal.
    fn tls_failure<C: Driven>(&mut self, conn: &mut C, e: rustls::Error) -> Error {
        let version = conn.common().protocol_version();
        let (reason, guess) = alerts::classify(&e, version);
        let mut sent = None;
        // Errors are sticky. While rustls still holds queued records (`wants_write`: a
        // ServerHello may precede the alert), the next call pops one as `EncodeTlsData` before
        // looking at any input, so it can neither re-read the failed record (which would raise
        // a second fatal alert) nor touch reassembly ranges. We never call once the queue is
        // empty; the connection is dropped afterwards.
        for _ in 0..8 {
            if !conn.common().wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } = conn.process(self.incoming.data_mut());
            let mut encoded = false;
            if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
                let before = self.outgoing.len();
                if let Written::Some = write_growing(&mut self.outgoing, |b| enc.encode(b)) {
                    sent = Some(alerts::read_back(
                        &mut self.outgoing.data_mut()[before..],
                        version,
                    ));
                    encoded = true;
                }
            }
            self.incoming.consume(discard);
            if !encoded {
                break;
            }
        }
        self.adopt_write_keys();
        // A few errors leave rustls' deframer without any alert queued (a handshake message
        // over 64 KiB, a handshake message interleaved with other records, too many empty
        // fragments); rustls answers their siblings with these alerts, so the engine sends
        // them itself.
        if sent.is_none() {
            if let Some(own) = alerts::unalerted(&e) {
                if self.queue_own_alert(own) {
                    sent = Some(Some(own));
                }
            }
        }
        // An encrypted alert is named by what the record layer encrypted; only without that
        // (no `std`) by our mapping.
        let encrypted = alerts::encrypted_alert();
        let sent = sent.map(|read_back| {
            read_back
                .or(encrypted)
                .or(guess)
                .unwrap_or(Alert::InternalError)
        });
        let presented = super::take_presented().and_then(|der| self.parse_leaf(&der));
        let reason = self.name_stale_crl(reason, presented.as_ref());
        self.fail(
            Error::new(reason, sent)
                .with_tls(e)
                .with_presented(presented),
        )
    }

    /// Fill in which CRL an expired-CRL refusal is about: one with that `nextUpdate`, the
    /// one of the presented certificate's issuer first.
    fn name_stale_crl(&self, reason: Reason, presented: Option<&CertInfo>) -> Reason {
        let Reason::CrlExpired {
            crl: None,
            next_update,
        } = reason
        else {
            return reason;
        };
        let crls = self.crls.as_deref().unwrap_or(&[]);
        let due = |c: &&LoadedCrl| match (next_update, c.info.next_update) {
            (Some(want), Some(have)) => want.as_unix_secs() == have.as_unix_secs(),
            (None, Some(_)) => true,
            _ => false,
        };
        let issuer = presented.map(|p| p.issuer.as_str());
        let crl = crls
            .iter()
            .filter(due)
            .find(|c| Some(c.info.issuer.as_str()) == issuer)
            .or_else(|| crls.iter().find(due))
            .map(|c| c.name.as_str().into());
        Reason::CrlExpired { crl, next_update }
    }

    /// Run `f` with rustls' `WriteTraffic` state, encoding anything queued before it.
    /// `None` when the session is not open.
    fn with_write_traffic<R>(
        &mut self,
        f: &mut dyn FnMut(&mut Queue<S>, &mut dyn Writer) -> R,
    ) -> Option<R> {
        let r = match &mut self.state {
            State::Open(Tls::Server(c), _) => write_traffic(&mut **c, &mut self.outgoing, f),
            State::Open(Tls::Client(c), _) => write_traffic(&mut **c, &mut self.outgoing, f),
            _ => None,
        };
        self.adopt_write_keys();
        r
    }

    /// Why application data cannot be sent now, if it cannot.
    fn refuse_send(&self) -> Option<SendError> {
        match self.state {
            State::AwaitingHello(_) | State::Handshaking(_) => Some(SendError::NotEstablished),
            State::Open(_, Shutdown { sent: false, .. }) => None,
            State::Open(..) | State::Closed(_) | State::Failed(..) => Some(SendError::Closed),
        }
    }

    /// Encrypt application data into the outgoing queue. Returns the bytes accepted: fewer
    /// than `data.len()` (possibly 0) when the outgoing queue is at its bound.
    pub(crate) fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        if let Some(e) = self.refuse_send() {
            return Err(e);
        }
        let limit = self.outgoing.limit();
        if limit < RECORD_OVERHEAD + 1 {
            return Err(SendError::BufferTooSmall {
                required: RECORD_OVERHEAD + 1,
                capacity: limit,
            });
        }
        let max_rec = self.max_send_record;
        let mut written = 0usize;
        let mut encrypt = |q: &mut Queue<S>, w: &mut dyn Writer| {
            while written < data.len() {
                let room = limit.saturating_sub(q.len());
                if room <= RECORD_OVERHEAD {
                    break;
                }
                let n = (data.len() - written)
                    .min(max_rec)
                    .min(room - RECORD_OVERHEAD);
                let chunk = &data[written..written + n];
                if !q.reserve_exact(n + RECORD_OVERHEAD) {
                    break;
                }
                match write_growing(q, |buf| w.encrypt(chunk, buf)) {
                    Written::Some => written += n,
                    Written::Nothing | Written::NoRoom(_) => break,
                }
            }
        };
        let r = self.with_write_traffic(&mut encrypt);
        if r.is_none() {
            return Err(SendError::Closed);
        }
        self.stats.app_bytes_sent += written as u64;
        Ok(written)
    }

    /// Queue `close_notify`. Before the handshake completes there is nothing to send: the
    /// session just becomes terminal.
    pub(crate) fn close(&mut self) {
        match self.state {
            State::AwaitingHello(_) | State::Handshaking(_) => {
                self.state = State::Closed(Shutdown::default());
                self.deadline = None;
                return;
            }
            State::Open(_, Shutdown { sent: false, .. }) => {}
            State::Open(..) | State::Closed(_) | State::Failed(..) => return,
        }
        let mut queue = |q: &mut Queue<S>, w: &mut dyn Writer| {
            matches!(write_growing(q, |buf| w.close_notify(buf)), Written::Some)
        };
        let done = self.with_write_traffic(&mut queue);
        let State::Open(_, mut shutdown) = self.state else {
            return;
        };
        shutdown.sent = true;
        if done != Some(true) || shutdown.received {
            // Not queued (the session ends here), or both directions are closed now.
            self.state = State::Closed(shutdown);
        } else if let State::Open(_, s) = &mut self.state {
            *s = shutdown;
        }
    }

    /// TLS 1.3: send a KeyUpdate asking the peer to update too. `false` on TLS 1.2.
    pub(crate) fn update_keys(&mut self) -> Result<bool, SendError> {
        if !self.is_established() {
            return Err(SendError::NotEstablished);
        }
        if let Some(e) = self.refuse_send() {
            return Err(e);
        }
        if self.identity.as_ref().map(|i| i.version) != Some(TlsVersion::Tls13) {
            return Ok(false);
        }
        let ok = match &mut self.state {
            State::Open(Tls::Server(c), _) => refresh_keys(&mut **c, &mut self.outgoing),
            State::Open(Tls::Client(c), _) => refresh_keys(&mut **c, &mut self.outgoing),
            _ => false,
        };
        self.adopt_write_keys();
        Ok(ok)
    }
}

/// The record size limit of a policy's `max_fragment_size`.
fn max_send_record(max_fragment_size: Option<usize>) -> usize {
    max_fragment_size
        .unwrap_or(MAX_PLAINTEXT)
        .min(MAX_PLAINTEXT)
}

/// How the lifecycle moved during one `drive`.
enum Flow {
    /// Handshaking or open (see `Engine::is_established`).
    Running,
    /// Both sides closed.
    Closed,
}

enum Step {
    Continue,
    Blocked,
    Idle,
    PeerClosed,
    Closed,
    Fail(Reason),
}

/// Drain queued handshake output, then hand `WriteTraffic` to `f`.
fn write_traffic<C: Driven, S: Storage, R>(
    conn: &mut C,
    q: &mut Queue<S>,
    f: &mut dyn FnMut(&mut Queue<S>, &mut dyn Writer) -> R,
) -> Option<R> {
    for _ in 0..64 {
        let UnbufferedStatus { state, .. } = conn.process(&mut []);
        match state {
            Ok(ConnectionState::WriteTraffic(mut wt)) => return Some(f(q, &mut wt)),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                if let Written::NoRoom(_) = write_growing(q, |buf| enc.encode(buf)) {
                    return None;
                }
            }
            Ok(ConnectionState::TransmitTlsData(mut t)) => {
                if let Some(mut wt) = t.may_encrypt_app_data() {
                    let r = f(q, &mut wt);
                    t.done();
                    return Some(r);
                }
                t.done();
            }
            _ => return None,
        }
    }
    None
}

fn refresh_keys<C: Driven, S: Storage>(conn: &mut C, q: &mut Queue<S>) -> bool {
    let mut requested = false;
    for _ in 0..64 {
        let UnbufferedStatus { state, .. } = conn.process(&mut []);
        match state {
            Ok(ConnectionState::WriteTraffic(wt)) => {
                if requested {
                    return true;
                }
                if wt.refresh_traffic_keys().is_err() {
                    return false;
                }
                requested = true;
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                if let Written::NoRoom(_) = write_growing(q, |buf| enc.encode(buf)) {
                    return false;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return false,
        }
    }
    false
}
