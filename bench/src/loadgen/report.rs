//! One run's results: derived rates and costs, as a human-readable block or one JSON line.

use serde_json::{Value, json};

use super::driver::{Config, Mode, Outcome};

/// Everything reported for one run.
pub struct Report {
    /// Free-form label (`--label`), e.g. `gateway/mtls`.
    pub label: String,
    /// The run's settings.
    pub mode: Mode,
    /// Client certificate presented.
    pub mtls: bool,
    /// Connections driven at once.
    pub concurrency: usize,
    /// What was measured.
    pub outcome: Outcome,
    /// `idle`: connections asked for.
    pub idle_target: usize,
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// CPU on the client's side of the network: this process plus the proxy's (when measured).
fn client_side(o: &Outcome) -> Option<u64> {
    Some(o.client_cpu_us? + o.proxy_cpu_us.unwrap_or(0))
}

fn per(total: Option<u64>, n: u64) -> Option<f64> {
    let t = total?;
    (n > 0).then(|| t as f64 / n as f64)
}

impl Report {
    /// A report of `outcome` for the run `cfg`.
    pub fn new(label: String, cfg: &Config, mtls: bool, mut outcome: Outcome) -> Self {
        outcome.latencies_us.sort_unstable();
        Self {
            label,
            mode: cfg.mode,
            mtls,
            concurrency: cfg.concurrency,
            outcome,
            idle_target: cfg.idle,
        }
    }

    /// Failures in every phase.
    pub fn failures(&self) -> u64 {
        self.outcome.failures.values().sum()
    }

    fn secs(&self) -> f64 {
        self.outcome.window.as_secs_f64().max(1e-9)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let o = &self.outcome;
        let secs = self.secs();
        let lat = &o.latencies_us;
        let idle_bytes = match (o.server_rss_end, o.server_rss_baseline) {
            (Some(end), Some(base)) if o.idle_open > 0 => {
                Some((end as f64 - base as f64) / o.idle_open as f64)
            }
            _ => None,
        };
        let per_conn_unit = if matches!(self.mode, Mode::Keepalive | Mode::Proxy) {
            None
        } else {
            per(o.server_cpu_us, o.connections)
        };
        json!({
            "label": self.label,
            "mode": self.mode.name(),
            "auth": match (self.mode, self.mtls) {
                (Mode::Proxy, _) => "plain",
                (_, true) => "mtls",
                (_, false) => "tls",
            },
            "version": o.negotiated.as_ref().map(|n| n.0.clone()),
            "suite": o.negotiated.as_ref().map(|n| n.1.clone()),
            "concurrency": self.concurrency,
            "window_s": secs,
            "connections": o.connections,
            "handshakes_full": o.handshakes_full,
            "handshakes_resumed": o.handshakes_resumed,
            "handshakes_full_per_s": o.handshakes_full as f64 / secs,
            "handshakes_resumed_per_s": o.handshakes_resumed as f64 / secs,
            "requests": o.requests,
            "requests_per_s": o.requests as f64 / secs,
            "latency_p50_us": percentile(lat, 50.0),
            "latency_p99_us": percentile(lat, 99.0),
            "latency_max_us": lat.last(),
            "failures": self.failures(),
            "failure_reasons": o.failures,
            "server_cpu_us": o.server_cpu_us,
            "server_cpu_us_per_conn": per_conn_unit,
            "server_cpu_us_per_req": per(o.server_cpu_us, o.requests),
            "client_cpu_us": o.client_cpu_us,
            "client_cpu_us_per_req": per(o.client_cpu_us, o.requests),
            "proxy_cpu_us": o.proxy_cpu_us,
            "proxy_cpu_us_per_req": per(o.proxy_cpu_us, o.requests),
            "client_side_cpu_us_per_req": per(client_side(o), o.requests),
            "server_rss_end": o.server_rss_end,
            "server_rss_baseline": o.server_rss_baseline,
            "server_rss_opened": o.server_rss_opened,
            "idle_target": (self.mode == Mode::Idle).then_some(self.idle_target),
            "idle_open": (self.mode == Mode::Idle).then_some(o.idle_open),
            "bytes_per_idle_conn": idle_bytes,
        })
    }

    /// The report as aligned `name: value` lines.
    pub fn human(&self) -> String {
        let j = self.to_json();
        let mut s = String::new();
        let f = |k: &str| match &j[k] {
            Value::Null => "-".to_string(),
            Value::Number(n) => match n.as_f64() {
                Some(x) if n.is_f64() => format!("{x:.1}"),
                _ => n.to_string(),
            },
            Value::String(t) => t.clone(),
            v => v.to_string(),
        };
        let mut line = |name: &str, value: String| {
            s.push_str(&format!("{name:<34} {value}\n"));
        };
        line(
            "run",
            format!(
                "{} {} {} (concurrency {}, {}){}",
                f("mode"),
                f("auth"),
                f("version"),
                self.concurrency,
                f("suite"),
                if self.label.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", self.label)
                }
            ),
        );
        line("window (s)", format!("{:.2}", self.secs()));
        line("connections", f("connections"));
        line(
            "handshakes full / resumed",
            format!("{} / {}", f("handshakes_full"), f("handshakes_resumed")),
        );
        line(
            "handshakes/s full / resumed",
            format!(
                "{} / {}",
                f("handshakes_full_per_s"),
                f("handshakes_resumed_per_s")
            ),
        );
        line("requests", f("requests"));
        line("requests/s", f("requests_per_s"));
        line(
            "latency p50 / p99 / max (µs)",
            format!(
                "{} / {} / {}",
                f("latency_p50_us"),
                f("latency_p99_us"),
                f("latency_max_us")
            ),
        );
        line("failures", f("failures"));
        for (why, n) in &self.outcome.failures {
            line("  failure", format!("{n} x {why}"));
        }
        line("server CPU (µs)", f("server_cpu_us"));
        line(
            "server CPU per connection (µs)",
            f("server_cpu_us_per_conn"),
        );
        line("server CPU per request (µs)", f("server_cpu_us_per_req"));
        line("client CPU per request (µs)", f("client_cpu_us_per_req"));
        if self.mode == Mode::Proxy {
            line("proxy CPU per request (µs)", f("proxy_cpu_us_per_req"));
            line(
                "client+proxy CPU per request (µs)",
                f("client_side_cpu_us_per_req"),
            );
        }
        line("server RSS at end (bytes)", f("server_rss_end"));
        if self.mode == Mode::Idle {
            line("server RSS baseline (bytes)", f("server_rss_baseline"));
            line("server RSS when opened (bytes)", f("server_rss_opened"));
            line(
                "idle connections open / target",
                format!("{} / {}", f("idle_open"), f("idle_target")),
            );
            line("server bytes per idle connection", f("bytes_per_idle_conn"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
