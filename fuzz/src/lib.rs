//! Fuzz targets for onerecord-tls: every place peer bytes enter.
//!
//! The target bodies live in the test kit (`onerecord-tls-tests`, module `fuzz`) as plain
//! functions, so that a crash found by libFuzzer replays as a normal test
//! (`tests/tests/fuzz_regressions.rs`); they are re-exported here under the paths the targets
//! and the seed generator use. [`embedded`] is the target of the embedded adapter (here: the
//! kit does not depend on the adapters).

pub use onerecord_tls_tests::fuzz::{drive, pair, pki, targets};

pub mod embedded;
