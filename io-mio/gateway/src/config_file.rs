//! The configuration file (`server --config FILE`, `check --config FILE`): TOML read with
//! `serde` (`deny_unknown_fields`) and the `toml` crate, whose spans turn into
//! `FILE:LINE:COL: key ...` in every error, and the server flags turned into the same
//! [`Plan`], so that both paths build their listeners, sites and policies with one code.
//!
//! A [`Plan`] is what to run: the global settings (the common flags) and the listeners, each
//! with its sites. [`Plan::from_file`] parses the file and checks the contradictions that
//! need no file (allow rules or CRLs with `client_auth = "none"`, `"required"` without
//! `client_ca`, a PROXY header for an HTTP upstream, two sites claiming one name, two
//! defaults, a site that serves no name); loading the files and building the policies is
//! left to the caller (`main.rs`), which names the key through [`Labels`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::{Common, ConfigFail, ServerArgs};

/// Client authentication of a site (`client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No client certificate is requested.
    None,
    /// A certificate is requested and verified when presented; clients without one are
    /// admitted (anonymous).
    Optional,
    /// A valid client certificate is required (mTLS).
    Required,
}

impl ClientAuthMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

/// The text of a configuration file, kept to turn byte offsets into lines and columns.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    /// `FILE:LINE:COL` of byte offset `at` (both 1-based).
    pub fn position(&self, at: usize) -> String {
        let before = self.text.get(..at).unwrap_or(&self.text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{col}", self.path.display())
    }

    /// The key of the `key = value` line whose value starts at or before byte `at`.
    fn key_before(&self, at: usize) -> Option<&str> {
        let before = self.text.get(..at)?;
        let line = before.rsplit('\n').next()?;
        let (key, _) = line.split_once('=')?;
        Some(key.trim()).filter(|k| !k.is_empty())
    }
}

/// How errors name a setting: the flag (`--cert`) on the command line, `FILE:LINE:COL: key`
/// in a configuration file.
#[derive(Clone, Debug)]
pub enum Labels {
    /// The command-line flags (`cert` is `--cert`).
    Flags,
    /// A site of a configuration file: where each key is, and where the site starts.
    File {
        /// The file.
        source: Arc<Source>,
        /// Key name to its span.
        keys: HashMap<&'static str, Range<usize>>,
        /// The site's `[[listener.site]]` table (a client file: the `[[partner]]` table, or
        /// the file's start for its top-level keys).
        site: Range<usize>,
    },
}

impl Labels {
    /// The name of setting `key` (a site key such as `cert`) in errors and warnings.
    pub fn of(&self, key: &str) -> String {
        match self {
            Labels::Flags => match key {
                "client_ca" => "--ca".to_string(),
                "client_auth" => "--require-client-cert".to_string(),
                other => format!("--{}", other.replace('_', "-")),
            },
            Labels::File { source, keys, site } => {
                let at = keys.get(key).unwrap_or(site).start;
                format!("{}: {key}", source.position(at))
            }
        }
    }
}

/// One site: a certificate, a client-authentication policy and an upstream, chosen by SNI.
#[derive(Clone, Debug)]
pub struct Site {
    /// Server names (exact, or `*.` and a parent name) this site serves.
    pub server_names: Vec<String>,
    /// Serve clients whose SNI matches no site, or who send none.
    pub default: bool,
    /// Certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Client authentication.
    pub client_auth: ClientAuthMode,
    /// CA bundle client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// CRL files.
    pub crl: Vec<PathBuf>,
    /// Seconds an expired CRL stays in use.
    pub crl_grace: u64,
    /// Accept certificates no CRL covers.
    pub crl_allow_unknown: bool,
    /// Allow rules: URI prefixes.
    pub allow_uri: Vec<String>,
    /// Allow rules: subject CNs.
    pub allow_cn: Vec<String>,
    /// Allow rules: DNS SANs.
    pub allow_dns: Vec<String>,
    /// Allow rules: SPKI SHA-256 pins (hex).
    pub allow_spki: Vec<String>,
    /// ALPN protocols in preference order.
    pub alpn: Vec<String>,
    /// `http://HOST:PORT` (HTTP mode), `HOST:PORT` (byte stream), or none (identity
    /// responder).
    pub upstream: Option<String>,
    /// PROXY v2 header before the byte stream.
    pub proxy_protocol: bool,
    /// HTTP mode: header carrying the URL-encoded PEM of the client certificate.
    pub client_cert_header: Option<String>,
    /// HTTP mode: add `x-forwarded-client-cert`.
    pub xfcc: bool,
    /// HTTP mode: seconds to wait for the upstream's response (then 504).
    pub upstream_timeout: Option<f64>,
    /// Session-ticket keys file (global key, copied to every site).
    pub ticket_keys: Option<PathBuf>,
    /// How errors name this site's settings.
    pub labels: Labels,
}

impl Site {
    /// How many allow rules the site has.
    pub fn rules(&self) -> usize {
        self.allow_uri.len() + self.allow_cn.len() + self.allow_dns.len() + self.allow_spki.len()
    }

    /// What the site is called in logs: its first server name, or `default`.
    pub fn name(&self) -> &str {
        self.server_names.first().map_or("default", String::as_str)
    }

    /// Whether the upstream is an `http://` URL (HTTP mode).
    pub fn is_http(&self) -> bool {
        self.upstream.as_deref().is_some_and(is_http_url)
    }
}

/// Whether `u` selects the HTTP mode (`http://...`).
pub fn is_http_url(u: &str) -> bool {
    u.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// One listening address and its sites.
#[derive(Clone, Debug)]
pub struct ListenerPlan {
    /// The address to bind.
    pub address: SocketAddr,
    /// What errors call the address (`--listen` or `FILE:LINE:COL: address`).
    pub label: String,
    /// The sites, in file order.
    pub sites: Vec<Site>,
}

/// Everything the server runs: the global settings and the listeners.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The global settings (the common flags).
    pub common: Common,
    /// The listeners, in file order.
    pub listeners: Vec<ListenerPlan>,
    /// The file the plan was read from (`None`: the flags).
    pub file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    workers: Option<usize>,
    metrics: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<f64>>,
    idle_timeout: Option<Spanned<f64>>,
    max_connections: Option<usize>,
    drain_timeout: Option<Spanned<f64>>,
    tls13_only: Option<bool>,
    reload_interval: Option<Spanned<f64>>,
    reuse_port: Option<bool>,
    ticket_keys: Option<Spanned<PathBuf>>,
    #[serde(default)]
    listener: Vec<Spanned<ListenerToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerToml {
    address: Spanned<String>,
    #[serde(default)]
    site: Vec<Spanned<SiteToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteToml {
    server_names: Option<Spanned<Vec<String>>>,
    default: Option<Spanned<bool>>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    client_auth: Option<Spanned<ClientAuthMode>>,
    client_ca: Option<Spanned<PathBuf>>,
    crl: Option<Spanned<Vec<PathBuf>>>,
    crl_grace: Option<Spanned<u64>>,
    crl_allow_unknown: Option<Spanned<bool>>,
    allow_uri: Option<Spanned<Vec<String>>>,
    allow_cn: Option<Spanned<Vec<String>>>,
    allow_dns: Option<Spanned<Vec<String>>>,
    allow_spki: Option<Spanned<Vec<String>>>,
    alpn: Option<Spanned<Vec<String>>>,
    upstream: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<bool>>,
    client_cert_header: Option<Spanned<String>>,
    xfcc: Option<Spanned<bool>>,
    upstream_timeout: Option<Spanned<f64>>,
}

/// Read the configuration file `path` and deserialize it: a missing file names `--config`, a
/// bad key or value `FILE:LINE:COL: key`.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, Arc<Source>), ConfigFail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigFail(format!("--config {}: {e}", path.display())))?;
    let source = Arc::new(Source {
        path: path.to_path_buf(),
        text,
    });
    let file: T = toml::from_str(&source.text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        // A bad value: name its key (an unknown key is named by the message).
        let key = source
            .key_before(at)
            .map(|k| format!(" {k}:"))
            .unwrap_or_default();
        ConfigFail(format!(
            "{}:{key} {}",
            source.position(at),
            e.message().trim_end()
        ))
    })?;
    Ok((file, source))
}

/// What kind of configuration file `path` is: a client file (egress: a top-level `listen`,
/// `[[partner]]` or `allow_destination`) or a server file (anything else, `[[listener]]`).
/// A file that is not TOML is reported by the parser of the kind it is taken for (server).
pub fn is_client_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    !table.contains_key("listener")
        && ["listen", "partner", "allow_destination"]
            .iter()
            .any(|k| table.contains_key(*k))
}

/// Take an optional spanned value, noting its span under `name`.
pub fn take<T>(
    keys: &mut HashMap<&'static str, Range<usize>>,
    name: &'static str,
    v: Option<Spanned<T>>,
) -> Option<T> {
    v.map(|s| {
        keys.insert(name, s.span());
        s.into_inner()
    })
}

impl Plan {
    /// Read and check the configuration file `path`. Relative paths in it are relative to
    /// the file's directory.
    pub fn from_file(path: &Path) -> Result<Plan, ConfigFail> {
        let (file, source): (FileToml, _) = parse(path)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        let at = |span: Range<usize>, key: &str| format!("{}: {key}", source.position(span.start));
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
        // A duration in seconds, checked here so that a bad one names its line.
        let duration = |v: Option<Spanned<f64>>, key: &str| -> Result<Option<f64>, ConfigFail> {
            match v {
                Some(d) => {
                    crate::secs(*d.get_ref(), &at(d.span(), key))?;
                    Ok(Some(d.into_inner()))
                }
                None => Ok(None),
            }
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
        let ticket_keys_span = file.ticket_keys.as_ref().map(Spanned::span);
        let ticket_keys = file.ticket_keys.map(|t| rel(t.into_inner()));
        if file.listener.is_empty() {
            return Err(ConfigFail(format!(
                "{}: listener: no [[listener]] table",
                source.position(0)
            )));
        }
        let mut listeners = Vec::new();
        for l in file.listener {
            let l_span = l.span();
            let l = l.into_inner();
            let label = at(l.address.span(), "address");
            let address = l.address.get_ref().parse::<SocketAddr>().map_err(|e| {
                ConfigFail(format!("{label} {:?}: {e} (IP:PORT)", l.address.get_ref()))
            })?;
            if let Some(prev) = listeners
                .iter()
                .find(|p: &&ListenerPlan| p.address == address && address.port() != 0)
            {
                return Err(ConfigFail(format!(
                    "{label}: {address} is already the address of the listener at {}",
                    prev.label
                )));
            }
            if l.site.is_empty() {
                return Err(ConfigFail(format!(
                    "{}: listener: no [[listener.site]] for {address}",
                    source.position(l_span.start)
                )));
            }
            let mut sites = Vec::new();
            for s in l.site {
                let site_span = s.span();
                let s = s.into_inner();
                let mut keys = HashMap::new();
                keys.insert("cert", s.cert.span());
                keys.insert("key", s.key.span());
                if let Some(span) = &ticket_keys_span {
                    keys.insert("ticket_keys", span.clone());
                }
                let server_names = take(&mut keys, "server_names", s.server_names);
                let default = take(&mut keys, "default", s.default);
                let client_ca = take(&mut keys, "client_ca", s.client_ca).map(rel);
                let client_auth = take(&mut keys, "client_auth", s.client_auth);
                let site = Site {
                    server_names: server_names.unwrap_or_default(),
                    default: default.unwrap_or(false),
                    cert: rel(s.cert.into_inner()),
                    key: rel(s.key.into_inner()),
                    // Secure by default: a CA bundle without `client_auth` requires a
                    // certificate; "optional" must be written.
                    client_auth: client_auth.unwrap_or(if client_ca.is_some() {
                        ClientAuthMode::Required
                    } else {
                        ClientAuthMode::None
                    }),
                    client_ca,
                    crl: take(&mut keys, "crl", s.crl)
                        .unwrap_or_default()
                        .into_iter()
                        .map(rel)
                        .collect(),
                    crl_grace: take(&mut keys, "crl_grace", s.crl_grace).unwrap_or(0),
                    crl_allow_unknown: take(&mut keys, "crl_allow_unknown", s.crl_allow_unknown)
                        .unwrap_or(false),
                    allow_uri: take(&mut keys, "allow_uri", s.allow_uri).unwrap_or_default(),
                    allow_cn: take(&mut keys, "allow_cn", s.allow_cn).unwrap_or_default(),
                    allow_dns: take(&mut keys, "allow_dns", s.allow_dns).unwrap_or_default(),
                    allow_spki: take(&mut keys, "allow_spki", s.allow_spki).unwrap_or_default(),
                    alpn: take(&mut keys, "alpn", s.alpn).unwrap_or_default(),
                    upstream: take(&mut keys, "upstream", s.upstream),
                    proxy_protocol: take(&mut keys, "proxy_protocol", s.proxy_protocol)
                        .unwrap_or(false),
                    client_cert_header: take(&mut keys, "client_cert_header", s.client_cert_header),
                    xfcc: take(&mut keys, "xfcc", s.xfcc).unwrap_or(true),
                    upstream_timeout: take(&mut keys, "upstream_timeout", s.upstream_timeout),
                    ticket_keys: ticket_keys.clone(),
                    labels: Labels::File {
                        source: source.clone(),
                        keys,
                        site: site_span,
                    },
                };
                sites.push(site);
            }
            listeners.push(ListenerPlan {
                address,
                label,
                sites,
            });
        }
        let plan = Plan {
            common,
            listeners,
            file: Some(path.to_path_buf()),
        };
        plan.check()?;
        Ok(plan)
    }

    /// The server flags as a plan: one site, the default, on every `--listen` address.
    pub fn from_flags(a: &ServerArgs) -> Result<Plan, ConfigFail> {
        let (Some(cert), Some(key)) = (&a.cert, &a.key) else {
            return Err(ConfigFail(
                "--cert and --key are required (or --config FILE)".to_string(),
            ));
        };
        if a.listen.is_empty() {
            return Err(ConfigFail(
                "--listen is required (or --config FILE)".to_string(),
            ));
        }
        let rules = a.allow_uri.len() + a.allow_cn.len() + a.allow_dns.len() + a.allow_spki.len();
        let client_auth = match &a.client_ca {
            None => ClientAuthMode::None,
            Some(_) if a.require_client_cert || rules > 0 => ClientAuthMode::Required,
            Some(_) => ClientAuthMode::Optional,
        };
        let site = Site {
            server_names: Vec::new(),
            default: true,
            cert: cert.clone(),
            key: key.clone(),
            client_auth,
            client_ca: a.client_ca.clone(),
            crl: a.crl.clone(),
            crl_grace: a.crl_grace,
            crl_allow_unknown: a.crl_allow_unknown,
            allow_uri: a.allow_uri.clone(),
            allow_cn: a.allow_cn.clone(),
            allow_dns: a.allow_dns.clone(),
            allow_spki: a.allow_spki.clone(),
            alpn: a.alpn.clone(),
            upstream: a.upstream.clone(),
            proxy_protocol: a.proxy_protocol,
            client_cert_header: a.client_cert_header.clone(),
            xfcc: !a.no_xfcc,
            upstream_timeout: a.upstream_timeout,
            ticket_keys: a.ticket_keys.clone(),
            labels: Labels::Flags,
        };
        let plan = Plan {
            common: a.common.clone(),
            listeners: a
                .listen
                .iter()
                .map(|addr| ListenerPlan {
                    address: *addr,
                    label: "--listen".to_string(),
                    sites: vec![site.clone()],
                })
                .collect(),
            file: None,
        };
        plan.check()?;
        Ok(plan)
    }

    /// The contradictions that need no file read.
    fn check(&self) -> Result<(), ConfigFail> {
        // A site without the header of another site with the same upstream would pass a
        // forged copy of it from its clients to that upstream.
        let http: Vec<&Site> = self
            .listeners
            .iter()
            .flat_map(|l| &l.sites)
            .filter(|s| s.is_http())
            .collect();
        for (i, a) in http.iter().enumerate() {
            for b in http.iter().skip(i + 1) {
                let same = a.upstream.as_deref().map(str::to_ascii_lowercase)
                    == b.upstream.as_deref().map(str::to_ascii_lowercase);
                let header =
                    |s: &Site| s.client_cert_header.as_deref().map(str::to_ascii_lowercase);
                if same && header(a) != header(b) {
                    return Err(ConfigFail(format!(
                        "{}: sites with the same upstream need the same client_cert_header (the \
                         site at {} says {:?}): a site without it would let its clients send a \
                         forged one to that upstream",
                        b.labels.of("client_cert_header"),
                        a.labels.of("client_cert_header"),
                        a.client_cert_header.as_deref().unwrap_or("none")
                    )));
                }
            }
        }
        for l in &self.listeners {
            let mut names: Vec<(String, &Site)> = Vec::new();
            let mut default: Option<&Site> = None;
            for s in &l.sites {
                check_site(s)?;
                if s.server_names.is_empty() && !s.default {
                    return Err(ConfigFail(format!(
                        "{}: the site serves no name: give it server_names or default = true",
                        s.labels.of("server_names")
                    )));
                }
                if s.default {
                    if let Some(d) = default {
                        return Err(ConfigFail(format!(
                            "{}: a second default site on {} (the first is at {})",
                            s.labels.of("default"),
                            l.address,
                            d.labels.of("default")
                        )));
                    }
                    default = Some(s);
                }
                for n in &s.server_names {
                    let lower = n.to_ascii_lowercase();
                    if let Some((_, other)) = names.iter().find(|(m, _)| *m == lower) {
                        return Err(ConfigFail(format!(
                            "{}: {n:?} is already served on {} by the site at {}",
                            s.labels.of("server_names"),
                            l.address,
                            other.labels.of("server_names")
                        )));
                    }
                    names.push((lower, s));
                }
            }
        }
        Ok(())
    }
}

/// A site's own contradictions.
fn check_site(s: &Site) -> Result<(), ConfigFail> {
    let l = &s.labels;
    let flags = matches!(l, Labels::Flags);
    match s.client_auth {
        ClientAuthMode::None => {
            // On the command line these keys need --ca, which selects client authentication.
            let none = if flags {
                "needs --ca"
            } else {
                "needs client authentication, but client_auth = \"none\""
            };
            let rule = [
                ("allow_uri", s.allow_uri.len()),
                ("allow_cn", s.allow_cn.len()),
                ("allow_dns", s.allow_dns.len()),
                ("allow_spki", s.allow_spki.len()),
            ]
            .into_iter()
            .find(|(_, n)| *n > 0);
            if let Some((key, _)) = rule.filter(|_| !flags) {
                return Err(ConfigFail(format!("{}: {none}", l.of(key))));
            }
            if let Some(f) = s.crl.first() {
                return Err(ConfigFail(format!(
                    "{} {}: {none} (CRLs check client certificates)",
                    l.of("crl"),
                    f.display()
                )));
            }
            if s.client_ca.is_some() {
                return Err(ConfigFail(format!(
                    "{}: client_ca is not used with client_auth = \"none\" (say \"optional\" \
                     or \"required\", or remove client_ca)",
                    l.of("client_auth")
                )));
            }
        }
        ClientAuthMode::Optional | ClientAuthMode::Required => {
            if s.client_ca.is_none() {
                return Err(ConfigFail(format!(
                    "{}: client_auth = \"{}\" needs client_ca (the CA bundle client \
                     certificates must chain to)",
                    l.of("client_auth"),
                    s.client_auth.as_str()
                )));
            }
        }
    }
    let http = s.is_http();
    if s.upstream.is_none() && s.proxy_protocol {
        return Err(ConfigFail(format!(
            "{}: needs an upstream",
            l.of("proxy_protocol")
        )));
    }
    if http && s.proxy_protocol {
        return Err(ConfigFail(format!(
            "{}: a PROXY header is for a byte-stream upstream (HOST:PORT), not for the HTTP \
             mode ({} {}): the HTTP mode passes the client in x-forwarded-* headers",
            l.of("proxy_protocol"),
            l.of("upstream"),
            s.upstream.as_deref().unwrap_or_default()
        )));
    }
    // The HTTP mode and the identity responder speak HTTP/1.x: a client that negotiated h2
    // (or anything else) would get a 400 for its first bytes.
    if http || s.upstream.is_none() {
        if let Some(p) = s
            .alpn
            .iter()
            .find(|p| !matches!(p.as_str(), "http/1.1" | "http/1.0"))
        {
            let what = if http {
                "the HTTP mode"
            } else {
                "the identity responder (no upstream)"
            };
            return Err(ConfigFail(format!(
                "{}: {p:?}: {what} speaks HTTP/1.1 only; offer \"http/1.1\" (or no ALPN), or \
                 use a byte-stream upstream (HOST:PORT) for other protocols",
                l.of("alpn")
            )));
        }
    }
    if !http {
        let http_only = [
            ("client_cert_header", s.client_cert_header.is_some()),
            ("upstream_timeout", s.upstream_timeout.is_some()),
            ("xfcc", !s.xfcc),
        ];
        if let Some((key, _)) = http_only.into_iter().find(|(_, set)| *set) {
            let key_name = if flags && key == "xfcc" {
                "no_xfcc"
            } else {
                key
            };
            return Err(ConfigFail(format!(
                "{}: only for the HTTP mode ({} http://HOST:PORT)",
                l.of(key_name),
                l.of("upstream")
            )));
        }
    }
    if let Some(h) = &s.client_cert_header {
        let token = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigFail(format!(
                "{}: {h:?} is not an HTTP header name",
                l.of("client_cert_header")
            )));
        }
        let lower = h.to_ascii_lowercase();
        if lower == "x-forwarded-client-cert" || lower.starts_with("x-forwarded-") {
            return Err(ConfigFail(format!(
                "{}: {h:?} is a header the gateway sets itself",
                l.of("client_cert_header")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            path: PathBuf::from("gw.toml"),
            text: text.to_string(),
        }
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let s = source("a = 1\n  b = 2\n");
        assert_eq!(s.position(0), "gw.toml:1:1");
        assert_eq!(s.position(8), "gw.toml:2:3");
        assert_eq!(s.position(1000), "gw.toml:3:1");
    }

    #[test]
    fn the_key_of_a_bad_value_is_read_from_its_line() {
        let s = source("a = 1\n  client_auth = true\n");
        assert_eq!(s.key_before(22), Some("client_auth"));
        assert_eq!(s.key_before(4), Some("a"));
        assert_eq!(s.key_before(2), None);
        assert_eq!(s.key_before(0), None);
        assert_eq!(s.key_before(999), None);
    }

    #[test]
    fn http_urls_are_recognised_case_insensitively() {
        assert!(is_http_url("http://127.0.0.1:8080"));
        assert!(is_http_url("HTTP://a:1"));
        assert!(!is_http_url("127.0.0.1:8080"));
        assert!(!is_http_url("http:/"));
    }
}
