//! Buffer-driven `no_std` adapter for `onerecord-tls` on constrained devices.
//!
//! Not written yet: this crate is a placeholder in the workspace and exports nothing. The
//! core already supports caller-owned fixed buffers: see `onerecord_tls::buffer::Fixed` and
//! `Session::client_with_buffers`.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
