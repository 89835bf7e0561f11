//! Time as an input.
//!
//! The core never reads a clock. Every time-dependent call takes a [`Now`]: the wall-clock
//! [`Time`] (milliseconds since the Unix epoch), for certificate and CRL validity and ticket
//! rotation, and a monotonic [`Instant`] (milliseconds since an origin the caller chooses),
//! for deadlines such as the handshake timeout. A `Time` alone converts into a `Now` whose
//! instant is the wall clock: tests with a virtual clock and devices with only an RTC pass a
//! `Time`; a server passes both so that a wall-clock step does not move its deadlines.

use core::fmt;
use core::time::Duration;

use pki_types::UnixTime;

/// A point in wall-clock time, in milliseconds since the Unix epoch.
///
/// The caller reads its clock (`Time::now()` with `std`, an RTC on a device) and passes the
/// value in, usually inside a [`Now`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Self = Self(0);

    /// A time `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// A time `secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// The current system time.
    #[cfg(feature = "std")]
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::from(since)
    }

    /// This time plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The same instant as rustls/webpki see it (whole seconds).
    pub fn to_unix_time(self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.as_unix_secs()))
    }
}

/// A point in monotonic time, in milliseconds since an origin the caller chooses (boot, the
/// start of the process), as smoltcp's `Instant`. Only differences between instants mean
/// something; the handshake deadline and [`crate::Session::poll_timeout`] are instants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This instant plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The current instant of the process-wide monotonic clock (its origin is the first
    /// call of [`Instant::now`], [`Instant::from_std`] or [`Instant::to_std`]).
    #[cfg(feature = "std")]
    pub fn now() -> Self {
        Self::from_std(std::time::Instant::now())
    }

    /// The instant of a `std::time::Instant`, on the process-wide origin (an instant before
    /// the origin saturates to it).
    #[cfg(feature = "std")]
    pub fn from_std(at: std::time::Instant) -> Self {
        Self(duration_millis(at.saturating_duration_since(origin())))
    }

    /// This instant as a `std::time::Instant`, on the process-wide origin.
    #[cfg(feature = "std")]
    pub fn to_std(self) -> std::time::Instant {
        origin() + Duration::from_millis(self.0)
    }
}

#[cfg(feature = "std")]
fn origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// The time inputs of a call: wall-clock [`Time`] for validity checks, monotonic
/// [`Instant`] for deadlines. Drive one session with one kind of `Now` throughout: built
/// from both clocks, or from a [`Time`] alone (then the wall clock is the deadline clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock time: certificate and CRL validity, ticket key rotation.
    pub time: Time,
    /// Monotonic time: the handshake deadline.
    pub instant: Instant,
}

impl Now {
    /// Both clocks, as read by the caller.
    pub const fn new(time: Time, instant: Instant) -> Self {
        Self { time, instant }
    }

    /// The system's wall clock and the process-wide monotonic clock.
    #[cfg(feature = "std")]
    pub fn system() -> Self {
        Self::new(Time::now(), Instant::now())
    }
}

impl From<Time> for Now {
    /// The wall clock for both purposes (its milliseconds since the Unix epoch are the
    /// instant): for virtual clocks in tests and devices with only a real-time clock.
    fn from(time: Time) -> Self {
        Self::new(time, Instant::from_millis(time.as_unix_millis()))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<Duration> for Time {
    /// `d` after the Unix epoch.
    fn from(d: Duration) -> Self {
        Self(duration_millis(d))
    }
}

impl From<UnixTime> for Time {
    fn from(t: UnixTime) -> Self {
        Self::from_unix_secs(t.as_secs())
    }
}

impl fmt::Display for Time {
    /// RFC 3339 in UTC, as certificates and logs give dates: `2024-11-24T00:00:00Z`, with
    /// milliseconds when there are any (`2024-11-24T00:00:00.250Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let millis = self.0 % 1000;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )?;
        if millis != 0 {
            write!(f, ".{millis:03}")?;
        }
        f.write_str("Z")
    }
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_700_000_000_250, "2023-11-14T22:13:20.250Z"),
            (1_735_689_599_000, "2024-12-31T23:59:59Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00Z"),
        ];
        for (millis, text) in cases {
            assert_eq!(alloc::format!("{}", Time::from_unix_millis(millis)), text);
        }
    }

    #[test]
    fn seconds_and_millis_round_trip() {
        let t = Time::from_unix_millis(1_700_000_000_250);
        assert_eq!(t.as_unix_secs(), 1_700_000_000);
        assert_eq!(t.to_unix_time().as_secs(), 1_700_000_000);
        assert_eq!(
            t.saturating_add(Duration::from_millis(750)),
            Time::from_unix_secs(1_700_000_001)
        );
        assert_eq!(
            Time::from_unix_secs(5).saturating_duration_since(Time::from_unix_secs(7)),
            Duration::ZERO
        );
    }
}
