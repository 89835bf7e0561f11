//! Buffer limits and hostile input in pure buffer mode, in memory (deterministic): the
//! certificate flight one byte too large for the incoming buffer, the client's flight one
//! byte too large for the outgoing buffer, and garbage that must never panic.

mod common;

use common::{Pki, wall};
use embedded_io::{ErrorType, Read, Write};
use onerecord_tls::{ClientPolicy, ServerPolicies, Session, Time, Versions};
use onerecord_tls_embedded::{Buffer, Error, MIN_INCOMING, Tls, TlsStream};

struct Peers {
    pki: Pki,
    client: ClientPolicy,
    server: ServerPolicies,
}

impl Peers {
    /// mTLS with RSA-2048 keys on both sides: the certificate flights are large, and RSA
    /// signatures have a fixed length (ECDSA's vary by a few bytes), so sizes are exact.
    fn new(versions: Versions) -> Self {
        let pki = Pki::with_rsa();
        let client = ClientPolicy::builder(pki.ca.trust())
            .versions(versions)
            .client_cert(pki.client.chain.clone(), pki.client.key())
            .session_cache(None)
            .build(wall())
            .expect("client policy");
        let server = pki.server_policies();
        Self {
            pki,
            client,
            server,
        }
    }

    /// A handshake of an embedded client with these buffer sizes against a core server.
    fn handshake(&self, incoming: usize, outgoing: usize) -> Result<(), Error> {
        let now = wall();
        let (mut ci, mut co) = (vec![0u8; incoming], vec![0u8; outgoing]);
        let mut client = Tls::client(&self.client, "localhost", now, &mut ci[..], &mut co[..])?;
        let mut server = Session::server(&self.server, now);
        for _ in 0..50 {
            client.process(now, |_| {})?;
            let n = server.receive(client.transmit());
            client.transmitted(n);
            server.process(now, |_| {}).expect("server side");
            let n = client.receive(server.transmit());
            server.transmitted(n);
            if client.is_established() && server.is_established() {
                assert!(self.pki.client.serial > 0);
                return Ok(());
            }
        }
        panic!("no progress with buffers {incoming}/{outgoing}");
    }

    /// The smallest size for which `ok(size)` holds, in `lo..=hi` (monotonic).
    fn smallest(mut lo: usize, mut hi: usize, ok: impl Fn(usize) -> bool) -> usize {
        assert!(ok(hi), "{hi} must be enough");
        while lo < hi {
            let mid = (lo + hi) / 2;
            if ok(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        hi
    }
}

fn incoming_flight(versions: Versions) {
    let peers = Peers::new(versions);
    let n = Peers::smallest(64, MIN_INCOMING, |size| peers.handshake(size, 8192).is_ok());
    assert!(
        n > 1000,
        "an RSA certificate flight needs more than 1000 bytes: {n}"
    );
    match peers.handshake(n - 1, 8192) {
        Err(Error::BufferTooSmall {
            buffer: Buffer::Incoming,
            required,
            capacity,
        }) => {
            assert_eq!(capacity, n - 1);
            assert_eq!(required, n, "the error names the size that works");
        }
        other => panic!("expected an incoming BufferTooSmall, got {other:?}"),
    }
    // Far too small: the size named lets the next attempt get further, and a few retries
    // with the named size always end in a handshake.
    let mut size = 300;
    for attempt in 0.. {
        assert!(attempt < 8, "retrying with the named size converges");
        match peers.handshake(size, 8192) {
            Ok(()) => break,
            Err(Error::BufferTooSmall {
                buffer: Buffer::Incoming,
                required,
                ..
            }) => {
                assert!(required > size);
                size = required;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(size <= n + 16_384, "{size} vs {n}");
}

#[test]
fn incoming_one_byte_too_small_for_the_certificate_flight_names_the_size_tls13() {
    incoming_flight(Versions::Tls13Only);
}

#[test]
fn incoming_one_byte_too_small_for_the_certificate_flight_names_the_size_tls12() {
    incoming_flight(Versions::Tls12Only);
}

#[test]
fn outgoing_one_byte_too_small_for_the_client_certificate_flight_names_the_size() {
    for versions in [Versions::Tls13Only, Versions::Tls12Only] {
        let peers = Peers::new(versions);
        let n = Peers::smallest(64, 8192, |size| peers.handshake(MIN_INCOMING, size).is_ok());
        match peers.handshake(MIN_INCOMING, n - 1) {
            Err(Error::BufferTooSmall {
                buffer: Buffer::Outgoing,
                required,
                capacity,
            }) => {
                assert_eq!(capacity, n - 1);
                assert_eq!(required, n, "{versions:?}: the exact size rustls asked for");
            }
            other => panic!("expected an outgoing BufferTooSmall, got {other:?}"),
        }
    }
}

/// SplitMix64: deterministic test input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Feed `input` to a fresh session in chunks; every call must return (no panic), and a
/// session that accepted hostile bytes must never report itself established.
fn feed(tls: &mut Tls<&mut [u8]>, input: &[u8], now: Time, rng: &mut Rng) {
    let mut rest = input;
    for _ in 0..10_000 {
        if rest.is_empty() || tls.is_terminal() {
            break;
        }
        let chunk = 1 + rng.below(rest.len().min(3000));
        let n = tls.receive(&rest[..chunk]);
        rest = &rest[n..];
        if tls.process(now, |_| {}).is_err() {
            assert!(tls.is_terminal());
            break;
        }
        let n = tls.transmit().len();
        tls.transmitted(n);
    }
}

#[test]
fn garbage_and_corrupted_flights_never_panic() {
    let peers = Peers::new(Versions::Tls13AndTls12);
    let now = wall();
    let mut rng = Rng(0x0e1e_c0de);

    // A genuine server flight to corrupt.
    let flight = {
        let (mut ci, mut co) = (vec![0u8; MIN_INCOMING], vec![0u8; 4096]);
        let mut client =
            Tls::client(&peers.client, "localhost", now, &mut ci[..], &mut co[..]).expect("c");
        let mut server = Session::server(&peers.server, now);
        client.process(now, |_| {}).expect("hello");
        let _ = server.receive(client.transmit());
        server.process(now, |_| {}).expect("server flight");
        server.transmit().to_vec()
    };
    assert!(flight.len() > 1000);

    let (mut a, mut b) = (vec![0u8; MIN_INCOMING], vec![0u8; 4096]);
    for round in 0..400 {
        let input = match round % 4 {
            0 => {
                let len = rng.below(5000);
                rng.bytes(len)
            }
            1 => {
                // Plausible record headers with random bodies.
                let mut v = Vec::new();
                for _ in 0..1 + rng.below(6) {
                    let len = rng.below(2000);
                    v.extend_from_slice(&[[20u8, 21, 22, 23][rng.below(4)], 3, 3]);
                    v.extend_from_slice(&(len as u16).to_be_bytes());
                    let body = rng.bytes(len);
                    v.extend(body);
                }
                v
            }
            _ => {
                let mut v = flight.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                let cut = rng.below(v.len() / 4);
                v.truncate(v.len() - cut);
                v
            }
        };
        let mut client =
            Tls::client(&peers.client, "localhost", now, &mut a[..], &mut b[..]).expect("c");
        client.process(now, |_| {}).expect("hello");
        client.transmitted(client.transmit().len());
        feed(&mut client, &input, now, &mut rng);
        if round % 4 >= 2 {
            assert!(
                !client.is_established(),
                "a corrupted flight never completes a handshake (round {round})"
            );
        }
        drop(client);
        let mut server = Tls::server(&peers.server, now, &mut a[..], &mut b[..]);
        feed(&mut server, &input, now, &mut rng);
        assert!(!server.is_established());
    }
}

/// A transport that answers every read with random bytes.
struct Noise(Rng);

impl ErrorType for Noise {
    type Error = embedded_io::ErrorKind;
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = 1 + self.0.below(buf.len());
        let noise = self.0.bytes(n);
        buf[..n].copy_from_slice(&noise);
        Ok(n)
    }
}

impl Write for Noise {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn a_stream_over_a_noisy_transport_fails_cleanly() {
    let peers = Peers::new(Versions::Tls13AndTls12);
    for seed in 0..50 {
        let (mut i, mut o, mut p) = (vec![0u8; 2000], vec![0u8; 2000], vec![0u8; 2000]);
        let tls =
            Tls::client(&peers.client, "localhost", wall(), &mut i[..], &mut o[..]).expect("c");
        let mut s = TlsStream::new(tls, Noise(Rng(seed)), wall, &mut p[..]);
        let mut buf = [0u8; 100];
        assert!(s.read(&mut buf).is_err(), "seed {seed}");
        assert!(s.tls().is_terminal());
        assert!(s.write(b"x").is_err(), "nothing is sent after a failure");
    }
}
