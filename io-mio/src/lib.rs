//! mio adapter for `onerecord-tls`: TLS/mTLS server, outbound client and the
//! `onerecord-gateway` binary.
//!
//! Not written yet: this crate is a placeholder in the workspace and exports nothing. Until
//! it lands, drive [`onerecord_tls::Session`] from your own event loop (see its run-loop docs).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
