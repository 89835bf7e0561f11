//! The test kit of onerecord-tls (internal, never published): the one home of the fixtures
//! that the core's tests, the adapters' tests, the benchmarks and the fuzz targets share.
//!
//! - A test PKI generated with rcgen, never checked-in key material: [`Ca`] issues leaves as
//!   a [`LeafSpec`] says (at the virtual time [`now`], or around the wall clock for real
//!   peers) and signs CRLs; [`KeyKind`] names the key algorithms (RSA keys come from the
//!   `openssl` command, one per process).
//! - [`Pair`], an in-memory client/server pair with virtual time that can split the byte
//!   stream at any position.
//! - [`fuzz`]: the deterministic, seeded PKI and policies of the fuzz targets, the checked
//!   session and stream driver, the structure-aware exchange that mutates records in flight,
//!   and the body of every fuzz target, so that a crash found by libFuzzer replays as a
//!   normal test (`tests/tests/fuzz_regressions.rs`).

mod pair;
mod pki;

pub mod fuzz;

pub use pair::{Ev, Pair};
pub use pki::{Ca, DAY, Fixture, Identity, KeyKind, LeafSpec, NOW_SECS, now, wall_secs};
