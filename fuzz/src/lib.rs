//! Fuzz targets for onerecord-tls: every place peer bytes enter.
//!
//! The target bodies live here as plain functions ([`targets`]) so that a crash found by
//! libFuzzer replays as a normal test (`tests/tests/fuzz_regressions.rs` includes these
//! modules). [`pki`] is a deterministic test PKI shared by the targets and the seed
//! generator, [`drive`] the checked session and the stream driver, [`pair`] the
//! structure-aware client/server exchange with in-flight mutations, [`embedded`] the
//! target of the embedded adapter (not included by the regression tests, whose crate does
//! not depend on it).

pub mod drive;
pub mod embedded;
pub mod pair;
pub mod pki;
pub mod targets;
