//! The README's "core in one screen" is `core/examples/run_loop.rs` (the part between its
//! `README` markers), verbatim; this file checks that they do not drift and runs the loop over
//! loopback TCP against `openssl s_client` and against peers that disconnect or stay silent.
//! It also keeps the README's former loop, to show that it never ends once the peer is gone.

#[allow(dead_code, unreachable_pub)]
#[path = "../../core/examples/run_loop.rs"]
mod run_loop;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onerecord_tls::{Event, PeerIdentity, Reason, ServerPolicies, ServerPolicy, Session, Time};
use onerecord_tls_tests::{Ca, Identity, LeafSpec};
use run_loop::{App, Greeter};

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first ```rust block after `heading` in `markdown`.
fn code_block_after<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let section = &markdown[markdown.find(heading).expect("README section")..];
    let start = section.find("```rust\n").expect("rust block") + "```rust\n".len();
    let len = section[start..].find("```\n").expect("end of block");
    &section[start..start + len]
}

#[test]
fn readme_core_example_is_the_run_loop_example_verbatim() {
    let readme = repo_file("README.md");
    let block = code_block_after(&readme, "## The core in one screen");
    let example = repo_file("core/examples/run_loop.rs");
    let begin = example
        .find("// README-BEGIN\n")
        .expect("README-BEGIN marker")
        + 16;
    let end = example.find("// README-END\n").expect("README-END marker");
    assert_eq!(
        block,
        &example[begin..end],
        "README.md's block under \"The core in one screen\" must equal the marked part of \
         core/examples/run_loop.rs"
    );
}

struct Pki {
    ca: Ca,
    server: Identity,
    dir: std::path::PathBuf,
}

impl Pki {
    /// A CA, a `localhost` server and the client `acme-cargo` (URI SAN under
    /// https://onerecord.example/), the client's files written for openssl.
    fn new(tag: &str) -> Self {
        let ca = Ca::new("Run Loop Test CA");
        let server = ca.issue(&LeafSpec::server().around_wall_clock());
        let client = ca.issue(&LeafSpec::client("acme-cargo").around_wall_clock());
        let dir =
            std::env::temp_dir().join(format!("onerecord-run-loop-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), &client.chain_pem).unwrap();
        std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
        Self { ca, server, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The README's policy.
    fn policy(&self) -> ServerPolicies {
        run_loop::policy(
            self.server.chain.clone(),
            self.server.key(),
            self.ca.pem().as_bytes(),
        )
        .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serve one connection on a loopback listener in a thread; the address and the result.
fn serve_one<A: App + Send + 'static>(
    policy: ServerPolicies,
    mut app: A,
) -> (std::net::SocketAddr, mpsc::Receiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let r =
            run_loop::serve(&mut socket, &policy, &mut app).map_err(|e| match e
                .downcast_ref::<onerecord_tls::Error>()
            {
                Some(tls) => format!("{:?}", tls.reason()),
                None => e.to_string(),
            });
        let _ = tx.send(r);
    });
    (addr, rx)
}

/// `openssl s_client` with the client certificate, its stdout collected as it comes.
struct SClient {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl SClient {
    fn start(pki: &Pki, addr: std::net::SocketAddr) -> Self {
        let mut child = Command::new("timeout")
            .args(["30", "openssl", "s_client", "-brief", "-connect"])
            .arg(addr.to_string())
            .args(["-servername", "localhost", "-verify_return_error"])
            .args(["-CAfile", &pki.path("ca.pem")])
            .args([
                "-cert",
                &pki.path("client.pem"),
                "-key",
                &pki.path("client.key"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, out }
    }

    fn send(&mut self, data: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(data).unwrap();
        stdin.flush().unwrap();
    }

    /// Wait (bounded) until stdout holds at least `n` bytes matching `pred`.
    fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[u8]) -> bool) {
        let start = Instant::now();
        while start.elapsed() < within {
            if pred(&self.out.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s_client never got {what}");
    }

    /// Close stdin: s_client sends close_notify and exits (without `-quiet`/`-ign_eof`).
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn readme_run_loop_serves_openssl_s_client_and_ends_on_its_close_notify() {
    let pki = Pki::new("serve");
    let (addr, result) = serve_one(pki.policy(), Greeter::default());
    let mut s = SClient::start(&pki, addr);
    s.send(b"GET /logistics-objects\n");
    s.wait_for("hello acme-cargo", Duration::from_secs(20), |o| {
        String::from_utf8_lossy(o).contains("hello acme-cargo\n")
    });
    s.send(b"and again\n");
    s.wait_for("a second answer", Duration::from_secs(20), |o| {
        String::from_utf8_lossy(o)
            .matches("hello acme-cargo\n")
            .count()
            == 2
    });
    s.finish();
    assert_eq!(
        result.recv_timeout(Duration::from_secs(20)),
        Ok(Ok(())),
        "serve ends cleanly after the peer's close_notify"
    );
}

/// Answers the first request with `len` bytes.
struct Bulk {
    len: usize,
}

impl App for Bulk {
    fn on_established(&mut self, _peer: &PeerIdentity) {}

    fn on_data(&mut self, _bytes: &[u8], reply: &mut Vec<u8>) {
        reply.resize(std::mem::take(&mut self.len), b'x');
    }
}

#[test]
fn readme_run_loop_delivers_a_reply_much_larger_than_its_buffers_and_the_socket_buffer() {
    let pki = Pki::new("bulk");
    let len = 8 << 20;
    let (addr, result) = serve_one(pki.policy(), Bulk { len });
    let mut s = SClient::start(&pki, addr);
    s.send(b"GET /big\n");
    s.wait_for("the whole reply", Duration::from_secs(30), |o| {
        o.len() >= len
    });
    s.finish();
    assert_eq!(result.recv_timeout(Duration::from_secs(20)), Ok(Ok(())));
}

#[test]
fn readme_run_loop_ends_with_unexpected_eof_when_the_peer_disconnects_mid_handshake() {
    let pki = Pki::new("eof");
    for sent in [
        &b""[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let (addr, result) = serve_one(pki.policy(), Greeter::default());
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.write_all(sent).unwrap();
        peer.shutdown(Shutdown::Both).unwrap();
        let start = Instant::now();
        let r = result.recv_timeout(Duration::from_secs(5));
        assert_eq!(
            r,
            Ok(Err(format!("{:?}", Reason::UnexpectedEof))),
            "{sent:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn readme_run_loop_times_out_a_silent_handshake_at_the_policy_deadline() {
    let pki = Pki::new("timeout");
    let policy = ServerPolicy::builder(pki.server.chain.clone(), pki.server.key())
        .require_client_auth(pki.ca.trust())
        .handshake_timeout(Duration::from_millis(300))
        .build(Time::now())
        .unwrap()
        .into_set();
    let (addr, result) = serve_one(policy, Greeter::default());
    let peer = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let r = result.recv_timeout(Duration::from_secs(10)).unwrap();
    let waited = start.elapsed();
    assert!(
        r.as_ref().is_err_and(|e| e.starts_with("HandshakeTimeout")),
        "{r:?}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(peer);
}

/// The loop the README showed before, kept to show its defect: capped at `max` rounds, it
/// returns how many it ran (`max` when it never ended).
fn former_readme_loop(socket: &mut TcpStream, policy: &ServerPolicies, max: usize) -> usize {
    let mut tls = Session::server(policy, Time::now());
    for round in 0..max {
        let n = socket.read(tls.receive_buffer()).unwrap(); // bytes in ...
        tls.received(n);
        let result = tls.process(Time::now(), |event| match event {
            Event::Established(_) | Event::Data(_) => {}
            Event::PeerClosed | Event::Closed => {}
        });
        let out = tls.transmit(); // ... bytes out (alerts too)
        let m = socket.write(out).unwrap();
        tls.transmitted(m);
        if result.is_err() {
            return round;
        }
    }
    max
}

#[test]
fn former_readme_loop_spins_after_the_peer_disconnects_while_the_new_one_ends() {
    let pki = Pki::new("former");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut peer = TcpStream::connect(addr).unwrap();
    let (mut socket, _) = listener.accept().unwrap();
    peer.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
    peer.shutdown(Shutdown::Both).unwrap();
    drop(peer);
    let max = 100_000;
    let start = Instant::now();
    let rounds = former_readme_loop(&mut socket, &pki.policy(), max);
    assert_eq!(
        rounds,
        max,
        "the former loop never ends: read returns 0 and nothing calls received_eof ({:?} for \
         {max} rounds)",
        start.elapsed()
    );
    // The same peer against the README's loop now: it ends at once.
    let (addr, result) = serve_one(pki.policy(), Greeter::default());
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
    peer.shutdown(Shutdown::Both).unwrap();
    assert_eq!(
        result.recv_timeout(Duration::from_secs(5)),
        Ok(Err(format!("{:?}", Reason::UnexpectedEof)))
    );
}
