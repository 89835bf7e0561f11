//! The loopback load generator behind the `onerecord-loadgen` binary: the client event
//! loop ([`driver`]), the HTTP response reader, `/proc` readings of the server process, the
//! per-run report and the comparison tables of `scripts/bench-peers.sh` (TLS servers, and the
//! front door: reverse proxies with mTLS).

pub mod driver;
pub mod frontdoor;
pub mod http;
pub mod pki;
pub mod procstat;
pub mod report;
pub mod table;
