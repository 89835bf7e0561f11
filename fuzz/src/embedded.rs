//! (g) The embedded adapter (`onerecord-tls-embedded`, pure buffer mode [`Tls`]) on small
//! caller-owned fixed buffers.
//!
//! Input: `[sizes][mode][rest]`. Sizes bits 0-1 pick the incoming buffer and bits 2-3 the
//! outgoing buffer from [`SIZES`]; bits 4-5 the size of the scratch buffer
//! [`Tls::transmit_into`] copies into (partial drains). Mode bit 0: a server fed a [`Script`] of client bytes; bit 1 set: a
//! client fed a script of server bytes; mode 2: an embedded client against a core server,
//! unmutated.
//!
//! Properties, beyond the core invariants: `Established` once and before data; a terminal
//! adapter reports no event and queues nothing; a core error names an alert only if one was
//! queued; `BufferTooSmall` names a size larger than the buffer, and with the buffer grown to
//! exactly that size the same step gets through (any later refusal of that buffer asks for
//! more); with buffers of at least [`onerecord_tls_embedded::MIN_INCOMING`] and 8 KiB the
//! unmutated exchange completes.

use onerecord_tls::{Event, Session, Time};
use onerecord_tls_embedded::{Buffer, Error, Tls};

use crate::drive::{Checked, GROWABLE_LIMITS, Op, Script, check_error};
use crate::pki::{self, ClientKind, ServerKind};

/// Incoming and outgoing buffer sizes.
pub const SIZES: ([usize; 4], [usize; 4]) = ([256, 2048, 8192, 17_000], [128, 1024, 2048, 8192]);
/// Sizes of the scratch buffer [`Tls::transmit_into`] copies into.
const DRAIN: [usize; 4] = [1, 7, 512, 65_536];

type Boxed = Box<[u8]>;

/// The adapter with the invariants checked after every call.
struct Checked2 {
    tls: Tls<Boxed>,
    established: bool,
    peer_closed: bool,
    data: usize,
    error: Option<Error>,
    drain: usize,
    sent: Vec<u8>,
}

impl Checked2 {
    fn new(tls: Tls<Boxed>, drain: usize) -> Self {
        Self {
            tls,
            established: false,
            peer_closed: false,
            data: 0,
            error: None,
            drain,
            sent: Vec::new(),
        }
    }

    fn process(&mut self, now: Time) {
        let terminal = self.tls.is_terminal();
        let before = self.tls.transmit().len();
        let (mut est, mut closed, mut data, mut events) =
            (self.established, self.peer_closed, 0usize, 0usize);
        let r = self.tls.process(now, |ev| {
            events += 1;
            match ev {
                Event::Established(_) => {
                    assert!(!est, "Established twice");
                    est = true;
                }
                Event::Data(d) => {
                    assert!(est, "data before Established");
                    assert!(!closed, "data after PeerClosed");
                    data += d.len();
                }
                Event::PeerClosed => closed = true,
                Event::Closed => {}
            }
        });
        (self.established, self.peer_closed) = (est, closed);
        self.data += data;
        if terminal {
            assert_eq!(events, 0, "events from a terminal adapter");
            assert_eq!(
                self.tls.transmit().len(),
                before,
                "a terminal adapter queued bytes"
            );
        }
        if let Err(e) = r {
            assert!(self.tls.is_terminal(), "{e:?} leaves the adapter terminal");
            assert!(self.tls.send(b"x").is_err());
            if !terminal {
                match &e {
                    Error::Tls(t) => {
                        check_error(t, &self.tls.transmit()[before..], self.tls.buffer_sizes().1)
                    }
                    Error::BufferTooSmall {
                        required, capacity, ..
                    } => assert!(required > capacity, "{e:?}"),
                    _ => {}
                }
            }
            if self.error.is_none() {
                self.error = Some(e);
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        let mut scratch = vec![0u8; self.drain];
        for _ in 0..=self.tls.transmit().len() {
            let n = self.tls.transmit_into(&mut scratch);
            if n == 0 {
                break;
            }
            self.sent.extend_from_slice(&scratch[..n]);
        }
        assert!(self.tls.transmit().is_empty());
    }

    fn feed(&mut self, mut bytes: &[u8], now: Time) {
        for _ in 0..=bytes.len() {
            if bytes.is_empty() {
                break;
            }
            let n = self.tls.receive(bytes);
            bytes = &bytes[n..];
            self.process(now);
            if n == 0 {
                break;
            }
        }
    }

    fn run(&mut self, ops: &[Op], stream: &[u8], start: Time) {
        let mut now = start;
        self.process(now);
        let mut rest = stream;
        for op in ops {
            match *op {
                Op::Feed(n) => {
                    let n = n.min(rest.len());
                    self.feed(&rest[..n], now);
                    rest = &rest[n..];
                }
                Op::Forward(ms) => {
                    now = Time::from_unix_millis(now.as_unix_millis().saturating_add(ms))
                }
                Op::Back(ms) => {
                    now = Time::from_unix_millis(now.as_unix_millis().saturating_sub(ms))
                }
                Op::Eof => {
                    let _ = self.tls.received_eof();
                }
            }
            self.process(now);
        }
        self.feed(rest, now);
    }
}

fn boxed(n: usize) -> Boxed {
    vec![0u8; n].into_boxed_slice()
}

/// An embedded client (buffers `i`, `o`) against a core server; returns the client's error.
fn pair(kind: ClientKind, server: ServerKind, i: usize, o: usize, drain: usize) -> Option<Error> {
    let now = pki::now();
    let policy = pki::client_policy_shared(kind);
    let tls = Tls::client(policy, pki::SERVER_NAME, now, boxed(i), boxed(o)).expect("client");
    let mut c = Checked2::new(tls, drain);
    let mut s = Checked::new(
        Session::server(pki::server_policies(server), now),
        GROWABLE_LIMITS,
    );
    let mut done = false;
    for _ in 0..32 {
        c.process(now);
        if c.established && !done && !c.tls.is_terminal() {
            done = c.tls.send(b"ping").is_ok();
        }
        c.process(now);
        let out = std::mem::take(&mut c.sent);
        s.feed(&out, now);
        let _ = s.process(now);
        let back = s.drain();
        if out.is_empty() && back.is_empty() {
            break;
        }
        c.feed(&back, now);
    }
    if s.seen.data == b"ping" {
        assert!(c.established);
    }
    c.error
}

/// The target body.
pub fn embedded_tls(data: &[u8]) {
    let (Some(&sizes), Some(&mode)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let (ins, outs) = SIZES;
    let i = ins[usize::from(sizes & 3)];
    let o = outs[usize::from((sizes >> 2) & 3)];
    let drain = DRAIN[usize::from((sizes >> 4) & 3)];
    let now = pki::now();
    match mode % 3 {
        0 => {
            let script = Script::parse(rest);
            let policies = pki::server_policies(ServerKind::from_selector(script.config));
            let tls = Tls::server(policies, now, boxed(i), boxed(o));
            Checked2::new(tls, drain).run(&script.ops, script.stream, now);
        }
        1 => {
            let script = Script::parse(rest);
            let kind = ClientKind::from_selector(script.config);
            let policy = pki::client_policy_shared(kind);
            let tls =
                Tls::client(policy, pki::SERVER_NAME, now, boxed(i), boxed(o)).expect("client");
            Checked2::new(tls, drain).run(&script.ops, script.stream, now);
        }
        _ => {
            let cfg = rest.first().copied().unwrap_or(0);
            let (kind, server) = match cfg % 4 {
                0 => (ClientKind::Plain, ServerKind::Plain),
                1 => (ClientKind::WithCert, ServerKind::MtlsRequired),
                2 => (ClientKind::Tls12WithCert, ServerKind::MtlsRequired),
                _ => (ClientKind::Plain, ServerKind::Tls13Hrr),
            };
            let err = pair(kind, server, i, o, drain);
            if i >= 17_000 && o >= 8192 {
                assert!(
                    err.is_none(),
                    "large enough buffers, clean exchange: {err:?}"
                );
            }
            // A too-small buffer names the size at which that step proceeds.
            if let Some(Error::BufferTooSmall {
                buffer, required, ..
            }) = err
            {
                let (i2, o2) = match buffer {
                    Buffer::Incoming => (required, o),
                    Buffer::Outgoing => (i, required),
                    Buffer::Plaintext => return,
                };
                if let Some(Error::BufferTooSmall {
                    buffer: b2,
                    required: r2,
                    ..
                }) = pair(kind, server, i2, o2, drain)
                {
                    assert!(
                        b2 != buffer || r2 > required,
                        "{buffer:?} grown to the {required} bytes asked for, then {r2} asked"
                    );
                }
            }
        }
    }
}
