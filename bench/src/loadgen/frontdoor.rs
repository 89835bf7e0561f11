//! `--frontdoor-table FILE`: the front-door table of `scripts/bench-peers.sh`. Each JSON line
//! is a load generator report (`--json --label PEER`) to which the script added `"round"` and,
//! for the proxies, `"upstream_conns"` (TCP connections the upstream accepted during the run).
//! Runs are grouped by mode (`keepalive`, `full`) and concurrency; every cell is the median
//! over the rounds, and two ratio columns compare the gateway in HTTP mode with nginx doing
//! the same job ([`NGINX`]) and with the gateway's own identity responder ([`IDENTITY`]).

use serde_json::Value;

/// Label of nginx as an mTLS reverse proxy.
pub const NGINX: &str = "nginx-proxy";
/// Label of the gateway in HTTP mode (`--upstream http://…`).
pub const HTTP: &str = "gateway-http";
/// Label of the gateway answering with its identity responder (no upstream).
pub const IDENTITY: &str = "gateway-identity";

/// The median of `v` (the mean of the middle two when even); `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or("").to_string()
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

/// One row: which runs, which figure, how to print it, and whether the ratio columns apply.
struct Row {
    mode: &'static str,
    concurrency: u64,
    name: String,
    value: fn(&Value) -> Option<f64>,
    integer: bool,
    ratio: bool,
}

fn rows(concurrencies: &[u64], modes: &[&'static str]) -> Vec<Row> {
    let mut out = Vec::new();
    for &mode in modes {
        for &c in concurrencies {
            let row = |name: String, value, integer, ratio| Row {
                mode,
                concurrency: c,
                name,
                value,
                integer,
                ratio,
            };
            if mode == "keepalive" {
                out.push(row(
                    format!("keep-alive c={c}: CPU µs/request"),
                    |v| v["server_cpu_us_per_req"].as_f64(),
                    false,
                    true,
                ));
                out.push(row(
                    format!("keep-alive c={c}: requests/s"),
                    |v| v["requests_per_s"].as_f64(),
                    true,
                    false,
                ));
            } else {
                out.push(row(
                    format!("new mTLS conn c={c}: CPU µs/conn"),
                    |v| v["server_cpu_us_per_conn"].as_f64(),
                    false,
                    true,
                ));
                out.push(row(
                    format!("new mTLS conn c={c}: conns/s"),
                    |v| v["requests_per_s"].as_f64(),
                    true,
                    false,
                ));
            }
            out.push(row(
                format!(
                    "{} c={c}: upstream conns",
                    if mode == "keepalive" {
                        "keep-alive"
                    } else {
                        "new mTLS conn"
                    }
                ),
                |v| v["upstream_conns"].as_f64(),
                true,
                false,
            ));
        }
    }
    out
}

/// The table for `lines` (see the module doc).
pub fn render(lines: &[Value]) -> String {
    let mut peers: Vec<String> = Vec::new();
    let mut concurrencies: Vec<u64> = Vec::new();
    let mut modes: Vec<&'static str> = Vec::new();
    let mut rounds: Vec<u64> = Vec::new();
    for v in lines {
        let p = s(v, "label");
        if !peers.contains(&p) {
            peers.push(p);
        }
        if let Some(c) = v["concurrency"].as_u64() {
            if !concurrencies.contains(&c) {
                concurrencies.push(c);
            }
        }
        for m in ["keepalive", "full"] {
            if s(v, "mode") == m && !modes.contains(&m) {
                modes.push(m);
            }
        }
        if let Some(r) = v["round"].as_u64() {
            if !rounds.contains(&r) {
                rounds.push(r);
            }
        }
    }
    if peers.is_empty() {
        return "no front-door results\n".into();
    }
    // Keep-alive first, then new connections, whatever order the runs came in.
    modes.sort_by_key(|m| *m != "keepalive");
    let ratios: Vec<(&str, &str, String)> = [
        (HTTP, NGINX, "http÷nginx".to_string()),
        (HTTP, IDENTITY, "http÷identity".to_string()),
    ]
    .into_iter()
    .filter(|(a, b, _)| peers.iter().any(|p| p == a) && peers.iter().any(|p| p == b))
    .collect();
    let cell = |peer: &str, row: &Row| -> Option<f64> {
        median(
            lines
                .iter()
                .filter(|v| {
                    s(v, "label") == peer
                        && s(v, "mode") == row.mode
                        && v["concurrency"].as_u64() == Some(row.concurrency)
                })
                .filter_map(|v| (row.value)(v))
                .collect(),
        )
    };
    let (first, width) = (40, 17);
    let mut out = format!(
        "front door: mTLS, proxy CPU only (utime+stime of the proxy process), median of {} round(s)\n",
        rounds.len().max(1)
    );
    out.push_str(&format!("{:<first$}", "figure"));
    for p in &peers {
        out.push_str(&format!("{p:>width$}"));
    }
    for (_, _, name) in &ratios {
        out.push_str(&format!("{name:>15}"));
    }
    out.push('\n');
    for row in rows(&concurrencies, &modes) {
        let values: Vec<Option<f64>> = peers.iter().map(|p| cell(p, &row)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        out.push_str(&format!("{:<first$}", row.name));
        for v in &values {
            let c = match v {
                None => "n/a".to_string(),
                Some(x) if row.integer => format!("{x:.0}"),
                Some(x) => fmt_num(*x),
            };
            out.push_str(&format!("{c:>width$}"));
        }
        for (a, b, _) in &ratios {
            let c = match (row.ratio, cell(a, &row), cell(b, &row)) {
                (true, Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                (true, ..) => "n/a".to_string(),
                (false, ..) => String::new(),
            };
            out.push_str(&format!("{c:>15}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<first$}", "failures (all runs)"));
    for p in &peers {
        let n: u64 = lines
            .iter()
            .filter(|v| s(v, "label") == *p)
            .filter_map(|v| v["failures"].as_u64())
            .sum();
        out.push_str(&format!("{n:>width$}"));
    }
    out.push('\n');
    if !ratios.is_empty() {
        out.push_str(
            "ratios: CPU of the gateway in HTTP mode ÷ CPU of the other (below 1: the gateway uses less); \
             targets: http÷nginx <= 0.5, http÷identity (kept-alive) <= 1.3\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }

    fn run(label: &str, mode: &str, c: u64, round: u64, cpu: f64) -> Value {
        let key = if mode == "keepalive" {
            "server_cpu_us_per_req"
        } else {
            "server_cpu_us_per_conn"
        };
        let mut v = json!({"label": label, "mode": mode, "concurrency": c, "round": round,
                           "requests_per_s": 1000.0, "failures": 0});
        v[key] = json!(cpu);
        v
    }

    #[test]
    fn cells_are_medians_over_rounds_and_ratios_compare_gateway_http() {
        let mut lines = Vec::new();
        for (r, (n, h, i)) in [(40.0, 10.0, 9.0), (50.0, 30.0, 8.0), (60.0, 20.0, 10.0)]
            .into_iter()
            .enumerate()
        {
            lines.push(run(NGINX, "keepalive", 8, r as u64, n));
            lines.push(run(HTTP, "keepalive", 8, r as u64, h));
            lines.push(run(IDENTITY, "keepalive", 8, r as u64, i));
        }
        lines.push(run(NGINX, "full", 64, 0, 800.0));
        lines.push(run(HTTP, "full", 64, 0, 400.0));
        let mut failed = run(HTTP, "full", 64, 1, 600.0);
        failed["failures"] = json!(3);
        lines.push(failed);
        let t = render(&lines);
        let ka = t
            .lines()
            .find(|l| l.starts_with("keep-alive c=8: CPU"))
            .unwrap_or_else(|| panic!("{t}"));
        // Medians 50, 20, 9; 20/50 = 0.40 and 20/9 = 2.22.
        let cols: Vec<&str> = ka.split_whitespace().rev().take(5).collect();
        assert_eq!(cols, ["2.22", "0.40", "9.00", "20.0", "50.0"], "{t}");
        let full = t
            .lines()
            .find(|l| l.starts_with("new mTLS conn c=64: CPU"))
            .unwrap_or_else(|| panic!("{t}"));
        // gateway-http median of 400 and 600 = 500; no identity run: n/a.
        assert!(full.contains("800") && full.contains("500"), "{t}");
        assert!(full.trim_end().ends_with("0.62            n/a"), "{t}");
        assert!(t.contains("median of 3 round(s)"), "{t}");
        let fail = t.lines().find(|l| l.starts_with("failures")).unwrap();
        assert_eq!(
            fail.split_whitespace().collect::<Vec<_>>()[3..],
            ["0", "3", "0"]
        );
        assert!(
            t.find("keep-alive").unwrap() < t.find("new mTLS").unwrap(),
            "{t}"
        );
    }

    #[test]
    fn without_the_gateway_http_row_no_ratio_columns() {
        let t = render(&[run(NGINX, "keepalive", 8, 0, 40.0)]);
        assert!(!t.contains("http÷nginx"), "{t}");
        assert!(t.contains("40.0"), "{t}");
        assert_eq!(render(&[]), "no front-door results\n");
    }
}
