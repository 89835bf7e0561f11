//! TLS upstream connections of the handler API (`Reply::upstream_open_tls`) against a real
//! TLS server that shares no code with ours: `openssl s_server -rev` (it answers each line
//! reversed) demanding a client certificate. Our side: a server whose handler relays each line
//! it gets to the partner over mTLS and answers with the partner's reply; the library's client
//! talks to it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onerecord_tls::{ClientPolicy, PeerIdentity, Reason, ServerPolicy, Time};
use onerecord_tls_mio::{
    Backend, Client, Handler, Limits, Listener, Mode, Peer, Reply, ServerConfig, ServerHandle,
    Service, UpstreamEnd,
};
use onerecord_tls_tests::{Ca, Identity, LeafSpec};

/// `openssl s_server -rev` on a free port with `cert`, demanding a client certificate from
/// `client_ca`; killed on drop. Its output (one `CONNECTION ESTABLISHED` per connection) goes
/// to a file.
struct Partner {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Partner {
    fn start(dir: &Path, cert: &str, client_ca: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("s_server-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // Line-buffered, so that the log shows each connection as it happens.
        let child = Command::new("stdbuf")
            .args(["-oL", "openssl", "s_server", "-rev"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(dir.join(format!("{cert}.pem")))
            .arg("-key")
            .arg(dir.join(format!("{cert}.key")))
            .args(["-Verify", "1", "-verify_return_error", "-CAfile"])
            .arg(dir.join(client_ca))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("openssl s_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // It says ACCEPT once listening (a probe connection would count as a client, and a
        // failed one can end s_server).
        let until = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ACCEPT")
        {
            assert!(Instant::now() < until, "s_server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr, log }
    }

    /// TLS connections the partner accepted so far.
    fn connections(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("CONNECTION ESTABLISHED")
            .count()
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the relay saw of its upstream connections.
#[derive(Default)]
struct Seen {
    /// One entry per completed upstream handshake: was it resumed?
    handshakes: Mutex<Vec<bool>>,
}

struct Relay {
    partner: SocketAddr,
    policy: ClientPolicy,
    seen: Arc<Seen>,
}

impl Service for Relay {
    fn accept(&self, _: &Peer<'_>) -> Option<Box<dyn Handler>> {
        Some(Box::new(RelayHandler {
            partner: self.partner,
            policy: self.policy.clone(),
            seen: self.seen.clone(),
            line: Vec::new(),
            answer: Vec::new(),
            last: false,
        }))
    }
}

/// Relays each line to the partner and answers with the partner's line, or `ERR <why>`; after
/// a line starting with `#` the partner connection is closed instead of pooled.
struct RelayHandler {
    partner: SocketAddr,
    policy: ClientPolicy,
    seen: Arc<Seen>,
    line: Vec<u8>,
    answer: Vec<u8>,
    /// The line in flight asks for the connection to be closed after it.
    last: bool,
}

impl Handler for RelayHandler {
    fn on_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.line.extend_from_slice(data);
        while let Some(nl) = self.line.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=nl).collect();
            self.last = line.starts_with(b"#");
            reply.upstream_open_tls(self.partner, "localhost", &self.policy, false);
            reply.upstream_write(&line);
        }
    }

    fn on_upstream_established(&mut self, identity: &PeerIdentity, _: &mut Reply) {
        assert_eq!(identity.common_name(), Some("localhost"));
        self.seen
            .handshakes
            .lock()
            .unwrap()
            .push(identity.resumed());
    }

    fn on_upstream_data(&mut self, data: &[u8], reply: &mut Reply) {
        self.answer.extend_from_slice(data);
        if let Some(nl) = self.answer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.answer.drain(..=nl).collect();
            reply.upstream_release(!self.last);
            reply.write(&line);
        }
    }

    fn on_upstream_closed(&mut self, end: UpstreamEnd, reply: &mut Reply) {
        let why = match &end {
            UpstreamEnd::Tls(e) => match e.reason() {
                Reason::PeerAlert(a) => format!("refused: {a}"),
                _ => format!("verification: {e}"),
            },
            other => other.to_string(),
        };
        reply.write(format!("ERR {why}\n").as_bytes());
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    server: ServerHandle,
    client: Client,
    seen: Arc<Seen>,
    partner: Partner,
}

/// Our relay in front of a partner whose certificate is `partner_cert` and who trusts
/// clients of `partner_trusts`.
fn setup(partner_cert: &str, partner_trusts: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Upstream Test CA");
    let other = Ca::new("Another CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
    let partner_id: Identity = ca.issue(&LeafSpec::server().around_wall_clock());
    partner_id.write_files(dir.path(), "partner");
    let mut elsewhere = LeafSpec::server().around_wall_clock();
    elsewhere.cn = "elsewhere.example".into();
    elsewhere.dns = vec!["elsewhere.example".into()];
    ca.issue(&elsewhere).write_files(dir.path(), "elsewhere");
    let ours = ca.issue(&LeafSpec::client("acme-cargo").around_wall_clock());
    let front = ca.issue(&LeafSpec::server().around_wall_clock());

    let partner = Partner::start(dir.path(), partner_cert, partner_trusts);
    let policy = ClientPolicy::builder(ca.trust())
        .client_cert(ours.chain.clone(), ours.key())
        .build(Time::now())
        .unwrap();
    let seen = Arc::new(Seen::default());
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: Mode::Terminate {
                policies: ServerPolicy::builder(front.chain.clone(), front.key())
                    .build(Time::now())
                    .unwrap()
                    .into_set(),
                backend: Backend::Service(Arc::new(Relay {
                    partner: partner.addr,
                    policy,
                    seen: seen.clone(),
                })),
            },
        }],
        // One worker: one pool.
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .unwrap();
    let client = Client::new(
        ClientPolicy::builder(ca.trust())
            .build(Time::now())
            .unwrap(),
    );
    Setup {
        _dir: dir,
        server,
        client,
        seen,
        partner,
    }
}

/// Send `lines` on one new connection; the answers, one per line.
fn exchange(s: &Setup, lines: &[&str]) -> Vec<String> {
    let c = s
        .client
        .connect(s.server.local_addrs()[0], "localhost")
        .unwrap();
    let mut answers = Vec::new();
    let mut r = BufReader::new(c);
    for l in lines {
        r.get_mut().write_all(format!("{l}\n").as_bytes()).unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        answers.push(a.trim_end().to_string());
    }
    answers
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tls_upstream_connections_are_verified_pooled_and_resumed() {
    let s = setup("partner", "ca.pem");
    assert_eq!(
        exchange(&s, &["hello", "ONE Record"]),
        ["olleh", "droceR ENO"]
    );
    // Another client connection: the same partner connection, from the pool.
    assert_eq!(exchange(&s, &["abc"]), ["cba"]);
    assert_eq!(
        s.partner.connections(),
        1,
        "one TLS connection to the partner"
    );
    assert_eq!(*s.seen.handshakes.lock().unwrap(), [false]);
    wait_for("the idle gauge", || {
        let idle = s.server.metrics().snapshot().counters.upstream_idle;
        idle.get(&format!("localhost:{}", s.partner.addr.port())) == Some(&1)
    });
    // The relay closes that connection (s_server serves one connection at a time); the next
    // request needs a new one, which resumes the session of the first.
    assert_eq!(exchange(&s, &["#bye"]), ["eyb#"]);
    assert_eq!(exchange(&s, &["again"]), ["niaga"]);
    assert_eq!(s.partner.connections(), 2);
    assert_eq!(*s.seen.handshakes.lock().unwrap(), [false, true], "resumed");
}

#[test]
fn a_partner_that_does_not_trust_our_certificate_is_reported_with_its_alert() {
    let s = setup("partner", "other-ca.pem");
    let answer = exchange(&s, &["hello"]);
    assert_eq!(
        answer,
        ["ERR refused: unknown_ca"],
        "the partner's alert is named"
    );
}

#[test]
fn a_partner_with_a_certificate_for_another_name_fails_verification() {
    let s = setup("elsewhere", "ca.pem");
    let answer = exchange(&s, &["hello"]);
    assert!(answer[0].starts_with("ERR verification: "), "{answer:?}");
    assert!(s.seen.handshakes.lock().unwrap().is_empty());
}
