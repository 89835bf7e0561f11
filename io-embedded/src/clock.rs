//! Wall-clock time for certificate validity, and the policy for devices without a clock.

use onerecord_tls::Time;

/// A source of wall-clock time (milliseconds since the Unix epoch), read before every
/// processing step: certificate validity and the handshake deadline are checked against it.
pub trait Clock {
    /// The current time.
    fn now(&mut self) -> Time;
}

impl<F: FnMut() -> Time> Clock for F {
    fn now(&mut self) -> Time {
        self()
    }
}

/// The policy for a device **without a wall clock**: validate certificates against the
/// *last known good time*, a time the device knows has passed (its firmware build time, or
/// the newest time it has seen and stored, e.g. from a server's `Date` header or an earlier
/// NTP sync), never against "no time".
///
/// What this gives and what it does not, deliberately:
/// - certificates that expired *before* that time are refused, and so are certificates not
///   yet valid at it (a peer cannot present a certificate issued for the future);
/// - a certificate that expired *after* that time is accepted. The exposure is bounded by how
///   stale the stored time is: advance it whenever a trustworthy time is seen
///   ([`LastKnownTime::advance`]), ship firmware updates, and use short-lived CA-issued
///   certificates. Validation is never skipped.
///
/// Time never goes backwards: [`LastKnownTime::advance`] ignores older values, so a
/// malicious source cannot roll the device back into accepting expired certificates.
/// Handshake deadlines need elapsed time: add the milliseconds of a monotonic tick counter
/// (any free-running timer) with [`LastKnownTime::tick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastKnownTime {
    known: Time,
    elapsed_ms: u64,
}

impl LastKnownTime {
    /// Start from `known`, a time the device is sure has passed.
    pub const fn new(known: Time) -> Self {
        Self {
            known,
            elapsed_ms: 0,
        }
    }

    /// A trustworthy time was seen: move forward to it (older values are ignored).
    pub fn advance(&mut self, seen: Time) {
        let current = self.current();
        if seen > current {
            self.known = seen;
            self.elapsed_ms = 0;
        }
    }

    /// `ms` milliseconds passed (from a monotonic tick counter).
    pub fn tick(&mut self, ms: u64) {
        self.elapsed_ms = self.elapsed_ms.saturating_add(ms);
    }

    /// The time used for validation: the last known time plus the ticks since.
    pub fn current(&self) -> Time {
        Time::from_unix_millis(self.known.as_unix_millis().saturating_add(self.elapsed_ms))
    }
}

impl Clock for LastKnownTime {
    fn now(&mut self) -> Time {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_known_time_never_goes_backwards() {
        let mut t = LastKnownTime::new(Time::from_unix_secs(1_000));
        t.tick(2_000);
        assert_eq!(t.now(), Time::from_unix_secs(1_002));
        t.advance(Time::from_unix_secs(500));
        assert_eq!(t.now(), Time::from_unix_secs(1_002));
        t.advance(Time::from_unix_secs(5_000));
        assert_eq!(t.now(), Time::from_unix_secs(5_000));
    }
}
