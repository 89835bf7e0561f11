//! Egress: `client` without `--connect` is an HTTP/1.1 forward proxy for the local
//! application, which sends its requests in absolute form (`GET http://partner.example:8443/x`);
//! each goes over TLS (mTLS with a client certificate) to that partner.
//!
//! An [`EgressPlan`] is what to run, from the flags ([`EgressPlan::from_flags`]) or a client
//! configuration file ([`EgressPlan::from_file`]): the local address, the destination
//! allow-list, connect overrides, timeouts, the default policy inputs (`ca`, `cert`, `key`,
//! `crl`) and the `[[partner]]` entries, each with the hosts it covers and its own policy
//! inputs. [`build`] turns a plan into one [`ClientPolicy`] per partner plus the default one,
//! reading every file; a reload keeps a partner's policy object (so its pooled connections and
//! session cache) when none of its files or settings changed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use onerecord_tls::{ClientPolicy, IdentityRule, Revocation, Sha256, Time, TrustStore, pki};
use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{Labels, Source, parse, take};
use crate::{ClientArgs, Common, ConfigFail};

/// Default seconds to wait for a partner's TCP connection and TLS handshake to complete.
pub const CONNECT_TIMEOUT: f64 = 10.0;
/// Default seconds to wait for a partner's response head and each read of its body.
pub const UPSTREAM_TIMEOUT: f64 = 60.0;

/// A destination pattern: `HOST`, `*.PARENT`, optionally with `:PORT` (any port without).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Lowercase host name or `*.parent`.
    pub host: String,
    /// The port, or any.
    pub port: Option<u16>,
}

impl Destination {
    /// Parse `HOST[:PORT]` or `*.PARENT[:PORT]` (`what` names the flag or key in errors).
    pub fn parse(s: &str, what: &str) -> Result<Self, ConfigFail> {
        let bad = |why: &str| ConfigFail(format!("{what} {s:?}: {why}"));
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1-65535"))?;
                (h, Some(port))
            }
            None => (s, None),
        };
        let name = host.strip_prefix("*.").unwrap_or(host);
        if !is_host_name(name) {
            return Err(bad(
                "not a host name (letters, digits, '-' and '.'; a wildcard only as a leading \
                 \"*.\")",
            ));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// Whether `s` is a DNS host name (or an IPv4 address written as one): non-empty labels of
/// letters, digits and hyphens, not starting or ending with a hyphen.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A partner's `address`: `IP:PORT` to connect to instead of resolving its hosts.
fn connect_addr(s: &str, what: &str) -> Result<SocketAddr, ConfigFail> {
    s.parse::<SocketAddr>().map_err(|_| {
        ConfigFail(format!(
            "{what} {s:?}: an IP address and port, IP:PORT (no name: it is the address to \
             use instead of resolving the partner's)"
        ))
    })
}

/// `--resolve HOST:PORT:ADDR` (as curl's): requests to HOST on PORT connect to ADDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    /// Lowercase host name.
    pub host: String,
    /// The request port this applies to.
    pub port: u16,
    /// The address to connect to (on `port`).
    pub addr: IpAddr,
}

impl Resolve {
    /// Parse `HOST:PORT:ADDR` (`ADDR` may be an IPv6 address, with or without brackets).
    pub fn parse(s: &str) -> Result<Self, ConfigFail> {
        let bad = |why: &str| ConfigFail(format!("--resolve {s:?}: {why} (HOST:PORT:ADDR)"));
        let mut parts = s.splitn(3, ':');
        let (Some(host), Some(port), Some(addr)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("three parts needed"));
        };
        if !is_host_name(host) {
            return Err(bad("HOST is not a host name"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("PORT must be 1-65535"))?;
        let addr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| bad("ADDR is not an IP address"))?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            addr,
        })
    }
}

/// The policy inputs of a partner, or the defaults: absent fields of a partner come from the
/// defaults (`cert` and `key` together; `crl` only with the default `ca`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyInputs {
    /// CA bundle the partner's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate chain to present.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// CRL files checked for the partner's certificate.
    pub crl: Vec<PathBuf>,
    /// Seconds an expired CRL stays in use.
    pub crl_grace: u64,
    /// Identity rules the partner's certificate must match (one of them).
    pub verify_uri: Vec<String>,
    /// Subject CN rules.
    pub verify_cn: Vec<String>,
    /// DNS SAN rules.
    pub verify_dns: Vec<String>,
    /// SPKI SHA-256 pins (hex).
    pub verify_spki: Vec<String>,
}

/// One `[[partner]]` entry.
#[derive(Clone, Debug)]
pub struct Partner {
    /// The destinations it covers (`partner.example`, `*.acme.example`, with optional port).
    pub hosts: Vec<Destination>,
    /// Its own inputs (absent ones come from the defaults).
    pub inputs: PolicyInputs,
    /// Connect here instead of resolving the host (whatever port the request names).
    pub address: Option<SocketAddr>,
    /// How errors name its keys.
    pub labels: Labels,
}

impl Partner {
    /// What logs call it: its first host pattern.
    pub fn name(&self) -> String {
        self.hosts
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// Everything the egress proxy runs.
#[derive(Clone, Debug)]
pub struct EgressPlan {
    /// The local address the application connects to.
    pub listen: SocketAddr,
    /// The global settings (the common flags).
    pub common: Common,
    /// ALPN protocols offered to partners.
    pub alpn: Vec<String>,
    /// Where the application may go (empty: anywhere).
    pub allow: Vec<Destination>,
    /// Connect overrides (`--resolve`).
    pub resolve: Vec<Resolve>,
    /// Seconds for a partner's TCP connect and TLS handshake (then 504).
    pub connect_timeout: Duration,
    /// Seconds for a partner's response (then 504).
    pub upstream_timeout: Duration,
    /// The default policy inputs (top-level keys, or the flags).
    pub defaults: PolicyInputs,
    /// How errors name the defaults.
    pub labels: Labels,
    /// The partners, in file order.
    pub partners: Vec<Partner>,
    /// The file the plan was read from (`None`: the flags).
    pub file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientToml {
    listen: Spanned<String>,
    workers: Option<usize>,
    metrics: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<f64>>,
    idle_timeout: Option<Spanned<f64>>,
    max_connections: Option<usize>,
    drain_timeout: Option<Spanned<f64>>,
    tls13_only: Option<bool>,
    reload_interval: Option<Spanned<f64>>,
    reuse_port: Option<bool>,
    alpn: Option<Spanned<Vec<String>>>,
    allow_destination: Option<Spanned<Vec<String>>>,
    resolve: Option<Spanned<Vec<String>>>,
    connect_timeout: Option<Spanned<f64>>,
    upstream_timeout: Option<Spanned<f64>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    crl: Option<Spanned<Vec<PathBuf>>>,
    crl_grace: Option<Spanned<u64>>,
    verify_uri: Option<Spanned<Vec<String>>>,
    verify_cn: Option<Spanned<Vec<String>>>,
    verify_dns: Option<Spanned<Vec<String>>>,
    verify_spki: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    partner: Vec<Spanned<PartnerToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerToml {
    hosts: Option<Spanned<Vec<String>>>,
    address: Option<Spanned<String>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    crl: Option<Spanned<Vec<PathBuf>>>,
    crl_grace: Option<Spanned<u64>>,
    verify_uri: Option<Spanned<Vec<String>>>,
    verify_cn: Option<Spanned<Vec<String>>>,
    verify_dns: Option<Spanned<Vec<String>>>,
    verify_spki: Option<Spanned<Vec<String>>>,
}

/// A duration of `s` seconds, more than zero (`what` names it).
fn positive(s: f64, what: &str) -> Result<Duration, ConfigFail> {
    let d = crate::secs(s, what)?;
    if d.is_zero() {
        return Err(ConfigFail(format!("{what}: must be more than 0 seconds")));
    }
    Ok(d)
}

impl EgressPlan {
    /// The client flags without `--connect` as a plan (no partners: one default policy).
    pub fn from_flags(a: &ClientArgs) -> Result<Self, ConfigFail> {
        let Some(listen) = a.listen else {
            return Err(ConfigFail(
                "--listen is required (or --config FILE)".to_string(),
            ));
        };
        let allow = a
            .allow_destination
            .iter()
            .map(|d| Destination::parse(d, "--allow-destination"))
            .collect::<Result<_, _>>()?;
        let resolve = a
            .resolve
            .iter()
            .map(|r| Resolve::parse(r))
            .collect::<Result<_, _>>()?;
        let plan = Self {
            listen,
            common: a.common.clone(),
            alpn: a.alpn.clone(),
            allow,
            resolve,
            connect_timeout: positive(
                a.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
                "--connect-timeout",
            )?,
            upstream_timeout: positive(
                a.upstream_timeout.unwrap_or(UPSTREAM_TIMEOUT),
                "--upstream-timeout",
            )?,
            defaults: PolicyInputs {
                ca: a.ca.clone(),
                cert: a.cert.clone(),
                key: a.key.clone(),
                crl: a.crl.clone(),
                crl_grace: a.crl_grace,
                verify_uri: a.verify_uri.clone(),
                verify_cn: a.verify_cn.clone(),
                verify_dns: a.verify_dns.clone(),
                verify_spki: a.verify_spki.clone(),
            },
            labels: Labels::Flags,
            partners: Vec::new(),
            file: None,
        };
        plan.check()?;
        Ok(plan)
    }

    /// Read and check the client configuration file `path`. Relative paths in it are
    /// relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFail> {
        let (file, source): (ClientToml, Arc<Source>) = parse(path)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        let at = |span: std::ops::Range<usize>, key: &str| {
            format!("{}: {key}", source.position(span.start))
        };
        let duration = |v: Option<Spanned<f64>>, key: &str| -> Result<Option<f64>, ConfigFail> {
            match v {
                Some(d) => {
                    crate::secs(*d.get_ref(), &at(d.span(), key))?;
                    Ok(Some(d.into_inner()))
                }
                None => Ok(None),
            }
        };
        let listen_label = at(file.listen.span(), "listen");
        let listen = file.listen.get_ref().parse::<SocketAddr>().map_err(|e| {
            ConfigFail(format!(
                "{listen_label} {:?}: {e} (IP:PORT)",
                file.listen.get_ref()
            ))
        })?;
        let metrics = match file.metrics {
            Some(m) => Some(m.get_ref().parse::<SocketAddr>().map_err(|e| {
                ConfigFail(format!(
                    "{} {:?}: {e}",
                    at(m.span(), "metrics"),
                    m.get_ref()
                ))
            })?),
            None => None,
        };
        let common = Common {
            workers: file.workers,
            metrics,
            handshake_timeout: duration(file.handshake_timeout, "handshake_timeout")?
                .unwrap_or(10.0),
            idle_timeout: duration(file.idle_timeout, "idle_timeout")?.unwrap_or(120.0),
            max_connections: file.max_connections.unwrap_or(10_000),
            drain_timeout: duration(file.drain_timeout, "drain_timeout")?.unwrap_or(10.0),
            tls13_only: file.tls13_only.unwrap_or(false),
            reload_interval: duration(file.reload_interval, "reload_interval")?,
            reuse_port: file.reuse_port.unwrap_or(false),
        };
        let connect_timeout = match file.connect_timeout {
            Some(t) => positive(*t.get_ref(), &at(t.span(), "connect_timeout"))?,
            None => Duration::from_secs_f64(CONNECT_TIMEOUT),
        };
        let upstream_timeout = match file.upstream_timeout {
            Some(t) => positive(*t.get_ref(), &at(t.span(), "upstream_timeout"))?,
            None => Duration::from_secs_f64(UPSTREAM_TIMEOUT),
        };
        let mut keys = HashMap::new();
        let allow = match file.allow_destination {
            Some(list) => {
                keys.insert("allow_destination", list.span());
                let label = at(list.span(), "allow_destination");
                list.into_inner()
                    .iter()
                    .map(|d| Destination::parse(d, &label))
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        let resolve = match file.resolve {
            Some(list) => {
                let label = at(list.span(), "resolve");
                list.into_inner()
                    .iter()
                    .map(|r| {
                        Resolve::parse(r).map_err(|ConfigFail(e)| {
                            ConfigFail(format!(
                                "{label}{}",
                                e.strip_prefix("--resolve").unwrap_or(&e)
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        let alpn = take(&mut keys, "alpn", file.alpn).unwrap_or_default();
        let defaults = PolicyInputs {
            ca: take(&mut keys, "ca", file.ca).map(rel),
            cert: take(&mut keys, "cert", file.cert).map(rel),
            key: take(&mut keys, "key", file.key).map(rel),
            crl: take(&mut keys, "crl", file.crl)
                .unwrap_or_default()
                .into_iter()
                .map(rel)
                .collect(),
            crl_grace: take(&mut keys, "crl_grace", file.crl_grace).unwrap_or(0),
            verify_uri: take(&mut keys, "verify_uri", file.verify_uri).unwrap_or_default(),
            verify_cn: take(&mut keys, "verify_cn", file.verify_cn).unwrap_or_default(),
            verify_dns: take(&mut keys, "verify_dns", file.verify_dns).unwrap_or_default(),
            verify_spki: take(&mut keys, "verify_spki", file.verify_spki).unwrap_or_default(),
        };
        let labels = Labels::File {
            source: source.clone(),
            keys,
            site: 0..0,
        };
        let mut partners = Vec::new();
        for p in file.partner {
            let span = p.span();
            let p = p.into_inner();
            let mut keys = HashMap::new();
            let hosts_label = p
                .hosts
                .as_ref()
                .map_or_else(|| at(span.clone(), "hosts"), |h| at(h.span(), "hosts"));
            let hosts = take(&mut keys, "hosts", p.hosts)
                .unwrap_or_default()
                .iter()
                .map(|h| Destination::parse(h, &hosts_label))
                .collect::<Result<Vec<_>, _>>()?;
            let address = match p.address {
                Some(a) => {
                    let label = at(a.span(), "address");
                    keys.insert("address", a.span());
                    Some(connect_addr(a.get_ref(), &label)?)
                }
                None => None,
            };
            let inputs = PolicyInputs {
                ca: take(&mut keys, "ca", p.ca).map(rel),
                cert: take(&mut keys, "cert", p.cert).map(rel),
                key: take(&mut keys, "key", p.key).map(rel),
                crl: take(&mut keys, "crl", p.crl)
                    .unwrap_or_default()
                    .into_iter()
                    .map(rel)
                    .collect(),
                crl_grace: take(&mut keys, "crl_grace", p.crl_grace).unwrap_or(0),
                verify_uri: take(&mut keys, "verify_uri", p.verify_uri).unwrap_or_default(),
                verify_cn: take(&mut keys, "verify_cn", p.verify_cn).unwrap_or_default(),
                verify_dns: take(&mut keys, "verify_dns", p.verify_dns).unwrap_or_default(),
                verify_spki: take(&mut keys, "verify_spki", p.verify_spki).unwrap_or_default(),
            };
            partners.push(Partner {
                hosts,
                inputs,
                address,
                labels: Labels::File {
                    source: source.clone(),
                    keys,
                    site: span,
                },
            });
        }
        let plan = Self {
            listen,
            common,
            alpn,
            allow,
            resolve,
            connect_timeout,
            upstream_timeout,
            defaults,
            labels,
            partners,
            file: Some(path.to_path_buf()),
        };
        plan.check()?;
        Ok(plan)
    }

    /// The contradictions that need no file read.
    fn check(&self) -> Result<(), ConfigFail> {
        check_inputs(&self.defaults, &self.labels)?;
        // The proxy speaks HTTP/1.1 to partners: a partner that picked h2 would not understand
        // the request.
        if let Some(p) = self
            .alpn
            .iter()
            .find(|p| !matches!(p.as_str(), "http/1.1" | "http/1.0"))
        {
            return Err(ConfigFail(format!(
                "{}: {p:?}: the egress proxy speaks HTTP/1.1 to partners; offer \"http/1.1\" \
                 (or no ALPN)",
                self.labels.of("alpn")
            )));
        }
        if self.defaults.ca.is_none() && self.partners.is_empty() {
            return Err(ConfigFail(format!(
                "{}: is required (the CA bundle partners' certificates must chain to)",
                self.labels.of("ca")
            )));
        }
        let mut seen: Vec<(&Destination, &Partner)> = Vec::new();
        for p in &self.partners {
            check_inputs(&p.inputs, &p.labels)?;
            if p.hosts.is_empty() {
                return Err(ConfigFail(format!(
                    "{}: a [[partner]] needs hosts = [\"partner.example\", ...]",
                    p.labels.of("hosts")
                )));
            }
            if p.inputs.ca.is_none() && self.defaults.ca.is_none() {
                return Err(ConfigFail(format!(
                    "{}: partner {} has no ca and there is no top-level ca (the CA bundle its \
                     certificate must chain to)",
                    p.labels.of("ca"),
                    p.name()
                )));
            }
            for h in &p.hosts {
                if let Some((_, other)) = seen.iter().find(|(d, _)| *d == h) {
                    return Err(ConfigFail(format!(
                        "{}: {h} is already a host of the partner at {}",
                        p.labels.of("hosts"),
                        other.labels.of("hosts")
                    )));
                }
                if !self.allow.is_empty() && !self.allow.iter().any(|a| covers(a, h)) {
                    return Err(ConfigFail(format!(
                        "{}: {h} is not allowed by {} (add it there, or remove the partner)",
                        p.labels.of("hosts"),
                        self.labels.of("allow_destination")
                    )));
                }
                seen.push((h, p));
            }
        }
        Ok(())
    }

    /// The default inputs completed for partner `p` (or the defaults when `None`), each with
    /// the label of the key it came from.
    pub fn effective(&self, p: Option<&Partner>) -> Effective {
        let d = &self.defaults;
        let dl = &self.labels;
        let Some(p) = p else {
            return Effective {
                inputs: d.clone(),
                ca: dl.of("ca"),
                cert: dl.of("cert"),
                key: dl.of("key"),
                crl: dl.of("crl"),
                verify_spki: dl.of("verify_spki"),
                rule: dl.clone(),
            };
        };
        let pl = &p.labels;
        let i = &p.inputs;
        let own_ca = i.ca.is_some();
        let own_cert = i.cert.is_some();
        // The default CRLs are issued by the default CA: a partner with its own CA does not
        // inherit them.
        let own_crl = own_ca || !i.crl.is_empty();
        let rules = i.verify_uri.len() + i.verify_cn.len() + i.verify_dns.len();
        let own_rules = rules + i.verify_spki.len() > 0;
        let pick = |own: bool, key: &str| if own { pl.of(key) } else { dl.of(key) };
        Effective {
            inputs: PolicyInputs {
                ca: if own_ca { i.ca.clone() } else { d.ca.clone() },
                cert: if own_cert {
                    i.cert.clone()
                } else {
                    d.cert.clone()
                },
                key: if own_cert {
                    i.key.clone()
                } else {
                    d.key.clone()
                },
                crl: if own_crl {
                    i.crl.clone()
                } else {
                    d.crl.clone()
                },
                crl_grace: if own_crl { i.crl_grace } else { d.crl_grace },
                verify_uri: if own_rules {
                    i.verify_uri.clone()
                } else {
                    d.verify_uri.clone()
                },
                verify_cn: if own_rules {
                    i.verify_cn.clone()
                } else {
                    d.verify_cn.clone()
                },
                verify_dns: if own_rules {
                    i.verify_dns.clone()
                } else {
                    d.verify_dns.clone()
                },
                verify_spki: if own_rules {
                    i.verify_spki.clone()
                } else {
                    d.verify_spki.clone()
                },
            },
            ca: pick(own_ca, "ca"),
            cert: pick(own_cert, "cert"),
            key: pick(own_cert, "key"),
            crl: pick(own_crl, "crl"),
            verify_spki: pick(own_rules, "verify_spki"),
            rule: if own_rules { pl.clone() } else { dl.clone() },
        }
    }
}

/// Whether allow-list entry `a` covers partner host pattern `h`: the same name, or `a` a
/// wildcard whose parent `h` is under; `a` without a port covers every port.
fn covers(a: &Destination, h: &Destination) -> bool {
    let port = a.port.is_none() || a.port == h.port;
    let host = a.host == h.host
        || a.host
            .strip_prefix('*')
            .is_some_and(|suffix| h.host.ends_with(suffix) && h.host.len() > suffix.len());
    port && host
}

/// The contradictions of one set of inputs.
fn check_inputs(i: &PolicyInputs, l: &Labels) -> Result<(), ConfigFail> {
    match (&i.cert, &i.key) {
        (Some(_), None) => {
            return Err(ConfigFail(format!(
                "{}: a client certificate needs its key (key = \"FILE\")",
                l.of("cert")
            )));
        }
        (None, Some(_)) => {
            return Err(ConfigFail(format!(
                "{}: a key needs its certificate (cert = \"FILE\")",
                l.of("key")
            )));
        }
        _ => {}
    }
    if i.crl_grace > 0 && i.crl.is_empty() {
        return Err(ConfigFail(format!(
            "{}: needs crl (the CRLs it applies to)",
            l.of("crl_grace")
        )));
    }
    for h in &i.verify_spki {
        if Sha256::from_hex(h).is_none() {
            return Err(ConfigFail(format!(
                "{}: {h:?} is not 64 hex digits",
                l.of("verify_spki")
            )));
        }
    }
    Ok(())
}

/// A partner's inputs completed with the defaults, and the names of their keys.
#[derive(Clone, Debug)]
pub struct Effective {
    /// The inputs.
    pub inputs: PolicyInputs,
    ca: String,
    cert: String,
    key: String,
    crl: String,
    verify_spki: String,
    rule: Labels,
}

/// Build the client policy of `e` (reading every file it names). Errors name the flag or
/// the file's key and line.
pub fn client_policy(
    e: &Effective,
    common: &Common,
    alpn: &[String],
) -> Result<ClientPolicy, ConfigFail> {
    let now = Time::now();
    let i = &e.inputs;
    let Some(ca) = &i.ca else {
        return Err(ConfigFail(format!("{}: is required", e.ca)));
    };
    let trust = TrustStore::from_pem_file(ca).map_err(|err| crate::file_err(&e.ca, err))?;
    let crls = crate::load_crls(
        &i.crl,
        &trust,
        &e.crl,
        &format!("{} {}", e.ca, ca.display()),
    )?;
    let mut b = ClientPolicy::builder(trust)
        .versions(crate::versions(common))
        .handshake_timeout(crate::secs(
            common.handshake_timeout,
            "--handshake-timeout",
        )?);
    if let (Some(c), Some(k)) = (&i.cert, &i.key) {
        let chain = pki::certificates_from_file(c).map_err(|err| crate::file_err(&e.cert, err))?;
        let key = pki::private_key_from_file(k).map_err(|err| crate::file_err(&e.key, err))?;
        b = b.client_cert(chain, key);
    }
    if !crls.is_empty() {
        let mut r = Revocation::with_named_crls(crls.iter().cloned());
        r.grace = Duration::from_secs(i.crl_grace);
        b = b.revocation(r);
    }
    if !alpn.is_empty() {
        b = b.alpn(alpn);
    }
    let rule = |key: &str, r: IdentityRule| {
        r.validate()
            .map(|()| r)
            .map_err(|err| crate::file_err(&e.rule.of(key), err))
    };
    for u in &i.verify_uri {
        b = b.allow(rule("verify_uri", IdentityRule::UriPrefix(u.clone()))?);
    }
    for cn in &i.verify_cn {
        b = b.allow(rule("verify_cn", IdentityRule::CommonName(cn.clone()))?);
    }
    for d in &i.verify_dns {
        b = b.allow(rule("verify_dns", IdentityRule::Dns(d.clone()))?);
    }
    for h in &i.verify_spki {
        let pin = Sha256::from_hex(h)
            .ok_or_else(|| ConfigFail(format!("{}: {h:?} is not 64 hex digits", e.verify_spki)))?;
        b = b.allow(IdentityRule::SpkiSha256(pin));
    }
    let policy = b.build(now).map_err(|err| {
        crate::policy_err(
            &crls,
            &e.crl,
            i.cert.as_deref().map(|c| (e.cert.as_str(), c)),
            i.key.as_deref().map(|k| (e.key.as_str(), k)),
            err,
        )
    })?;
    crate::log_warnings(policy.warnings(), "client certificate");
    Ok(policy)
}

/// A built policy and what it was built from (its files' bytes and its settings): a reload
/// whose inputs are the same keeps the policy object.
#[derive(Clone, Debug)]
pub struct BuiltPolicy {
    /// The policy.
    pub policy: ClientPolicy,
    inputs: Vec<u8>,
}

/// The bytes of every file `e` names, and its settings.
fn fingerprint(e: &Effective, common: &Common, alpn: &[String]) -> Vec<u8> {
    let i = &e.inputs;
    let mut out = format!(
        "{i:?}|{alpn:?}|{}|{}",
        common.tls13_only, common.handshake_timeout
    )
    .into_bytes();
    for f in i.ca.iter().chain(&i.cert).chain(&i.key).chain(&i.crl) {
        out.extend_from_slice(&std::fs::read(f).unwrap_or_default());
        out.push(0);
    }
    out
}

/// A plan's policies: the default one (when there is a default `ca`) and one per partner, in
/// order.
#[derive(Clone, Debug)]
pub struct Built {
    /// The policy for destinations no partner covers (`None`: those are refused).
    pub default: Option<BuiltPolicy>,
    /// One per `[[partner]]`.
    pub partners: Vec<BuiltPolicy>,
}

/// Build every policy of `plan`; a policy whose inputs are those of the same entry in
/// `previous` is kept as it is (same object: same pool, same session cache).
pub fn build(plan: &EgressPlan, previous: Option<&Built>) -> Result<Built, ConfigFail> {
    let one = |e: Effective, prev: Option<&BuiltPolicy>| -> Result<BuiltPolicy, ConfigFail> {
        let inputs = fingerprint(&e, &plan.common, &plan.alpn);
        if let Some(p) = prev.filter(|p| p.inputs == inputs) {
            return Ok(p.clone());
        }
        Ok(BuiltPolicy {
            policy: client_policy(&e, &plan.common, &plan.alpn)?,
            inputs,
        })
    };
    let default = match plan.defaults.ca {
        Some(_) => Some(one(
            plan.effective(None),
            previous.and_then(|p| p.default.as_ref()),
        )?),
        None => None,
    };
    let mut partners = Vec::new();
    for (n, p) in plan.partners.iter().enumerate() {
        let prev = previous.and_then(|b| b.partners.get(n));
        partners.push(one(plan.effective(Some(p)), prev)?);
    }
    Ok(Built { default, partners })
}

/// Say at start what the proxy allows and presents; WARN when any destination is allowed.
/// The warning for a local listener that is not on a loopback address.
fn exposure_warning(listen: SocketAddr) -> Option<String> {
    (!listen.ip().is_loopback()).then(|| {
        format!(
            "egress: listening on {listen}, not a loopback address: the local side is plain \
             HTTP, and whoever reaches it sends requests under the company's certificate; keep \
             it on 127.0.0.1 or behind a firewall"
        )
    })
}

pub fn log_plan(plan: &EgressPlan) {
    let cert = |i: &PolicyInputs| {
        i.cert
            .as_ref()
            .map_or("no client certificate".to_string(), |c| {
                format!("client certificate {}", c.display())
            })
    };
    if let Some(w) = exposure_warning(plan.listen) {
        warn!("{w}");
    }
    if plan.allow.is_empty() {
        warn!(
            "egress: no allow_destination (--allow-destination): the application may reach any \
             host and port whose certificate chains to the CA bundle ({}); name the partners \
             to restrict it",
            plan.labels.of("ca")
        );
    } else {
        info!(
            "egress: destinations allowed: {} (others get 403)",
            plan.allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for p in &plan.partners {
        let e = plan.effective(Some(p));
        info!(
            "egress: partner {}: {}, CA bundle {}{}{}",
            p.hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            cert(&e.inputs),
            e.inputs
                .ca
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
            p.address
                .map(|a| format!(", connects to {a}"))
                .unwrap_or_default(),
            if e.inputs.verify_uri.len()
                + e.inputs.verify_cn.len()
                + e.inputs.verify_dns.len()
                + e.inputs.verify_spki.len()
                > 0
            {
                ", identity rules"
            } else {
                ""
            }
        );
    }
    match &plan.defaults.ca {
        Some(ca) => info!(
            "egress: other destinations: {}, CA bundle {}",
            cert(&plan.defaults),
            ca.display()
        ),
        None => info!("egress: destinations no partner covers get 403 (no default ca)"),
    }
    info!(
        "egress: connect and handshake timeout {} s, response timeout {} s (then 504)",
        plan.connect_timeout.as_secs_f64(),
        plan.upstream_timeout.as_secs_f64()
    );
    for r in &plan.resolve {
        info!("egress: {}:{} connects to {}", r.host, r.port, r.addr);
    }
    crate::warn_crl_grace(plan.defaults.crl_grace, "partners");
    for p in plan.partners.iter().filter(|p| p.inputs.crl_grace > 0) {
        warn!(
            "{} {}: an expired CRL is still used for {} s after its nextUpdate before partner \
             {} is refused (fail-open window)",
            p.labels.of("crl_grace"),
            p.inputs.crl_grace,
            p.inputs.crl_grace,
            p.name()
        );
    }
}

/// The files the plan's policies are built from (for the metrics).
pub fn watched(plan: &EgressPlan) -> crate::exposition::Watched {
    let mut w = crate::exposition::Watched::default();
    let add = |list: &mut Vec<PathBuf>, p: &PathBuf| {
        if !list.contains(p) {
            list.push(p.clone());
        }
    };
    let all = std::iter::once(plan.effective(None))
        .chain(plan.partners.iter().map(|p| plan.effective(Some(p))));
    for e in all {
        if let Some(c) = &e.inputs.cert {
            add(&mut w.own, c);
        }
        if let Some(c) = &e.inputs.ca {
            add(&mut w.ca, c);
        }
        for c in &e.inputs.crl {
            add(&mut w.crl, c);
        }
    }
    w
}

/// One line per partner (and the default) for `check --config`.
pub fn describe(plan: &EgressPlan, built: &Built) -> Vec<String> {
    let mut lines = Vec::new();
    let line = |who: String, e: &Effective, p: &BuiltPolicy| {
        let i = &e.inputs;
        format!(
            "{who}: ca {}, {}, {} identity rule(s), {} CRL file(s){}",
            i.ca.as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
            i.cert
                .as_ref()
                .map_or("no client certificate".to_string(), |c| format!(
                    "cert {}",
                    c.display()
                )),
            i.verify_uri.len() + i.verify_cn.len() + i.verify_dns.len() + i.verify_spki.len(),
            i.crl.len(),
            if p.policy.warnings().is_empty() {
                String::new()
            } else {
                format!(", {} warning(s)", p.policy.warnings().len())
            }
        )
    };
    for (p, b) in plan.partners.iter().zip(&built.partners) {
        let hosts = p
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        lines.push(line(
            format!("{} partner {hosts}", plan.listen),
            &plan.effective(Some(p)),
            b,
        ));
    }
    if let Some(d) = &built.default {
        lines.push(line(
            format!("{} other destinations", plan.listen),
            &plan.effective(None),
            d,
        ));
    }
    lines.push(format!(
        "{} allow_destination: {}",
        plan.listen,
        if plan.allow.is_empty() {
            "any".to_string()
        } else {
            plan.allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    lines
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_listener_off_loopback_is_warned_about() {
        assert!(exposure_warning("127.0.0.1:3128".parse().unwrap()).is_none());
        assert!(exposure_warning("[::1]:3128".parse().unwrap()).is_none());
        let w = exposure_warning("0.0.0.0:3128".parse().unwrap()).unwrap();
        assert!(
            w.contains("0.0.0.0:3128") && w.contains("not a loopback"),
            "{w}"
        );
        assert!(exposure_warning("10.0.0.5:3128".parse().unwrap()).is_some());
    }
    use super::*;

    #[test]
    fn destinations_parse_host_wildcard_and_port() {
        let d = Destination::parse("Partner.Example:8443", "x")
            .ok()
            .unwrap();
        assert_eq!((d.host.as_str(), d.port), ("partner.example", Some(8443)));
        let w = Destination::parse("*.acme.example", "x").ok().unwrap();
        assert_eq!((w.host.as_str(), w.port), ("*.acme.example", None));
        for bad in [
            "",
            "a..b",
            "*",
            "*.",
            "a.*.b",
            "host:0",
            "host:70000",
            "-a.example",
            "a b",
        ] {
            assert!(Destination::parse(bad, "x").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_allow_entry_covers_its_name_its_subdomains_and_ports() {
        let d = |s: &str| Destination::parse(s, "x").ok().unwrap();
        assert!(covers(&d("partner.example"), &d("partner.example:8443")));
        assert!(!covers(
            &d("partner.example:443"),
            &d("partner.example:8443")
        ));
        assert!(covers(&d("*.acme.example"), &d("a.b.acme.example")));
        assert!(covers(&d("*.acme.example"), &d("*.x.acme.example")));
        assert!(!covers(&d("*.acme.example"), &d("acme.example")));
        assert!(!covers(&d("*.acme.example"), &d("evilacme.example")));
    }

    #[test]
    fn resolve_takes_host_port_and_an_ip_address() {
        let r = Resolve::parse("Partner.example:8443:127.0.0.1")
            .ok()
            .unwrap();
        assert_eq!(r.host, "partner.example");
        assert_eq!(r.port, 8443);
        assert_eq!(r.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6 = Resolve::parse("p.example:443:[::1]").ok().unwrap();
        assert_eq!(v6.addr, "::1".parse::<IpAddr>().unwrap());
        for bad in [
            "p.example:443",
            "p.example:x:127.0.0.1",
            "p.example:443:name",
        ] {
            assert!(Resolve::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_reload_keeps_each_policy_whose_files_did_not_change() {
        use onerecord_tls_tests::{Ca, LeafSpec};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let ca = Ca::new("Egress Test CA");
        std::fs::write(p.join("ca.pem"), ca.pem()).unwrap();
        for name in ["a", "b"] {
            ca.issue(&LeafSpec::client(name).around_wall_clock())
                .write_files(p, name);
        }
        let file = p.join("egress.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:0\"\nca = \"ca.pem\"\n\
             [[partner]]\nhosts = [\"a.example\"]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[partner]]\nhosts = [\"b.example\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .unwrap();
        let plan = EgressPlan::from_file(&file).ok().unwrap();
        let first = build(&plan, None).ok().unwrap();
        let ids = |b: &Built| {
            (
                b.default.as_ref().map(|d| d.policy.id()),
                b.partners.iter().map(|p| p.policy.id()).collect::<Vec<_>>(),
            )
        };
        let again = build(&plan, Some(&first)).ok().unwrap();
        assert_eq!(ids(&again), ids(&first));
        // Partner b gets a new certificate: only its policy is new.
        ca.issue(&LeafSpec::client("b2").around_wall_clock())
            .write_files(p, "b");
        let third = build(&plan, Some(&again)).ok().unwrap();
        let (d1, p1) = ids(&first);
        let (d3, p3) = ids(&third);
        assert_eq!(d3, d1);
        assert_eq!(p3.first(), p1.first());
        assert_ne!(p3.get(1), p1.get(1));
        // Without a previous build every policy is new.
        let fresh = build(&plan, None).ok().unwrap();
        assert_ne!(ids(&fresh).1.first(), p1.first());
    }

    #[test]
    fn a_connect_override_is_an_address_and_port() {
        assert_eq!(
            connect_addr("127.0.0.1:8443", "x").ok(),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            connect_addr("[::1]:8443", "x").ok(),
            Some("[::1]:8443".parse().unwrap())
        );
        assert!(connect_addr("127.0.0.1", "x").is_err());
        assert!(connect_addr("partner.example:8443", "x").is_err());
    }
}
