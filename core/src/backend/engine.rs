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

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CertificateError, CommonState, PeerIncompatible, PeerMisbehaved, ProtocolVersion};

use super::alert_spy::{self, WriteKeys};
use super::{Clock, group_from_rustls, suite_from_rustls};
use crate::buffer::{Queue, Storage};
use crate::error::{Alert, Error, Reason, SendError};
use crate::hello::{self, Admission};
use crate::identity::{CertInfo, HandshakeKind, PeerIdentity};
use crate::policy::{CipherSuite, LoadedCrl, ServerPolicies, TlsVersion};
use crate::stats::Stats;
use crate::time::Time;

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

pub(crate) enum Conn {
    /// Server before the ClientHello was read: the policy is not chosen yet.
    AwaitingHello(ServerPolicies),
    Server(alloc::boxed::Box<UnbufferedServerConnection>),
    Client(alloc::boxed::Box<UnbufferedClientConnection>),
    /// Terminal (failed or closed); the rustls state is gone.
    Done,
}

/// What the driver reports upward, in order.
pub(crate) enum Out<'a> {
    Established(&'a PeerIdentity),
    Data(&'a [u8]),
    PeerClosed,
    Closed,
}

/// Session state independent of the public storage type parameter.
pub(crate) struct Engine<S> {
    pub conn: Conn,
    pub incoming: Queue<S>,
    pub outgoing: Queue<S>,
    pub clock: Option<Arc<Clock>>,
    pub deadline: Option<Time>,
    pub timeout: Duration,
    pub identity: Option<PeerIdentity>,
    /// The policy's cache of parsed peer leaves (set once the policy is known).
    pub leaves: Option<Arc<crate::identity::LeafCache>>,
    /// The policy's CRLs (set once the policy is known), to name a stale one.
    pub crls: Option<Arc<[LoadedCrl]>>,
    /// The connection's current record encrypter, once the write side is encrypted: for an
    /// alert rustls does not send itself.
    pub write_keys: Option<WriteKeys>,
    /// How far the ClientHello admission has walked the incoming records.
    pub hello_scan: hello::HelloScan,
    pub server_name: Option<String>,
    pub established: bool,
    pub sent_close: bool,
    pub peer_closed: bool,
    pub closed: bool,
    pub error: Option<Error>,
    pub stats: Stats,
    /// Application data records are handed up at most this large (`None`: as rustls gives).
    pub max_send_record: usize,
}

/// Largest plaintext per record.
const MAX_PLAINTEXT: usize = 16_384;
/// TLS 1.2 AEAD record overhead (header 5 + explicit nonce 8 + tag 16); TLS 1.3 is 22.
const RECORD_OVERHEAD: usize = 29;

impl<S: Storage> Engine<S> {
    pub(crate) fn new(
        conn: Conn,
        incoming: S,
        outgoing: S,
        clock: Option<Arc<Clock>>,
        now: Time,
        timeout: Duration,
    ) -> Self {
        Self {
            conn,
            incoming: Queue::new(incoming),
            outgoing: Queue::new(outgoing),
            clock,
            deadline: Some(now.saturating_add(timeout)),
            timeout,
            identity: None,
            leaves: None,
            crls: None,
            write_keys: None,
            hello_scan: hello::HelloScan::default(),
            server_name: None,
            established: false,
            sent_close: false,
            peer_closed: false,
            closed: false,
            error: None,
            stats: Stats::default(),
            max_send_record: MAX_PLAINTEXT,
        }
    }

    pub(crate) fn new_client(
        policy: &crate::policy::ClientPolicy,
        server_name: &str,
        now: Time,
        incoming: S,
        outgoing: S,
    ) -> Result<Self, crate::ConfigError> {
        let name = pki_types::ServerName::try_from(server_name)
            .map_err(|_| crate::ConfigError::InvalidServerName {
                name: server_name.into(),
            })?
            .to_owned();
        policy.0.clock.set(now);
        let conn = UnbufferedClientConnection::new(policy.0.config.clone(), name).map_err(|e| {
            crate::ConfigError::Tls {
                detail: alloc::format!("{e}"),
            }
        })?;
        let mut e = Self::new(
            Conn::Client(alloc::boxed::Box::new(conn)),
            incoming,
            outgoing,
            Some(policy.0.clock.clone()),
            now,
            policy.handshake_timeout(),
        );
        e.server_name = Some(server_name.into());
        e.leaves = Some(policy.0.leaves.clone());
        e.crls = Some(policy.0.crls.clone());
        e.max_send_record = policy
            .0
            .builder
            .common
            .max_fragment_size
            .unwrap_or(MAX_PLAINTEXT)
            .min(MAX_PLAINTEXT);
        Ok(e)
    }

    pub(crate) fn new_server(
        policies: &ServerPolicies,
        now: Time,
        incoming: S,
        outgoing: S,
    ) -> Self {
        let timeout = policies
            .policies()
            .map(|p| p.handshake_timeout())
            .max()
            .unwrap_or(crate::policy::DEFAULT_HANDSHAKE_TIMEOUT);
        Self::new(
            Conn::AwaitingHello(policies.clone()),
            incoming,
            outgoing,
            None,
            now,
            timeout,
        )
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        !self.established && self.error.is_none() && !matches!(self.conn, Conn::Done)
    }

    fn fail(&mut self, err: Error) -> Error {
        // A transport closed without close_notify after the handshake is not a handshake
        // failure; everything else is counted.
        if !(self.established && matches!(err.reason(), Reason::UnexpectedEof)) {
            self.stats.record_failure(err.failure());
        }
        self.conn = Conn::Done;
        self.deadline = None;
        self.error = Some(err.clone());
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
    fn admit(&mut self, now: Time) -> Result<bool, Error> {
        let Conn::AwaitingHello(policies) = &self.conn else {
            return Ok(true);
        };
        let verdict = hello::inspect_incremental(self.incoming.data(), &mut self.hello_scan);
        let info = match verdict {
            Admission::NeedMore => {
                if self.incoming.is_full() {
                    let limit = self.incoming.limit();
                    return Err(self.refuse_plain(
                        Reason::BufferLimit {
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
        if policy.0.builder.common.versions == crate::Versions::Tls13Only && !info.offers_tls13() {
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
        policy.0.clock.set(now);
        self.timeout = policy.handshake_timeout();
        self.max_send_record = policy
            .0
            .builder
            .common
            .max_fragment_size
            .unwrap_or(MAX_PLAINTEXT)
            .min(MAX_PLAINTEXT);
        match UnbufferedServerConnection::new(policy.0.config.clone()) {
            Ok(c) => {
                self.clock = Some(policy.0.clock.clone());
                self.leaves = Some(policy.0.leaves.clone());
                self.crls = Some(policy.0.crls.clone());
                self.conn = Conn::Server(alloc::boxed::Box::new(c));
                Ok(true)
            }
            Err(e) => Err(self.fail(Error::new(Reason::Internal, None).with_tls(e))),
        }
    }

    /// Drive rustls with the bytes received so far; report upward through `out`.
    pub(crate) fn process(&mut self, now: Time, out: &mut dyn FnMut(Out<'_>)) -> Result<(), Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if let Some(clock) = &self.clock {
            clock.set(now);
        }
        if let Some(deadline) = self.deadline {
            if !self.established && now >= deadline {
                let after = self.timeout;
                return Err(self.fail(Error::new(Reason::HandshakeTimeout { after }, None)));
            }
        }
        if !self.admit(now)? {
            return Ok(());
        }
        let mut conn = core::mem::replace(&mut self.conn, Conn::Done);
        let r = match &mut conn {
            Conn::Server(c) => self.drive(&mut **c, out),
            Conn::Client(c) => self.drive(&mut **c, out),
            Conn::AwaitingHello(_) | Conn::Done => Ok(()),
        };
        self.adopt_write_keys();
        if self.error.is_none() && !self.closed {
            self.conn = conn;
        } else if self.closed {
            self.deadline = None;
        }
        r
    }

    fn drive<C: Driven>(
        &mut self,
        conn: &mut C,
        out: &mut dyn FnMut(Out<'_>),
    ) -> Result<(), Error> {
        loop {
            let UnbufferedStatus { discard, state } = conn.process(self.incoming.data_mut());
            let step = match state {
                Ok(ConnectionState::ReadTraffic(mut rt)) => {
                    if self.established {
                        while let Some(rec) = rt.next_record() {
                            match rec {
                                Ok(rec) => {
                                    self.stats.app_bytes_received += rec.payload.len() as u64;
                                    out(Out::Data(rec.payload));
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
                    let mut r = Step::Continue;
                    loop {
                        match enc.encode(self.outgoing.spare(0)) {
                            Ok(n) => {
                                self.outgoing.commit(n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(sz)) => {
                                if !self.outgoing.reserve_exact(sz.required_size) {
                                    let required = self.outgoing.len() + sz.required_size;
                                    r = Step::Fail(Reason::BufferLimit {
                                        required,
                                        limit: self.outgoing.limit(),
                                    });
                                    break;
                                }
                            }
                            Err(EncodeError::AlreadyEncoded) => break,
                        }
                    }
                    r
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
            if !self.established && !conn.common().is_handshaking() {
                self.on_established(conn.common());
                if let Some(id) = &self.identity {
                    out(Out::Established(id));
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
                                required: limit + 1,
                                limit,
                            },
                            None,
                        ));
                    }
                    return Ok(());
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
                                required: record.max(limit + 1),
                                limit,
                            },
                            None,
                        ));
                    }
                    return Ok(());
                }
                Step::PeerClosed => {
                    self.peer_closed = true;
                    out(Out::PeerClosed);
                }
                Step::Closed => {
                    self.closed = true;
                    out(Out::Closed);
                    return Ok(());
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

    fn on_established(&mut self, conn: &CommonState) {
        self.established = true;
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
        let leaf = chain.first().and_then(|c| match &self.leaves {
            Some(cache) => cache.parse(c).ok(),
            None => CertInfo::parse(c).ok(),
        });
        self.stats
            .record_handshake(version, handshake == HandshakeKind::Resumed);
        self.identity = Some(PeerIdentity {
            chain,
            leaf,
            version,
            suite: conn
                .negotiated_cipher_suite()
                .and_then(suite_from_rustls)
                .unwrap_or(CipherSuite::Tls13Aes128GcmSha256),
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| group_from_rustls(g.name())),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: self.server_name.clone(),
            handshake,
        });
    }

    /// rustls reported `e`: encode the alert it queued, then become terminal.
    fn tls_failure<C: Driven>(&mut self, conn: &mut C, e: rustls::Error) -> Error {
        let version = conn.common().protocol_version();
        let (reason, guess) = classify(&e, version);
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
                loop {
                    match enc.encode(self.outgoing.spare(0)) {
                        Ok(n) => {
                            self.outgoing.commit(n);
                            sent = Some(self.read_back_alert(before, version));
                            encoded = true;
                            break;
                        }
                        Err(EncodeError::InsufficientSize(sz)) => {
                            if !self.outgoing.reserve_exact(sz.required_size) {
                                break;
                            }
                        }
                        Err(EncodeError::AlreadyEncoded) => break,
                    }
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
            if let Some(own) = unalerted(&e) {
                if self.queue_own_alert(own) {
                    sent = Some(Some(own));
                }
            }
        }
        // An encrypted alert is named by what the record layer encrypted; only without that
        // (no `std`) by our mapping.
        let encrypted = alert_spy::take_encrypted_alert().map(Alert::from_code);
        let sent = sent.map(|read_back| {
            read_back
                .or(encrypted)
                .or(guess)
                .unwrap_or(Alert::InternalError)
        });
        let presented = super::take_presented().and_then(|der| match &self.leaves {
            Some(cache) => cache.parse(&der).ok(),
            None => CertInfo::parse(&der).ok(),
        });
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

    /// The alert just encoded at `outgoing[at..]`, if it is a plaintext alert record (an
    /// encrypted one is named by the record layer, see `alert_spy`).
    ///
    /// rustls answers a missing client certificate with `certificate_required` (116) in TLS
    /// 1.2 too, a code TLS 1.2 does not define; RFC 5246 7.4.6 prescribes `handshake_failure`,
    /// so that plaintext record is rewritten to it (TLS 1.2 peers such as OpenSSL then print
    /// a meaningful error).
    fn read_back_alert(&mut self, at: usize, version: Option<ProtocolVersion>) -> Option<Alert> {
        let rec = &mut self.outgoing.data_mut()[at..];
        match rec {
            [0x15, _, _, 0, 2, _level, code] => {
                if *code == Alert::CertificateRequired.code()
                    && version == Some(ProtocolVersion::TLSv1_2)
                {
                    *code = Alert::HandshakeFailure.code();
                }
                Some(Alert::from_code(*code))
            }
            _ => None,
        }
    }

    /// Run `f` with rustls' `WriteTraffic` state, encoding anything queued before it.
    fn with_write_traffic<R>(
        &mut self,
        f: &mut dyn FnMut(&mut Queue<S>, &mut dyn Writer) -> R,
    ) -> Option<R> {
        let mut conn = core::mem::replace(&mut self.conn, Conn::Done);
        let r = match &mut conn {
            Conn::Server(c) => write_traffic(&mut **c, &mut self.outgoing, f),
            Conn::Client(c) => write_traffic(&mut **c, &mut self.outgoing, f),
            _ => None,
        };
        self.conn = conn;
        self.adopt_write_keys();
        r
    }

    /// Encrypt application data into the outgoing queue. Returns the bytes accepted: fewer
    /// than `data.len()` (possibly 0) when the outgoing queue is at its bound.
    pub(crate) fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        if self.error.is_some() || self.sent_close || self.closed {
            return Err(SendError::Closed);
        }
        if !self.established {
            return Err(SendError::NotEstablished);
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
                match w.encrypt(chunk, q.spare(0)) {
                    Ok(m) => {
                        q.commit(m);
                        written += n;
                    }
                    Err(EncryptError::InsufficientSize(sz)) => {
                        if !q.reserve_exact(sz.required_size) {
                            break;
                        }
                    }
                    Err(_) => break,
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
        if self.sent_close || self.error.is_some() || self.closed {
            return;
        }
        if !self.established {
            self.conn = Conn::Done;
            self.closed = true;
            self.deadline = None;
            return;
        }
        let mut queue = |q: &mut Queue<S>, w: &mut dyn Writer| loop {
            match w.close_notify(q.spare(0)) {
                Ok(n) => {
                    q.commit(n);
                    return true;
                }
                Err(EncryptError::InsufficientSize(sz)) => {
                    if !q.reserve_exact(sz.required_size) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        };
        let done = self.with_write_traffic(&mut queue);
        self.sent_close = true;
        if done != Some(true) {
            self.conn = Conn::Done;
            self.closed = true;
        } else if self.peer_closed {
            // Both directions are closed now.
            self.closed = true;
            self.conn = Conn::Done;
        }
    }

    /// TLS 1.3: send a KeyUpdate asking the peer to update too. `false` on TLS 1.2.
    pub(crate) fn update_keys(&mut self) -> Result<bool, SendError> {
        if !self.established {
            return Err(SendError::NotEstablished);
        }
        if self.sent_close || self.error.is_some() || self.closed {
            return Err(SendError::Closed);
        }
        if self.identity.as_ref().map(|i| i.version) != Some(TlsVersion::Tls13) {
            return Ok(false);
        }
        let mut conn = core::mem::replace(&mut self.conn, Conn::Done);
        let ok = match &mut conn {
            Conn::Server(c) => refresh_keys(&mut **c, &mut self.outgoing),
            Conn::Client(c) => refresh_keys(&mut **c, &mut self.outgoing),
            _ => false,
        };
        self.conn = conn;
        self.adopt_write_keys();
        Ok(ok)
    }
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
            Ok(ConnectionState::EncodeTlsData(mut enc)) => loop {
                match enc.encode(q.spare(0)) {
                    Ok(n) => {
                        q.commit(n);
                        break;
                    }
                    Err(EncodeError::InsufficientSize(sz)) => {
                        if !q.reserve_exact(sz.required_size) {
                            return None;
                        }
                    }
                    Err(EncodeError::AlreadyEncoded) => break,
                }
            },
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
            Ok(ConnectionState::EncodeTlsData(mut enc)) => loop {
                match enc.encode(q.spare(0)) {
                    Ok(n) => {
                        q.commit(n);
                        break;
                    }
                    Err(EncodeError::InsufficientSize(sz)) => {
                        if !q.reserve_exact(sz.required_size) {
                            return false;
                        }
                    }
                    Err(EncodeError::AlreadyEncoded) => break,
                }
            },
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return false,
        }
    }
    false
}

fn time_of(t: &pki_types::UnixTime) -> Time {
    Time::from(*t)
}

/// The alert for an error that rustls returns without queueing one (its handshake deframer
/// returns these with `?`, past the code that alerts for every other malformed message).
fn unalerted(e: &rustls::Error) -> Option<Alert> {
    match e {
        rustls::Error::InvalidMessage(_) => Some(Alert::DecodeError),
        rustls::Error::PeerMisbehaved(
            PeerMisbehaved::MessageInterleavedWithHandshakeMessage
            | PeerMisbehaved::TooManyEmptyFragments,
        ) => Some(Alert::UnexpectedMessage),
        _ => None,
    }
}

/// The reason for a rustls error, and the alert rustls queues for it (when the alert goes out
/// encrypted we cannot read it back, so this mapping names it).
pub(crate) fn classify(
    e: &rustls::Error,
    version: Option<ProtocolVersion>,
) -> (Reason, Option<Alert>) {
    use rustls::Error as E;
    let alert = |a: rustls::AlertDescription| Some(Alert::from_code(u8::from(a)));
    match e {
        E::AlertReceived(a) => (Reason::PeerAlert(Alert::from_code(u8::from(*a))), None),
        E::InvalidCertificate(ce) => {
            let a = alert(rustls::AlertDescription::from(ce.clone()));
            let reason = match ce {
                CertificateError::Expired => Reason::CertificateExpired {
                    not_after: None,
                    now: None,
                },
                CertificateError::ExpiredContext { time, not_after } => {
                    Reason::CertificateExpired {
                        not_after: Some(time_of(not_after)),
                        now: Some(time_of(time)),
                    }
                }
                CertificateError::NotValidYet => Reason::CertificateNotYetValid {
                    not_before: None,
                    now: None,
                },
                CertificateError::NotValidYetContext { time, not_before } => {
                    Reason::CertificateNotYetValid {
                        not_before: Some(time_of(not_before)),
                        now: Some(time_of(time)),
                    }
                }
                CertificateError::UnknownIssuer => Reason::UnknownIssuer,
                CertificateError::Revoked => Reason::Revoked,
                CertificateError::UnknownRevocationStatus => Reason::RevocationStatusUnknown,
                CertificateError::ExpiredRevocationList => Reason::CrlExpired {
                    crl: None,
                    next_update: None,
                },
                CertificateError::ExpiredRevocationListContext { next_update, .. } => {
                    Reason::CrlExpired {
                        crl: None,
                        next_update: Some(time_of(next_update)),
                    }
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Reason::NameMismatch,
                CertificateError::ApplicationVerificationFailure => Reason::IdentityDenied,
                _ => Reason::BadCertificate,
            };
            (reason, a)
        }
        E::NoCertificatesPresented => (
            Reason::NoPeerCertificate,
            if version == Some(ProtocolVersion::TLSv1_2) {
                Some(Alert::HandshakeFailure)
            } else {
                Some(Alert::CertificateRequired)
            },
        ),
        E::PeerIncompatible(pi) => match pi {
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => (
                Reason::ProtocolVersion {
                    highest_offered: None,
                },
                Some(Alert::ProtocolVersion),
            ),
            _ => (Reason::NoCommonParameters, Some(Alert::HandshakeFailure)),
        },
        E::NoApplicationProtocol => (
            Reason::NoApplicationProtocol,
            Some(Alert::NoApplicationProtocol),
        ),
        E::InvalidMessage(_) => (Reason::ProtocolViolation, Some(Alert::DecodeError)),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            (Reason::ProtocolViolation, Some(Alert::UnexpectedMessage))
        }
        E::DecryptError => (Reason::ProtocolViolation, Some(Alert::BadRecordMac)),
        E::PeerSentOversizedRecord => (Reason::ProtocolViolation, Some(Alert::RecordOverflow)),
        E::PeerMisbehaved(pm) => (
            Reason::ProtocolViolation,
            match pm {
                PeerMisbehaved::TooManyEmptyFragments
                | PeerMisbehaved::TooManyWarningAlertsReceived
                | PeerMisbehaved::TooManyKeyUpdateRequests => Some(Alert::UnexpectedMessage),
                _ => Some(Alert::IllegalParameter),
            },
        ),
        E::UnsupportedNameType => (Reason::NoCommonParameters, Some(Alert::HandshakeFailure)),
        _ => (Reason::Internal, Some(Alert::InternalError)),
    }
}
