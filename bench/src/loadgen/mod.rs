//! The loopback load generator behind the `onerecord-loadgen` binary: the client event
//! loop ([`driver`]), the HTTP response reader, `/proc` readings of the server process, the
//! per-run report and the comparison table of `scripts/bench-peers.sh`.

pub mod driver;
pub mod http;
pub mod pki;
pub mod procstat;
pub mod report;
pub mod table;
