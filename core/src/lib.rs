//! # onerecord-tls
//!
//! A sans-I/O TLS handshake engine for the ONE Record air-cargo data network, over rustls'
//! *unbuffered* connection API (ring provider). It enforces the ONE Record TLS policy: TLS
//! 1.2 minimum, strong suites only, a trusted CA list, mTLS when asked, certificate expiry and
//! revocation (CRLs), identity allow-lists, session resumption, and the verified peer identity
//! handed to the application before any application byte.
//!
//! The core never touches a socket, a thread, a clock or a file: bytes in, bytes out, events
//! up, time passed in. It is `#![no_std]` + `alloc`; the default `std` feature adds file
//! loading and `Time::now()`.
//!
//! ```
//! use onerecord_tls::{ClientPolicy, Event, ServerPolicy, Session, Time, TrustStore};
//! # let ca = rcgen::CertifiedIssuer::self_signed(rcgen::CertificateParams::new(Vec::<String>::new())?, rcgen::KeyPair::generate()?)?;
//! # let leaf_key = rcgen::KeyPair::generate()?;
//! # let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&leaf_key, &ca)?;
//! # let (ca_pem, cert_chain) = (ca.pem().into_bytes(), vec![leaf.der().clone()]);
//! # let key = onerecord_tls::PrivateKey::Pkcs8(leaf_key.serialize_der().into());
//! # let now = Time::now();
//!
//! let server_policy = ServerPolicy::builder(cert_chain, key).build(now)?.into_set();
//! let client_policy = ClientPolicy::builder(TrustStore::from_pem(&ca_pem)?).build(now)?;
//! let mut server = Session::server(&server_policy, now);
//! let mut client = Session::client(&client_policy, "localhost", now)?;
//!
//! // The caller's event loop: move bytes between the two (a socket in real life).
//! for _ in 0..10 {
//!     client.process(now, |_| {})?;
//!     let n = server.receive(client.transmit());
//!     client.transmitted(n);
//!     server.process(now, |event| {
//!         if let Event::Established(peer) = event {
//!             assert_eq!(peer.server_name.as_deref(), Some("localhost"));
//!         }
//!     })?;
//!     let n = client.receive(server.transmit());
//!     server.transmitted(n);
//! }
//! assert!(client.is_established() && server.is_established());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layers
//!
//! Imports flow one way, from each line to the lines above it:
//!
//! 1. plain data and parsers: `vocabulary` (versions, suites, groups), `time`, `buffer`,
//!    `cert` ([`CertInfo`]), `error`, `identity`, `event`, [`hello`], `stats`;
//! 2. what a policy says: `trust` ([`TrustStore`], [`CrlInfo`]), `resumption`, `spec` (the
//!    plain data the builders collect); [`pki`] (loaders);
//! 3. `backend`: everything that names a rustls type — compiles a spec into a rustls config
//!    (`ServerTls`/`ClientTls`), the verifiers, the root store, the client session store,
//!    the error → alert mapping;
//! 4. `policy`: the builders; `build` checks a spec and has the backend compile it;
//! 5. `backend::engine` (drives one rustls connection of a policy) and `session`
//!    ([`Session`], the public state machine over it).
//!
//! Every type is at the crate root, and only there. Two public modules hold functions:
//! [`pki`] (loading certificates, keys, CA bundles and CRLs) and [`hello`] (ClientHello
//! admission before any crypto). The run loop is documented on [`Session`].

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod backend;
mod buffer;
mod cert;
mod error;
mod event;
pub mod hello;
mod identity;
pub mod pki;
mod policy;
mod resumption;
mod session;
mod spec;
mod stats;
mod sync;
mod time;
mod trust;
mod vocabulary;

pub use buffer::{
    DEFAULT_MAX_INCOMING, DEFAULT_MAX_OUTGOING, Fixed, Growable, MAX_HANDSHAKE_MESSAGE, MAX_RECORD,
    Storage,
};
pub use cert::{CertInfo, Sha256};
pub use error::{
    Alert, Buffer, ConfigError, Error, Failure, Reason, SendError, TlsDetail, Warning,
};
pub use event::Event;
pub use hello::types::{Admission, ClientHelloInfo};
pub use identity::{HandshakeKind, IdentityRule, IdentityRules, PeerIdentity};
pub use policy::{
    ClientPolicy, ClientPolicyBuilder, ServerPolicies, ServerPolicy, ServerPolicyBuilder,
};
pub use resumption::{ClientSessionCache, ServerSessionCache, TICKET_KEY_LEN, TicketKeys};
pub use session::Session;
pub use spec::{
    ClientAuth, DEFAULT_CRL_WARNING, DEFAULT_EXPIRY_WARNING, DEFAULT_HANDSHAKE_TIMEOUT, Revocation,
    Tls12Resumption, UnknownStatus,
};
pub use stats::Stats;
pub use time::{Instant, Now, Time};
pub use trust::{Certificate, Crl, CrlInfo, PrivateKey, TrustStore};
pub use vocabulary::{CipherSuite, Group, TlsVersion, Versions};
