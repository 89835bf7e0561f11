//! The audit trail of connections: the access line when a connection is established, the
//! close line when it ends (`onerecord::access`), the refusal line of a handshake that failed
//! (`onerecord::refused`) and the WARN of a failed connection to a partner
//! (`onerecord::partner`). The formats are an interface: operators parse them.

use std::net::SocketAddr;
use std::time::Duration;

use log::{info, warn};
use onerecord_tls::{CertInfo, Error, PeerIdentity, Stats};

use crate::config::Mode;

/// Why an accepted connection ended, for its close line in `onerecord::access`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer sent `close_notify` first.
    PeerCloseNotify,
    /// The transport ended without the peer's `close_notify`.
    PeerEof,
    /// Our side finished first: the upstream, the local client or the application ended
    /// the stream, and `close_notify` went out.
    Closed,
    /// No traffic for the idle timeout.
    IdleTimeout,
    /// Graceful shutdown closed it.
    Drain,
    /// Graceful shutdown: still open at the drain timeout, cut.
    DrainTimeout,
    /// A TLS or I/O error ended it (the detail is logged as `error`).
    Error(String),
}

impl End {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::PeerCloseNotify => "peer_close_notify",
            Self::PeerEof => "peer_eof",
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Drain => "drain",
            Self::DrainTimeout => "drain_timeout",
            Self::Error(_) => "error",
        }
    }
}

/// `"-"` for a field with no value in the audit lines.
fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// The access line of an established connection (`onerecord::access`, INFO): who connected
/// and how. Server side: the client's address and certificate; client mode: the partner's.
pub(crate) fn log_access(mode: &Mode, remote: SocketAddr, local: SocketAddr, id: &PeerIdentity) {
    let leaf = id.leaf.as_ref();
    let cn = or_dash(id.common_name());
    let uri = or_dash(id.uris().first().map(String::as_str));
    let serial = leaf.map_or_else(|| "-".to_string(), CertInfo::serial_hex);
    let spki = leaf.map_or_else(|| "-".to_string(), |l| l.spki_sha256.to_string());
    let sni = or_dash(id.server_name.as_deref());
    match mode {
        Mode::Terminate { .. } | Mode::Plain { .. } => info!(
            target: "onerecord::access",
            remote:% = remote, local:% = local, sni = sni, version:% = id.version,
            resumed = id.resumed(), cn = cn, uri = uri, serial = serial.as_str(),
            spki = spki.as_str();
            "accepted"
        ),
        Mode::Originate { connect, .. } => info!(
            target: "onerecord::access",
            partner:% = connect, client:% = remote, sni = sni, version:% = id.version,
            resumed = id.resumed(), cn = cn, uri = uri, serial = serial.as_str(),
            spki = spki.as_str();
            "connected"
        ),
    }
}

/// The close line of a connection whose access line was logged: how long it lasted, the
/// application bytes each way and why it ended.
pub(crate) fn log_close(
    peer: SocketAddr,
    cn: Option<&str>,
    duration: Duration,
    stats: &Stats,
    end: &End,
) {
    let error = match end {
        End::Error(e) => e.as_str(),
        _ => "-",
    };
    info!(
        target: "onerecord::access",
        remote:% = peer, cn = or_dash(cn), duration_ms = duration.as_millis() as u64,
        bytes_in = stats.app_bytes_received, bytes_out = stats.app_bytes_sent,
        end = end.label(), error = error;
        "closed"
    );
}

/// The refusal line of a server connection that failed before its handshake finished
/// (`onerecord::refused`, INFO): the reason, the alert sent and the certificate the peer
/// presented (not trusted: it was refused), when there was one, as `peer_cn`, `peer_uri`,
/// `peer_serial`, `peer_issuer` (`-` when the peer presented none). Fields are key-value
/// pairs, so `--log-format json` carries each as a member of the line's object.
pub(crate) fn log_refused(remote: SocketAddr, sni: Option<&str>, err: &Error) {
    let alert = err
        .alert_sent()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    let cert = err.presented_certificate();
    let reason = reason_name(err);
    let serial = cert.map_or_else(|| "-".to_string(), CertInfo::serial_hex);
    info!(
        target: "onerecord::refused",
        remote:% = remote, sni = or_dash(sni), reason = reason.as_str(),
        failure = err.failure().label(), alert = alert.as_str(), error:% = err,
        peer_cn = or_dash(cert.and_then(|c| c.common_names.first()).map(String::as_str)),
        peer_uri = or_dash(cert.and_then(|c| c.uris.first()).map(String::as_str)),
        peer_serial = serial.as_str(),
        peer_issuer = or_dash(cert.map(|c| c.issuer.as_str()));
        "refused"
    );
}

/// The name of the error's reason (`CrlExpired`, `Revoked`, ...): its details are in the
/// `error` field's message.
fn reason_name(err: &Error) -> String {
    let debug = format!("{:?}", err.reason());
    let end = debug.find([' ', '{', '(']).unwrap_or(debug.len());
    debug[..end].to_string()
}

/// The refusal line of a connection closed before its handshake because the server was at
/// `max_connections` (`onerecord::refused`, INFO).
pub(crate) fn log_over_capacity(remote: SocketAddr, max_connections: usize) {
    info!(
        target: "onerecord::refused",
        remote:% = remote, reason = "over capacity", max_connections = max_connections;
        "refused"
    );
}

/// The refusal line of a verified peer the application's [`crate::Service`] refused
/// (`onerecord::refused`, INFO).
pub(crate) fn log_refused_by_service(remote: SocketAddr, listener: usize, cn: Option<&str>) {
    info!(
        target: "onerecord::refused",
        remote:% = remote, reason = "refused by application", cn = or_dash(cn),
        listener = listener;
        "refused"
    );
}

/// In client mode a failed TLS connection to the partner is the operator's business: the
/// partner refused our certificate, its certificate failed verification or its identity
/// check, or it broke the protocol. A WARN naming the partner (`onerecord::partner`).
pub(crate) fn partner_failed(
    partner: SocketAddr,
    client: SocketAddr,
    sni: Option<&str>,
    err: &Error,
) {
    let alert = err
        .alert_sent()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    warn!(
        target: "onerecord::partner",
        partner:% = partner, sni = or_dash(sni), client:% = client, reason:? = err.reason(),
        failure = err.failure().label(), alert_sent = alert.as_str(), error:% = err;
        "TLS connection to partner {partner} failed"
    );
}
