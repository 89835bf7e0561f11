//! The loopback load generator behind the `onerecord-loadgen` binary: the client event
//! loop ([`driver`]), the plain application in front of an HTTP forward proxy ([`plain`]), the
//! HTTP response reader, `/proc` readings of the server process, the per-run report and the
//! comparison tables of `scripts/bench-peers.sh` (TLS servers, and the front door: reverse
//! proxies with mTLS) and of `scripts/bench-egress.sh` ([`egress`]).

pub mod driver;
pub mod egress;
pub mod frontdoor;
pub mod http;
pub mod pki;
pub mod plain;
pub mod procstat;
pub mod report;
pub mod table;
