//! Firmware for QEMU `virt` (RV32IMAC, bare metal): an mTLS client and an mTLS server of
//! `onerecord-tls-embedded` in one image, talking through memory. It runs
//!
//! 1. a full TLS 1.3 mTLS handshake and an application-data round trip (pure buffer mode),
//! 2. a resumed TLS 1.3 handshake (the client's fixed-size session cache),
//! 3. a full TLS 1.2 mTLS handshake and a round trip,
//! 4. the blocking `TlsStream` (embedded-io) client against the server,
//!
//! prints the measurements (heap high-water per role, stack per step, instructions) and exits
//! QEMU with status 0, or non-zero on any failure.
//!
//! What a firmware author provides is all here: the allocator (`heap.rs`), the random source
//! (`getrandom` custom hook in `rt.rs`: **a demo generator, not a CSPRNG**; use the chip's TRNG),
//! the clock (`LastKnownTime` from the build time plus the CLINT timer), CAS atomics (the
//! `A` extension).

#![no_std]
#![no_main]

extern crate alloc;

mod heap;
#[cfg_attr(target_arch = "arm", path = "rt_arm.rs")]
mod rt;
mod stack;

use alloc::vec::Vec;
use core::ptr::addr_of_mut;

use heap::{HEAP, Role};
use onerecord_tls::{Certificate, PrivateKey};
use onerecord_tls::{
    ClientAuth, ClientPolicy, Event, HandshakeKind, IdentityRule, ServerPolicies, ServerPolicy,
    Time, TlsVersion, TrustStore, Versions,
};
use onerecord_tls_embedded::{Clock, LastKnownTime, MIN_INCOMING, Tls, TlsStream};

static CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));
static SERVER_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/server.der"));
static SERVER_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/server.key.der"));
static CLIENT_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/client.der"));
static CLIENT_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/client.key.der"));

/// Outgoing buffers: the largest flight here (the server's, with an ECDSA chain) is ~1.3 KB.
const OUT: usize = 4096;

static mut CLIENT_IN: [u8; MIN_INCOMING] = [0; MIN_INCOMING];
static mut CLIENT_OUT: [u8; OUT] = [0; OUT];
static mut SERVER_IN: [u8; MIN_INCOMING] = [0; MIN_INCOMING];
static mut SERVER_OUT: [u8; OUT] = [0; OUT];
static mut PLAINTEXT: [u8; 16_384] = [0; 16_384];

// --- The clock --------------------------------------------------------------------------

/// No RTC on this board: the last known good time is the firmware's build time, advanced by
/// the CLINT timer.
struct BoardClock {
    base: LastKnownTime,
    boot_ms: u64,
}

impl Clock for BoardClock {
    fn now(&mut self) -> Time {
        let mut t = self.base;
        t.tick(rt::millis() - self.boot_ms);
        t.now()
    }
}

fn build_time() -> Time {
    let secs: u64 = match env!("FW_BUILD_UNIX_SECS").parse() {
        Ok(s) => s,
        Err(_) => fail("bad build time"),
    };
    Time::from_unix_secs(secs)
}

fn fail(what: &str) -> ! {
    println!("FAIL: {what}");
    rt::exit(1)
}

fn check(ok: bool, what: &str) {
    if !ok {
        fail(what);
    }
}

// --- Measurements -----------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Meter {
    instructions: u64,
    stack: usize,
    steps: usize,
}

impl Meter {
    /// Run one step of `role`, counting its instructions and stack, its allocations going to
    /// `role` in the counting allocator.
    fn step<R>(&mut self, role: Role, f: impl FnOnce() -> R) -> R {
        stack::paint_stack();
        let sp = rt::sp();
        let t0 = rt::instret();
        let r = HEAP.as_role(role, f);
        self.instructions += rt::instret() - t0;
        self.stack = self.stack.max(stack::stack_used_below(sp));
        self.steps += 1;
        r
    }
}

struct Report {
    name: &'static str,
    client: Meter,
    server: Meter,
    /// Live heap bytes of client, server, all when the scenario started.
    base: [isize; 3],
}

impl Report {
    fn new(name: &'static str) -> Self {
        HEAP.reset_peaks();
        Self {
            name,
            client: Meter::default(),
            server: Meter::default(),
            base: [
                HEAP.role(Role::Client).live,
                HEAP.role(Role::Server).live,
                HEAP.total().live,
            ],
        }
    }

    /// Print what the handshake cost (heap high-water above the start, allocations, stack,
    /// instructions), then restart the counters for the data phase.
    fn handshake_done(&mut self) {
        let (c, s, t) = (
            HEAP.role(Role::Client),
            HEAP.role(Role::Server),
            HEAP.total(),
        );
        println!(
            "RESULT {} handshake: client instructions={} stack={} heap_peak={} allocs={} | server instructions={} stack={} heap_peak={} allocs={} | both heap_peak={}",
            self.name,
            self.client.instructions,
            self.client.stack,
            c.peak - self.base[0],
            c.allocs,
            self.server.instructions,
            self.server.stack,
            s.peak - self.base[1],
            s.allocs,
            t.peak - self.base[2],
        );
        *self = Self::new(self.name);
    }

    fn data_done(&self) {
        let (c, s) = (HEAP.role(Role::Client), HEAP.role(Role::Server));
        println!(
            "RESULT {} round-trip: client instructions={} heap_peak={} allocs={} | server instructions={} heap_peak={} allocs={}",
            self.name,
            self.client.instructions,
            c.peak - self.base[0],
            c.allocs,
            self.server.instructions,
            s.peak - self.base[1],
            s.allocs,
        );
    }
}

// --- Scenarios --------------------------------------------------------------------------

/// Buffer-mode handshake and round trip between `client` and `server`; returns the report.
fn buffer_mode(
    name: &'static str,
    client_policy: &ClientPolicy,
    server_policies: &ServerPolicies,
    clock: &mut BoardClock,
    expect_version: TlsVersion,
    expect_kind: HandshakeKind,
) {
    // SAFETY: each static buffer is borrowed by one session at a time (scenarios run one
    // after another and the sessions are dropped at the end of this function).
    let (ci, co, si, so) = unsafe {
        (
            &mut *addr_of_mut!(CLIENT_IN),
            &mut *addr_of_mut!(CLIENT_OUT),
            &mut *addr_of_mut!(SERVER_IN),
            &mut *addr_of_mut!(SERVER_OUT),
        )
    };
    let mut rep = Report::new(name);
    let now = clock.now();
    let mut client = rep
        .client
        .step(Role::Client, || {
            Tls::client(client_policy, "device.local", now, &mut ci[..], &mut co[..])
        })
        .unwrap_or_else(|e| fail_err("client setup", &e));
    let mut server = rep.server.step(Role::Server, || {
        Tls::server(server_policies, now, &mut si[..], &mut so[..])
    });

    let request = b"GET /logistics-objects/shipment-1 HTTP/1.1\r\nHost: device.local\r\n\r\n";
    let mut server_got: Vec<u8> = Vec::new();
    let mut client_got: Vec<u8> = Vec::new();
    let mut sent_request = false;
    let mut answered = false;
    for _ in 0..64 {
        let now = clock.now();
        let r = rep.client.step(Role::Client, || {
            client.process(now, |ev| {
                if let Event::Data(d) = ev {
                    client_got.extend_from_slice(d);
                }
            })
        });
        if let Err(e) = r {
            fail_err("client process", &e);
        }
        if client.is_established() && server.is_established() && !sent_request {
            rep.handshake_done();
            let n = rep
                .client
                .step(Role::Client, || client.send(request))
                .unwrap_or_else(|e| fail_err("client send", &e));
            check(n == request.len(), "client send accepted everything");
            sent_request = true;
        }
        let n = server.receive(client.transmit());
        client.transmitted(n);
        let r = rep.server.step(Role::Server, || {
            server.process(now, |ev| {
                if let Event::Data(d) = ev {
                    server_got.extend_from_slice(d);
                }
            })
        });
        if let Err(e) = r {
            fail_err("server process", &e);
        }
        if !answered && server_got.len() == request.len() {
            check(server_got == request, "server received the request");
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
            let n = rep
                .server
                .step(Role::Server, || server.send(reply))
                .unwrap_or_else(|e| fail_err("server send", &e));
            check(n == reply.len(), "server send accepted everything");
            answered = true;
        }
        let n = client.receive(server.transmit());
        server.transmitted(n);
        if answered && client_got.ends_with(b"{}") {
            break;
        }
    }
    check(
        client.is_established() && server.is_established(),
        "both established",
    );
    check(
        client_got.ends_with(b"\r\n\r\n{}"),
        "client received the reply",
    );
    let id = client
        .peer_identity()
        .unwrap_or_else(|| fail("client identity"));
    check(id.version == expect_version, "negotiated version");
    check(id.handshake == expect_kind, "handshake kind (full/resumed)");
    let sid = server
        .peer_identity()
        .unwrap_or_else(|| fail("server identity"));
    if expect_kind == HandshakeKind::Full {
        check(!sid.chain.is_empty(), "server saw the client certificate");
    }
    rep.data_done();
}

fn fail_err(what: &str, e: &dyn core::fmt::Display) -> ! {
    println!("FAIL: {what}: {e}");
    rt::exit(1)
}

/// An in-memory link to the server: what the client writes is pushed into the server and
/// processed there (echoing application data back); reads return the server's output.
struct Link<'a> {
    server: Tls<&'a mut [u8]>,
    clock: BoardClock,
    meter: Meter,
    backlog: Vec<u8>,
}

impl Link<'_> {
    /// Encrypt as much of the echo backlog as the server's outgoing buffer takes.
    fn send_backlog(&mut self) -> Result<(), embedded_io::ErrorKind> {
        if self.backlog.is_empty() {
            return Ok(());
        }
        let (server, backlog) = (&mut self.server, &self.backlog);
        let n = self
            .meter
            .step(Role::Server, || server.send(backlog))
            .map_err(|_| embedded_io::ErrorKind::InvalidData)?;
        self.backlog.drain(..n);
        Ok(())
    }
}

impl embedded_io::ErrorType for Link<'_> {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Write for Link<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let n = self.server.receive(buf);
        let now = self.clock.now();
        let server = &mut self.server;
        let mut echo: Vec<u8> = Vec::new();
        self.meter
            .step(Role::Server, || {
                server.process(now, |ev| {
                    if let Event::Data(d) = ev {
                        echo.extend_from_slice(d);
                    }
                })
            })
            .map_err(|_| embedded_io::ErrorKind::InvalidData)?;
        self.backlog.extend_from_slice(&echo);
        self.send_backlog()?;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl embedded_io::Read for Link<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if self.server.transmit().is_empty() {
            self.send_backlog()?;
        }
        let n = self.server.transmit_into(buf);
        if n == 0 {
            // The server has nothing to say: a real socket would block forever here.
            return Err(embedded_io::ErrorKind::TimedOut);
        }
        Ok(n)
    }
}

fn stream_mode(client_policy: &ClientPolicy, server_policies: &ServerPolicies, boot_ms: u64) {
    use embedded_io::{Read, Write};
    // SAFETY: as in `buffer_mode`: one session per buffer at a time.
    let (ci, co, si, so, pt) = unsafe {
        (
            &mut *addr_of_mut!(CLIENT_IN),
            &mut *addr_of_mut!(CLIENT_OUT),
            &mut *addr_of_mut!(SERVER_IN),
            &mut *addr_of_mut!(SERVER_OUT),
            &mut *addr_of_mut!(PLAINTEXT),
        )
    };
    let clock = || BoardClock {
        base: LastKnownTime::new(build_time()),
        boot_ms,
    };
    let now = clock().now();
    let server = Tls::server(server_policies, now, &mut si[..], &mut so[..]);
    let link = Link {
        server,
        clock: clock(),
        meter: Meter::default(),
        backlog: Vec::new(),
    };
    let client = Tls::client(client_policy, "device.local", now, &mut ci[..], &mut co[..])
        .unwrap_or_else(|e| fail_err("stream client", &e))
        .with_write_cap(1024);
    let mut stream = TlsStream::new(client, link, clock(), &mut pt[..]);
    let id = stream
        .handshake()
        .unwrap_or_else(|e| fail_err("stream handshake", &e));
    check(id.version == TlsVersion::Tls13, "stream: TLS 1.3");
    let msg = [0x42u8; 3000];
    stream
        .write_all(&msg)
        .unwrap_or_else(|e| fail_err("stream write", &e));
    let mut back = [0u8; 3000];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| fail_err("stream read", &format_args!("{e:?}")));
    check(back == msg, "stream: echo matches");
    println!(
        "RESULT stream: TlsStream over embedded-io, 3000 bytes echoed in records of at most 1024"
    );
}

#[unsafe(no_mangle)]
extern "C" fn fw_main() -> ! {
    heap::init();
    let boot_ms = rt::millis();
    let mut clock = BoardClock {
        base: LastKnownTime::new(build_time()),
        boot_ms,
    };
    let now = clock.now();
    let board = if cfg!(target_arch = "arm") {
        "Cortex-M4F, QEMU mps2-an386"
    } else {
        "RV32IMAC, QEMU virt"
    };
    println!("onerecord-tls firmware: {board}; time {now} (build time + timer)");

    let (server_policies, client_policy, tls12_policy) = HEAP.as_role(Role::Setup, || {
        let mut trust = TrustStore::new();
        if trust.add_der(Certificate::from(CA)).is_err() {
            fail("trust anchor");
        }
        let server = ServerPolicy::builder(
            alloc::vec![Certificate::from(SERVER_CERT).into_owned()],
            PrivateKey::Pkcs8(SERVER_KEY.to_vec().into()),
        )
        .client_auth(ClientAuth::Required(trust.clone()))
        .allow(IdentityRule::UriPrefix("https://onerecord.example/".into()))
        .build(now)
        .unwrap_or_else(|e| fail_err("server policy", &e))
        .into_set();
        let client = |versions| {
            ClientPolicy::builder(trust.clone())
                .versions(versions)
                .client_cert(
                    alloc::vec![Certificate::from(CLIENT_CERT).into_owned()],
                    PrivateKey::Pkcs8(CLIENT_KEY.to_vec().into()),
                )
                .session_cache(Some(onerecord_tls::ClientSessionCache::new(4)))
                .build(now)
                .unwrap_or_else(|e| fail_err("client policy", &e))
        };
        (
            server,
            client(Versions::Tls13AndTls12),
            client(Versions::Tls12Only),
        )
    });
    println!(
        "heap after building the policies: {} bytes",
        HEAP.total().live
    );

    buffer_mode(
        "tls13-mtls-full",
        &client_policy,
        &server_policies,
        &mut clock,
        TlsVersion::Tls13,
        HandshakeKind::Full,
    );
    buffer_mode(
        "tls13-mtls-resumed",
        &client_policy,
        &server_policies,
        &mut clock,
        TlsVersion::Tls13,
        HandshakeKind::Resumed,
    );
    buffer_mode(
        "tls12-mtls-full",
        &tls12_policy,
        &server_policies,
        &mut clock,
        TlsVersion::Tls12,
        HandshakeKind::Full,
    );
    stream_mode(&client_policy, &server_policies, boot_ms);

    println!(
        "heap live at the end: {} bytes; high-water since boot: {} of {} bytes",
        HEAP.total().live,
        HEAP.high_water(),
        heap::HEAP_SIZE
    );
    println!("PASS");
    rt::exit(0)
}
