//! CPU time and resident memory of processes, from Linux `/proc`.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (all threads of the process, including ones
//! that have exited), in clock ticks of 1/100 s: the kernel's `USER_HZ`, 100 on every
//! architecture Linux exports to user space here. Measurement windows of seconds keep the
//! rounding under 1%.

use std::fs;

/// Microseconds per clock tick (`USER_HZ` = 100).
const MICROS_PER_TICK: u64 = 10_000;

/// CPU time (user + system) of process `pid`, in microseconds.
pub fn cpu_micros(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_stat_cpu(&text)
        .map(|ticks| ticks * MICROS_PER_TICK)
        .ok_or_else(|| format!("{path}: unexpected format"))
}

/// Sum of [`cpu_micros`] over `pids`.
pub fn cpu_micros_sum(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|&p| cpu_micros(p)).sum()
}

/// `utime + stime` in ticks from the text of a `stat` file. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_status_rss(&text).ok_or_else(|| format!("{path}: no VmRSS line"))
}

/// Sum of [`rss_bytes`] over `pids`.
pub fn rss_bytes_sum(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0";
        assert_eq!(parse_stat_cpu(line), Some(300));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn rss_in_bytes() {
        let text = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_rss(text), Some(2048 * 1024));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_micros(me).is_ok());
    }
}
