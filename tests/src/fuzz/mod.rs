//! What the fuzz targets run, as plain functions, so that the fuzz crate (`fuzz/`, cargo-fuzz
//! on nightly) and the regression tests (`tests/tests/fuzz_regressions.rs`) run the same code.
//!
//! [`pki`] is a deterministic test PKI (Ed25519 keys from fixed seeds, every field fixed)
//! shared by the targets and the seed generator, [`drive`] the checked session and the stream
//! driver, [`pair`] the structure-aware client/server exchange with in-flight mutations,
//! [`targets`] the target bodies. The target of the embedded adapter stays in the fuzz crate
//! (this kit does not depend on the adapters: their tests depend on it).

pub mod drive;
pub mod pair;
pub mod pki;
pub mod targets;
