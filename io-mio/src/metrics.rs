//! Counters of a running server, as plain data, and their Prometheus text rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use onerecord_tls::{Failure, Stats, Time, TlsVersion};

/// Counters kept by one worker (summed over workers by [`Metrics::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Session counters of finished connections (failures by reason, bytes).
    pub sessions: Stats,
    /// Completed handshakes, `[TLS 1.2, TLS 1.3][full, resumed]`, counted at completion.
    pub handshakes: [[u64; 2]; 2],
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections closed at once because the server was at `max_connections`.
    pub refused_capacity: u64,
    /// Verified peers the application refused.
    pub refused_by_service: u64,
    /// Plaintext HTTP requests answered with `400` (also counted as `plaintext` failures).
    pub plaintext_http: u64,
    /// Established connections closed for being idle.
    pub idle_timeouts: u64,
    /// Failures to reach or talk to the upstream / remote.
    pub upstream_errors: u64,
    /// `accept` failures other than "would block" (usually: out of file descriptors).
    pub accept_errors: u64,
    /// Connections finished (any way).
    pub closed: u64,
}

impl Counters {
    pub(crate) fn handshake(&mut self, version: TlsVersion, resumed: bool) {
        let v = match version {
            TlsVersion::Tls12 => 0,
            TlsVersion::Tls13 => 1,
        };
        self.handshakes[v][usize::from(resumed)] += 1;
    }

    fn add(&mut self, o: &Counters) {
        self.sessions.add(&o.sessions);
        for v in 0..2 {
            for r in 0..2 {
                self.handshakes[v][r] += o.handshakes[v][r];
            }
        }
        self.accepted += o.accepted;
        self.refused_capacity += o.refused_capacity;
        self.refused_by_service += o.refused_by_service;
        self.plaintext_http += o.plaintext_http;
        self.idle_timeouts += o.idle_timeouts;
        self.upstream_errors += o.upstream_errors;
        self.accept_errors += o.accept_errors;
        self.closed += o.closed;
    }
}

/// A point-in-time view of a server's counters.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sum over workers.
    pub counters: Counters,
    /// Connections open now.
    pub active: usize,
    /// `notAfter` of each own certificate in use, with the listener address it serves.
    pub certificates: Vec<(String, Time)>,
}

/// Shared handle to a server's counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub(crate) workers: Arc<Mutex<Vec<Arc<Mutex<Counters>>>>>,
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) certificates: Arc<Mutex<Vec<(String, Time)>>>,
}

impl Metrics {
    pub(crate) fn worker(&self) -> Arc<Mutex<Counters>> {
        let c = Arc::new(Mutex::new(Counters::default()));
        if let Ok(mut w) = self.workers.lock() {
            w.push(c.clone());
        }
        c
    }

    /// Sum the workers' counters now.
    pub fn snapshot(&self) -> Snapshot {
        let mut counters = Counters::default();
        if let Ok(w) = self.workers.lock() {
            for c in w.iter() {
                if let Ok(c) = c.lock() {
                    counters.add(&c);
                }
            }
        }
        Snapshot {
            counters,
            active: self.active.load(Ordering::Relaxed),
            certificates: self
                .certificates
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
        }
    }

    /// The Prometheus text exposition of [`Metrics::snapshot`] at wall time `now`.
    pub fn render_prometheus(&self, now: Time) -> String {
        let s = self.snapshot();
        let c = &s.counters;
        let mut o = String::with_capacity(4096);
        let _ = writeln!(
            o,
            "# HELP onerecord_handshakes_total Completed TLS handshakes.\n\
             # TYPE onerecord_handshakes_total counter"
        );
        for (vi, v) in ["TLSv1.2", "TLSv1.3"].iter().enumerate() {
            for (ri, kind) in ["full", "resumed"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "onerecord_handshakes_total{{version=\"{v}\",kind=\"{kind}\"}} {}",
                    c.handshakes[vi][ri]
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP onerecord_handshake_failures_total Refused or failed handshakes by reason.\n\
             # TYPE onerecord_handshake_failures_total counter"
        );
        for f in Failure::ALL {
            let _ = writeln!(
                o,
                "onerecord_handshake_failures_total{{reason=\"{}\"}} {}",
                f.label(),
                c.sessions.failures_of(f)
            );
        }
        let _ = writeln!(
            o,
            "onerecord_handshake_failures_total{{reason=\"over_capacity\"}} {}",
            c.refused_capacity
        );
        let _ = writeln!(
            o,
            "onerecord_handshake_failures_total{{reason=\"refused_by_application\"}} {}",
            c.refused_by_service
        );
        let gauge_or_counter = [
            (
                "onerecord_connections_active",
                "gauge",
                "Connections open now.",
                s.active as u64,
            ),
            (
                "onerecord_connections_accepted_total",
                "counter",
                "TCP connections accepted.",
                c.accepted,
            ),
            (
                "onerecord_connections_closed_total",
                "counter",
                "Connections finished.",
                c.closed,
            ),
            (
                "onerecord_plaintext_http_total",
                "counter",
                "Plaintext HTTP requests on the TLS port, answered with 400.",
                c.plaintext_http,
            ),
            (
                "onerecord_idle_timeouts_total",
                "counter",
                "Connections closed for being idle.",
                c.idle_timeouts,
            ),
            (
                "onerecord_upstream_errors_total",
                "counter",
                "Failures to reach or talk to the upstream.",
                c.upstream_errors,
            ),
            (
                "onerecord_accept_errors_total",
                "counter",
                "Failed accepts (usually out of file descriptors; raise the limit or lower --max-connections).",
                c.accept_errors,
            ),
        ];
        for (name, kind, help, v) in gauge_or_counter {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP onerecord_bytes_total TLS bytes of finished connections.\n\
             # TYPE onerecord_bytes_total counter\n\
             onerecord_bytes_total{{direction=\"received\"}} {}\n\
             onerecord_bytes_total{{direction=\"sent\"}} {}",
            c.sessions.tls_bytes_received, c.sessions.tls_bytes_sent
        );
        let _ = writeln!(
            o,
            "# HELP onerecord_certificate_expiry_seconds Seconds until the own certificate expires.\n\
             # TYPE onerecord_certificate_expiry_seconds gauge"
        );
        for (listener, not_after) in &s.certificates {
            let secs = not_after.as_unix_secs() as i64 - now.as_unix_secs() as i64;
            let _ = writeln!(
                o,
                "onerecord_certificate_expiry_seconds{{listener=\"{listener}\"}} {secs}"
            );
        }
        o
    }
}
