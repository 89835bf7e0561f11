//! The HTTP/1.1 reverse proxy against real peers: curl as the client (with and without a
//! client certificate), a Python `http.server` upstream (`tests/upstream/echo_server.py`,
//! which echoes what reached it and counts its TCP connections), and the library's own TLS
//! client for raw bytes (pipelining, smuggling attempts). Loopback only, free ports.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use onerecord_tls::{ClientAuth, ClientPolicy, ServerPolicy, Sha256, Time};
use onerecord_tls_mio::{
    Backend, Client, HttpProxy, HttpProxyConfig, Limits, Listener, Mode, ServerConfig, ServerHandle,
};
use onerecord_tls_tests::{Ca, Identity, LeafSpec};
use percent_encoding::percent_decode_str;
use serde_json::Value;
use support::Upstream;

const MIB: usize = 1024 * 1024;

/// PKI, files for curl, and the proxy server in-process.
struct Proxy {
    _ca: Ca,
    client: Identity,
    dir: PathBuf,
    server: ServerHandle,
    addr: SocketAddr,
}

impl Proxy {
    fn start(cfg: HttpProxyConfig) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "onerecord-http-proxy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Proxy Test CA");
        let server_id = ca.issue(&LeafSpec::server().around_wall_clock());
        let client = ca.issue(&LeafSpec::client("acme").around_wall_clock());
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        client.write_files(&dir, "client");
        let policy = ServerPolicy::builder(server_id.chain.clone(), server_id.key())
            .client_auth(ClientAuth::Optional(ca.trust()))
            .build(Time::now())
            .expect("policy");
        let proxy = HttpProxy::new(cfg).expect("proxy config");
        let server = onerecord_tls_mio::start(ServerConfig {
            listeners: vec![Listener {
                addr: "127.0.0.1:0".parse().unwrap(),
                mode: Mode::Terminate {
                    policies: policy.into_set(),
                    backend: Backend::Service(Arc::new(proxy)),
                },
            }],
            // One worker: one upstream pool, so the connection counts are exact.
            workers: 1,
            limits: Limits::default(),
            reuse_port: false,
        })
        .expect("server");
        let addr = server.local_addrs()[0];
        Self {
            _ca: ca,
            client,
            dir,
            server,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// curl with the test CA, `localhost` resolved to the proxy, a time limit, `args`.
    fn curl(&self, mtls: bool, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.addr.port()));
        if mtls {
            cmd.arg("--cert")
                .arg(self.dir.join("client.pem"))
                .arg("--key")
                .arg(self.dir.join("client.key"));
        }
        let out = cmd.args(args).output().expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn curl_json(&self, mtls: bool, args: &[&str]) -> Value {
        let out = self.curl(mtls, args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        })
    }

    /// Raw bytes over one TLS connection (the library's client, with the client
    /// certificate); everything the proxy sent until it closed.
    fn raw(&self, request: &[u8]) -> Vec<u8> {
        let policy = ClientPolicy::builder(self._ca.trust())
            .client_cert(self.client.chain.clone(), self.client.key())
            .build(Time::now())
            .expect("client policy");
        let client = Client::new(policy);
        let mut s = client.connect(self.addr, "localhost").expect("connect");
        s.write_all(request).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The echoed header `name` (case-insensitive), all values.
fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

/// Byte i is i % 251 (the upstream's download pattern).
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Keycloak's `x509cert-lookup` provider `envoy` reads XFCC so: split at `;`, take `Cert`
/// (or `Chain`), strip the quotes, decode as a form (`+` would be a space).
fn keycloak_envoy_cert(xfcc: &str) -> Option<String> {
    let mut cert = None;
    for token in xfcc.split(';') {
        let (key, value) = token.split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let form = value.replace('+', " ");
        let decoded = percent_decode_str(&form).decode_utf8().ok()?.into_owned();
        match key.trim() {
            "Chain" => return Some(decoded),
            "Cert" => cert = Some(decoded),
            _ => {}
        }
    }
    cert
}

fn proxy_to(upstream: &Upstream) -> HttpProxyConfig {
    let mut cfg = HttpProxyConfig::new(upstream.addr);
    cfg.client_cert_header = Some("x-ssl-client-cert".into());
    cfg
}

#[test]
fn a_partner_certificate_reaches_the_upstream_as_xfcc_and_escaped_pem_and_forged_fields_do_not() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let echo = proxy.curl_json(
        true,
        &[
            "-H",
            "X-Forwarded-Client-Cert: Hash=forged",
            "-H",
            "X-SSL-Client-Cert: forged",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: http",
            "-H",
            "Forwarded: for=6.6.6.6",
            &proxy.url("/echo?a=1"),
        ],
    );
    assert_eq!(echo["path"], "/echo?a=1");
    let text = echo.to_string();
    assert!(
        !text.contains("forged") && !text.contains("for=6.6.6.6"),
        "{text}"
    );

    let xfcc = header(&echo, "x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{text}");
    let xfcc = xfcc[0];
    let leaf_hash = Sha256::of(proxy.client.chain[0].as_ref()).to_string();
    assert!(
        xfcc.starts_with(&format!(
            "Hash={leaf_hash};Cert=\"-----BEGIN%20CERTIFICATE-----%0A"
        )),
        "{xfcc}"
    );
    assert!(
        xfcc.contains(";Subject=\"OU=cargo,O=ONE Record Test Org,CN=acme\";"),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";URI=https://onerecord.example/logistics-agents/acme"),
        "{xfcc}"
    );
    assert_eq!(
        keycloak_envoy_cert(xfcc).as_deref(),
        Some(proxy.client.leaf_pem.as_str())
    );

    let escaped = header(&echo, "x-ssl-client-cert");
    assert_eq!(escaped.len(), 1);
    assert!(
        !escaped[0].contains(['+', '/', '=', ' ', '\n']),
        "{}",
        escaped[0]
    );
    let pem = percent_decode_str(escaped[0]).decode_utf8().unwrap();
    assert_eq!(pem, proxy.client.leaf_pem);

    assert_eq!(header(&echo, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-proto"), ["https"]);
    let host = format!("localhost:{}", proxy.addr.port());
    assert_eq!(header(&echo, "x-forwarded-host"), [host.as_str()]);
    assert_eq!(header(&echo, "host"), [host.as_str()]);
    assert!(header(&echo, "forwarded").is_empty());
}

#[test]
fn java_reads_both_certificate_fields_as_keycloaks_envoy_and_nginx_lookups_do() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let echo = proxy.curl_json(true, &[&proxy.url("/echo")]);
    let xfcc = proxy.dir.join("xfcc.txt");
    let escaped = proxy.dir.join("escaped.txt");
    std::fs::write(&xfcc, header(&echo, "x-forwarded-client-cert")[0]).unwrap();
    std::fs::write(&escaped, header(&echo, "x-ssl-client-cert")[0]).unwrap();
    let java = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/KeycloakLookups.java");
    let out = Command::new("java")
        .arg(java)
        .arg(&xfcc)
        .arg(&escaped)
        .output()
        .expect("java");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = Sha256::of(proxy.client.chain[0].as_ref());
    assert_eq!(
        text,
        format!(
            "envoy {hash} OU=cargo,O=ONE Record Test Org,CN=acme\n\
             nginx {hash} OU=cargo,O=ONE Record Test Org,CN=acme\n"
        )
    );
}

#[test]
fn an_anonymous_client_gets_no_identity_fields_even_when_it_forges_them() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let echo = proxy.curl_json(
        false,
        &[
            "-H",
            "X-Forwarded-Client-Cert: Hash=forged",
            "-H",
            "x-ssl-client-cert: forged",
            &proxy.url("/echo"),
        ],
    );
    assert!(
        header(&echo, "x-forwarded-client-cert").is_empty(),
        "{echo}"
    );
    assert!(header(&echo, "x-ssl-client-cert").is_empty(), "{echo}");
    assert_eq!(header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn kept_alive_requests_from_several_clients_share_few_pooled_upstream_connections() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let urls: Vec<String> = (0..10)
        .map(|i| proxy.url(&format!("/echo?i={i}")))
        .collect();
    let before = up.stats();
    for _ in 0..3 {
        let mut args = vec!["-w", "\n%{num_connects}\n"];
        args.extend(urls.iter().map(String::as_str));
        let out = String::from_utf8(proxy.curl(true, &args).stdout).unwrap();
        // One TLS connection for the ten requests of one curl run.
        let connects: Vec<&str> = out.lines().filter(|l| l.len() == 1).collect();
        assert_eq!(connects.iter().filter(|c| **c == "1").count(), 1, "{out}");
        assert_eq!(out.matches("\"method\": \"GET\"").count(), 10, "{out}");
    }
    let after = up.stats();
    let requests = after.1 - before.1;
    let connections = after.0 - before.0;
    assert_eq!(requests, 30);
    // Three client connections one after another: the pool hands the same upstream
    // connection from one to the next.
    assert!(
        connections <= 3,
        "{connections} upstream connections for 30 requests"
    );
    // The adapter counts the same: new upstream connections and pool hits.
    let counters = proxy.server.metrics().snapshot().counters;
    assert_eq!(counters.upstream_connects, connections);
    assert_eq!(counters.upstream_reuses, 30 - connections);
    let echo = proxy.curl_json(true, &[&proxy.url("/echo")]);
    assert!(echo["connection_requests"].as_u64().unwrap() > 10, "{echo}");
}

#[test]
fn twenty_megabytes_stream_both_ways_with_content_length_and_chunked() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let body: Vec<u8> = (0..20 * MIB).map(|i| (i * 7 % 256) as u8).collect();
    let file = proxy.dir.join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let want = Sha256::of(&body).to_string();
    let data = format!("@{}", file.display());

    // Content-Length upload; curl sends Expect: 100-continue for a body this large and
    // waits for the relayed 100 Continue.
    let echo = proxy.curl_json(true, &["--data-binary", &data, &proxy.url("/up")]);
    assert_eq!(echo["body_length"], 20 * MIB);
    assert_eq!(echo["body_sha256"], want.as_str());
    assert_eq!(header(&echo, "expect"), ["100-continue"]);
    assert_eq!(
        header(&echo, "content-length"),
        [(20 * MIB).to_string().as_str()]
    );

    // Chunked upload.
    let echo = proxy.curl_json(
        true,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &proxy.url("/up"),
        ],
    );
    assert_eq!(echo["body_length"], 20 * MIB);
    assert_eq!(echo["body_sha256"], want.as_str());
    assert_eq!(header(&echo, "transfer-encoding"), ["chunked"]);

    // Downloads, both framings and close-delimited.
    let want = Sha256::of(&pattern(20 * MIB));
    for path in ["/length", "/chunked", "/close"] {
        let out = proxy.dir.join("download.bin");
        let url = proxy.url(&format!("{path}?n={}", 20 * MIB));
        proxy.curl(true, &["-o", out.to_str().unwrap(), &url]);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 20 * MIB, "{path}");
        assert_eq!(Sha256::of(&got), want, "{path}");
    }
}

#[test]
fn curl_gets_the_relayed_100_continue_and_a_bodiless_head_response() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let started = std::time::Instant::now();
    let out = proxy.curl(
        true,
        &[
            "-v",
            "--expect100-timeout",
            "30",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "hello",
            &proxy.url("/echo"),
        ],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("< HTTP/1.1 100 Continue"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "curl waited for the 100"
    );
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["body_length"], 5);

    let out = proxy.curl(true, &["-I", &proxy.url("/length?n=1000")]);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-length: 1000\r\n"), "{head}");
}

/// Split a stream of responses into (status, head, body) by their framing.
fn responses(mut wire: &[u8], heads: &[bool]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    for &is_head in heads {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(wire) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(wire)),
        };
        let code = r.code.unwrap();
        let head = String::from_utf8_lossy(&wire[..n]).into_owned();
        let len = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        let len = if is_head || code == 204 || code == 304 {
            0
        } else {
            len
        };
        out.push((code, head, wire[n..n + len].to_vec()));
        wire = &wire[n + len..];
    }
    assert!(
        wire.is_empty(),
        "left over: {}",
        String::from_utf8_lossy(wire)
    );
    out
}

#[test]
fn pipelined_requests_are_answered_in_order_with_head_204_and_304_bodiless() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let wire = proxy.raw(
        b"HEAD /length?n=1000 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /status/204 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET /status/304 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /length?n=3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let rs = responses(&wire, &[true, false, false, false, false]);
    assert_eq!(
        rs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 204, 200, 304, 200]
    );
    assert!(
        rs[0]
            .1
            .to_ascii_lowercase()
            .contains("content-length: 1000\r\n"),
        "{}",
        rs[0].1
    );
    let echo: Value = serde_json::from_slice(&rs[2].2).unwrap();
    assert_eq!(echo["body_length"], 5);
    assert_eq!(rs[4].2, pattern(3));
    assert!(rs[4].1.contains("Connection: close\r\n"), "{}", rs[4].1);
}

#[test]
fn an_http_1_0_client_gets_a_chunked_response_decoded_and_then_the_close() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let wire = proxy.raw(b"GET /chunked?n=200000 HTTP/1.0\r\n\r\n");
    let text_end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&wire[..text_end]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(wire[text_end..], pattern(200_000)[..]);
}

#[test]
fn an_unreachable_upstream_gives_502_naming_it() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(HttpProxyConfig::new(dead));
    let out = proxy.curl(true, &["-w", "\n%{http_code}", &proxy.url("/")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n502"), "{text}");
    assert!(
        text.starts_with(&format!("upstream {dead} unreachable: ")),
        "{text}"
    );
}

#[test]
fn an_upstream_that_resets_before_answering_gives_502() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let out = proxy.curl(true, &["-w", "\n%{http_code}", &proxy.url("/reset")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n502"), "{text}");
    assert!(
        text.starts_with(&format!("upstream {} ", up.addr)),
        "{text}"
    );
}

#[test]
fn a_silent_upstream_gives_504_after_the_timeout() {
    let up = Upstream::start();
    let mut cfg = proxy_to(&up);
    cfg.upstream_timeout = Duration::from_millis(500);
    let proxy = Proxy::start(cfg);
    let started = std::time::Instant::now();
    let out = proxy.curl(true, &["-w", "\n%{http_code}", &proxy.url("/slow?ms=5000")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n504"), "{text}");
    assert!(text.contains("sent no response within 0.5s"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn smuggling_attempts_are_refused_with_400_and_never_reach_the_upstream() {
    let up = Upstream::start();
    let proxy = Proxy::start(proxy_to(&up));
    let attempts: &[&[u8]] = &[
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\nHost: localhost\nContent-Length: 5\n\nhello",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
        b"GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    let before = up.stats();
    for attempt in attempts {
        let wire = proxy.raw(attempt);
        let text = String::from_utf8_lossy(&wire);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
    assert_eq!(up.stats(), before, "a refused request reached the upstream");

    // A chunk size that is not hex, after a valid head: the head went upstream, the body
    // did not; the client gets 400 and both connections close.
    let wire = proxy.raw(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("invalid chunk size"), "{text}");
    assert_eq!(up.stats().1, before.1, "no request was completed upstream");
}
