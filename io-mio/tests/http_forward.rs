//! The HTTP/1.1 forward (egress) proxy against real peers: curl as the local application
//! (`-x`, absolute-form requests), partners on loopback: `openssl s_server -www` requiring a
//! client certificate, and the library's own mTLS server in front of the Python upstream
//! (`tests/upstream/echo_server.py`, which echoes what reached it). The local side of the
//! proxy is plain TCP (`Mode::Plain`), as applications' proxy settings speak it. Loopback
//! only, free ports.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onerecord_tls::{ClientPolicy, ServerPolicy, Time};
use onerecord_tls_mio::{
    Backend, ForwardProxy, ForwardProxyConfig, HttpProxy, HttpProxyConfig, Limits, Listener, Mode,
    Partner, ServerConfig, ServerHandle,
};
use onerecord_tls_tests::{Ca, Identity, LeafSpec};
use serde_json::Value;
use support::Upstream;

/// The `onerecord::partner` log lines of this process, as `LEVEL message key=value ...`.
static PARTNER_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct PartnerLog;

impl log::Log for PartnerLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target() == "onerecord::partner"
    }

    fn log(&self, record: &log::Record<'_>) {
        struct Fields(String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {key}={value}"));
                Ok(())
            }
        }
        if self.enabled(record.metadata()) {
            let mut fields = Fields(format!("{} {}", record.level(), record.args()));
            let _ = record.key_values().visit(&mut fields);
            PARTNER_LOG.lock().unwrap().push(fields.0);
        }
    }

    fn flush(&self) {}
}

/// The partner log lines that mention `needle`.
fn partner_log(needle: &str) -> Vec<String> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = log::set_logger(&PartnerLog);
        log::set_max_level(log::LevelFilter::Info);
    });
    PARTNER_LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "onerecord-http-forward-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The PKI: one CA for partners, our client certificate, and files for the peers.
struct Pki {
    ca: Ca,
    client: Identity,
    partner: Identity,
    dir: Dir,
}

impl Pki {
    fn new() -> Self {
        let dir = Dir::new();
        let ca = Ca::new("Forward Test CA");
        let client = ca.issue(&LeafSpec::client("acme").around_wall_clock());
        let partner = ca.issue(&LeafSpec::server().around_wall_clock());
        std::fs::write(dir.0.join("ca.pem"), ca.pem()).unwrap();
        client.write_files(&dir.0, "client");
        partner.write_files(&dir.0, "partner");
        Self {
            ca,
            client,
            partner,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// Our policy towards partners: their CA, our client certificate.
    fn our_policy(&self, handshake_timeout: Duration) -> ClientPolicy {
        ClientPolicy::builder(self.ca.trust())
            .client_cert(self.client.chain.clone(), self.client.key())
            .handshake_timeout(handshake_timeout)
            .build(Time::now())
            .expect("client policy")
    }

    /// A partner's server policy requiring a client certificate from `trusted`.
    fn partner_policy(&self, trusted: &Ca) -> ServerPolicy {
        ServerPolicy::builder(self.partner.chain.clone(), self.partner.key())
            .require_client_auth(trusted.trust())
            .build(Time::now())
            .expect("partner policy")
    }
}

/// A partner: the library's mTLS server (XFCC added) in front of the Python upstream.
struct LibraryPartner {
    server: ServerHandle,
    addr: SocketAddr,
    _upstream: Upstream,
}

impl LibraryPartner {
    fn start(policy: ServerPolicy, idle_timeout: Option<Duration>) -> Self {
        let upstream = Upstream::start();
        let mut limits = Limits::default();
        if let Some(t) = idle_timeout {
            limits.idle_timeout = t;
        }
        let server = onerecord_tls_mio::start(ServerConfig {
            listeners: vec![Listener {
                addr: "127.0.0.1:0".parse().unwrap(),
                mode: Mode::Terminate {
                    policies: policy.into_set(),
                    backend: Backend::Service(Arc::new(
                        HttpProxy::new(HttpProxyConfig::new(upstream.addr)).expect("proxy"),
                    )),
                },
            }],
            workers: 1,
            limits,
            reuse_port: false,
        })
        .expect("partner server");
        let addr = server.local_addrs()[0];
        Self {
            server,
            addr,
            _upstream: upstream,
        }
    }

    /// Completed handshakes on the partner's side: (full, resumed).
    fn handshakes(&self) -> (u64, u64) {
        let h = self.server.metrics().snapshot().counters.handshakes;
        (h[0][0] + h[1][0], h[0][1] + h[1][1])
    }
}

impl Drop for LibraryPartner {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// `openssl s_server -www` requiring a client certificate from the CA, killed on drop.
struct OpensslPartner {
    child: Child,
    port: u16,
}

impl OpensslPartner {
    fn start(pki: &Pki) -> Self {
        let port = free_port();
        let child = Command::new("openssl")
            .arg("s_server")
            .arg("-www")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(pki.path("partner.pem"))
            .arg("-key")
            .arg(pki.path("partner.key"))
            .args(["-Verify", "1", "-verify_return_error", "-CAfile"])
            .arg(pki.path("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for OpensslPartner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The forward proxy in-process, its local side plain TCP on 127.0.0.1.
struct Egress {
    server: ServerHandle,
    addr: SocketAddr,
    proxy: ForwardProxy,
}

impl Egress {
    fn start(cfg: ForwardProxyConfig) -> Self {
        let proxy = ForwardProxy::new(cfg).expect("forward proxy config");
        let server = onerecord_tls_mio::start(ServerConfig {
            listeners: vec![Listener {
                addr: "127.0.0.1:0".parse().unwrap(),
                mode: Mode::Plain {
                    service: Arc::new(proxy.clone()),
                },
            }],
            // One worker: one pool, so connection counts are exact.
            workers: 1,
            limits: Limits::default(),
            reuse_port: false,
        })
        .expect("egress server");
        let addr = server.local_addrs()[0];
        Self {
            server,
            addr,
            proxy,
        }
    }

    /// curl through the proxy: (status, body).
    fn curl(&self, url: &str, args: &[&str]) -> (u16, String) {
        curl_via(self.addr.port(), url, args)
    }

    /// Raw bytes over one TCP connection to the proxy; what it sent until it closed.
    fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// curl through the proxy on 127.0.0.1:`port`: (status, body).
fn curl_via(port: u16, url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-x")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {url}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, body.to_string())
}

/// A proxy whose only partner is `partner` (as `localhost:PORT`) under our policy.
fn egress_to(pki: &Pki, partner: SocketAddr) -> Egress {
    let mut cfg = ForwardProxyConfig::new(Some(pki.our_policy(Duration::from_secs(5))));
    cfg.resolve
        .push((format!("localhost:{}", partner.port()), partner));
    Egress::start(cfg)
}

fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

#[test]
fn a_request_reaches_the_partner_over_mtls_in_origin_form_with_the_urls_host() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    let egress = egress_to(&pki, partner.addr);
    let port = partner.addr.port();
    // http:// in the URL: the request still leaves over TLS (the partner only speaks TLS).
    let url = format!("http://localhost:{port}/logistics-objects/1?embed=true");
    let (status, body) = egress.curl(
        &url,
        &[
            "-H",
            "Host: app.internal",
            "--proxy-user",
            "app:secret",
            "-H",
            "Proxy-Foo: 1",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).expect("echo json");
    assert_eq!(echo["path"], "/logistics-objects/1?embed=true");
    assert_eq!(header(&echo, "host"), [format!("localhost:{port}")]);
    // The partner saw our client certificate (its front door put it in XFCC).
    let xfcc = header(&echo, "x-forwarded-client-cert").join(",");
    assert!(
        xfcc.contains("URI=https://onerecord.example/logistics-agents/acme"),
        "{xfcc}"
    );
    for gone in ["proxy-authorization", "proxy-connection", "proxy-foo"] {
        assert!(header(&echo, gone).is_empty(), "{gone} was forwarded");
    }
    let stats = egress.proxy.stats();
    let s = &stats[&format!("localhost:{port}")];
    assert_eq!((s.requests, s.connections, s.handshakes_full), (1, 1, 1));
}

#[test]
fn requests_from_many_curl_processes_share_one_partner_connection() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    let egress = egress_to(&pki, partner.addr);
    let url = format!("http://localhost:{}/x", partner.addr.port());
    let mut connections = Vec::new();
    for _ in 0..10 {
        let (status, body) = egress.curl(&url, &[]);
        assert_eq!(status, 200, "{body}");
        let echo: Value = serde_json::from_str(&body).expect("echo json");
        connections.push(echo["connection"].clone());
    }
    // One TLS connection to the partner carried all ten (one TCP connection upstream too).
    assert_eq!(partner.handshakes(), (1, 0));
    assert!(
        connections.windows(2).all(|w| w[0] == w[1]),
        "{connections:?}"
    );
    let s = &egress.proxy.stats()[&format!("localhost:{}", partner.addr.port())];
    assert_eq!((s.requests, s.connections), (10, 1));
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    let idle = egress.server.metrics().snapshot().counters.upstream_idle;
    assert_eq!(
        idle.get(&format!("localhost:{}", partner.addr.port())),
        Some(&1)
    );
}

#[test]
fn concurrent_curl_processes_share_a_few_partner_connections() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    let egress = egress_to(&pki, partner.addr);
    let url = format!("http://localhost:{}/x", partner.addr.port());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let port = egress.addr.port();
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let (status, body) = curl_via(port, &url, &[]);
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Twenty requests from twenty curl processes, at most four at a time: at most four
    // TLS connections to the partner.
    let (full, resumed) = partner.handshakes();
    assert!((1..=4).contains(&(full + resumed)), "{full} + {resumed}");
    let s = &egress.proxy.stats()[&format!("localhost:{}", partner.addr.port())];
    assert_eq!(s.requests, 20);
    assert_eq!(s.connections, full + resumed);
}

#[test]
fn a_partner_that_closes_idle_connections_costs_no_request_and_the_next_connection_resumes() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(
        pki.partner_policy(&pki.ca),
        Some(Duration::from_millis(500)),
    );
    let egress = egress_to(&pki, partner.addr);
    let url = format!("http://localhost:{}/x", partner.addr.port());
    for _ in 0..3 {
        let (status, body) = egress.curl(&url, &[]);
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(1200));
    }
    let (full, resumed) = partner.handshakes();
    assert_eq!(full, 1, "only the first connection is a full handshake");
    assert_eq!(resumed, 2, "the later ones resume");
    let s = &egress.proxy.stats()[&format!("localhost:{}", partner.addr.port())];
    assert_eq!((s.handshakes_full, s.handshakes_resumed), (1, 2));
}

#[test]
fn openssl_requiring_a_client_certificate_answers_through_the_proxy() {
    let pki = Pki::new();
    let partner = OpensslPartner::start(&pki);
    let egress = egress_to(&pki, SocketAddr::from(([127, 0, 0, 1], partner.port)));
    let url = format!("http://localhost:{}/", partner.port);
    let (status, body) = egress.curl(&url, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("New, TLSv1.3"), "{body}");
    assert!(body.contains("1 server accepts that finished"), "{body}");
    // s_server -www closes after each response: the next request opens a new connection,
    // which resumes our session.
    let (status, body) = egress.curl(&url, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Reused, TLSv1.3"), "{body}");
}

#[test]
fn connect_is_refused_with_405_saying_why() {
    let pki = Pki::new();
    let egress = egress_to(&pki, SocketAddr::from(([127, 0, 0, 1], 9)));
    let out =
        egress.raw(b"CONNECT partner.example:443 HTTP/1.1\r\nHost: partner.example:443\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 405 "), "{out}");
    assert!(
        out.contains("bypass the company's client certificate"),
        "{out}"
    );
    let out = egress.raw(b"GET /x HTTP/1.1\r\nHost: partner.example\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.contains("absolute-form"), "{out}");
}

#[test]
fn an_https_absolute_url_goes_over_tls_like_any_other() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    let egress = egress_to(&pki, partner.addr);
    let port = partner.addr.port();
    let req = format!(
        "GET https://localhost:{port}/a HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Connection: close\r\n\r\n"
    );
    let out = egress.raw(req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(out.contains("\"/a\""), "{out}");
    assert_eq!(partner.handshakes(), (1, 0));
}

#[test]
fn a_destination_outside_the_allow_list_gets_403_naming_it() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    let mut cfg = ForwardProxyConfig::new(Some(pki.our_policy(Duration::from_secs(5))));
    cfg.allow = vec![
        "*.partner.example".into(),
        format!("localhost:{}", partner.addr.port()),
    ];
    cfg.resolve
        .push((format!("localhost:{}", partner.addr.port()), partner.addr));
    let egress = Egress::start(cfg);
    let (status, body) = egress.curl("http://evil.example:8443/x", &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example:8443 is not allowed"), "{body}");
    let (status, _) = egress.curl(&format!("http://localhost:{}/x", partner.addr.port()), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        egress.proxy.stats()["evil.example:8443"].failures["denied"],
        1
    );
}

#[test]
fn a_partner_that_refuses_our_certificate_gives_502_naming_the_alert() {
    let pki = Pki::new();
    let other = Ca::new("Someone Else's CA");
    let partner = LibraryPartner::start(pki.partner_policy(&other), None);
    let egress = egress_to(&pki, partner.addr);
    let dest = format!("localhost:{}", partner.addr.port());
    partner_log(""); // installs the logger
    let (status, body) = egress.curl(&format!("http://{dest}/x"), &[]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with(&format!("{dest} refused our certificate: ")),
        "{body}"
    );
    assert_eq!(egress.proxy.stats()[&dest].failures["refused"], 1);
    // The same cause in a WARN line with key=value fields.
    let lines = partner_log(&format!("partner={dest} "));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN partner request failed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" status=502 reason=refused cause="),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(body.trim()), "{} / {body}", lines[0]);
}

#[test]
fn a_partner_with_a_certificate_for_another_name_gives_502_verification() {
    let pki = Pki::new();
    let partner = LibraryPartner::start(pki.partner_policy(&pki.ca), None);
    // No default policy: a partner entry covers the name and says where to connect.
    let mut cfg = ForwardProxyConfig::new(None);
    let mut entry = Partner::new(["*.example"], pki.our_policy(Duration::from_secs(5)));
    entry.connect = Some(partner.addr);
    cfg.partners.push(entry);
    let dest = format!("wrong.example:{}", partner.addr.port());
    let egress = Egress::start(cfg);
    let (status, body) = egress.curl(&format!("http://{dest}/x"), &[]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with(&format!("{dest} failed verification: ")),
        "{body}"
    );
    assert!(body.contains("not valid for the requested name"), "{body}");
    assert_eq!(egress.proxy.stats()[&dest].failures["verification"], 1);
}

#[test]
fn an_unresolvable_host_gives_502() {
    let pki = Pki::new();
    let egress = egress_to(&pki, SocketAddr::from(([127, 0, 0, 1], 9)));
    let (status, body) = egress.curl("http://no-such-partner.invalid/x", &[]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with("cannot resolve no-such-partner.invalid"),
        "{body}"
    );
    assert_eq!(
        egress.proxy.stats()["no-such-partner.invalid:443"].failures["dns"],
        1
    );
}

#[test]
fn a_closed_port_gives_502() {
    let pki = Pki::new();
    let port = free_port();
    let egress = egress_to(&pki, SocketAddr::from(([127, 0, 0, 1], port)));
    let (status, body) = egress.curl(&format!("http://localhost:{port}/x"), &[]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with(&format!("localhost:{port} unreachable")),
        "{body}"
    );
}

#[test]
fn a_silent_partner_gives_504_when_the_handshake_times_out() {
    let pki = Pki::new();
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut cfg = ForwardProxyConfig::new(Some(pki.our_policy(Duration::from_secs(1))));
    cfg.resolve
        .push((format!("localhost:{}", addr.port()), addr));
    let egress = Egress::start(cfg);
    let started = Instant::now();
    let (status, body) = egress.curl(&format!("http://localhost:{}/x", addr.port()), &[]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("TLS handshake timed out"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(8));
    drop(silent);
}
