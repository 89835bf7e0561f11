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

mod config_file;
mod dev;
mod egress;
mod exposition;
mod logging;
mod metrics_http;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use config_file::{ClientAuthMode, Labels, ListenerPlan, Plan, Site};
use egress::EgressPlan;
use log::{error, info, warn};
use onerecord_tls::{
    ClientAuth, ClientPolicy, IdentityRule, Revocation, ServerPolicies, ServerPolicy, Sha256, Time,
    TrustStore, UnknownStatus, Versions, Warning, pki,
};
use onerecord_tls_mio::{
    Backend, ForwardProxy, ForwardProxyConfig, HttpProxy, HttpProxyConfig, IdentityResponder,
    Limits, Listener, Mode, Partner, ServerConfig, SniBackends,
};

/// The configuration file's keys (README.md, "The configuration file", says more).
macro_rules! config_help {
    () => {
        "\
Configuration file (server --config FILE, check --config FILE; or ONERECORD_GATEWAY_CONFIG):
  TOML. Unknown keys, missing files and contradictions exit 2 as FILE:LINE:COL: key ...
  Relative paths are relative to the file's directory. SIGHUP and reload_interval re-read
  it; a file that does not load keeps the running configuration (ERROR names key and line);
  listener addresses do not change on reload (logged).
  Global keys (the common flags): workers, metrics = \"IP:PORT\", handshake_timeout,
    idle_timeout, drain_timeout, reload_interval (seconds), max_connections, tls13_only,
    reuse_port, ticket_keys = \"FILE\" (every site loads it).
  [[listener]]       address = \"IP:PORT\" (one per table, not repeated)
  [[listener.site]]  chosen by the client's SNI (exact name, then *.parent, then default):
    server_names = [\"a.example\", \"*.b.example\"]   default = true (unknown or no SNI;
                     without a default site those get unrecognized_name)
    cert, key        certificate chain and key (PEM)                      [required]
    client_auth      \"none\" | \"optional\" | \"required\" [default: \"required\" with
                     client_ca, \"none\" without]; \"optional\" is warned at start
    client_ca        CA bundle client certificates chain to (needed by optional/required)
    crl = [FILE..]   crl_grace = SECS   crl_allow_unknown = BOOL (need client_ca)
    allow_uri, allow_cn, allow_dns, allow_spki = [..] (need client authentication; any rule
                     makes a certificate required)
    alpn = [..]
    upstream         \"http://HOST:PORT\" (HTTP mode) | \"HOST:PORT\" (byte stream) | absent
                     (identity responder)
    proxy_protocol   byte stream only: PROXY v2 header first
    client_cert_header, xfcc = BOOL [true], upstream_timeout = SECS [60]: HTTP mode only
  Contradictions (exit 2): allow rules, crl or client_ca with client_auth = \"none\";
  optional/required without client_ca; proxy_protocol with an http:// upstream; HTTP-mode
  keys with a byte-stream upstream; two sites claiming one name or two defaults on one
  listener; a site with neither server_names nor default; two sites with the same upstream
  but different client_cert_header (give it to every site of that upstream, so that forged
  copies are removed everywhere); --config with other server flags."
    };
}

/// The client (egress) configuration file's keys and the egress proxy's behaviour.
macro_rules! client_config_help {
    () => {
        "\
Egress (client without --connect): an HTTP/1.1 forward proxy for the local application
  (curl -x http://ADDR, Java -Dhttp.proxyHost/-Dhttp.proxyPort). Requests in absolute form,
  http:// or https:// (default port 443 for both), each sent over TLS (mTLS with a client
  certificate; never plaintext) to that host and port, verified for that name, in origin form
  with the partner's Host; kept-alive connections pooled per partner and reused. CONNECT gets
  405 (a tunnel would bypass the company's certificate and policy); a destination outside
  --allow-destination gets 403; Proxy-* headers are not forwarded. A partner that refuses us
  or fails verification: 502 naming it and the reason, and a WARN (onerecord::partner); DNS
  failure or a refused connection: 502; connect or TLS timeout, response timeout: 504.

Client configuration file (client --config FILE; or ONERECORD_GATEWAY_CLIENT_CONFIG;
check --config takes it too: a file with a top-level listen, allow_destination or
[[partner]] and no [[listener]] is a client file):
  TOML, relative paths relative to its directory, errors as FILE:LINE:COL: key ...
  listen = \"IP:PORT\"       the local address                               [required]
  The common keys (workers, metrics, handshake_timeout, idle_timeout, drain_timeout,
    reload_interval, max_connections, tls13_only, reuse_port), alpn = [..],
    allow_destination = [\"HOST[:PORT]\", \"*.PARENT[:PORT]\"], resolve = [\"HOST:PORT:ADDR\"],
    connect_timeout = SECS [10], upstream_timeout = SECS [60].
  Defaults for every destination: ca, cert, key, crl = [..], crl_grace, verify_uri,
    verify_cn, verify_dns, verify_spki. Without a top-level ca, only partners are reached
    (other destinations get 403).
  [[partner]]  hosts = [\"partner.example\", \"*.acme.example:8443\"]  [required]
    cert, key    the client certificate presented to these hosts [default: the top-level]
    ca, crl, crl_grace   [default: the top-level ones; crl only with the top-level ca]
    verify_uri, verify_cn, verify_dns, verify_spki   identity the partner must show (any
                 one set replaces the top-level rules)
    address      \"IP:PORT\": connect there instead of resolving the host
  Contradictions (exit 2): cert without key (or key without cert), crl_grace without crl, a
  host claimed by two partners, a partner host that allow_destination does not cover, a
  partner without hosts or without any ca, --config with other client flags.
  SIGHUP and reload_interval re-read the file; a partner whose files and settings did not
  change keeps its pooled connections and sessions; listen does not change on reload."
    };
}

/// Signals, logging, exit codes, the PROXY header.
macro_rules! after_help {
    () => {
        "\
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
  verified identity: PP2_TYPE_SSL (verify result, TLS version, certificate CN, cipher, and the
  client's leaf certificate in DER as sub-TLV 0x28, as ghostunnel's tls-full mode sends it),
  PP2_TYPE_AUTHORITY (SNI), PP2_TYPE_ALPN, one TLV 0xE0 per URI SAN of the client certificate
  (ONE Record IDs) and TLV 0xE1 with its SPKI SHA-256 (32 bytes)."
    };
}

/// What `--help` says after the options: signals, logging, exit codes, the PROXY header.
const AFTER_HELP: &str = after_help!();

/// What `check --help` says after the options: the configuration files' keys.
const CONFIG_HELP: &str = concat!(config_help!(), "\n\n", client_config_help!());

/// What `client --help` says after the options: the egress proxy, its file, and the rest.
const CLIENT_HELP: &str = concat!(client_config_help!(), "\n\n", after_help!());

/// What `server --help` says after the options: both.
const SERVER_HELP: &str = concat!(after_help!(), "\n\n", config_help!());

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
    #[command(after_help = SERVER_HELP)]
    Server(ServerArgs),
    /// Egress: an HTTP/1.1 forward proxy that sends the local application's requests over
    /// TLS/mTLS to its partners' ONE Record servers (or, with --connect, forward plain TCP to
    /// one server).
    #[command(after_help = CLIENT_HELP)]
    Client(ClientArgs),
    /// Generate a development PKI and run the server with mTLS on 127.0.0.1:8443.
    #[command(after_help = AFTER_HELP)]
    Dev(DevArgs),
    /// Validate a configuration file without starting: parse it, load every file it names,
    /// build every policy and check the contradictions; print one line per site and exit 0,
    /// or the error (FILE:LINE:COL: key ...) and exit 2.
    #[command(after_help = CONFIG_HELP)]
    Check(CheckArgs),
}

#[derive(Args, Debug, Clone)]
struct CheckArgs {
    /// The configuration file (TOML) to check.
    #[arg(long, value_name = "FILE", env = "ONERECORD_GATEWAY_CONFIG")]
    config: PathBuf,
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
    /// onerecord_upstream_errors_total, onerecord_upstream_connections_total{kind},
    /// onerecord_accept_errors_total,
    /// client egress proxy, per destination (host:port): onerecord_egress_requests_total,
    /// onerecord_egress_connections_total (TLS connections opened),
    /// onerecord_egress_handshakes_total{kind} (full, resumed),
    /// onerecord_egress_failures_total{reason} (denied, dns, connect, connect_timeout, refused,
    /// verification, handshake_timeout, tls, closed, bad_response, response_timeout),
    /// onerecord_egress_pool_idle_connections;
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
    /// Read everything from this TOML file instead of the flags below (several listeners,
    /// several sites per listener chosen by SNI; see README.md, "The configuration file").
    /// Relative paths in it are relative to its directory. Not combinable with the other
    /// server flags (exit 2); SIGHUP and `reload_interval` re-read it.
    #[arg(long, value_name = "FILE", env = "ONERECORD_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (repeat for several). Required without --config.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM, leaf first). Required without --config.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Server private key (PEM: PKCS#8, SEC1 or PKCS#1). Required without --config.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
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
    /// ALPN protocols to accept, in preference order (e.g. h2, http/1.1). The HTTP mode and
    /// the identity responder speak HTTP/1.1: with them only http/1.1 and http/1.0 (exit 2
    /// otherwise); a byte-stream upstream may take any.
    #[arg(long, value_name = "PROTO")]
    alpn: Vec<String>,
    /// Where decrypted connections go (default: answer with the identity). `http://HOST:PORT`
    /// selects the HTTP mode: each request is forwarded with the verified client in
    /// x-forwarded-client-cert and x-forwarded-{for,proto,host} (forged ones removed), over
    /// pooled kept-alive upstream connections. `HOST:PORT` forwards the decrypted byte stream
    /// as it is (optionally after a PROXY v2 header).
    #[arg(long, value_name = "URL|HOST:PORT")]
    upstream: Option<String>,
    /// Byte-stream mode: send a PROXY protocol v2 header first: the client address and the
    /// verified identity (CN, URI SANs, SPKI SHA-256, TLS version, SNI; see below). Not with
    /// an http:// upstream (exit 2).
    #[arg(long, requires = "upstream")]
    proxy_protocol: bool,
    /// HTTP mode: also pass the client certificate as its URL-encoded PEM in this header
    /// (nginx's $ssl_client_escaped_cert, e.g. x-ssl-client-cert); an incoming header of
    /// that name is always removed.
    #[arg(long, value_name = "NAME", requires = "upstream")]
    client_cert_header: Option<String>,
    /// HTTP mode: seconds to wait for the upstream's response head and for each read of its
    /// body before answering 504 [default: 60].
    #[arg(long, value_name = "SECS", requires = "upstream")]
    upstream_timeout: Option<f64>,
    /// HTTP mode: do not add x-forwarded-client-cert (an incoming one is still removed).
    #[arg(long, requires = "upstream")]
    no_xfcc: bool,
    /// Session-ticket keys shared by a fleet (base64 lines of 48 bytes, first encrypts).
    #[arg(long, value_name = "FILE")]
    ticket_keys: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Read everything from this TOML client file instead of the flags below (the egress
    /// proxy with [[partner]] entries: a client certificate, CA bundle, CRLs and identity
    /// rules per partner; see README.md, "Egress"). Relative paths in it are relative to its
    /// directory. Not combinable with the other client flags (exit 2); SIGHUP and
    /// `reload_interval` re-read it.
    #[arg(long, value_name = "FILE", env = "ONERECORD_GATEWAY_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// Local plain-TCP address to listen on. Required without --config.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The one ONE Record server (HOST:PORT) every local connection is forwarded to, as a
    /// byte stream. Without it the gateway is the egress proxy: an HTTP/1.1 forward proxy
    /// that sends each request over TLS to the partner its absolute URL names.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Name to send as SNI and verify (default: HOST of --connect). Only with --connect.
    #[arg(long, value_name = "NAME", requires = "connect")]
    server_name: Option<String>,
    /// CA bundle that the partner's server certificate must chain to. Required without
    /// --config.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
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
    /// ALPN protocols to offer. The egress proxy (without --connect) speaks HTTP/1.1 to
    /// partners: only http/1.1 and http/1.0 there (exit 2 otherwise).
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
    /// Egress: let the application reach only this destination (repeatable): HOST (any
    /// port), HOST:PORT, or *.PARENT[:PORT] for every name under PARENT (a.PARENT,
    /// b.a.PARENT; not PARENT itself). Other destinations get 403. Without any, every host
    /// whose certificate chains to --ca may be reached (logged as a warning).
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "connect")]
    allow_destination: Vec<String>,
    /// Egress: connect to ADDR for requests to HOST on PORT instead of resolving HOST
    /// (repeatable; as curl's --resolve). The partner is still verified for HOST.
    #[arg(long, value_name = "HOST:PORT:ADDR", conflicts_with = "connect")]
    resolve: Vec<String>,
    /// Egress: seconds for a partner's TCP connection and TLS handshake before the
    /// application gets 504 [default: 10].
    #[arg(long, value_name = "SECS", conflicts_with = "connect")]
    connect_timeout: Option<f64>,
    /// Egress: seconds to wait for a partner's response head and for each read of its body
    /// before the application gets 504 [default: 60].
    #[arg(long, value_name = "SECS", conflicts_with = "connect")]
    upstream_timeout: Option<f64>,
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

/// A policy that does not build from its certificate and key: name both files (each as
/// `(label, path)`).
fn cert_key_err(
    cert: Option<(&str, &Path)>,
    key: Option<(&str, &Path)>,
    e: impl std::fmt::Display,
) -> ConfigFail {
    match (cert, key) {
        (Some((cl, c)), Some((kl, k))) => {
            ConfigFail(format!("{cl} {} / {kl} {}: {e}", c.display(), k.display()))
        }
        _ => ConfigFail(format!("policy: {e}")),
    }
}

/// Read every CRL file of `files` (`crl_label` names them; a damaged one names its file) and
/// check each CRL against the CA bundle `trust` read from `ca_label` (issuer in the bundle,
/// signature): a foreign or forged CRL is a configuration error naming its file.
fn load_crls(
    files: &[PathBuf],
    trust: &TrustStore,
    crl_label: &str,
    ca_label: &str,
) -> Result<Vec<(String, onerecord_tls::Crl)>, ConfigFail> {
    let mut crls = Vec::new();
    for f in files {
        let name = f.display().to_string();
        for crl in pki::crls_from_file(f).map_err(|e| file_err(crl_label, e))? {
            pki::check_crl(&crl, trust).map_err(|e| {
                ConfigFail(format!(
                    "{crl_label} {name}: {e} (checked against {ca_label})"
                ))
            })?;
            crls.push((name.clone(), crl));
        }
    }
    Ok(crls)
}

/// A policy that does not build: a CRL problem names the CRL's file (`crl_label`), anything
/// else the certificate and key.
fn policy_err(
    crls: &[(String, onerecord_tls::Crl)],
    crl_label: &str,
    cert: Option<(&str, &Path)>,
    key: Option<(&str, &Path)>,
    e: onerecord_tls::ConfigError,
) -> ConfigFail {
    use onerecord_tls::ConfigError as E;
    match &e {
        E::BadCrl { index, .. }
        | E::CrlIssuerUnknown { index, .. }
        | E::CrlIssuerNotCrlSigner { index, .. }
        | E::CrlBadSignature { index, .. } => match crls.get(*index) {
            Some((file, _)) => ConfigFail(format!("{crl_label} {file}: {e}")),
            None => ConfigFail(format!("{crl_label}: {e}")),
        },
        E::CrlWithoutClientAuth => ConfigFail(format!("{crl_label}: {e}")),
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

/// Build one site's policy (re-reading every file it names), keeping the resumption state
/// of `previous` on reload. Errors name the flag or the file's key and line.
fn site_policy(
    s: &Site,
    common: &Common,
    previous: Option<&ServerPolicy>,
) -> Result<ServerPolicy, ConfigFail> {
    let now = Time::now();
    let l = &s.labels;
    let chain = pki::certificates_from_file(&s.cert).map_err(|e| file_err(&l.of("cert"), e))?;
    let key = pki::private_key_from_file(&s.key).map_err(|e| file_err(&l.of("key"), e))?;
    let mut b = ServerPolicy::builder(chain, key)
        .versions(versions(common))
        .handshake_timeout(secs(common.handshake_timeout, "--handshake-timeout")?);
    if let Some(prev) = previous {
        b = b.resumption_from(prev);
    }
    let mut crls = Vec::new();
    let crl_label = l.of("crl");
    match (&s.client_ca, s.client_auth) {
        (Some(ca), ClientAuthMode::Optional | ClientAuthMode::Required) => {
            let ca_label = l.of("client_ca");
            let trust = TrustStore::from_pem_file(ca).map_err(|e| file_err(&ca_label, e))?;
            crls = load_crls(
                &s.crl,
                &trust,
                &crl_label,
                &format!("{ca_label} {}", ca.display()),
            )?;
            b = b.client_auth(if s.client_auth == ClientAuthMode::Required {
                ClientAuth::Required(trust)
            } else {
                ClientAuth::Optional(trust)
            });
        }
        // Plan::check refuses these before any file is read; kept as errors, not panics.
        (Some(_), ClientAuthMode::None)
        | (None, ClientAuthMode::Optional)
        | (None, ClientAuthMode::Required) => {
            return Err(ConfigFail(format!(
                "{}: client_auth and client_ca disagree",
                l.of("client_auth")
            )));
        }
        (None, ClientAuthMode::None) => {
            if let Some(f) = s.crl.first() {
                return Err(ConfigFail(format!(
                    "{crl_label} {}: needs --ca (CRLs check client certificates)",
                    f.display()
                )));
            }
        }
    }
    if !crls.is_empty() {
        let mut r = Revocation::with_named_crls(crls.iter().cloned());
        if s.crl_allow_unknown {
            r.unknown_status = UnknownStatus::Allow;
        }
        r.grace = Duration::from_secs(s.crl_grace);
        b = b.revocation(r);
    }
    // Checked here so that a bad rule names its flag or key.
    let rule = |key: &str, r: IdentityRule| {
        r.validate()
            .map(|()| r)
            .map_err(|e| file_err(&l.of(key), e))
    };
    for u in &s.allow_uri {
        b = b.allow(rule("allow_uri", IdentityRule::UriPrefix(u.clone()))?);
    }
    for cn in &s.allow_cn {
        b = b.allow(rule("allow_cn", IdentityRule::CommonName(cn.clone()))?);
    }
    for d in &s.allow_dns {
        b = b.allow(rule("allow_dns", IdentityRule::Dns(d.clone()))?);
    }
    for h in &s.allow_spki {
        let pin = Sha256::from_hex(h).ok_or_else(|| {
            ConfigFail(format!(
                "{}: {h:?} is not 64 hex digits",
                l.of("allow_spki")
            ))
        })?;
        b = b.allow(IdentityRule::SpkiSha256(pin));
    }
    if !s.alpn.is_empty() {
        b = b.alpn(&s.alpn);
    }
    if let Some(f) = &s.ticket_keys {
        let keys = onerecord_tls_mio::tickets::load(f, Duration::from_secs(12 * 3600))
            .map_err(|e| file_err(&l.of("ticket_keys"), e))?;
        b = b.tickets(Some(keys));
    }
    let (cert_label, key_label) = (l.of("cert"), l.of("key"));
    let p = b.build(now).map_err(|e| {
        policy_err(
            &crls,
            &crl_label,
            Some((&cert_label, &s.cert)),
            Some((&key_label, &s.key)),
            e,
        )
    })?;
    log_warnings(p.warnings(), &s.cert.display().to_string());
    Ok(p)
}

fn resolve(s: &str, flag: &str) -> Result<SocketAddr, ConfigFail> {
    s.to_socket_addrs()
        .map_err(|e| ConfigFail(format!("{flag} {s}: {e}")))?
        .next()
        .ok_or_else(|| ConfigFail(format!("{flag} {s}: no address")))
}

/// Say at start when a site's client authentication is weaker than its settings may read.
fn warn_anonymous_clients(s: &Site) {
    if s.client_auth == ClientAuthMode::Optional && s.rules() == 0 {
        match &s.labels {
            Labels::Flags => warn!(
                "--ca without --require-client-cert or an --allow-* rule: clients without a \
                 certificate are admitted (anonymous); certificates that are presented are \
                 verified"
            ),
            Labels::File { .. } => warn!(
                "{}: client_auth = \"optional\" on site {}: clients without a certificate are \
                 admitted (anonymous); certificates that are presented are verified",
                s.labels.of("client_auth"),
                s.name()
            ),
        }
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

/// The start-up warnings of every site of `plan` (weaker than the settings may read).
fn warn_plan(plan: &Plan) {
    let mut seen = std::collections::HashSet::new();
    for l in &plan.listeners {
        for s in &l.sites {
            // The flags give every listener the same site: warn once.
            if !seen.insert(s.labels.of("client_auth")) {
                continue;
            }
            match &s.labels {
                Labels::Flags => warn_crl_grace(s.crl_grace, "clients"),
                Labels::File { .. } if s.crl_grace > 0 => warn!(
                    "{} {}: an expired CRL is still used for {} s after its nextUpdate before \
                     the clients it covers are refused (fail-open window)",
                    s.labels.of("crl_grace"),
                    s.crl_grace,
                    s.crl_grace
                ),
                Labels::File { .. } => {}
            }
            warn_anonymous_clients(s);
        }
    }
}

/// The HTTP mode's settings of a site (`upstream = "http://..."` or `--upstream http://...`).
#[derive(Clone, Debug, PartialEq)]
struct HttpSettings {
    upstream: SocketAddr,
    client_cert_header: Option<String>,
    xfcc: bool,
    upstream_timeout: Duration,
}

/// Where a site's decrypted connections go.
#[derive(Clone, Debug, PartialEq)]
enum SiteBackend {
    /// The identity responder (no upstream).
    Identity,
    /// The byte stream to a TCP upstream.
    Stream {
        addr: SocketAddr,
        proxy_protocol: bool,
    },
    /// The HTTP mode.
    Http(HttpSettings),
}

impl SiteBackend {
    fn describe(&self) -> String {
        match self {
            SiteBackend::Identity => "identity responder".to_string(),
            SiteBackend::Stream {
                addr,
                proxy_protocol,
            } => format!(
                "byte stream to {addr}{}",
                if *proxy_protocol {
                    " with PROXY v2"
                } else {
                    ""
                }
            ),
            SiteBackend::Http(h) => format!(
                "HTTP to http://{}{}{}",
                h.upstream,
                if h.xfcc {
                    " with x-forwarded-client-cert"
                } else {
                    ""
                },
                h.client_cert_header
                    .as_deref()
                    .map(|n| format!(" and {n}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The HTTP mode's upstream: `http://HOST[:PORT][/]` (port 80 when none is given).
fn http_upstream(url: &str, label: &str) -> Result<SocketAddr, ConfigFail> {
    let rest = url.get(7..).unwrap_or_default();
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty() || host_port.contains(['/', '?', '#', '@']) {
        return Err(ConfigFail(format!(
            "{label} {url}: the HTTP mode takes http://HOST:PORT (no path, query or user)"
        )));
    }
    let has_port = match host_port.rsplit_once(':') {
        Some((h, _)) => !h.starts_with('[') || h.ends_with(']'),
        None => false,
    };
    if has_port {
        resolve(host_port, label)
    } else {
        resolve(&format!("{host_port}:80"), label)
    }
}

/// A site's backend, its upstream resolved (nothing is connected).
fn site_backend(s: &Site) -> Result<SiteBackend, ConfigFail> {
    let l = &s.labels;
    let Some(u) = &s.upstream else {
        return Ok(SiteBackend::Identity);
    };
    if !s.is_http() {
        if u.contains("://") {
            return Err(ConfigFail(format!(
                "{} {u}: only http:// URLs (HTTP mode) or HOST:PORT (byte stream)",
                l.of("upstream")
            )));
        }
        return Ok(SiteBackend::Stream {
            addr: resolve(u, &l.of("upstream"))?,
            proxy_protocol: s.proxy_protocol,
        });
    }
    let timeout = match s.upstream_timeout {
        Some(t) => secs(t, &l.of("upstream_timeout"))?,
        None => Duration::from_secs(60),
    };
    if timeout.is_zero() {
        return Err(ConfigFail(format!(
            "{}: must be more than 0 seconds",
            l.of("upstream_timeout")
        )));
    }
    Ok(SiteBackend::Http(HttpSettings {
        upstream: http_upstream(u, &l.of("upstream"))?,
        client_cert_header: s.client_cert_header.clone(),
        xfcc: s.xfcc,
        upstream_timeout: timeout,
    }))
}

/// The library backend of the HTTP mode: a header name the proxy refuses (one it manages
/// itself, or not a field name) is a configuration error.
fn http_backend(h: &HttpSettings) -> Result<Backend, ConfigFail> {
    let mut c = HttpProxyConfig::new(h.upstream);
    c.client_cert_header = h.client_cert_header.clone();
    c.xfcc = h.xfcc;
    c.upstream_timeout = h.upstream_timeout;
    HttpProxy::new(c)
        .map(|p| Backend::Service(Arc::new(p)))
        .map_err(|e| ConfigFail(format!("upstream http://{}: {e}", h.upstream)))
}

/// The library backend of a site.
fn backend(b: &SiteBackend) -> Result<Backend, ConfigFail> {
    Ok(match b {
        SiteBackend::Identity => Backend::Service(Arc::new(IdentityResponder)),
        SiteBackend::Stream {
            addr,
            proxy_protocol,
        } => Backend::Upstream {
            addr: *addr,
            proxy_protocol: *proxy_protocol,
        },
        SiteBackend::Http(h) => http_backend(h)?,
    })
}

/// A listener's backend: the one its sites share, or one per site chosen by SNI
/// ([`Backend::BySni`], with the names and default of the listener's `ServerPolicies`).
/// Sites with the same backend share one constructed backend.
fn listener_backend(l: &ListenerPlan, backends: &[SiteBackend]) -> Result<Backend, ConfigFail> {
    let Some(first) = backends.first() else {
        return Err(ConfigFail(format!("{}: no site", l.label)));
    };
    if backends.iter().all(|b| b == first) {
        return backend(first);
    }
    let mut built: Vec<(&SiteBackend, Backend)> = Vec::new();
    let mut default = None;
    let mut named = Vec::new();
    for (s, b) in l.sites.iter().zip(backends) {
        let made = match built.iter().find(|(k, _)| *k == b) {
            Some((_, done)) => done.clone(),
            None => {
                let done = backend(b)?;
                built.push((b, done.clone()));
                done
            }
        };
        if s.default {
            default = Some(made.clone());
        }
        for n in &s.server_names {
            named.push((n.clone(), made.clone()));
        }
    }
    let mut sites = SniBackends::new(default);
    for (n, b) in named {
        sites = sites.with_name(&n, b);
    }
    Ok(Backend::BySni(sites))
}

/// A listener's sites, built: the policies by SNI and each site's policy and backend.
struct BuiltSites {
    policies: ServerPolicies,
    sites: Vec<(ServerPolicy, SiteBackend)>,
}

/// Build every site of `l` (reading its files), keeping the resumption state of the site
/// that served the same name in `previous`.
fn build_sites(
    l: &ListenerPlan,
    common: &Common,
    previous: Option<&Mode>,
) -> Result<BuiltSites, ConfigFail> {
    let prev_set = match previous {
        Some(Mode::Terminate { policies, .. }) => Some(policies),
        _ => None,
    };
    let mut sites = Vec::new();
    for s in &l.sites {
        let prev = prev_set.and_then(|p| {
            if s.default {
                p.select(None)
            } else {
                p.select(s.server_names.first().map(String::as_str))
            }
        });
        sites.push((site_policy(s, common, prev)?, site_backend(s)?));
    }
    let default = l
        .sites
        .iter()
        .zip(&sites)
        .find(|(s, _)| s.default)
        .map(|(_, (p, _))| p.clone());
    let mut policies = ServerPolicies::new(default);
    for (s, (p, _)) in l.sites.iter().zip(&sites) {
        for n in &s.server_names {
            policies = policies
                .with_name(n, p.clone())
                .map_err(|e| file_err(&s.labels.of("server_names"), e))?;
        }
    }
    Ok(BuiltSites { policies, sites })
}

/// The mode of listener `l` (re-reading every file), keeping the resumption state of
/// `previous`.
fn listener_mode(
    l: &ListenerPlan,
    common: &Common,
    previous: Option<&Mode>,
) -> Result<Mode, ConfigFail> {
    let built = build_sites(l, common, previous)?;
    let backends: Vec<SiteBackend> = built.sites.iter().map(|(_, b)| b.clone()).collect();
    Ok(Mode::Terminate {
        policies: built.policies,
        backend: listener_backend(l, &backends)?,
    })
}

/// The mode of every listener of `plan`, in order (`previous`: the running modes, by
/// listener index). From the flags every listener serves the same site: one mode (one
/// policy, one set of ticket keys and one session cache) shared by all, as before.
fn plan_modes(plan: &Plan, previous: &[Option<Mode>]) -> Result<Vec<Mode>, ConfigFail> {
    if plan.file.is_none() {
        let Some(first) = plan.listeners.first() else {
            return Ok(Vec::new());
        };
        let mode = listener_mode(
            first,
            &plan.common,
            previous.first().and_then(Option::as_ref),
        )?;
        return Ok(vec![mode; plan.listeners.len()]);
    }
    plan.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| listener_mode(l, &plan.common, previous.get(i).and_then(Option::as_ref)))
        .collect()
}

/// The files the plan's policies are built from (for the metrics).
fn plan_watched(plan: &Plan) -> exposition::Watched {
    let mut w = exposition::Watched::default();
    for s in plan.listeners.iter().flat_map(|l| &l.sites) {
        for (list, p) in [
            (&mut w.own, Some(&s.cert)),
            (&mut w.ca, s.client_ca.as_ref()),
        ] {
            if let Some(p) = p {
                if !list.contains(p) {
                    list.push(p.clone());
                }
            }
        }
        for c in &s.crl {
            if !w.crl.contains(c) {
                w.crl.push(c.clone());
            }
        }
    }
    w
}

/// `check --config FILE`: parse, load every file, build every policy and backend plan,
/// without binding; one line per site on stdout.
fn check(path: &Path) -> Result<(), ConfigFail> {
    if config_file::is_client_file(path) {
        return check_client(path);
    }
    let plan = Plan::from_file(path)?;
    secs(plan.common.idle_timeout, "idle_timeout")?;
    let mut lines = Vec::new();
    for l in &plan.listeners {
        let built = build_sites(l, &plan.common, None)?;
        for (s, (p, b)) in l.sites.iter().zip(&built.sites) {
            // Built as `server` would build it (a header name the HTTP mode refuses fails
            // here), then dropped.
            backend(b)?;
            let names = if s.server_names.is_empty() {
                "(no name)".to_string()
            } else {
                s.server_names.join(",")
            };
            lines.push(format!(
                "{} {names}{}: cert {:?} (not after {}), client_auth {}, {} allow rule(s), {} \
                 CRL file(s), {}",
                l.address,
                if s.default { " [default]" } else { "" },
                p.certificate().subject,
                p.certificate().not_after,
                match s.client_auth {
                    ClientAuthMode::None => "none",
                    ClientAuthMode::Optional => "optional",
                    ClientAuthMode::Required => "required",
                },
                s.rules(),
                s.crl.len(),
                b.describe()
            ));
        }
    }
    for line in lines {
        println!("{line}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// `client`: the egress proxy (from `--config` or the flags), or with `--connect` the
/// one-partner byte forwarder.
fn client(a: &ClientArgs) -> Result<(), ConfigFail> {
    if let Some(path) = &a.config {
        return EgressPlan::from_file(path).and_then(serve_egress);
    }
    let Some(target) = &a.connect else {
        return EgressPlan::from_flags(a).and_then(serve_egress);
    };
    let Some(listen) = a.listen else {
        return Err(ConfigFail(
            "--listen is required (or --config FILE)".to_string(),
        ));
    };
    warn_crl_grace(a.crl_grace, "partners");
    let mode = client_mode(a, target)?;
    let listeners = vec![Listener { addr: listen, mode }];
    let args = a.clone();
    let target = target.clone();
    let watched = exposition::watched(a.cert.as_deref(), a.ca.as_deref(), &a.crl);
    run(listeners, &a.common, watched, None, move |_| {
        client_mode(&args, &target).map(Reloaded::All)
    })
}

/// The egress proxy `plan` describes, with the policies `built` from it.
fn forward_proxy(plan: &EgressPlan, built: &egress::Built) -> Result<ForwardProxy, ConfigFail> {
    let mut c = ForwardProxyConfig::new(built.default.as_ref().map(|d| d.policy.clone()));
    c.partners = plan
        .partners
        .iter()
        .zip(&built.partners)
        .map(|(p, b)| {
            let mut partner =
                Partner::new(p.hosts.iter().map(ToString::to_string), b.policy.clone());
            partner.connect = p.address;
            partner
        })
        .collect();
    c.allow = plan.allow.iter().map(ToString::to_string).collect();
    c.resolve = plan
        .resolve
        .iter()
        .map(|r| {
            (
                format!("{}:{}", r.host, r.port),
                SocketAddr::new(r.addr, r.port),
            )
        })
        .collect();
    c.connect_timeout = plan.connect_timeout;
    c.upstream_timeout = plan.upstream_timeout;
    let what = match &plan.file {
        Some(f) => format!("--config {}", f.display()),
        None => "client".to_string(),
    };
    ForwardProxy::new(c).map_err(|e| ConfigFail(format!("{what}: {e}")))
}

/// Run the egress proxy `plan` describes; a reload re-reads the file (or the files the flags
/// name) and keeps every partner's policy whose files and settings did not change.
fn serve_egress(plan: EgressPlan) -> Result<(), ConfigFail> {
    egress::log_plan(&plan);
    let built = egress::build(&plan, None)?;
    let proxy = forward_proxy(&plan, &built)?;
    let stats = Arc::new(exposition::Egress::default());
    stats.set(proxy.clone());
    // Plain TCP from the local applications: what their proxy settings speak.
    let listeners = vec![Listener {
        addr: plan.listen,
        mode: Mode::Plain {
            service: Arc::new(proxy),
        },
    }];
    let watched = egress::watched(&plan);
    let common = plan.common.clone();
    let state = Mutex::new((plan, built));
    let reload_stats = stats.clone();
    run(listeners, &common, watched, Some(stats), move |_| {
        let mut state = state
            .lock()
            .map_err(|_| ConfigFail("reload: an earlier reload panicked".to_string()))?;
        let (running, previous) = &*state;
        let fresh = match &running.file {
            Some(path) => EgressPlan::from_file(path)?,
            None => running.clone(),
        };
        if fresh.listen != running.listen {
            warn!(
                "{}: listen {} changed: the address does not change on reload (restart to \
                 listen there)",
                fresh.file.as_deref().unwrap_or(Path::new("")).display(),
                fresh.listen
            );
        }
        let built = egress::build(&fresh, Some(previous))?;
        let proxy = forward_proxy(&fresh, &built)?;
        reload_stats.set(proxy.clone());
        info!("egress: reloaded ({} partner(s))", fresh.partners.len());
        *state = (fresh, built);
        // New local connections get the new proxy; open ones finish with the old.
        Ok(Reloaded::Each(vec![Some(Mode::Plain {
            service: Arc::new(proxy),
        })]))
    })
}

/// `check --config FILE` for a client (egress) file: parse it, build every policy; one line
/// per partner on stdout.
fn check_client(path: &Path) -> Result<(), ConfigFail> {
    let plan = EgressPlan::from_file(path)?;
    let built = egress::build(&plan, None)?;
    for line in egress::describe(&plan, &built) {
        println!("{line}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// The one-partner byte forwarder (`client --connect HOST:PORT`).
fn client_mode(a: &ClientArgs, target: &str) -> Result<Mode, ConfigFail> {
    let now = Time::now();
    let Some(ca) = &a.ca else {
        return Err(ConfigFail("--ca is required".to_string()));
    };
    let connect = resolve(target, "--connect")?;
    let host = target
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(target);
    let server_name = a.server_name.clone().unwrap_or_else(|| host.to_string());
    let trust = TrustStore::from_pem_file(ca).map_err(|e| file_err("--ca", e))?;
    let crls = load_crls(&a.crl, &trust, "--crl", &format!("--ca {}", ca.display()))?;
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
    let policy = b.build(now).map_err(|e| {
        policy_err(
            &crls,
            "--crl",
            a.cert.as_deref().map(|c| ("--cert", c)),
            a.key.as_deref().map(|k| ("--key", k)),
            e,
        )
    })?;
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

/// What a reload installs.
enum Reloaded {
    /// One mode for every listener (they keep sharing one policy: [`ServerHandle::reload_all`]).
    All(Mode),
    /// A mode per listener, by index; `None` keeps the listener's mode.
    Each(Vec<Option<Mode>>),
}

/// Run until SIGINT/SIGTERM; SIGHUP (and the reload interval) calls `reload` with the running
/// mode of each listener. `watched` names the files the policies are built from (their dates
/// are reported as metrics); `egress`, the egress proxy's per-destination counters.
fn run(
    listeners: Vec<Listener>,
    common: &Common,
    watched: exposition::Watched,
    egress: Option<Arc<exposition::Egress>>,
    reload: impl Fn(&[Option<Mode>]) -> Result<Reloaded, ConfigFail> + Send + Sync + 'static,
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
    let status = exposition::Status::new(handle.metrics().clone(), watched, egress);
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
            let previous: Vec<Option<Mode>> = (0..handle.local_addrs().len())
                .map(|i| handle.mode(i))
                .collect();
            match reload(&previous) {
                Ok(Reloaded::All(mode)) => {
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
                Ok(Reloaded::Each(modes)) => {
                    status.loaded();
                    let mut ok = true;
                    for (i, mode) in modes.into_iter().enumerate() {
                        let Some(mode) = mode else { continue };
                        if handle.reload(i, mode) {
                            if let Some(addr) = handle.local_addrs().get(i) {
                                info!("reloaded policy for {addr}");
                            }
                        } else {
                            ok = false;
                        }
                    }
                    if !ok {
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

/// `--config` says everything: any other server (client) flag given on the command line with
/// it is a contradiction (exit 2 naming the flag).
fn config_only(matches: &clap::ArgMatches) -> Result<(), ConfigFail> {
    use clap::parser::ValueSource;
    let Some((name @ ("server" | "client"), sub)) = matches.subcommand() else {
        return Ok(());
    };
    if sub.value_source("config").is_none() {
        return Ok(());
    }
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(command) = cmd.find_subcommand(name) else {
        return Ok(());
    };
    let keys = if name == "server" {
        "its global keys and [[listener.site]] keys are the server flags"
    } else {
        "its top-level keys are the client flags, [[partner]] entries add per-partner policies"
    };
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "config" || id == "log_format" {
            continue;
        }
        if sub.value_source(id) == Some(ValueSource::CommandLine) {
            let flag = arg.get_long().unwrap_or(id);
            let config = sub
                .get_one::<PathBuf>("config")
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(ConfigFail(format!(
                "--config {config} cannot be combined with --{flag}: the file says everything \
                 ({keys})"
            )));
        }
    }
    Ok(())
}

/// Start the server `plan` describes and run it; a reload re-reads the file (or the files the
/// flags name).
fn serve(plan: Plan) -> Result<(), ConfigFail> {
    let modes = plan_modes(&plan, &[])?;
    serve_with(plan, modes)
}

/// [`serve`] with the modes already built from `plan`.
fn serve_with(plan: Plan, modes: Vec<Mode>) -> Result<(), ConfigFail> {
    warn_plan(&plan);
    for l in plan.listeners.iter().filter(|_| plan.file.is_some()) {
        for s in &l.sites {
            info!(
                "{} site {}{}: client_auth {:?}, {}",
                l.address,
                s.server_names.join(","),
                if s.default { " [default]" } else { "" },
                s.client_auth,
                site_backend(s).map(|b| b.describe()).unwrap_or_default()
            );
        }
    }
    let listeners = plan
        .listeners
        .iter()
        .zip(modes)
        .map(|(l, mode)| Listener {
            addr: l.address,
            mode,
        })
        .collect();
    let watched = plan_watched(&plan);
    let common = plan.common.clone();
    // A reload keeps the ticket keys and session cache only while the CA bundle and CRLs are
    // unchanged: the library's reload trust rule (ServerHandle::reload).
    run(listeners, &common, watched, None, move |previous| {
        let Some(path) = &plan.file else {
            let mode = plan_modes(&plan, previous)?.into_iter().next();
            return mode
                .map(Reloaded::All)
                .ok_or_else(|| ConfigFail("--listen: no listener".to_string()));
        };
        let fresh = Plan::from_file(path)?;
        reload_plan(&plan, &fresh, previous)
    })
}

/// The modes a re-read configuration file gives the running listeners, matched by address:
/// addresses do not change on reload (a listener the file moved, added or removed is logged
/// and keeps running as it was, or is not started, until a restart).
fn reload_plan(
    running: &Plan,
    fresh: &Plan,
    previous: &[Option<Mode>],
) -> Result<Reloaded, ConfigFail> {
    let (a, b) = (&running.common, &fresh.common);
    let changed: Vec<&str> = [
        ("workers", a.workers != b.workers),
        ("metrics", a.metrics != b.metrics),
        ("idle_timeout", a.idle_timeout != b.idle_timeout),
        ("drain_timeout", a.drain_timeout != b.drain_timeout),
        ("max_connections", a.max_connections != b.max_connections),
        ("reload_interval", a.reload_interval != b.reload_interval),
        ("reuse_port", a.reuse_port != b.reuse_port),
    ]
    .into_iter()
    .filter_map(|(k, c)| c.then_some(k))
    .collect();
    if !changed.is_empty() {
        warn!(
            "{}: {} changed: these keys take effect at the next start (a reload rebuilds the \
             sites, handshake_timeout and tls13_only)",
            fresh.file.as_deref().unwrap_or(Path::new("")).display(),
            changed.join(", ")
        );
    }
    let mut modes = vec![None; running.listeners.len()];
    for l in &fresh.listeners {
        match running
            .listeners
            .iter()
            .position(|r| r.address == l.address)
        {
            Some(i) => {
                let prev = previous.get(i).and_then(Option::as_ref);
                modes[i] = Some(listener_mode(l, &fresh.common, prev)?);
            }
            None => warn!(
                "{}: {} is not a running listener: addresses do not change on reload \
                 (restart to listen there)",
                l.label, l.address
            ),
        }
    }
    for (r, m) in running.listeners.iter().zip(&modes) {
        if m.is_none() {
            warn!(
                "listener {} is no longer in the file: addresses do not change on reload, it \
                 keeps its current configuration until a restart",
                r.address
            );
        }
    }
    Ok(Reloaded::Each(modes))
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    logging::init(cli.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Server(a) => config_only(&matches).and_then(|()| match &a.config {
            Some(path) => Plan::from_file(path).and_then(serve),
            None => Plan::from_flags(&a).and_then(serve),
        }),
        Command::Check(c) => check(&c.config),
        Command::Client(a) => config_only(&matches).and_then(|()| client(&a)),
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
        config: None,
        listen: vec![d.listen],
        cert: Some(dir.join("server.pem")),
        key: Some(dir.join("server.key")),
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
        client_cert_header: None,
        upstream_timeout: None,
        no_xfcc: false,
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
