//! `onerecord-gateway`: a TLS/mTLS terminating proxy with ONE Record defaults.
//!
//! - `server`: terminate TLS (mTLS with `--ca --require-client-cert`), forward the
//!   plaintext to `--upstream` (optionally with a PROXY protocol v2 header carrying the
//!   verified identity), or answer HTTP requests with a JSON description of the peer.
//! - `client`: accept plain TCP locally and forward it over TLS/mTLS to a ONE Record server.
//! - `dev`: make a throwaway PKI and run the server on 127.0.0.1:8443 with mTLS required.
//!
//! Signals: SIGINT/SIGTERM shut down gracefully, SIGHUP reloads certificates, anchors, CRLs
//! and ticket keys. Exit codes: 0 clean stop, 2 bad configuration (see [`AFTER_HELP`]).

mod dev;
mod exposition;
mod logging;
mod metrics_http;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::{error, info, warn};
use onerecord_tls::{
    ClientAuth, ClientPolicy, IdentityRule, Revocation, ServerPolicy, Sha256, Time, TrustStore,
    UnknownStatus, Versions, Warning, pki,
};
use onerecord_tls_mio::{Backend, IdentityResponder, Limits, Listener, Mode, ServerConfig};

/// What `--help` says after the options: signals, logging, exit codes, the PROXY header.
const AFTER_HELP: &str = "\
Signals:
  SIGHUP           reload certificate, key, CA bundle, CRLs and ticket keys; open connections
                   keep their policy, and a file that does not load keeps the current policy
                   (logged as ERROR)
  SIGINT, SIGTERM  stop accepting, let open connections finish (--drain-timeout), exit 0

Logging (stderr):
  RUST_LOG         level filter in env_logger syntax, default `info`; for example
                   RUST_LOG=warn,onerecord::access=info
  --log-format     `text` (default): `[time LEVEL target] message key=value...`;
                   `json`: one object per line (timestamp, level, target, message, fields)
  Targets: onerecord::access (an `accepted` and a `closed` line per connection: remote, SNI,
  version, resumed, certificate CN, URI, serial, SPKI SHA-256; duration, bytes, why it ended),
  onerecord::refused (one line per refused connection: reason and alert),
  onerecord::partner (client mode: a partner that refused us or failed verification, WARN).

Exit codes:
  0  stopped by SIGINT or SIGTERM
  2  bad configuration: the message names the flag and the file, or the address in use

PROXY protocol v2 (server --upstream ADDR --proxy-protocol):
  Before the first byte of the stream the upstream gets the client's address and port and the
  verified identity: PP2_TYPE_SSL (verify result, TLS version, certificate CN, cipher),
  PP2_TYPE_AUTHORITY (SNI), PP2_TYPE_ALPN, one TLV 0xE0 per URI SAN of the client certificate
  (ONE Record IDs) and TLV 0xE1 with its SPKI SHA-256 (32 bytes).";

/// Put TLS and mutual TLS with the ONE Record defaults in front of a ONE Record server
/// (`server`), or carry your systems' plain connections to a partner's ONE Record server over
/// mTLS (`client`); `dev` runs a local mTLS server with a throwaway PKI to try it out.
#[derive(Parser, Debug)]
#[command(name = "onerecord-gateway", version, after_help = AFTER_HELP)]
struct Cli {
    /// Log line format on stderr: `text` (human-readable, `key=value` fields) or `json`
    /// (one object per line: timestamp, level, target, message and the fields).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Terminate TLS/mTLS and forward to an upstream, or answer with the peer's identity.
    #[command(after_help = AFTER_HELP)]
    Server(ServerArgs),
    /// Accept plain TCP locally and forward it over TLS/mTLS to a ONE Record server.
    #[command(after_help = AFTER_HELP)]
    Client(ClientArgs),
    /// Generate a development PKI and run the server with mTLS on 127.0.0.1:8443.
    #[command(after_help = AFTER_HELP)]
    Dev(DevArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Worker threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100): /metrics, /healthz,
    /// /readyz.
    ///
    /// GET /metrics answers in the Prometheus text format (OpenMetrics when the scraper's
    /// Accept header asks for it); /healthz is 200 while the process runs; /readyz is 200 while
    /// listening with a loaded policy and 503 while draining. Other paths get 404, other
    /// methods 405.
    ///
    /// Metrics (see README.md): onerecord_handshakes_total{version,kind},
    /// onerecord_handshake_failures_total{reason}, onerecord_handshake_duration_seconds
    /// (histogram, accept to completed handshake), onerecord_connections_refused_total{reason}
    /// (over_capacity, refused_by_application), onerecord_connections_active,
    /// onerecord_connections_accepted_total, onerecord_connections_closed_total,
    /// onerecord_bytes_total{direction} (open connections included),
    /// onerecord_plaintext_http_total, onerecord_idle_timeouts_total,
    /// onerecord_upstream_errors_total, onerecord_accept_errors_total,
    /// onerecord_certificate_expiry_seconds{listener},
    /// onerecord_certificate_not_after_timestamp_seconds{file,role,subject},
    /// onerecord_crl_next_update_timestamp_seconds{file,issuer},
    /// onerecord_crl_this_update_timestamp_seconds{file,issuer},
    /// onerecord_crl_age_seconds{file,issuer},
    /// onerecord_reload_last_success_timestamp_seconds, onerecord_reload_last_successful,
    /// onerecord_reload_failures_total{trigger}, onerecord_build_info{version},
    /// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
    /// process_open_fds, process_max_fds, process_start_time_seconds.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Handshake timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Close established connections idle for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    idle_timeout: f64,
    /// Maximum open connections (beyond it, new connections are closed at once).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Graceful shutdown: seconds open connections get to finish.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    drain_timeout: f64,
    /// Only TLS 1.3 (default: TLS 1.3 and 1.2).
    #[arg(long)]
    tls13_only: bool,
    /// Reload certificates, anchors, CRLs and ticket keys every this many seconds.
    #[arg(long, value_name = "SECS")]
    reload_interval: Option<f64>,
    /// Share the listen addresses with other processes that also set this (SO_REUSEPORT),
    /// for a zero-downtime binary replacement: start the new gateway with --reuse-port next
    /// to the old one (also started with it), then stop the old one with SIGTERM. Without
    /// it an address in use is an error (exit 2) and no other process can join ours.
    #[arg(long)]
    reuse_port: bool,
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Address to listen on (repeat for several).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Server private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// CA bundle that client certificates must chain to (requests a client certificate).
    /// Alone, clients without a certificate are still admitted (anonymous; warned at
    /// start): add --require-client-cert or an --allow-* rule to refuse them.
    #[arg(long = "ca", visible_alias = "client-ca", value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (mTLS). Needs --ca. Implied by any
    /// --allow-* rule.
    #[arg(long, requires = "client_ca")]
    require_client_cert: bool,
    /// CRL file (PEM or DER) checked for client certificates (repeatable). Needs
    /// --ca: each CRL must be issued and signed by a certificate of that bundle that may
    /// sign CRLs (a key usage without cRLSign is refused; no key usage extension is fine).
    #[arg(long, value_name = "FILE", requires = "client_ca")]
    crl: Vec<PathBuf>,
    /// With --crl: accept certificates no CRL covers (default: refuse them).
    #[arg(long)]
    crl_allow_unknown: bool,
    /// With --crl: keep using a CRL this many seconds after its nextUpdate (a bounded
    /// fail-open window for a late CRL publisher; logged as a warning). Default 0: clients
    /// it covers are refused as soon as it expires.
    #[arg(long, value_name = "SECS", default_value_t = 0, requires = "crl")]
    crl_grace: u64,
    /// Accept client certificates with a URI SAN at or under URI (repeatable): same scheme,
    /// host and port (443/80 implied), path under URI's path at a `/` boundary, so
    /// https://onerecord.example covers https://onerecord.example/logistics-agents/acme but
    /// not https://onerecord.example.evil.com/. URI must be absolute, without user@, query or
    /// fragment. Any --allow-* rule makes a client certificate required.
    #[arg(long, value_name = "URI")]
    allow_uri: Vec<String>,
    /// Accept client certificates with this subject CN (repeatable).
    #[arg(long, value_name = "NAME")]
    allow_cn: Vec<String>,
    /// Accept client certificates with this DNS SAN (repeatable).
    #[arg(long, value_name = "NAME")]
    allow_dns: Vec<String>,
    /// Accept the client key with this SPKI SHA-256 (hex; repeatable).
    #[arg(long, value_name = "HEX")]
    allow_spki: Vec<String>,
    /// ALPN protocols to accept, in preference order (e.g. h2, http/1.1).
    #[arg(long, value_name = "PROTO")]
    alpn: Vec<String>,
    /// Forward decrypted streams to this TCP address (default: answer with the identity).
    #[arg(long, value_name = "ADDR")]
    upstream: Option<String>,
    /// Send a PROXY protocol v2 header first: the client address and the verified identity
    /// (CN, URI SANs, SPKI SHA-256, TLS version, SNI; see below).
    #[arg(long, requires = "upstream")]
    proxy_protocol: bool,
    /// Session-ticket keys shared by a fleet (base64 lines of 48 bytes, first encrypts).
    #[arg(long, value_name = "FILE")]
    ticket_keys: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Local plain-TCP address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The ONE Record server (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    connect: String,
    /// Name to send as SNI and verify (default: HOST of --connect).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// CA bundle that the partner's server certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// Client certificate chain (mTLS).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (mTLS).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// CRL file (PEM or DER) checked for the partner's server certificate (repeatable):
    /// each CRL must be issued and signed by a certificate of --ca that may sign CRLs.
    #[arg(long, value_name = "FILE")]
    crl: Vec<PathBuf>,
    /// With --crl: keep using a CRL this many seconds after its nextUpdate (a bounded
    /// fail-open window for a late CRL publisher; logged as a warning). Default 0: partners
    /// it covers are refused as soon as it expires.
    #[arg(long, value_name = "SECS", default_value_t = 0, requires = "crl")]
    crl_grace: u64,
    /// ALPN protocols to offer.
    #[arg(long, value_name = "PROTO")]
    alpn: Vec<String>,
    /// Accept the partner only with a URI SAN under this URI (repeatable; same matching as
    /// the server's --allow-uri). With any --verify-* flag the partner's certificate must
    /// match one of them, beyond chaining to --ca and matching --server-name.
    #[arg(long, value_name = "URI")]
    verify_uri: Vec<String>,
    /// Accept the partner only with this subject CN (repeatable).
    #[arg(long, value_name = "NAME")]
    verify_cn: Vec<String>,
    /// Accept the partner only with this DNS SAN (repeatable).
    #[arg(long, value_name = "NAME")]
    verify_dns: Vec<String>,
    /// Accept the partner only with this key: SPKI SHA-256 in hex (repeatable).
    #[arg(long, value_name = "HEX")]
    verify_spki: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, Clone)]
struct DevArgs {
    /// Directory for the generated PKI (created if missing, owner-only; existing files are
    /// reused) [default: $XDG_STATE_HOME/onerecord-gateway/dev, or
    /// ~/.local/state/onerecord-gateway/dev; outside any working tree].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Issue one more partner (client) certificate NAME.pem / NAME.key from the development
    /// CA in the PKI directory (CN NAME, URI SAN https://localhost:8443/logistics-agents/NAME),
    /// print the curl command that uses it, and exit.
    #[arg(long, value_name = "NAME")]
    issue_client: Option<String>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on this address: /metrics, /healthz, /readyz (as in `server`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Worker threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

/// A configuration error: exit code 2, message names the file and the problem.
struct ConfigFail(String);

fn secs(s: f64, flag: &str) -> Result<Duration, ConfigFail> {
    Duration::try_from_secs_f64(s).map_err(|_| ConfigFail(format!("{flag}: {s} is not a duration")))
}

fn versions(c: &Common) -> Versions {
    if c.tls13_only {
        Versions::Tls13Only
    } else {
        Versions::Tls13AndTls12
    }
}

fn file_err(flag: &str, e: impl std::fmt::Display) -> ConfigFail {
    ConfigFail(format!("{flag}: {e}"))
}

/// A policy that does not build from its certificate and key: name both files.
fn cert_key_err(cert: Option<&Path>, key: Option<&Path>, e: impl std::fmt::Display) -> ConfigFail {
    match (cert, key) {
        (Some(c), Some(k)) => ConfigFail(format!(
            "--cert {} / --key {}: {e}",
            c.display(),
            k.display()
        )),
        _ => ConfigFail(format!("policy: {e}")),
    }
}

/// Read every `--crl` file (a damaged one names its file) and check each CRL against the CA
/// bundle `trust` read from `ca_flag` (issuer in the bundle, signature): a foreign or
/// forged CRL is a configuration error naming its file.
fn load_crls(
    files: &[PathBuf],
    trust: &TrustStore,
    ca_flag: &str,
) -> Result<Vec<(String, onerecord_tls::Crl)>, ConfigFail> {
    let mut crls = Vec::new();
    for f in files {
        let name = f.display().to_string();
        for crl in pki::crls_from_file(f).map_err(|e| file_err("--crl", e))? {
            pki::check_crl(&crl, trust).map_err(|e| {
                ConfigFail(format!("--crl {name}: {e} (checked against {ca_flag})"))
            })?;
            crls.push((name.clone(), crl));
        }
    }
    Ok(crls)
}

/// A policy that does not build: a CRL problem names the CRL's file, anything else the
/// certificate and key.
fn policy_err(
    crls: &[(String, onerecord_tls::Crl)],
    cert: Option<&Path>,
    key: Option<&Path>,
    e: onerecord_tls::ConfigError,
) -> ConfigFail {
    use onerecord_tls::ConfigError as E;
    match &e {
        E::BadCrl { index, .. }
        | E::CrlIssuerUnknown { index, .. }
        | E::CrlIssuerNotCrlSigner { index, .. }
        | E::CrlBadSignature { index, .. } => match crls.get(*index) {
            Some((file, _)) => ConfigFail(format!("--crl {file}: {e}")),
            None => ConfigFail(format!("--crl: {e}")),
        },
        E::CrlWithoutClientAuth => ConfigFail(format!("--crl: {e}")),
        _ => cert_key_err(cert, key, e),
    }
}

/// Log the policy's warnings, each CRL warning once per change: a reload (SIGHUP or
/// --reload-interval) that finds the same expired or expiring CRL says nothing new.
fn log_warnings(warnings: &[Warning], cert: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut keys = Vec::new();
    for w in warnings {
        match w {
            Warning::CrlExpired {
                crl, next_update, ..
            } => keys.push((format!("expired {crl} {next_update}"), w)),
            Warning::CrlExpiresSoon {
                crl, next_update, ..
            } => keys.push((format!("soon {crl} {next_update}"), w)),
            other => warn!("{cert}: {other}"),
        }
    }
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    for (key, w) in &keys {
        if !seen.contains(key) {
            warn!("--crl: {w}");
        }
    }
    *seen = keys.into_iter().map(|(k, _)| k).collect();
}

/// Build the server policy from the arguments (re-reading every file), keeping the
/// resumption state of `previous` on reload.
fn server_policy(
    a: &ServerArgs,
    previous: Option<&ServerPolicy>,
) -> Result<ServerPolicy, ConfigFail> {
    let now = Time::now();
    let chain = pki::certificates_from_file(&a.cert).map_err(|e| file_err("--cert", e))?;
    let key = pki::private_key_from_file(&a.key).map_err(|e| file_err("--key", e))?;
    let mut b = ServerPolicy::builder(chain, key)
        .versions(versions(&a.common))
        .handshake_timeout(secs(a.common.handshake_timeout, "--handshake-timeout")?);
    if let Some(prev) = previous {
        b = b.resumption_from(prev);
    }
    let mut crls = Vec::new();
    if let Some(ca) = &a.client_ca {
        let trust = TrustStore::from_pem_file(ca).map_err(|e| file_err("--ca", e))?;
        crls = load_crls(&a.crl, &trust, &format!("--ca {}", ca.display()))?;
        b = b.client_auth(if a.require_client_cert {
            ClientAuth::Required(trust)
        } else {
            ClientAuth::Optional(trust)
        });
    } else if let Some(f) = a.crl.first() {
        return Err(ConfigFail(format!(
            "--crl {}: needs --ca (CRLs check client certificates)",
            f.display()
        )));
    }
    if !crls.is_empty() {
        let mut r = Revocation::with_named_crls(crls.iter().cloned());
        if a.crl_allow_unknown {
            r.unknown_status = UnknownStatus::Allow;
        }
        r.grace = Duration::from_secs(a.crl_grace);
        b = b.revocation(r);
    }
    // Checked here so that a bad rule names its flag.
    let rule =
        |flag: &str, r: IdentityRule| r.validate().map(|()| r).map_err(|e| file_err(flag, e));
    for u in &a.allow_uri {
        b = b.allow(rule("--allow-uri", IdentityRule::UriPrefix(u.clone()))?);
    }
    for cn in &a.allow_cn {
        b = b.allow(rule("--allow-cn", IdentityRule::CommonName(cn.clone()))?);
    }
    for d in &a.allow_dns {
        b = b.allow(rule("--allow-dns", IdentityRule::Dns(d.clone()))?);
    }
    for h in &a.allow_spki {
        let pin = Sha256::from_hex(h)
            .ok_or_else(|| ConfigFail(format!("--allow-spki: {h:?} is not 64 hex digits")))?;
        b = b.allow(IdentityRule::SpkiSha256(pin));
    }
    if !a.alpn.is_empty() {
        b = b.alpn(&a.alpn);
    }
    if let Some(f) = &a.ticket_keys {
        let keys = onerecord_tls_mio::tickets::load(f, Duration::from_secs(12 * 3600))
            .map_err(|e| file_err("--ticket-keys", e))?;
        b = b.tickets(Some(keys));
    }
    let p = b
        .build(now)
        .map_err(|e| policy_err(&crls, Some(&a.cert), Some(&a.key), e))?;
    log_warnings(p.warnings(), &a.cert.display().to_string());
    Ok(p)
}

fn resolve(s: &str, flag: &str) -> Result<SocketAddr, ConfigFail> {
    s.to_socket_addrs()
        .map_err(|e| ConfigFail(format!("{flag} {s}: {e}")))?
        .next()
        .ok_or_else(|| ConfigFail(format!("{flag} {s}: no address")))
}

/// Say at start when client authentication is weaker than the flags may read.
fn warn_anonymous_clients(a: &ServerArgs) {
    let rules = a.allow_uri.len() + a.allow_cn.len() + a.allow_dns.len() + a.allow_spki.len();
    if a.client_ca.is_some() && !a.require_client_cert && rules == 0 {
        warn!(
            "--ca without --require-client-cert or an --allow-* rule: clients without a \
             certificate are admitted (anonymous); certificates that are presented are verified"
        );
    }
}

/// Say at start that `--crl-grace` keeps expired CRLs in use (`who`: the peers they cover).
fn warn_crl_grace(grace: u64, who: &str) {
    if grace > 0 {
        warn!(
            "--crl-grace {grace}: an expired CRL is still used for {grace} s after its \
             nextUpdate before the {who} it covers are refused (fail-open window)"
        );
    }
}

fn server_mode(a: &ServerArgs, previous: Option<&ServerPolicy>) -> Result<Mode, ConfigFail> {
    let policy = server_policy(a, previous)?;
    let backend = match &a.upstream {
        Some(u) => Backend::Upstream {
            addr: resolve(u, "--upstream")?,
            proxy_protocol: a.proxy_protocol,
        },
        None => Backend::Service(Arc::new(IdentityResponder)),
    };
    Ok(Mode::Terminate {
        policies: policy.into_set(),
        backend,
    })
}

fn client_mode(a: &ClientArgs) -> Result<Mode, ConfigFail> {
    let now = Time::now();
    let connect = resolve(&a.connect, "--connect")?;
    let host = a
        .connect
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&a.connect);
    let server_name = a.server_name.clone().unwrap_or_else(|| host.to_string());
    let trust = TrustStore::from_pem_file(&a.ca).map_err(|e| file_err("--ca", e))?;
    let crls = load_crls(&a.crl, &trust, &format!("--ca {}", a.ca.display()))?;
    let mut b = ClientPolicy::builder(trust)
        .versions(versions(&a.common))
        .handshake_timeout(secs(a.common.handshake_timeout, "--handshake-timeout")?);
    if let (Some(c), Some(k)) = (&a.cert, &a.key) {
        let chain = pki::certificates_from_file(c).map_err(|e| file_err("--cert", e))?;
        let key = pki::private_key_from_file(k).map_err(|e| file_err("--key", e))?;
        b = b.client_cert(chain, key);
    }
    if !crls.is_empty() {
        let mut r = Revocation::with_named_crls(crls.iter().cloned());
        r.grace = Duration::from_secs(a.crl_grace);
        b = b.revocation(r);
    }
    if !a.alpn.is_empty() {
        b = b.alpn(&a.alpn);
    }
    for u in &a.verify_uri {
        b = b.allow(IdentityRule::UriPrefix(u.clone()));
    }
    for cn in &a.verify_cn {
        b = b.allow(IdentityRule::CommonName(cn.clone()));
    }
    for d in &a.verify_dns {
        b = b.allow(IdentityRule::Dns(d.clone()));
    }
    for h in &a.verify_spki {
        let pin = Sha256::from_hex(h)
            .ok_or_else(|| ConfigFail(format!("--verify-spki: {h:?} is not 64 hex digits")))?;
        b = b.allow(IdentityRule::SpkiSha256(pin));
    }
    let policy = b
        .build(now)
        .map_err(|e| policy_err(&crls, a.cert.as_deref(), a.key.as_deref(), e))?;
    log_warnings(policy.warnings(), "client certificate");
    Ok(Mode::Originate {
        policy,
        connect,
        server_name,
    })
}

fn limits(c: &Common) -> Result<Limits, ConfigFail> {
    Ok(Limits {
        max_connections: c.max_connections.max(1),
        idle_timeout: secs(c.idle_timeout, "--idle-timeout")?,
        drain_timeout: secs(c.drain_timeout, "--drain-timeout")?,
        ..Limits::default()
    })
}

fn current_policy(mode: &Mode) -> Option<ServerPolicy> {
    match mode {
        Mode::Terminate { policies, .. } => policies.policies().next().cloned(),
        Mode::Originate { .. } => None,
    }
}

/// Run until SIGINT/SIGTERM; SIGHUP (and the reload interval) calls `reload`. `watched` names
/// the files the policy is built from (their dates are reported as metrics).
fn run(
    listeners: Vec<Listener>,
    common: &Common,
    watched: exposition::Watched,
    reload: impl Fn(Option<ServerPolicy>) -> Result<Mode, ConfigFail> + Send + Sync + 'static,
) -> Result<(), ConfigFail> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Every connection needs a descriptor (two when proxied): raise the soft limit to the hard
    // one, as servers do, and say so when --max-connections cannot be reached.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // One descriptor per connection, two when it is proxied to an upstream.
            let need = common.max_connections as u64 + 64;
            if limit < need {
                warn!(
                    "open-files limit is {limit}: fewer than the {need} descriptors that \
                     --max-connections {} needs (twice that when proxying; raise `ulimit -n` \
                     or lower --max-connections)",
                    common.max_connections
                );
            }
        }
        Err(e) => warn!("cannot raise the open-files limit: {e}"),
    }
    let handle = onerecord_tls_mio::start(ServerConfig {
        listeners,
        workers: common.workers.unwrap_or(0),
        limits: limits(common)?,
        reuse_port: common.reuse_port,
    })
    .map_err(|e| ConfigFail(format!("--listen {e}")))?;
    let handle = Arc::new(handle);
    let status = exposition::Status::new(handle.metrics().clone(), watched);
    if let Some(m) = common.metrics {
        metrics_http::serve(m, status.clone())
            .map_err(|e| ConfigFail(format!("--metrics {m}: {e}")))?;
        info!("metrics on http://{m}/metrics (and /healthz, /readyz)");
    }
    // Listening with the policy loaded above.
    status.set_ready(true);
    for a in handle.local_addrs() {
        info!("listening on {a}");
    }
    if common.reuse_port {
        warn!(
            "--reuse-port: other processes of this user that also set SO_REUSEPORT can bind {} \
             and take a share of the connections (meant for a zero-downtime replacement)",
            handle
                .local_addrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let reload = Arc::new(reload);
    let do_reload = {
        let handle = handle.clone();
        let reload = reload.clone();
        let status = status.clone();
        move |trigger: exposition::Trigger| {
            // Every listener runs the same mode (as at start): build it once per reload.
            let previous = handle.mode(0).as_ref().and_then(current_policy);
            match reload(previous) {
                Ok(mode) => {
                    // Before the log line, so whoever reads it sees the new dates.
                    status.loaded();
                    if handle.reload_all(mode) {
                        for addr in handle.local_addrs() {
                            info!("reloaded policy for {addr}");
                        }
                    } else {
                        status.reload_failed(trigger);
                    }
                }
                Err(ConfigFail(e)) => {
                    status.reload_failed(trigger);
                    error!("reload failed, keeping the current policy: {e}");
                }
            }
        }
    };
    if let Some(s) = common.reload_interval {
        let every = secs(s, "--reload-interval")?.max(Duration::from_secs(1));
        let r = do_reload.clone();
        std::thread::Builder::new()
            .name("reload-timer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    r(exposition::Trigger::Interval);
                }
            })
            .map_err(|e| ConfigFail(e.to_string()))?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| ConfigFail(format!("signals: {e}")))?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                info!("SIGHUP: reloading");
                do_reload(exposition::Trigger::Signal);
            }
            _ => {
                // Not ready before the line that says so: whoever reads the log and then asks
                // /readyz must see 503.
                status.set_ready(false);
                info!("shutting down: draining connections");
                handle.shutdown();
                break;
            }
        }
    }
    handle.join();
    info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Server(a) => {
            warn_crl_grace(a.crl_grace, "clients");
            server_mode(&a, None).and_then(|mode| {
                warn_anonymous_clients(&a);
                let listeners = a
                    .listen
                    .iter()
                    .map(|addr| Listener {
                        addr: *addr,
                        mode: mode.clone(),
                    })
                    .collect();
                let args = a.clone();
                let watched = exposition::watched(Some(&a.cert), a.client_ca.as_deref(), &a.crl);
                // A reload keeps the ticket keys and session cache only while the CA bundle
                // and CRLs are unchanged: the library's reload trust rule (ServerHandle::reload).
                run(listeners, &a.common, watched, move |prev| {
                    server_mode(&args, prev.as_ref())
                })
            })
        }
        Command::Client(a) => {
            warn_crl_grace(a.crl_grace, "partners");
            client_mode(&a).and_then(|mode| {
                let listeners = vec![Listener {
                    addr: a.listen,
                    mode,
                }];
                let args = a.clone();
                let watched = exposition::watched(a.cert.as_deref(), Some(&a.ca), &a.crl);
                run(listeners, &a.common, watched, move |_| client_mode(&args))
            })
        }
        Command::Dev(d) => dev::start(&d),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ConfigFail(e)) => {
            // Once: as a log line (text or JSON, like every other line), or on stderr when
            // RUST_LOG silences errors.
            if log::log_enabled!(log::Level::Error) {
                error!("{e}");
            } else {
                eprintln!("onerecord-gateway: {e}");
            }
            ExitCode::from(2)
        }
    }
}

/// The server arguments dev mode runs with.
fn dev_server_args(dir: &Path, d: &DevArgs) -> ServerArgs {
    ServerArgs {
        listen: vec![d.listen],
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: Some(dir.join("ca.pem")),
        require_client_cert: true,
        crl: Vec::new(),
        crl_allow_unknown: false,
        crl_grace: 0,
        allow_uri: Vec::new(),
        allow_cn: Vec::new(),
        allow_dns: Vec::new(),
        allow_spki: Vec::new(),
        alpn: Vec::new(),
        upstream: None,
        proxy_protocol: false,
        ticket_keys: None,
        common: Common {
            workers: d.workers,
            metrics: d.metrics,
            handshake_timeout: 10.0,
            idle_timeout: 120.0,
            max_connections: 10_000,
            drain_timeout: 10.0,
            tls13_only: false,
            reload_interval: None,
            reuse_port: false,
        },
    }
}
