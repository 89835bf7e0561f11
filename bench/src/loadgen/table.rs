//! `--table FILE`: one comparison table from a file of JSON lines, each a load generator
//! report (`--json --label PEER`) or an `openssl s_time` result written by
//! `scripts/bench-peers.sh` (`"kind": "s_time"`). Columns are peers in order of first
//! appearance; the first one is the reference (the gateway), and every other cell carries the
//! ratio reference ÷ peer.

use std::collections::HashMap;

use serde_json::Value;

struct Rows<'a> {
    peers: Vec<String>,
    runs: HashMap<(String, String, String, String), &'a Value>,
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or("").to_string()
}

impl<'a> Rows<'a> {
    fn new(lines: &'a [Value]) -> Self {
        let mut peers: Vec<String> = Vec::new();
        let mut runs = HashMap::new();
        for v in lines {
            let peer = s(v, "label");
            if !peers.contains(&peer) {
                peers.push(peer.clone());
            }
            let kind = v["kind"].as_str().unwrap_or("loadgen").to_string();
            runs.insert((peer, kind, s(v, "auth"), s(v, "mode")), v);
        }
        Self { peers, runs }
    }

    fn get(&self, peer: &str, kind: &str, auth: &str, mode: &str) -> Option<&'a Value> {
        self.runs
            .get(&(peer.into(), kind.into(), auth.into(), mode.into()))
            .copied()
    }
}

/// A metric of one run: where to find it and how to print it.
struct Metric {
    kind: &'static str,
    mode: &'static str,
    name: &'static str,
    value: fn(&Value) -> Option<f64>,
    text: fn(&Value) -> Option<String>,
    ratio: bool,
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v[k].as_f64()
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn latency(v: &Value) -> Option<String> {
    let p50 = num(v, "latency_p50_us")? / 1000.0;
    let p99 = num(v, "latency_p99_us")? / 1000.0;
    Some(format!("{p50:.2}/{p99:.2}"))
}

fn no_text(_: &Value) -> Option<String> {
    None
}

fn metrics() -> Vec<Metric> {
    let m = |kind, mode, name, value: fn(&Value) -> Option<f64>| Metric {
        kind,
        mode,
        name,
        value,
        text: no_text,
        ratio: true,
    };
    let lat = |mode, name| Metric {
        kind: "loadgen",
        mode,
        name,
        value: |_| None,
        text: latency,
        ratio: false,
    };
    vec![
        m("loadgen", "full", "full handshake: handshakes/s", |v| {
            num(v, "handshakes_full_per_s")
        }),
        m(
            "loadgen",
            "full",
            "full handshake: server CPU µs/conn",
            |v| num(v, "server_cpu_us_per_conn"),
        ),
        lat("full", "full handshake: latency p50/p99 ms"),
        m("loadgen", "resumed", "resumed: handshakes/s", |v| {
            num(v, "handshakes_resumed_per_s")
        }),
        m("loadgen", "resumed", "resumed: server CPU µs/conn", |v| {
            num(v, "server_cpu_us_per_conn")
        }),
        lat("resumed", "resumed: latency p50/p99 ms"),
        m("loadgen", "keepalive", "keep-alive: requests/s", |v| {
            num(v, "requests_per_s")
        }),
        m(
            "loadgen",
            "keepalive",
            "keep-alive: server CPU µs/req",
            |v| num(v, "server_cpu_us_per_req"),
        ),
        lat("keepalive", "keep-alive: latency p50/p99 ms"),
        m("loadgen", "idle", "idle: server bytes per idle conn", |v| {
            num(v, "bytes_per_idle_conn")
        }),
        m("loadgen", "idle", "idle: server RSS MiB with K idle", |v| {
            Some(num(v, "server_rss_end")? / 1048576.0)
        }),
        m("s_time", "new", "s_time new: connections/s", |v| {
            num(v, "conns_per_s")
        }),
        m("s_time", "new", "s_time new: server CPU µs/conn", |v| {
            num(v, "server_cpu_us_per_conn")
        }),
        m("s_time", "reuse", "s_time reuse: connections/s", |v| {
            num(v, "conns_per_s")
        }),
        m(
            "s_time",
            "reuse",
            "s_time reuse: server CPU µs/conn",
            |v| num(v, "server_cpu_us_per_conn"),
        ),
    ]
}

/// The table for `lines` (see the module doc).
pub fn render(lines: &[Value]) -> String {
    let rows = Rows::new(lines);
    let Some(reference) = rows.peers.first().cloned() else {
        return "no results\n".into();
    };
    let width = 17;
    let mut out = String::new();
    out.push_str(&format!("{:<44}", "metric"));
    for p in &rows.peers {
        out.push_str(&format!("{p:>width$}"));
    }
    out.push('\n');
    for auth in ["tls", "mtls"] {
        for m in metrics() {
            let mut cells = Vec::new();
            let mut any = false;
            let base = rows
                .get(&reference, m.kind, auth, m.mode)
                .and_then(|v| (m.value)(v));
            for p in &rows.peers {
                let run = rows.get(p, m.kind, auth, m.mode);
                let cell = match run {
                    None => "n/a".to_string(),
                    Some(v) => {
                        if let Some(t) = (m.text)(v) {
                            any = true;
                            t
                        } else if let Some(x) = (m.value)(v) {
                            any = true;
                            match base {
                                Some(b) if m.ratio && p != &reference && x != 0.0 => {
                                    format!("{} ({:.2})", fmt_num(x), b / x)
                                }
                                _ => fmt_num(x),
                            }
                        } else {
                            "-".to_string()
                        }
                    }
                };
                cells.push(cell);
            }
            if !any {
                continue;
            }
            out.push_str(&format!("{:<44}", format!("{auth} {}", m.name)));
            for c in cells {
                out.push_str(&format!("{c:>width$}"));
            }
            out.push('\n');
        }
        // Reuse gain: a request on a kept-alive connection against one that opens a new full
        // handshake, on the same server.
        let mut cells = Vec::new();
        let mut any = false;
        for p in &rows.peers {
            let full = rows
                .get(p, "loadgen", auth, "full")
                .and_then(|v| num(v, "server_cpu_us_per_conn"));
            let ka = rows
                .get(p, "loadgen", auth, "keepalive")
                .and_then(|v| num(v, "server_cpu_us_per_req"));
            cells.push(match (full, ka) {
                (Some(f), Some(k)) if k > 0.0 => {
                    any = true;
                    format!("{:.0}x", f / k)
                }
                _ => "n/a".into(),
            });
        }
        if any {
            out.push_str(&format!(
                "{:<44}",
                format!("{auth} reuse gain: CPU full conn / kept-alive req")
            ));
            for c in cells {
                out.push_str(&format!("{c:>width$}"));
            }
            out.push('\n');
        }
        let mut cells = Vec::new();
        let mut any = false;
        for p in &rows.peers {
            let n: u64 = lines
                .iter()
                .filter(|v| s(v, "label") == *p && s(v, "auth") == auth)
                .filter_map(|v| v["failures"].as_u64())
                .sum();
            any |= lines
                .iter()
                .any(|v| s(v, "label") == *p && s(v, "auth") == auth);
            cells.push(n.to_string());
        }
        if any {
            out.push_str(&format!("{:<44}", format!("{auth} failures (all runs)")));
            for c in cells {
                out.push_str(&format!("{c:>width$}"));
            }
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "(x) = {reference} ÷ peer: below 1 the {reference} uses less CPU/memory, above 1 it has the higher rate.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratio_is_reference_over_peer() {
        let lines = vec![
            json!({"label": "gateway", "auth": "tls", "mode": "full",
                   "handshakes_full_per_s": 2000.0, "server_cpu_us_per_conn": 150.0,
                   "latency_p50_us": 1000, "latency_p99_us": 3000, "failures": 0}),
            json!({"label": "nginx", "auth": "tls", "mode": "full",
                   "handshakes_full_per_s": 1000.0, "server_cpu_us_per_conn": 600.0,
                   "latency_p50_us": 2000, "latency_p99_us": 5000, "failures": 2}),
        ];
        let t = render(&lines);
        assert!(t.contains("600 (0.25)"), "{t}");
        assert!(t.contains("1000 (2.00)"), "{t}");
        assert!(t.contains("1.00/3.00"), "{t}");
        assert!(!t.contains("mtls full"), "{t}");
        let fail_row = t.lines().find(|l| l.contains("failures")).unwrap();
        assert!(fail_row.trim_end().ends_with('2'), "{t}");
    }
}
