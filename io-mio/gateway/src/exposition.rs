//! What the metrics endpoint reports: the server's counters, the files the loaded policy came
//! from (certificate and CRL dates), reloads, build and process, encoded with
//! `prometheus-client` in the Prometheus text format (0.0.4) or OpenMetrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::debug;
use onerecord_tls::{CertInfo, Failure, Time, pki};
use onerecord_tls_mio::metrics::HANDSHAKE_BUCKETS;
use onerecord_tls_mio::{DestinationStats, ForwardProxy, Metrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The files a policy is built from, by role.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// Own certificate chains (`--cert`).
    pub own: Vec<PathBuf>,
    /// CA bundles (`--client-ca`, `--ca`).
    pub ca: Vec<PathBuf>,
    /// CRL files (`--crl`).
    pub crl: Vec<PathBuf>,
}

/// One certificate of a file: subject and `notAfter` (unix seconds).
#[derive(Clone, Debug)]
struct CertDate {
    file: String,
    role: &'static str,
    subject: String,
    not_after: u64,
}

/// What the files of the loaded policy say, read after each successful load.
#[derive(Clone, Debug, Default)]
struct Files {
    certs: Vec<CertDate>,
    crls: Vec<(String, onerecord_tls::CrlInfo)>,
}

impl Files {
    fn read(w: &Watched) -> Self {
        let mut f = Files::default();
        for (role, paths) in [("cert", &w.own), ("ca", &w.ca)] {
            for p in paths {
                match pki::certificates_from_file(p) {
                    Ok(chain) => {
                        for der in chain {
                            if let Ok(info) = CertInfo::parse(&der) {
                                f.certs.push(CertDate {
                                    file: p.display().to_string(),
                                    role,
                                    subject: info.subject,
                                    not_after: info.not_after.as_unix_secs(),
                                });
                            }
                        }
                    }
                    Err(e) => debug!("metrics: {}: {e}", p.display()),
                }
            }
        }
        for p in &w.crl {
            match pki::crls_from_file(p) {
                Ok(crls) => {
                    for der in crls {
                        match onerecord_tls::CrlInfo::parse(der.as_ref()) {
                            Ok(d) => f.crls.push((p.display().to_string(), d)),
                            Err(e) => debug!("metrics: {}: {e}", p.display()),
                        }
                    }
                }
                Err(e) => debug!("metrics: {}: {e}", p.display()),
            }
        }
        f
    }
}

/// The egress proxy's per-destination counters for the metrics endpoint: the running
/// proxy's, plus those of the proxies that reloads replaced (so that counters never go back).
#[derive(Debug, Default)]
pub struct Egress {
    state: Mutex<EgressState>,
}

#[derive(Debug, Default)]
struct EgressState {
    proxy: Option<ForwardProxy>,
    /// What the replaced proxies had counted when they were replaced.
    retired: BTreeMap<String, DestinationStats>,
}

/// Add `b` into `a`.
fn add_stats(a: &mut DestinationStats, b: &DestinationStats) {
    a.requests += b.requests;
    a.connections += b.connections;
    a.handshakes_full += b.handshakes_full;
    a.handshakes_resumed += b.handshakes_resumed;
    for (reason, n) in &b.failures {
        *a.failures.entry(reason).or_default() += n;
    }
}

impl Egress {
    /// Count `proxy` from now on (at start, and after a reload: the replaced proxy's
    /// counters so far are kept).
    pub fn set(&self, proxy: ForwardProxy) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(old) = s.proxy.replace(proxy) {
                for (dest, st) in old.stats() {
                    add_stats(s.retired.entry(dest).or_default(), &st);
                }
            }
        }
    }

    /// The counters now, by destination.
    fn read(&self) -> BTreeMap<String, DestinationStats> {
        let Ok(s) = self.state.lock() else {
            return BTreeMap::new();
        };
        let mut all = s.retired.clone();
        if let Some(p) = &s.proxy {
            for (dest, st) in p.stats() {
                add_stats(all.entry(dest).or_default(), &st);
            }
        }
        all
    }
}

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `--reload-interval`.
    Interval,
}

#[derive(Debug, Default)]
struct Reloads {
    files: Files,
    /// Unix time of the last successful load (the start counts).
    last_success: f64,
    last_ok: bool,
    /// Failed reloads, by [`Trigger`] (signal, interval).
    failures: [u64; 2],
}

/// The gateway's state as the endpoint reports it.
#[derive(Debug)]
pub struct Status {
    metrics: Metrics,
    watched: Watched,
    egress: Option<Arc<Egress>>,
    ready: AtomicBool,
    started: f64,
    reloads: Mutex<Reloads>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Status {
    /// The status of a gateway whose policy was built from `watched` (read now); `egress`:
    /// the egress proxy's per-destination counters.
    pub fn new(metrics: Metrics, watched: Watched, egress: Option<Arc<Egress>>) -> Arc<Self> {
        let s = Arc::new(Self {
            metrics,
            watched,
            egress,
            ready: AtomicBool::new(false),
            started: unix_now(),
            reloads: Mutex::new(Reloads::default()),
        });
        s.loaded();
        s
    }

    /// Ready (listening with a loaded policy) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// `true` while listening with a loaded policy.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// A policy was (re)loaded from the watched files: read their dates again.
    pub fn loaded(&self) {
        let files = Files::read(&self.watched);
        if let Ok(mut r) = self.reloads.lock() {
            r.files = files;
            r.last_success = unix_now();
            r.last_ok = true;
        }
    }

    /// A reload failed (the current policy stays).
    pub fn reload_failed(&self, trigger: Trigger) {
        if let Ok(mut r) = self.reloads.lock() {
            r.failures[trigger as usize] += 1;
            r.last_ok = false;
        }
    }

    /// The exposition: OpenMetrics when `openmetrics`, else the Prometheus text format 0.0.4.
    /// Returns the body and its content type.
    pub fn render(self: &Arc<Self>, openmetrics: bool) -> (String, &'static str) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(8192);
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }
}

/// One metric family: a descriptor and its samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in samples {
        // An empty label set encodes as no braces at all.
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> std::fmt::Result {
    family(enc, name, help, [(Vec::new(), value)])
}

fn l(k: &'static str, v: impl Into<String>) -> (&'static str, String) {
    (k, v.into())
}

impl Collector for Status {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let now = Time::now().as_unix_secs() as i64;
        let s = self.metrics.snapshot();
        let c = &s.counters;

        // Counters' names are given without `_total`: the encoder appends it.
        let mut hs = Vec::new();
        for (vi, v) in ["TLSv1.2", "TLSv1.3"].iter().enumerate() {
            for (ri, kind) in ["full", "resumed"].iter().enumerate() {
                hs.push((
                    vec![l("version", *v), l("kind", *kind)],
                    ConstCounter::new(c.handshakes[vi][ri]),
                ));
            }
        }
        family(
            &mut enc,
            "onerecord_handshakes",
            "Completed TLS handshakes.",
            hs,
        )?;
        family(
            &mut enc,
            "onerecord_handshake_failures",
            "Refused or failed handshakes by reason.",
            Failure::ALL.iter().map(|f| {
                (
                    vec![l("reason", f.label())],
                    ConstCounter::new(c.sessions.failures_of(*f)),
                )
            }),
        )?;
        {
            let h = &c.handshake_seconds;
            let buckets: Vec<(f64, u64)> = HANDSHAKE_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(h.counts.iter().copied())
                .collect();
            let mut m = enc.encode_descriptor(
                "onerecord_handshake_duration_seconds",
                "Time from accepting the TCP connection to the completed handshake.",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<NoLabelSet>(h.sum_seconds(), h.count(), &buckets, None)?;
        }
        family(
            &mut enc,
            "onerecord_connections_refused",
            "Connections closed without a handshake failure: over --max-connections (no \
             handshake attempted) or refused by the application after the handshake.",
            [
                (
                    vec![l("reason", "over_capacity")],
                    ConstCounter::new(c.refused_capacity),
                ),
                (
                    vec![l("reason", "refused_by_application")],
                    ConstCounter::new(c.refused_by_service),
                ),
            ],
        )?;
        family(
            &mut enc,
            "onerecord_upstream_connections",
            "Upstream connections handed to HTTP exchanges: `new` (a TCP connection was made) \
             or `reused` (a kept-alive one from the pool).",
            [
                (
                    vec![l("kind", "new")],
                    ConstCounter::new(c.upstream_connects),
                ),
                (
                    vec![l("kind", "reused")],
                    ConstCounter::new(c.upstream_reuses),
                ),
            ],
        )?;
        one(
            &mut enc,
            "onerecord_connections_active",
            "Connections open now.",
            ConstGauge::new(s.active as i64),
        )?;
        for (name, help, v) in [
            (
                "onerecord_connections_accepted",
                "TCP connections accepted.",
                c.accepted,
            ),
            (
                "onerecord_connections_closed",
                "Connections finished.",
                c.closed,
            ),
            (
                "onerecord_plaintext_http",
                "Plaintext HTTP requests on the TLS port, answered with 400.",
                c.plaintext_http,
            ),
            (
                "onerecord_idle_timeouts",
                "Connections closed for being idle.",
                c.idle_timeouts,
            ),
            (
                "onerecord_upstream_errors",
                "Failures to reach or talk to the upstream.",
                c.upstream_errors,
            ),
            (
                "onerecord_accept_errors",
                "Failed accepts (usually out of file descriptors; raise the limit or lower \
                 --max-connections).",
                c.accept_errors,
            ),
        ] {
            one(&mut enc, name, help, ConstCounter::new(v))?;
        }
        family(
            &mut enc,
            "onerecord_bytes",
            "TLS bytes received and sent, counted as they pass (open connections included).",
            [
                (
                    vec![l("direction", "received")],
                    ConstCounter::new(c.sessions.tls_bytes_received),
                ),
                (
                    vec![l("direction", "sent")],
                    ConstCounter::new(c.sessions.tls_bytes_sent),
                ),
            ],
        )?;
        family(
            &mut enc,
            "onerecord_certificate_expiry_seconds",
            "Seconds until the own certificate a listener serves expires.",
            s.certificates.iter().map(|(listener, not_after)| {
                (
                    vec![l("listener", listener.clone())],
                    ConstGauge::new(not_after.as_unix_secs() as i64 - now),
                )
            }),
        )?;

        if let Some(egress) = &self.egress {
            // The idle pools are the listeners' server's: the proxy runs in it.
            destinations(&mut enc, &egress.read(), &c.upstream_idle)?;
        }

        let (files, last_success, last_ok, failures) = match self.reloads.lock() {
            Ok(r) => (r.files.clone(), r.last_success, r.last_ok, r.failures),
            Err(_) => (Files::default(), 0.0, false, [0; 2]),
        };
        family(
            &mut enc,
            "onerecord_certificate_not_after_timestamp_seconds",
            "notAfter (unix time) of each certificate in the loaded files: role=\"cert\" for \
             the own chain (--cert), role=\"ca\" for CA bundles (--client-ca, --ca).",
            files.certs.iter().map(|c| {
                (
                    vec![
                        l("file", c.file.clone()),
                        l("role", c.role),
                        l("subject", c.subject.clone()),
                    ],
                    ConstGauge::new(c.not_after as i64),
                )
            }),
        )?;
        family(
            &mut enc,
            "onerecord_crl_next_update_timestamp_seconds",
            "nextUpdate (unix time) of each loaded CRL: after it the CRL is stale.",
            files.crls.iter().filter_map(|(file, d)| {
                Some((
                    vec![l("file", file.clone()), l("issuer", d.issuer.clone())],
                    ConstGauge::new(d.next_update?.as_unix_secs() as i64),
                ))
            }),
        )?;
        family(
            &mut enc,
            "onerecord_crl_this_update_timestamp_seconds",
            "thisUpdate (unix time) of each loaded CRL.",
            files.crls.iter().map(|(file, d)| {
                (
                    vec![l("file", file.clone()), l("issuer", d.issuer.clone())],
                    ConstGauge::new(d.this_update.as_unix_secs() as i64),
                )
            }),
        )?;
        family(
            &mut enc,
            "onerecord_crl_age_seconds",
            "Seconds since the thisUpdate of each loaded CRL.",
            files.crls.iter().map(|(file, d)| {
                (
                    vec![l("file", file.clone()), l("issuer", d.issuer.clone())],
                    ConstGauge::new(now - d.this_update.as_unix_secs() as i64),
                )
            }),
        )?;
        one(
            &mut enc,
            "onerecord_reload_last_success_timestamp_seconds",
            "Unix time of the last successful policy load (the start counts).",
            ConstGauge::new(last_success),
        )?;
        one(
            &mut enc,
            "onerecord_reload_last_successful",
            "1 when the last load or reload succeeded, 0 when it failed (the previous policy \
             stays in use).",
            ConstGauge::new(i64::from(last_ok)),
        )?;
        family(
            &mut enc,
            "onerecord_reload_failures",
            "Failed reloads (the previous policy stays in use), by what started them.",
            [("signal", failures[0]), ("interval", failures[1])]
                .map(|(t, v)| (vec![l("trigger", t)], ConstCounter::new(v))),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "onerecord_build",
                "The gateway's version.",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        }
        one(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds.",
            ConstGauge::new(self.started),
        )?;
        process(&mut enc)
    }
}

/// The egress proxy's families, one sample (set) per destination; `idle`: the adapter's idle
/// pooled upstream connections by destination (`server_name:port` for TLS upstreams, the
/// proxy's destination label).
fn destinations(
    enc: &mut DescriptorEncoder,
    d: &BTreeMap<String, DestinationStats>,
    idle: &BTreeMap<String, u64>,
) -> std::fmt::Result {
    let d: Vec<(&String, &DestinationStats)> = d.iter().collect();
    let dest = |k: &String| l("destination", k.clone());
    family(
        enc,
        "onerecord_egress_requests",
        "Egress: requests the application sent, by destination (host:port).",
        d.iter()
            .map(|(k, s)| (vec![dest(k)], ConstCounter::new(s.requests))),
    )?;
    family(
        enc,
        "onerecord_egress_connections",
        "Egress: TLS connections opened to each destination (a request on a pooled \
         connection opens none).",
        d.iter()
            .map(|(k, s)| (vec![dest(k)], ConstCounter::new(s.connections))),
    )?;
    family(
        enc,
        "onerecord_egress_handshakes",
        "Egress: completed handshakes with each destination, full or resumed.",
        d.iter().flat_map(|(k, s)| {
            [
                (
                    vec![dest(k), l("kind", "full")],
                    ConstCounter::new(s.handshakes_full),
                ),
                (
                    vec![dest(k), l("kind", "resumed")],
                    ConstCounter::new(s.handshakes_resumed),
                ),
            ]
        }),
    )?;
    family(
        enc,
        "onerecord_egress_failures",
        "Egress: failed requests by destination and reason (the application got 502 or 504).",
        d.iter().flat_map(|(k, s)| {
            s.failures.iter().map(|(reason, n)| {
                (
                    vec![dest(k), l("reason", reason.to_string())],
                    ConstCounter::new(*n),
                )
            })
        }),
    )?;
    // Every destination with counters (0 when nothing is pooled for it) and every pool.
    let mut pools: BTreeMap<&str, u64> = d.iter().map(|(k, _)| (k.as_str(), 0)).collect();
    for (k, n) in idle {
        pools.insert(k.as_str(), *n);
    }
    family(
        enc,
        "onerecord_egress_pool_idle_connections",
        "Egress: idle kept-alive TLS connections pooled for each destination now.",
        pools.into_iter().map(|(k, n)| {
            (
                vec![l("destination", k.to_string())],
                ConstGauge::new(n as i64),
            )
        }),
    )
}

/// `process_*` from `/proc/self` (Linux): CPU, memory, descriptors.
#[cfg(target_os = "linux")]
fn process(enc: &mut DescriptorEncoder) -> std::fmt::Result {
    // /proc/<pid>/stat counts CPU time in USER_HZ ticks, 100 per second on Linux (as the
    // Prometheus Go client assumes too).
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) {
        one(
            enc,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            ConstCounter::new((utime + stime) as f64 / USER_HZ),
        )?;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let v = line.strip_prefix(key)?.trim().strip_suffix("kB")?;
            v.trim().parse::<i64>().ok().map(|k| k * 1024)
        })
    };
    if let Some(rss) = kib("VmRSS:") {
        one(
            enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            ConstGauge::new(rss),
        )?;
    }
    if let Some(vsz) = kib("VmSize:") {
        one(
            enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            ConstGauge::new(vsz),
        )?;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle being read is one of them.
        let n = dir.count().saturating_sub(1);
        one(
            enc,
            "process_open_fds",
            "Number of open file descriptors.",
            ConstGauge::new(n as i64),
        )?;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = limits.lines().find_map(|line| {
        line.strip_prefix("Max open files")?
            .split_whitespace()
            .next()?
            .parse::<i64>()
            .ok()
    }) {
        one(
            enc,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            ConstGauge::new(max),
        )?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn process(_enc: &mut DescriptorEncoder) -> std::fmt::Result {
    Ok(())
}

/// The files a CA-bundle flag and CRL flags name, for [`Watched`].
pub fn watched(own: Option<&Path>, ca: Option<&Path>, crl: &[PathBuf]) -> Watched {
    Watched {
        own: own.map(Path::to_path_buf).into_iter().collect(),
        ca: ca.map(Path::to_path_buf).into_iter().collect(),
        crl: crl.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: u64, connections: u64) -> DestinationStats {
        DestinationStats {
            requests,
            connections,
            handshakes_full: 1,
            handshakes_resumed: connections - 1,
            failures: [("refused", 2)].into_iter().collect(),
        }
    }

    #[test]
    fn egress_counters_are_exported_per_destination() {
        let egress = Arc::new(Egress::default());
        let status = Status::new(Metrics::default(), Watched::default(), Some(egress.clone()));
        let (before, _) = status.render(false);
        assert!(!before.contains("onerecord_egress_"), "{before}");
        if let Ok(mut s) = egress.state.lock() {
            s.retired = [
                ("b.example:443".to_string(), stats(7, 3)),
                ("a.example:8443".to_string(), stats(40, 2)),
            ]
            .into_iter()
            .collect();
        }
        let (text, _) = status.render(false);
        for line in [
            "onerecord_egress_requests_total{destination=\"a.example:8443\"} 40",
            "onerecord_egress_requests_total{destination=\"b.example:443\"} 7",
            "onerecord_egress_connections_total{destination=\"a.example:8443\"} 2",
            "onerecord_egress_handshakes_total{destination=\"b.example:443\",kind=\"resumed\"} 2",
            "onerecord_egress_handshakes_total{destination=\"b.example:443\",kind=\"full\"} 1",
            "onerecord_egress_failures_total{destination=\"a.example:8443\",reason=\"refused\"} 2",
            // No pool in this process: a destination with counters shows 0 idle.
            "onerecord_egress_pool_idle_connections{destination=\"b.example:443\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Sorted by destination: a.example before b.example.
        let a = text.find("destination=\"a.example:8443\"");
        let b = text.find("destination=\"b.example:443\"");
        assert!(a < b, "{text}");
    }

    #[test]
    fn a_replaced_proxy_keeps_its_counts_under_the_new_one() {
        let mut sum = stats(5, 2);
        add_stats(&mut sum, &stats(3, 1));
        assert_eq!(sum.requests, 8);
        assert_eq!(sum.connections, 3);
        assert_eq!(sum.handshakes_full, 2);
        assert_eq!(sum.handshakes_resumed, 1);
        assert_eq!(sum.failures.get("refused"), Some(&4));
    }

    #[test]
    fn a_gateway_without_egress_exports_no_egress_families() {
        let status = Status::new(Metrics::default(), Watched::default(), None);
        let (text, _) = status.render(true);
        assert!(!text.contains("onerecord_egress_"), "{text}");
        assert!(text.contains("onerecord_connections_active"), "{text}");
    }
}
