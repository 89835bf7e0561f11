//! # onerecord-tls-embedded
//!
//! The ONE Record TLS engine ([`onerecord_tls`]) for constrained devices: edge gateways and
//! devices that talk to ONE Record servers, usually as an mTLS client, sometimes as a server.
//! `#![no_std]`; it needs `alloc` only because rustls does (see [Heap](#heap)).
//!
//! Two ways to drive a session, both over **caller-owned fixed buffers** that never grow:
//!
//! - [`Tls`], pure buffer mode for devices with their own event loop, with the core's run-loop
//!   names (`receive`, `process`, `transmit`, `transmitted`, `received_eof`): received bytes in,
//!   bytes to send out, no transport trait at all;
//! - [`TlsStream`], a blocking stream over an [`embedded_io`] `Read + Write` transport (a TCP
//!   socket of the device's network stack, a UART, a modem), itself `embedded_io::Read +
//!   Write` so that an HTTP client can sit on top; [`AsyncTlsStream`] is the same over an
//!   `embedded-io-async` transport (embassy-net and friends).
//!
//! ```
//! use onerecord_tls::{ClientPolicy, ServerPolicy, Time, TrustStore};
//! use onerecord_tls_embedded::{Tls, MIN_INCOMING};
//! # let ca = rcgen::CertifiedIssuer::self_signed(rcgen::CertificateParams::new(Vec::<String>::new())?, rcgen::KeyPair::generate()?)?;
//! # let leaf_key = rcgen::KeyPair::generate()?;
//! # let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&leaf_key, &ca)?;
//! # let (ca_pem, cert_chain) = (ca.pem().into_bytes(), vec![leaf.der().clone()]);
//! # let key = onerecord_tls::PrivateKey::Pkcs8(leaf_key.serialize_der().into());
//! let now = Time::now(); // on a device: its RTC, or a `LastKnownTime`
//! let client_policy = ClientPolicy::builder(TrustStore::from_pem(&ca_pem)?).build(now)?;
//! let server_policy = ServerPolicy::builder(cert_chain, key).build(now)?.into_set();
//!
//! // Four caller-owned buffers (statics or stack arrays on a device).
//! let (mut ci, mut co) = (vec![0u8; MIN_INCOMING], vec![0u8; 4096]);
//! let (mut si, mut so) = (vec![0u8; MIN_INCOMING], vec![0u8; 4096]);
//! let mut client = Tls::client(&client_policy, "localhost", now, &mut ci[..], &mut co[..])?;
//! let mut server = Tls::server(&server_policy, now, &mut si[..], &mut so[..]);
//!
//! // The device's event loop moves bytes (here: directly between the two).
//! for _ in 0..10 {
//!     client.process(now, |_| {})?;
//!     let n = server.receive(client.transmit());
//!     client.transmitted(n);
//!     server.process(now, |_| {})?;
//!     let n = client.receive(server.transmit());
//!     server.transmitted(n);
//! }
//! assert!(client.is_established() && server.is_established());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Buffer sizes, and why
//!
//! - **Incoming**: at least [`MIN_INCOMING`] (16,645 bytes) to talk to a generic peer, because
//!   rustls cannot negotiate a smaller record size, so any peer may send a full 16 KiB record
//!   (TLS 1.3: 5-byte header + 2^14 + 256 bytes of ciphertext expansion allowed by RFC 8446;
//!   the TLS 1.2 AEAD suites add 24 to 2^14). During the handshake it must also hold the
//!   peer's whole certificate flight (records are decrypted and the handshake message is
//!   reassembled in place), plus the record that follows: a few KiB with ECDSA chains,
//!   more with RSA and long chains, at most 64 KiB. Too small: [`Error::BufferTooSmall`] with
//!   [`Buffer::Incoming`] and the size at which that step can proceed.
//! - **Outgoing**: this side's largest flight: the client's certificate chain plus
//!   CertificateVerify and Finished (mTLS), or the server's whole first flight. Too small:
//!   [`Error::BufferTooSmall`] with [`Buffer::Outgoing`] and the exact size rustls asked for.
//!   After the handshake it bounds each write: [`Tls::send`] produces records of at most
//!   [`Tls::write_cap`] plaintext bytes ("capped writes").
//! - **Plaintext** ([`TlsStream`] only): one record's plaintext (16 KiB from a generic peer).
//!
//! ## Heap
//!
//! This crate allocates nothing itself. rustls and the core do:
//! - the policies (built once): the rustls configuration, trust anchors, own certificate and
//!   key, and the client's session cache ([`onerecord_tls::ClientSessionCache`], fixed size:
//!   `capacity` servers, at most 4 TLS 1.3 tickets and 1 TLS 1.2 session each);
//! - per session: rustls' connection state (boxed), the handshake transcript and each queued
//!   handshake message, the peer's certificate chain (kept in the [`PeerIdentity`]);
//! - on the data path, sending: one heap buffer per encrypted record, of the record's size
//!   (bounded by [`Tls::write_cap`]), freed before `send` returns;
//! - on the data path, receiving: records are decrypted in place in the incoming buffer, then
//!   rustls 0.23 copies each record's plaintext into a heap buffer of its size (up to 16 KiB
//!   from a generic peer, which chooses the record size) until it has been handed up.
//!
//! The crate README has the measured high-water marks (a counting allocator in the firmware
//! example).
//!
//! ## What a firmware author provides
//!
//! - **A global allocator** (`#[global_allocator]`, e.g. `embedded-alloc`), sized from the
//!   README's table.
//! - **A CSPRNG**: ring reads randomness itself. On `target_os = "none"` the core enables
//!   getrandom 0.2's `custom` feature and ring's `less-safe-getrandom-custom-or-rdrand`;
//!   register the hardware TRNG with `getrandom::register_custom_getrandom!(fill)`. Without
//!   it the firmware does not link.
//! - **Wall-clock time** for certificate validity, through a [`Clock`] (an RTC or SNTP).
//!   Without a clock, the deliberate policy is [`LastKnownTime`]: validate against a time
//!   known to have passed (the build time, or the newest trustworthy time seen), never
//!   skip validation.
//! - **CAS atomics** (`Arc`, the core's spin locks): RISC-V with the `A` extension, ARMv7-M
//!   and later. Targets without them (`riscv32imc`, ARMv6-M) need `portable-atomic`-style
//!   emulation and are not supported.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod async_stream;
pub mod clock;
pub mod error;
pub mod stream;
pub mod tls;

pub use async_stream::AsyncTlsStream;
pub use clock::{Clock, LastKnownTime};
pub use error::{Buffer, Error};
pub use onerecord_tls;
pub use onerecord_tls::{Event, PeerIdentity, Time};
pub use stream::TlsStream;
pub use tls::{MAX_PLAINTEXT, RECORD_OVERHEAD, Tls};

/// Smallest incoming buffer that can receive any record a generic peer may send with the
/// ONE Record suites: a 5-byte header and 2^14 + 256 bytes of TLS 1.3 ciphertext.
pub const MIN_INCOMING: usize = 5 + MAX_PLAINTEXT + 256;
