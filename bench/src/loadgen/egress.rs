//! `--egress-table FILE`: the table of `scripts/bench-egress.sh`. Each JSON line is a load
//! generator report (`--json --label KIND`) to which the script added `"round"` and
//! `"partner_conns"` (TCP connections the partner accepted during the run, from its
//! `onerecord_connections_accepted_total`). Four kinds of run, by label:
//!
//! - [`POOLED`]: the application's kept-alive plain connections through the egress proxy
//!   (`--proxy`); client side = the load generator's CPU + the proxy's (`--proxy-pid`);
//! - [`FULL`]: a new mTLS connection with a full handshake per request;
//! - [`RESUMED`]: a new mTLS connection resuming a session per request;
//! - [`KEEPALIVE`] (a reference, when present): the load generator's own kept-alive mTLS
//!   connections straight to the partner, no proxy: the floor of a pooled request on the
//!   partner's side.
//!
//! The partner side is the partner's CPU (`--server-pid`) in every kind. Rows are grouped by
//! concurrency; every cell is the median over the rounds; the ratio columns are pooled ÷ full
//! (target: at most [`TARGET`] on both sides) and pooled ÷ resumed.

use serde_json::Value;

use super::frontdoor::median;

/// Label of the runs through the egress proxy.
pub const POOLED: &str = "pooled";
/// Label of the runs with a full handshake per request.
pub const FULL: &str = "full";
/// Label of the runs with a resumed handshake per request.
pub const RESUMED: &str = "resumed";
/// Label of the reference runs: kept-alive mTLS connections straight to the partner.
pub const KEEPALIVE: &str = "keepalive";
/// The target for pooled ÷ full, on both sides.
pub const TARGET: f64 = 0.02;

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

/// A ratio as a decimal and as 1/N (`0.018 (1/55)`).
fn fmt_ratio(r: f64) -> String {
    if r > 0.0 && r < 1.0 {
        format!("{r:.3} (1/{:.0})", 1.0 / r)
    } else {
        format!("{r:.3}")
    }
}

/// CPU per request on the client's side: the load generator's own, plus the proxy's when it
/// was measured (pooled runs).
fn client_side(v: &Value) -> Option<f64> {
    let own = v["client_cpu_us"].as_f64()?;
    let proxy = v["proxy_cpu_us"].as_f64().unwrap_or(0.0);
    let n = v["requests"].as_f64().filter(|n| *n > 0.0)?;
    Some((own + proxy) / n)
}

/// How a row's cell combines the runs of its rounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Agg {
    /// The median of the value over the rounds.
    Median,
    /// The sum over the rounds (counts).
    Sum,
    /// Requests of all rounds ÷ partner connections of all rounds.
    RequestsPerConn,
}

struct Row {
    concurrency: u64,
    agg: Agg,
    name: String,
    value: fn(&Value) -> Option<f64>,
    integer: bool,
    ratio: bool,
}

fn rows(concurrencies: &[u64]) -> Vec<Row> {
    let mut out = Vec::new();
    for &c in concurrencies {
        let row = |name: &str, value, integer, ratio| Row {
            concurrency: c,
            agg: Agg::Median,
            name: format!("c={c}: {name}"),
            value,
            integer,
            ratio,
        };
        out.push(row("client CPU µs/request", client_side, false, true));
        out.push(row(
            "  of which egress proxy",
            |v| v["proxy_cpu_us_per_req"].as_f64(),
            false,
            false,
        ));
        out.push(row(
            "partner CPU µs/request",
            |v| v["server_cpu_us_per_req"].as_f64(),
            false,
            true,
        ));
        out.push(row(
            "requests/s",
            |v| v["requests_per_s"].as_f64(),
            true,
            false,
        ));
        out.push(Row {
            agg: Agg::Sum,
            ..row(
                "partner TCP conns, all rounds",
                |v| v["partner_conns"].as_f64(),
                true,
                false,
            )
        });
        out.push(Row {
            agg: Agg::RequestsPerConn,
            ..row("requests per partner conn", |_| None, true, false)
        });
    }
    out
}

/// The table for `lines` (see the module doc).
pub fn render(lines: &[Value]) -> String {
    let kinds = [POOLED, FULL, RESUMED, KEEPALIVE];
    let mut concurrencies: Vec<u64> = Vec::new();
    let mut rounds: Vec<u64> = Vec::new();
    for v in lines
        .iter()
        .filter(|v| kinds.contains(&s(v, "label").as_str()))
    {
        if let Some(c) = v["concurrency"].as_u64() {
            if !concurrencies.contains(&c) {
                concurrencies.push(c);
            }
        }
        if let Some(r) = v["round"].as_u64() {
            if !rounds.contains(&r) {
                rounds.push(r);
            }
        }
    }
    if concurrencies.is_empty() {
        return "no egress results\n".into();
    }
    concurrencies.sort_unstable();
    let cell = |kind: &str, row: &Row| -> Option<f64> {
        let runs = || {
            lines.iter().filter(|v| {
                s(v, "label") == kind && v["concurrency"].as_u64() == Some(row.concurrency)
            })
        };
        let sum = |k: &str| {
            let x: Vec<f64> = runs().filter_map(|v| v[k].as_f64()).collect();
            (!x.is_empty()).then(|| x.iter().sum::<f64>())
        };
        match row.agg {
            Agg::Median => median(runs().filter_map(|v| (row.value)(v)).collect()),
            Agg::Sum => {
                let x: Vec<f64> = runs().filter_map(|v| (row.value)(v)).collect();
                (!x.is_empty()).then(|| x.iter().sum())
            }
            Agg::RequestsPerConn => {
                let (n, c) = (sum("requests")?, sum("partner_conns")?);
                // Warm-up requests are not counted; a pool that opened nothing in the
                // measured runs shows as "all on connections opened before".
                Some(if c > 0.0 { n / c } else { f64::INFINITY })
            }
        }
    };
    let (first, width, rw) = (36, 11, 18);
    let mut out = format!(
        "egress: median of {} round(s); client side = application (loadgen) CPU + egress proxy CPU, partner side = partner process CPU\n",
        rounds.len().max(1)
    );
    out.push_str(&format!("{:<first$}", "figure"));
    for k in kinds {
        out.push_str(&format!("{k:>width$}"));
    }
    out.push_str(&format!(
        "{:>rw$}{:>rw$}\n",
        "pooled÷full", "pooled÷resumed"
    ));
    for row in rows(&concurrencies) {
        let values: Vec<Option<f64>> = kinds.iter().map(|k| cell(k, &row)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        out.push_str(&format!("{:<first$}", row.name));
        for v in &values {
            let c = match v {
                None => "n/a".to_string(),
                Some(x) if x.is_infinite() => "all reused".to_string(),
                Some(x) if row.integer => format!("{x:.0}"),
                Some(x) => fmt_num(*x),
            };
            out.push_str(&format!("{c:>width$}"));
        }
        for other in [FULL, RESUMED] {
            let c = match (row.ratio, cell(POOLED, &row), cell(other, &row)) {
                (true, Some(x), Some(y)) if y > 0.0 => fmt_ratio(x / y),
                (true, ..) => "n/a".to_string(),
                (false, ..) => String::new(),
            };
            out.push_str(&format!("{c:>rw$}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<first$}", "failures (all runs)"));
    for k in kinds {
        let n: u64 = lines
            .iter()
            .filter(|v| s(v, "label") == k)
            .filter_map(|v| v["failures"].as_u64())
            .sum();
        out.push_str(&format!("{n:>width$}"));
    }
    out.push('\n');
    out.push_str(&format!(
        "target: pooled÷full <= {TARGET} (1/{:.0}) on both sides\n",
        1.0 / TARGET
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: &str, c: u64, round: u64, client: f64, proxy: Option<f64>, partner: f64) -> Value {
        // 1000 requests: totals are per-request figures x 1000.
        json!({"label": kind, "mode": if kind == POOLED { "proxy" } else { kind },
               "concurrency": c, "round": round, "requests": 1000, "requests_per_s": 500.0,
               "client_cpu_us": client * 1000.0,
               "proxy_cpu_us": proxy.map(|p| p * 1000.0),
               "proxy_cpu_us_per_req": proxy,
               "server_cpu_us_per_req": partner,
               "partner_conns": if kind == POOLED { 4 } else { 1000 },
               "failures": 0})
    }

    fn line<'a>(t: &'a str, start: &str) -> Vec<&'a str> {
        t.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in\n{t}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn client_side_adds_the_proxy_and_cells_are_medians() {
        let mut lines = Vec::new();
        for (r, (app, gw, part, full)) in [
            (4.0, 6.0, 9.0, 400.0),
            (5.0, 5.0, 8.0, 600.0),
            (3.0, 9.0, 10.0, 500.0),
        ]
        .into_iter()
        .enumerate()
        {
            let r = r as u64;
            lines.push(run(POOLED, 8, r, app, Some(gw), part));
            lines.push(run(FULL, 8, r, full, None, full * 1.2));
            lines.push(run(RESUMED, 8, r, full / 2.0, None, full / 2.0));
            lines.push(run(KEEPALIVE, 8, r, 3.0, None, part - 1.0));
        }
        let t = render(&lines);
        // Client side per round: 10, 10, 12 -> 10; full 500; resumed 250.
        let c = line(&t, "c=8: client CPU");
        assert_eq!(
            c[4..],
            [
                "10.0", "500", "250", "3.00", "0.020", "(1/50)", "0.040", "(1/25)"
            ],
            "{t}"
        );
        // Of which the proxy: median of 6, 5, 9 = 6; no ratio.
        let p = line(&t, "c=8:   of which egress proxy");
        assert_eq!(p[5..], ["6.00", "n/a", "n/a", "n/a"], "{t}");
        // Partner: median 9 against 600 (full) and 250 (resumed).
        let p = line(&t, "c=8: partner CPU");
        assert_eq!(p[4..8], ["9.00", "600", "250", "8.00"], "{t}");
        assert_eq!(p[8], "0.015", "{t}");
        // Connections are summed over the rounds; requests per connection are totals.
        let pc = line(&t, "c=8: partner TCP conns, all rounds");
        assert_eq!(pc[6..], ["12", "3000", "3000", "3000"], "{t}");
        let rp = line(&t, "c=8: requests per partner conn");
        assert_eq!(rp[5..], ["250", "1", "1", "1"], "{t}");
        assert!(t.contains("median of 3 round(s)"), "{t}");
        assert!(t.contains("target: pooled÷full <= 0.02 (1/50)"), "{t}");
    }

    #[test]
    fn concurrencies_are_sorted_and_missing_kinds_are_na() {
        let mut failed = run(FULL, 64, 0, 500.0, None, 600.0);
        failed["failures"] = json!(2);
        let lines = vec![
            run(POOLED, 64, 0, 5.0, Some(5.0), 10.0),
            failed,
            run(POOLED, 8, 0, 4.0, Some(4.0), 9.0),
        ];
        let t = render(&lines);
        assert!(t.find("c=8:").unwrap() < t.find("c=64:").unwrap(), "{t}");
        let c = line(&t, "c=8: client CPU");
        assert_eq!(c[4..], ["8.00", "n/a", "n/a", "n/a", "n/a", "n/a"], "{t}");
        let c = line(&t, "c=64: client CPU");
        assert_eq!(c[4..9], ["10.0", "500", "n/a", "n/a", "0.020"], "{t}");
        let mut reused = run(POOLED, 8, 1, 4.0, Some(4.0), 9.0);
        reused["partner_conns"] = json!(0);
        let t2 = render(&[reused]);
        let rp = line(&t2, "c=8: requests per partner conn");
        assert_eq!(rp[5..], ["all", "reused", "n/a", "n/a", "n/a"], "{t2}");
        let f = line(&t, "failures");
        assert_eq!(f[3..], ["0", "2", "0", "0"], "{t}");
        assert_eq!(render(&[]), "no egress results\n");
        assert_eq!(
            render(&[json!({"label": "other", "concurrency": 8})]),
            "no egress results\n"
        );
    }
}
