//! A session under test with its invariants checked after every call, and the "stream"
//! driver of the server and client targets: arbitrary peer bytes split at arbitrary points,
//! with arbitrary clock jumps.
//!
//! Invariants (asserted, so a violation is a crash the fuzzer reports):
//! - `Established` at most once, before any `Data`; no `Data` after `PeerClosed`/`Closed`;
//! - a terminal session (failed or closed) reports no event, queues no byte, returns the
//!   same error again and refuses `send`: it never emits application data;
//! - every error carries a reason; a policy refusal also names its alert; an alert reported
//!   as sent was queued for transmission, and a plaintext alert record names the same alert;
//! - the buffers never exceed their bounds.

use onerecord_tls::{DEFAULT_MAX_INCOMING, DEFAULT_MAX_OUTGOING, Storage};
use onerecord_tls::{Error, Event, Reason, Session, Time};

/// Application data kept per session (more is counted but not stored).
pub const DATA_CAP: usize = 1 << 20;

/// Observed state of a session, updated from its events.
#[derive(Debug, Default)]
pub struct Seen {
    /// `Established` was reported.
    pub established: bool,
    /// `PeerClosed` was reported.
    pub peer_closed: bool,
    /// `Closed` was reported.
    pub closed: bool,
    /// Application data received, in order (first [`DATA_CAP`] bytes).
    pub data: Vec<u8>,
    /// The first error `process` returned.
    pub error: Option<Error>,
    /// Every byte the session queued for transmission (first [`DATA_CAP`] bytes).
    pub sent: Vec<u8>,
}

/// A session with its invariants checked after every call.
pub struct Checked<S: Storage> {
    /// The session.
    pub session: Session<S>,
    /// What it reported so far.
    pub seen: Seen,
    limits: (usize, usize),
    /// Bytes taken from the session's transmit buffer but not yet handed out by `drain`.
    pending: Vec<u8>,
}

impl<S: Storage> Checked<S> {
    /// Wrap `session`; `limits` are the incoming and outgoing buffer bounds it must respect.
    pub fn new(session: Session<S>, limits: (usize, usize)) -> Self {
        Self {
            session,
            seen: Seen::default(),
            limits,
            pending: Vec::new(),
        }
    }

    /// Copy as much of `bytes` in as fits; returns how many.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let n = self.session.receive(bytes);
        assert!(n <= bytes.len());
        n
    }

    /// `process` with every invariant checked.
    pub fn process(&mut self, now: Time) -> Result<(), Error> {
        let terminal_before = self.session.is_terminal();
        let error_before = self.session.error().cloned();
        let out_before = self.session.transmit().len();
        let mut events = 0usize;
        let Self { session, seen, .. } = self;
        let r = session.process(now, |ev| {
            events += 1;
            assert!(!terminal_before, "event {ev:?} from a terminal session");
            assert!(!seen.closed, "event {ev:?} after Closed");
            match ev {
                Event::Established(id) => {
                    assert!(!seen.established, "Established twice");
                    let _ = (id.authenticated(), id.common_name(), id.uris());
                    seen.established = true;
                }
                Event::Data(d) => {
                    assert!(seen.established, "application data before Established");
                    assert!(!seen.peer_closed, "application data after PeerClosed");
                    let room = DATA_CAP.saturating_sub(seen.data.len());
                    seen.data.extend_from_slice(&d[..d.len().min(room)]);
                }
                Event::PeerClosed => {
                    assert!(!seen.peer_closed, "PeerClosed twice");
                    seen.peer_closed = true;
                }
                Event::Closed => seen.closed = true,
            }
        });
        let out = session.transmit();
        if terminal_before {
            assert_eq!(events, 0);
            assert_eq!(out.len(), out_before, "a terminal session queued bytes");
            if let Some(before) = &error_before {
                assert_eq!(r.as_ref().err(), Some(before), "errors are sticky");
            }
        }
        if let Err(e) = &r {
            assert!(
                session.is_terminal(),
                "an error leaves the session terminal"
            );
            assert_eq!(session.error(), Some(e));
            assert!(!session.is_handshaking());
            if !terminal_before {
                check_error(e, &out[out_before..], self.limits.1);
            }
            if seen.error.is_none() {
                seen.error = Some(e.clone());
            }
        }
        if session.is_terminal() {
            assert!(
                session.send(b"x").is_err(),
                "a terminal session accepted data"
            );
            assert_eq!(session.poll_timeout(), None);
        }
        let (i, o) = session.buffer_capacity();
        assert!(i <= self.limits.0, "incoming buffer {i} over its bound");
        assert!(o <= self.limits.1, "outgoing buffer {o} over its bound");
        r
    }

    /// Take everything queued for transmission (and acknowledge it), in order.
    pub fn drain(&mut self) -> Vec<u8> {
        self.flush();
        std::mem::take(&mut self.pending)
    }

    /// Move the session's queued bytes out (as a transport would after each `process`).
    fn flush(&mut self) {
        let out = self.session.transmit();
        let n = out.len();
        let room = DATA_CAP.saturating_sub(self.seen.sent.len());
        self.seen.sent.extend_from_slice(&out[..n.min(room)]);
        if self.pending.len() < DATA_CAP {
            self.pending.extend_from_slice(out);
        }
        self.session.transmitted(n);
        assert!(self.session.transmit().is_empty());
    }

    /// Feed `bytes` (as much as the buffer takes at a time), processing after each piece.
    /// Returns the bytes that never fit (the session stopped reading).
    pub fn feed<'a>(&mut self, mut bytes: &'a [u8], now: Time) -> &'a [u8] {
        // Each round either consumes input or ends: bounded by the input length.
        for _ in 0..=bytes.len() {
            if bytes.is_empty() {
                break;
            }
            let n = self.receive(bytes);
            bytes = &bytes[n..];
            let _ = self.process(now);
            self.flush();
            if n == 0 {
                break;
            }
        }
        bytes
    }

    /// End of stream from the transport.
    pub fn eof(&mut self) {
        let was_terminal = self.session.is_terminal();
        let clean = self.session.peer_closed();
        let r = self.session.received_eof();
        if let Err(e) = &r {
            if !was_terminal {
                assert!(!clean, "eof after close_notify is clean");
                assert_eq!(e.reason(), &Reason::UnexpectedEof);
            }
            assert!(self.session.is_terminal());
        }
    }
}

/// The bounds of the default growable buffers.
pub const GROWABLE_LIMITS: (usize, usize) = (DEFAULT_MAX_INCOMING, DEFAULT_MAX_OUTGOING);

/// Reasons that may come without an alert to the peer: no TLS peer to answer (plaintext,
/// timeout, end of stream), the peer's own fatal alert, our buffer bound (the alert may not
/// fit), and protocol violations rustls itself answers with no alert (seen: an oversized
/// handshake message header, `HandshakePayloadTooLarge`). Every policy refusal (certificate,
/// revocation, identity, version, name, parameters) must name the alert it sent.
pub fn reason_may_lack_alert(r: &Reason) -> bool {
    matches!(
        r,
        Reason::PlaintextHttp
            | Reason::NotTls
            | Reason::HandshakeTimeout { .. }
            | Reason::UnexpectedEof
            | Reason::PeerAlert(_)
            | Reason::BufferLimit { .. }
            | Reason::ProtocolViolation
            | Reason::Internal
    )
}

/// Outgoing buffers at least this large hold any flight of the test PKI, so a refusal's
/// alert always fits behind what rustls queued before it.
pub const ALERT_ALWAYS_FITS: usize = 16_384;

/// An error says why, and the alert it names was queued: `new_out` are the bytes the failing
/// call queued, `out_limit` the outgoing buffer's bound. A policy refusal sends an alert,
/// unless the outgoing buffer is smaller than [`ALERT_ALWAYS_FITS`]: rustls queues the alert
/// behind records already pending (a ServerHello flight), and when those cannot be encoded
/// into a small fixed buffer the alert cannot go out either.
pub fn check_error(e: &Error, new_out: &[u8], out_limit: usize) {
    assert!(!e.to_string().is_empty());
    let _ = e.failure().label();
    match e.alert_sent() {
        Some(a) => {
            assert!(
                !new_out.is_empty(),
                "{e:?}: alert {a} reported as sent, but nothing was queued"
            );
            if let [.., 0x15, 0x03, _, 0x00, 0x02, level, code] = new_out {
                assert_eq!(*level, 2, "{e:?}: a fatal alert");
                assert_eq!(
                    *code,
                    a.code(),
                    "{e:?}: the alert queued is the alert reported"
                );
            }
        }
        None => assert!(
            reason_may_lack_alert(e.reason()) || out_limit < ALERT_ALWAYS_FITS,
            "{e:?}: a policy refusal must send an alert"
        ),
    }
}

/// One step of a stream script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Deliver the next `n` bytes of the stream.
    Feed(usize),
    /// Move the clock forward (milliseconds).
    Forward(u64),
    /// Move the clock back (milliseconds).
    Back(u64),
    /// End of stream from the transport.
    Eof,
}

const DAY_MS: u64 = 86_400_000;

impl Op {
    /// Decode one 2-byte script entry.
    pub fn decode(kind: u8, arg: u8) -> Self {
        let a = u64::from(arg);
        match kind % 8 {
            0..=2 => Self::Feed(usize::from(arg) + 1),
            3 => Self::Feed((usize::from(arg) + 1) * 64),
            4 => Self::Forward(a * 250),
            5 => Self::Forward(a * DAY_MS),
            6 => Self::Back(a * DAY_MS),
            _ => Self::Eof,
        }
    }

    /// Encode (the inverse of [`Op::decode`] where one exists), for the seed generator.
    pub fn encode(self) -> [u8; 2] {
        match self {
            Self::Feed(n) if (1..=256).contains(&n) => [0, (n - 1) as u8],
            Self::Feed(n) => [3, (n / 64).clamp(1, 256).saturating_sub(1) as u8],
            Self::Forward(ms) if ms < 64_000 => [4, (ms / 250) as u8],
            Self::Forward(ms) => [5, (ms / DAY_MS).min(255) as u8],
            Self::Back(ms) => [6, (ms / DAY_MS).min(255) as u8],
            Self::Eof => [7, 0],
        }
    }
}

/// A stream input: `[config][n][n two-byte ops][stream bytes]`.
#[derive(Debug)]
pub struct Script<'a> {
    /// Target-specific configuration byte.
    pub config: u8,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// The peer's bytes.
    pub stream: &'a [u8],
}

impl<'a> Script<'a> {
    /// Split a fuzz input into its parts (never fails: missing parts are empty).
    pub fn parse(data: &'a [u8]) -> Self {
        let config = data.first().copied().unwrap_or(0);
        let n = usize::from(data.get(1).copied().unwrap_or(0));
        let rest = data.get(2..).unwrap_or(&[]);
        let ops_len = (2 * n).min(rest.len() & !1);
        let (ops, stream) = rest.split_at(ops_len);
        Self {
            config,
            ops: ops
                .chunks_exact(2)
                .map(|c| Op::decode(c[0], c[1]))
                .collect(),
            stream,
        }
    }

    /// Serialize (for the seed generator).
    pub fn to_bytes(config: u8, ops: &[Op], stream: &[u8]) -> Vec<u8> {
        let ops = &ops[..ops.len().min(255)];
        let mut v = vec![config, ops.len() as u8];
        for op in ops {
            v.extend_from_slice(&op.encode());
        }
        v.extend_from_slice(stream);
        v
    }
}

/// Run a script against a session: the ops in order, then the rest of the stream. The
/// session gets one `process` before any input (a client emits its ClientHello there).
pub fn run_script<S: Storage>(c: &mut Checked<S>, ops: &[Op], stream: &[u8], start: Time) {
    let mut now = start;
    let _ = c.process(now);
    c.drain();
    let mut rest = stream;
    for op in ops {
        match *op {
            Op::Feed(n) => {
                let n = n.min(rest.len());
                let left = c.feed(&rest[..n], now).len();
                rest = &rest[n - left..];
            }
            Op::Forward(ms) => {
                now = Time::from_unix_millis(now.as_unix_millis().saturating_add(ms))
            }
            Op::Back(ms) => now = Time::from_unix_millis(now.as_unix_millis().saturating_sub(ms)),
            Op::Eof => c.eof(),
        }
        let _ = c.process(now);
        c.drain();
    }
    c.feed(rest, now);
    let _ = c.process(now);
    c.drain();
}
