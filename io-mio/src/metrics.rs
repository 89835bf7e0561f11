//! Counters of a running server, as plain data.
//!
//! The library has no metrics dependency: an exporter reads [`Metrics::snapshot`] and encodes
//! it in the format it serves (the `onerecord-gateway` binary encodes the Prometheus text
//! formats with `prometheus-client`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onerecord_tls::{Stats, Time, TlsVersion};

/// Upper bounds (seconds) of the buckets of [`Counters::handshake_seconds`]; a last,
/// unbounded bucket follows.
pub const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Durations counted in the fixed buckets [`HANDSHAKE_BUCKETS`] (not cumulative).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `counts[i]`: observations above the bound `i - 1` and at most the bound `i`;
    /// `counts[HANDSHAKE_BUCKETS.len()]`: above the last bound.
    pub counts: [u64; HANDSHAKE_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl Histogram {
    /// Count one duration.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = HANDSHAKE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_nanos = self.sum_nanos.saturating_add(o.sum_nanos);
    }
}

/// Counters kept by one worker (summed over workers by [`Metrics::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Session counters (failures by reason, ...). Failures and handshakes are added when a
    /// connection finishes; the TLS byte counts (`tls_bytes_received`, `tls_bytes_sent`) as
    /// the bytes pass, so they include connections still open.
    pub sessions: Stats,
    /// Completed handshakes, `[TLS 1.2, TLS 1.3][full, resumed]`, counted at completion.
    pub handshakes: [[u64; 2]; 2],
    /// Time from accepting the TCP connection to the completed handshake, one observation
    /// per completed handshake (in client mode it includes connecting to the remote).
    pub handshake_seconds: Histogram,
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections closed at once because the server was at `max_connections` (not a
    /// handshake failure: no handshake was attempted).
    pub refused_capacity: u64,
    /// Verified peers the application refused (after a completed handshake).
    pub refused_by_service: u64,
    /// Plaintext HTTP requests answered with `400` (also counted as `plaintext` failures).
    pub plaintext_http: u64,
    /// Established connections closed for being idle.
    pub idle_timeouts: u64,
    /// Failures to reach or talk to the upstream / remote.
    pub upstream_errors: u64,
    /// New TCP connections to upstreams made for handlers (the pool had none idle).
    pub upstream_connects: u64,
    /// Upstream connections a handler got from the pool (no new TCP connection).
    pub upstream_reuses: u64,
    /// Idle pooled upstream connections now, per destination (`server_name:port` for TLS,
    /// `ip:port` for TCP): a gauge, refreshed by each worker at most once a second.
    pub upstream_idle: BTreeMap<String, u64>,
    /// `accept` failures other than "would block" (usually: out of file descriptors).
    pub accept_errors: u64,
    /// Connections finished (any way).
    pub closed: u64,
}

impl Counters {
    pub(crate) fn handshake(&mut self, version: TlsVersion, resumed: bool, took: Duration) {
        let v = match version {
            TlsVersion::Tls12 => 0,
            TlsVersion::Tls13 => 1,
        };
        self.handshakes[v][usize::from(resumed)] += 1;
        self.handshake_seconds.observe(took);
    }

    /// Add `o` to these counters.
    pub(crate) fn add(&mut self, o: &Counters) {
        self.sessions.add(&o.sessions);
        for v in 0..2 {
            for r in 0..2 {
                self.handshakes[v][r] += o.handshakes[v][r];
            }
        }
        self.handshake_seconds.add(&o.handshake_seconds);
        self.accepted += o.accepted;
        self.refused_capacity += o.refused_capacity;
        self.refused_by_service += o.refused_by_service;
        self.plaintext_http += o.plaintext_http;
        self.idle_timeouts += o.idle_timeouts;
        self.upstream_errors += o.upstream_errors;
        self.upstream_connects += o.upstream_connects;
        self.upstream_reuses += o.upstream_reuses;
        for (dest, n) in &o.upstream_idle {
            *self.upstream_idle.entry(dest.clone()).or_default() += n;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(11));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[HANDSHAKE_BUCKETS.len()], 1);
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 11.001001).abs() < 1e-9);
    }
}
