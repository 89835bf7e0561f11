//! Plain counters. The core has no metrics dependency: adapters read and export these.

use crate::error::Failure;
use crate::vocabulary::TlsVersion;

/// Counters for one session, or the sum over many ([`Stats::add`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Full handshakes completed.
    pub handshakes_full: u64,
    /// Resumed handshakes completed.
    pub handshakes_resumed: u64,
    /// Handshakes completed with TLS 1.3.
    pub tls13: u64,
    /// Handshakes completed with TLS 1.2.
    pub tls12: u64,
    /// Failures by category, indexed like [`Failure::ALL`].
    pub failures: [u64; Failure::ALL.len()],
    /// TLS bytes received from the peer.
    pub tls_bytes_received: u64,
    /// TLS bytes handed out for transmission.
    pub tls_bytes_sent: u64,
    /// Application bytes delivered to the caller.
    pub app_bytes_received: u64,
    /// Application bytes accepted for sending.
    pub app_bytes_sent: u64,
}

impl Stats {
    /// Failures of one category.
    pub fn failures_of(&self, f: Failure) -> u64 {
        self.failures[f.index()]
    }

    /// Total failures.
    pub fn failures_total(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Add `other` to these counters.
    pub fn add(&mut self, other: &Stats) {
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        self.tls13 += other.tls13;
        self.tls12 += other.tls12;
        for (a, b) in self.failures.iter_mut().zip(other.failures.iter()) {
            *a += b;
        }
        self.tls_bytes_received += other.tls_bytes_received;
        self.tls_bytes_sent += other.tls_bytes_sent;
        self.app_bytes_received += other.app_bytes_received;
        self.app_bytes_sent += other.app_bytes_sent;
    }

    pub(crate) fn record_failure(&mut self, f: Failure) {
        self.failures[f.index()] += 1;
    }

    pub(crate) fn record_handshake(&mut self, version: TlsVersion, resumed: bool) {
        if resumed {
            self.handshakes_resumed += 1;
        } else {
            self.handshakes_full += 1;
        }
        match version {
            TlsVersion::Tls13 => self.tls13 += 1,
            TlsVersion::Tls12 => self.tls12 += 1,
        }
    }
}
