//! The structure-aware target: a real client and a real server in memory, whose records are
//! mutated in flight (bit flips, truncation, drops, duplicates, reordering, replays, byte
//! overwrites, benign splits) according to the fuzz input.
//!
//! Differential properties, beyond the per-session invariants of [`crate::fuzz::drive`]:
//! - application data that arrives is exactly a prefix of what the other side sent (a
//!   mutated record is never accepted as data);
//! - when both sides are established they agree on version, suite and resumption, and each
//!   holds the other's real certificate (a mutation never yields another identity);
//! - a revoked client certificate is never accepted;
//! - with no effective mutation the exchange completes: handshake (resumed when the scenario
//!   resumes), request, response and close_notify both ways; the revoked client is refused
//!   with `certificate_revoked`.

use onerecord_tls::Storage;
use onerecord_tls::{Alert, ClientPolicy, Reason, Session, Time};

use crate::fuzz::drive::{Checked, GROWABLE_LIMITS};
use crate::fuzz::pki::{self, ClientKind, ServerKind};

/// What the client sends once established.
pub const REQUEST: &[u8] = b"GET /logistics-objects/awb-020-12345678 HTTP/1.1\r\n\r\n";
/// What the server answers.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

/// The scenarios, chosen by the configuration byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// TLS 1.3, server authentication only.
    Tls13,
    /// TLS 1.2 (server allows only 1.2 and P-384).
    Tls12,
    /// TLS 1.3 mTLS with CRL checking and a URI allow-rule.
    Tls13Mtls,
    /// TLS 1.2 mTLS.
    Tls12Mtls,
    /// TLS 1.3 resumption (a clean full handshake first, then the mutated resumed one).
    Tls13Resumed,
    /// TLS 1.2 mTLS resumption with tickets.
    Tls12MtlsResumed,
    /// TLS 1.3 with a HelloRetryRequest (server only does P-384).
    Tls13Hrr,
    /// mTLS with a revoked client certificate: must always be refused.
    Revoked,
}

impl Scenario {
    /// All scenarios, in selector order.
    pub const ALL: [Self; 8] = [
        Self::Tls13,
        Self::Tls12,
        Self::Tls13Mtls,
        Self::Tls12Mtls,
        Self::Tls13Resumed,
        Self::Tls12MtlsResumed,
        Self::Tls13Hrr,
        Self::Revoked,
    ];

    /// The scenario for a selector byte.
    pub fn from_selector(b: u8) -> Self {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    /// Its selector byte.
    pub fn selector(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8
    }

    /// The server and client policies of this scenario.
    pub fn kinds(self) -> (ServerKind, ClientKind) {
        match self {
            Self::Tls13 | Self::Tls13Resumed => (ServerKind::Plain, ClientKind::Plain),
            Self::Tls12 => (ServerKind::Tls12Only, ClientKind::Plain),
            Self::Tls13Mtls => (ServerKind::MtlsRequired, ClientKind::WithCert),
            Self::Tls12Mtls | Self::Tls12MtlsResumed => {
                (ServerKind::MtlsRequired, ClientKind::Tls12WithCert)
            }
            Self::Tls13Hrr => (ServerKind::Tls13Hrr, ClientKind::Plain),
            Self::Revoked => (ServerKind::MtlsRequired, ClientKind::Revoked),
        }
    }

    /// The scenario whose full handshake a resumption scenario resumes.
    fn full(self) -> Self {
        match self {
            Self::Tls13Resumed => Self::Tls13,
            Self::Tls12MtlsResumed => Self::Tls12Mtls,
            other => other,
        }
    }

    fn resumes(self) -> bool {
        matches!(self, Self::Tls13Resumed | Self::Tls12MtlsResumed)
    }

    fn mtls(self) -> bool {
        matches!(
            self,
            Self::Tls13Mtls | Self::Tls12Mtls | Self::Tls12MtlsResumed
        )
    }
}

/// What to do to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Flip bit `arg % (8 * len)`.
    FlipBit,
    /// Keep only the first `arg % len` bytes.
    Truncate,
    /// Drop the record.
    Drop,
    /// Deliver it twice.
    Duplicate,
    /// Deliver it after the next record in the same direction.
    Reorder,
    /// Overwrite byte `(arg >> 8) % len` with `arg & 0xff`.
    SetByte,
    /// Deliver it in two writes split at `arg % len` (not a mutation: must still work).
    Split,
    /// Deliver an earlier record of this direction (`arg % count`) before it.
    Replay,
}

/// A mutation: which record, which direction, what, with which argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// Record index in its direction (0 is the first record that side sends).
    pub record: u8,
    /// `true`: server to client; `false`: client to server.
    pub to_client: bool,
    /// What to do.
    pub action: Action,
    /// Argument of the action.
    pub arg: u16,
}

impl Mutation {
    /// Decode one 4-byte entry.
    pub fn decode(b: [u8; 4]) -> Self {
        let action = match b[1] & 0x07 {
            0 => Action::FlipBit,
            1 => Action::Truncate,
            2 => Action::Drop,
            3 => Action::Duplicate,
            4 => Action::Reorder,
            5 => Action::SetByte,
            6 => Action::Split,
            _ => Action::Replay,
        };
        Self {
            record: b[0],
            to_client: b[1] & 0x80 != 0,
            action,
            arg: u16::from_be_bytes([b[2], b[3]]),
        }
    }

    /// Encode (for the seed generator).
    pub fn encode(self) -> [u8; 4] {
        let a = Action::ALL
            .iter()
            .position(|x| *x == self.action)
            .unwrap_or(0) as u8;
        let arg = self.arg.to_be_bytes();
        [
            self.record,
            a | if self.to_client { 0x80 } else { 0 },
            arg[0],
            arg[1],
        ]
    }
}

impl Action {
    /// All actions, in encoding order.
    pub const ALL: [Self; 8] = [
        Self::FlipBit,
        Self::Truncate,
        Self::Drop,
        Self::Duplicate,
        Self::Reorder,
        Self::SetByte,
        Self::Split,
        Self::Replay,
    ];
}

/// Split a byte stream into TLS records by their headers (a trailing partial record is
/// returned as one piece).
pub fn records(mut buf: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    while !buf.is_empty() {
        let n = if buf.len() >= 5 {
            (5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))).min(buf.len())
        } else {
            buf.len()
        };
        let (rec, rest) = buf.split_at(n);
        v.push(rec);
        buf = rest;
    }
    v
}

/// One direction of the in-memory network.
#[derive(Default)]
struct Pipe {
    count: usize,
    history: Vec<Vec<u8>>,
    held: Option<Vec<u8>>,
    /// A delivery differed from what was sent.
    tampered: bool,
}

impl Pipe {
    /// Pass one record through, applying the mutations addressed to it; returns the writes
    /// the receiver gets, in order.
    fn pass(&mut self, rec: &[u8], muts: &[Mutation], to_client: bool) -> Vec<Vec<u8>> {
        let index = self.count;
        self.count += 1;
        let mut writes: Vec<Vec<u8>> = vec![rec.to_vec()];
        let mut hold = false;
        for m in muts
            .iter()
            .filter(|m| m.to_client == to_client && usize::from(m.record) == index)
        {
            let arg = usize::from(m.arg);
            let Some(last) = writes.last_mut() else {
                break;
            };
            let len = last.len();
            match m.action {
                Action::FlipBit if len > 0 => last[(arg / 8) % len] ^= 1 << (arg % 8),
                Action::Truncate if len > 0 => last.truncate(arg % len),
                Action::Drop => writes.clear(),
                Action::Duplicate => {
                    let copy = last.clone();
                    writes.push(copy);
                }
                Action::Reorder => hold = true,
                Action::SetByte if len > 0 => last[(arg >> 8) % len] = (arg & 0xff) as u8,
                Action::Split if len > 1 => {
                    let tail = last.split_off(arg % len);
                    writes.push(tail);
                }
                Action::Replay if !self.history.is_empty() => {
                    let old = self.history[arg % self.history.len()].clone();
                    writes.insert(0, old);
                }
                _ => {}
            }
        }
        self.history.push(rec.to_vec());
        let delivered: Vec<u8> = writes.concat();
        let mut out = Vec::new();
        if hold && !delivered.is_empty() {
            if let Some(prev) = self.held.replace(delivered) {
                out.push(prev);
            }
            self.tampered = true;
            return out;
        }
        if delivered != rec {
            self.tampered = true;
        }
        out.extend(writes);
        if let Some(prev) = self.held.take() {
            out.push(prev);
        }
        out
    }
}

/// The outcome of one exchange.
pub struct Outcome<A: Storage, B: Storage> {
    /// The server side.
    pub server: Checked<A>,
    /// The client side.
    pub client: Checked<B>,
    /// Some record was changed, dropped, added or moved.
    pub tampered: bool,
}

const MAX_ROUNDS: usize = 48;

/// Run one exchange between `server` and `client` with `muts` applied, then check the
/// differential properties for `scenario`.
pub fn exchange<A: Storage, B: Storage>(
    scenario: Scenario,
    server: Session<A>,
    server_limits: (usize, usize),
    client: Session<B>,
    muts: &[Mutation],
    now: Time,
) -> Outcome<A, B> {
    let outcome = exchange_unchecked(server, server_limits, client, muts, now);
    check(scenario, &outcome);
    outcome
}

/// [`exchange`] with only the per-session invariants and the data-integrity property
/// checked (for configurations where the exchange may legitimately fail).
pub fn exchange_unchecked<A: Storage, B: Storage>(
    server: Session<A>,
    server_limits: (usize, usize),
    client: Session<B>,
    muts: &[Mutation],
    now: Time,
) -> Outcome<A, B> {
    let mut s = Checked::new(server, server_limits);
    let mut c = Checked::new(client, GROWABLE_LIMITS);
    let (mut to_server, mut to_client) = (Pipe::default(), Pipe::default());
    let (mut requested, mut responded, mut client_closed, mut server_closed) =
        (false, false, false, false);
    for _ in 0..MAX_ROUNDS {
        let _ = c.process(now);
        if c.seen.established && !requested && !c.session.is_terminal() {
            requested = c.session.send(REQUEST).is_ok_and(|n| n == REQUEST.len());
        }
        if c.seen.data == RESPONSE && !client_closed {
            c.session.close();
            client_closed = true;
            let _ = c.process(now);
        }
        let out = c.drain();
        let mut moved = !out.is_empty();
        for rec in records(&out) {
            for w in to_server.pass(rec, muts, false) {
                s.feed(&w, now);
            }
        }
        let _ = s.process(now);
        if s.seen.data == REQUEST && !responded && !s.session.is_terminal() {
            responded = s.session.send(RESPONSE).is_ok_and(|n| n == RESPONSE.len());
        }
        if s.seen.peer_closed && !server_closed {
            s.session.close();
            server_closed = true;
            let _ = s.process(now);
        }
        let out = s.drain();
        moved |= !out.is_empty();
        for rec in records(&out) {
            for w in to_client.pass(rec, muts, true) {
                c.feed(&w, now);
            }
        }
        if !moved {
            // Stalled: release a record held back for reordering, or stop.
            let mut released = false;
            if let Some(h) = to_server.held.take() {
                s.feed(&h, now);
                released = true;
            }
            if let Some(h) = to_client.held.take() {
                c.feed(&h, now);
                released = true;
            }
            if !released {
                break;
            }
        }
        if s.session.is_terminal() && c.session.is_terminal() {
            break;
        }
    }
    assert!(
        REQUEST.starts_with(&s.seen.data),
        "server got data the client never sent: {:?}",
        s.seen.data
    );
    assert!(
        RESPONSE.starts_with(&c.seen.data),
        "client got data the server never sent: {:?}",
        c.seen.data
    );
    Outcome {
        server: s,
        client: c,
        tampered: to_server.tampered || to_client.tampered,
    }
}

fn check<A: Storage, B: Storage>(scenario: Scenario, o: &Outcome<A, B>) {
    let (s, c) = (&o.server, &o.client);
    let pki = pki::pki();
    if let Some(id) = s.session.peer_identity() {
        if scenario.mtls() {
            assert_eq!(
                id.chain.first(),
                Some(&pki.client.der),
                "server saw another client"
            );
            assert!(id.authenticated());
        }
        assert_ne!(
            id.chain.first(),
            Some(&pki.revoked.der),
            "a revoked client certificate was accepted"
        );
    }
    if let Some(id) = c.session.peer_identity() {
        assert_eq!(
            id.chain.first(),
            Some(&pki.server.der),
            "client saw another server"
        );
    }
    if let (Some(a), Some(b)) = (s.session.peer_identity(), c.session.peer_identity()) {
        assert_eq!(a.version, b.version);
        assert_eq!(a.suite, b.suite);
        assert_eq!(a.resumed(), b.resumed());
    }
    if o.tampered {
        return;
    }
    if scenario == Scenario::Revoked {
        let e = s.seen.error.as_ref().expect("revoked client refused");
        assert_eq!(e.reason(), &Reason::Revoked, "{e:?}");
        assert_eq!(e.alert_sent(), Some(Alert::CertificateRevoked));
        return;
    }
    assert!(
        s.seen.error.is_none(),
        "clean run, server failed: {:?}",
        s.seen.error
    );
    assert!(
        c.seen.error.is_none(),
        "clean run, client failed: {:?}",
        c.seen.error
    );
    assert!(
        s.seen.established && c.seen.established,
        "clean run completes"
    );
    assert_eq!(s.seen.data, REQUEST);
    assert_eq!(c.seen.data, RESPONSE);
    assert!(
        s.seen.peer_closed && c.seen.peer_closed,
        "close_notify both ways"
    );
    let id = s.session.peer_identity().expect("established");
    assert_eq!(
        id.resumed(),
        scenario.resumes(),
        "resumption as the scenario says"
    );
}

/// Build the client for `scenario`: for a resumption scenario, a fresh policy whose cache
/// was filled by one clean exchange first.
pub fn client_policy_for(scenario: Scenario, now: Time) -> ClientPolicy {
    let (server_kind, client_kind) = scenario.kinds();
    if !scenario.resumes() {
        return pki::client_policy_shared(client_kind).clone();
    }
    let policy = pki::client_policy(client_kind, 8);
    let first = exchange(
        scenario.full(),
        Session::server(pki::server_policies(server_kind), now),
        GROWABLE_LIMITS,
        Session::client(&policy, pki::SERVER_NAME, now).expect("client"),
        &[],
        now,
    );
    assert!(
        first.server.seen.established,
        "the first handshake completes"
    );
    policy
}

/// The structure-aware target: `[scenario][4-byte mutations...]`.
pub fn handshake_mutation(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let scenario = Scenario::from_selector(cfg);
    let muts: Vec<Mutation> = rest
        .chunks_exact(4)
        .take(64)
        .map(|c| Mutation::decode([c[0], c[1], c[2], c[3]]))
        .collect();
    let now = pki::now();
    let policy = client_policy_for(scenario, now);
    let (server_kind, _) = scenario.kinds();
    exchange(
        scenario,
        Session::server(pki::server_policies(server_kind), now),
        GROWABLE_LIMITS,
        Session::client(&policy, pki::SERVER_NAME, now).expect("client"),
        &muts,
        now,
    );
}

/// The server policy kind of `scenario`.
pub fn server_kind(scenario: Scenario) -> ServerKind {
    scenario.kinds().0
}
