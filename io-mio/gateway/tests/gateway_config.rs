//! The configuration file as an operator meets it: `server --config FILE` with several sites
//! chosen by SNI on one port (openssl s_client -servername, curl --resolve), an unknown SNI
//! with and without a default site, SIGHUP re-reading the file, `check --config`, the path
//! from `ONERECORD_GATEWAY_CONFIG`, every class of configuration error (exit 2 naming the key
//! and its line), the HTTP-mode flags, and README.md's front-door example. Against the real
//! binary and real peers over loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GET10, Pki, URI_PREFIX, free_port, text};
use onerecord_tls_tests::LeafSpec;

const BIN: &str = env!("CARGO_BIN_EXE_onerecord-gateway");

/// Issue a server certificate for `names` from the test CA, written as `file`.pem/.key.
fn write_site_cert(pki: &Pki, file: &str, names: &[&str]) {
    let id = pki.ca.issue(&LeafSpec {
        cn: names[0].to_string(),
        dns: names.iter().map(|n| n.to_string()).collect(),
        ..LeafSpec::server().around_wall_clock()
    });
    id.write_files(pki.dir.path(), file);
}

/// Write `gw.toml` into the PKI directory.
fn write_config(pki: &Pki, toml: &str) -> PathBuf {
    let p = pki.dir.path().join("gw.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// Run the gateway to its exit (bounded by 20 s) with `args` and extra environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("timeout")
        .arg("20")
        .arg(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("ONERECORD_GATEWAY_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run onerecord-gateway")
}

/// A gateway started with `server --config`, killed on drop; the addresses it listens on, in
/// the file's order.
struct Running {
    child: Child,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(config: &Path, listeners: usize) -> Self {
        Self::start_with(
            &["server", "--config", &config.display().to_string()],
            &[],
            listeners,
        )
    }

    fn start_with(args: &[&str], env: &[(&str, &str)], listeners: usize) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("ONERECORD_GATEWAY_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start onerecord-gateway");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut r = Self {
            child,
            addrs: Vec::new(),
            log,
        };
        let start = Instant::now();
        while r.log_count("listening on ") < listeners {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway did not listen; log:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r.addrs = r
            .log()
            .lines()
            .filter(|l| l.contains("listening on "))
            .filter_map(|l| l.rsplit("listening on ").next())
            .map(|a| a.trim().parse().expect("listen address"))
            .collect();
        r
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait (bounded) until `n` log lines contain `needle`.
    fn wait_for_count(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.log_count(needle) < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway never logged {needle:?} {n} times; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client` to `addr` with SNI `sni` (`None`: no SNI), trusting the test CA, with
/// the client certificate `client` (`.pem`/`.key` of the PKI) when given; sends GET10.
fn s_client(pki: &Pki, addr: SocketAddr, sni: Option<&str>, client: Option<&str>) -> String {
    s_client_with(pki, addr, sni, client, &[])
}

/// [`s_client`] with more openssl arguments.
fn s_client_with(
    pki: &Pki,
    addr: SocketAddr,
    sni: Option<&str>,
    client: Option<&str>,
    extra: &[&str],
) -> String {
    let mut args: Vec<String> = vec![
        "20".into(),
        "openssl".into(),
        "s_client".into(),
        "-connect".into(),
        addr.to_string(),
        "-ign_eof".into(),
        "-CAfile".into(),
        pki.path("ca.pem"),
    ];
    match sni {
        Some(n) => args.extend(["-servername".into(), n.into()]),
        None => args.push("-noservername".into()),
    }
    if let Some(c) = client {
        args.extend([
            "-cert".into(),
            pki.path(&format!("{c}.pem")),
            "-key".into(),
            pki.path(&format!("{c}.key")),
        ]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut child = Command::new("timeout")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(GET10);
    }
    text(&child.wait_with_output().expect("s_client output"))
}

/// `curl --resolve NAME:PORT:127.0.0.1 https://NAME:PORT/` trusting the test CA; stdout
/// and stderr, and whether curl succeeded.
fn curl(pki: &Pki, addr: SocketAddr, name: &str, client: Option<&str>) -> (bool, String) {
    let port = addr.port();
    let mut args = vec![
        "20".to_string(),
        "curl".into(),
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        pki.path("ca.pem"),
        "--resolve".into(),
        format!("{name}:{port}:127.0.0.1"),
    ];
    if let Some(c) = client {
        args.extend([
            "--cert".into(),
            pki.path(&format!("{c}.pem")),
            "--key".into(),
            pki.path(&format!("{c}.key")),
        ]);
    }
    args.push(format!("https://{name}:{port}/"));
    let o = Command::new("timeout").args(&args).output().expect("curl");
    (o.status.success(), text(&o))
}

/// Two sites on one listener: partners (mTLS required) and public (no client certificate).
fn two_sites(pki: &Pki, default_public: bool) -> String {
    write_site_cert(pki, "partners", &["partners.example"]);
    write_site_cert(pki, "public", &["public.example"]);
    format!(
        r#"workers = 1

[[listener]]
address = "127.0.0.1:0"

  [[listener.site]]
  server_names = ["partners.example"]
  cert = "partners.pem"
  key = "partners.key"
  client_auth = "required"
  client_ca = "ca.pem"

  [[listener.site]]
  server_names = ["public.example"]
  cert = "public.pem"
  key = "public.key"
  client_auth = "none"
  default = {default_public}
"#
    )
}

#[test]
fn two_sni_sites_on_one_port_have_different_client_authentication() {
    let pki = Pki::new();
    let config = write_config(&pki, &two_sites(&pki, false));
    let gw = Running::start(&config, 1);
    let addr = gw.addrs[0];

    // The partner site demands a certificate: without one, certificate_required.
    let out = s_client(&pki, addr, Some("partners.example"), None);
    assert!(out.contains("alert certificate required"), "{out}");
    assert!(!out.contains("200 OK"), "{out}");
    // With one, served; the server certificate is the partner site's.
    let out = s_client(&pki, addr, Some("partners.example"), Some("client"));
    assert!(out.contains("200 OK"), "{out}");
    assert!(out.contains("CN = partners.example"), "{out}");
    assert!(out.contains("acme-cargo"), "{out}");

    // The public site asks for none and serves anonymous clients with its own certificate.
    let out = s_client(&pki, addr, Some("public.example"), None);
    assert!(out.contains("200 OK"), "{out}");
    assert!(out.contains("CN = public.example"), "{out}");
    assert!(
        !out.contains("Acceptable client certificate CA names"),
        "{out}"
    );

    // curl agrees (and verifies each site's certificate against the name it asked for).
    let (ok, out) = curl(&pki, addr, "public.example", None);
    assert!(ok, "{out}");
    assert!(out.contains("\"request\""), "{out}");
    let (ok, out) = curl(&pki, addr, "partners.example", None);
    assert!(!ok, "{out}");
    let (ok, out) = curl(&pki, addr, "partners.example", Some("client"));
    assert!(ok && out.contains("acme-cargo"), "{out}");
}

#[test]
fn unknown_sni_gets_unrecognized_name_without_a_default_site_and_is_served_with_one() {
    let pki = Pki::new();
    let config = write_config(&pki, &two_sites(&pki, false));
    let gw = Running::start(&config, 1);
    let out = s_client(&pki, gw.addrs[0], Some("other.example"), None);
    assert!(out.contains("unrecognized name"), "{out}");
    assert!(!out.contains("200 OK"), "{out}");
    drop(gw);

    let config = write_config(&pki, &two_sites(&pki, true));
    let gw = Running::start(&config, 1);
    for sni in [Some("other.example"), None] {
        let out = s_client(&pki, gw.addrs[0], sni, None);
        assert!(out.contains("200 OK"), "{sni:?}: {out}");
        assert!(out.contains("CN = public.example"), "{sni:?}: {out}");
    }
}

#[test]
fn sites_of_one_listener_go_to_their_own_upstreams() {
    let pki = Pki::new();
    // The partners' upstream: a TCP server that answers every connection with one line.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in upstream.incoming().flatten().take(4) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the partners' upstream\n");
        }
    });
    let toml = two_sites(&pki, true).replace(
        "  client_ca = \"ca.pem\"\n",
        &format!("  client_ca = \"ca.pem\"\n  upstream = \"{up}\"\n"),
    );
    let config = write_config(&pki, &toml);
    let gw = Running::start(&config, 1);
    let out = s_client(&pki, gw.addrs[0], Some("partners.example"), Some("client"));
    assert!(out.contains("from the partners' upstream"), "{out}");
    // The public site (and the default: no SNI) answers with the identity responder.
    for sni in [Some("public.example"), None] {
        let out = s_client(&pki, gw.addrs[0], sni, None);
        assert!(out.contains("\"request\""), "{sni:?}: {out}");
        assert!(!out.contains("partners' upstream"), "{sni:?}: {out}");
    }
}

#[test]
fn several_listeners_each_serve_their_own_sites() {
    let pki = Pki::new();
    write_site_cert(&pki, "a", &["a.example"]);
    write_site_cert(&pki, "b", &["*.b.example"]);
    let config = write_config(
        &pki,
        r#"workers = 1
[[listener]]
address = "127.0.0.1:0"
  [[listener.site]]
  server_names = ["a.example"]
  cert = "a.pem"
  key = "a.key"
[[listener]]
address = "127.0.0.1:0"
  [[listener.site]]
  server_names = ["*.b.example"]
  cert = "b.pem"
  key = "b.key"
  client_ca = "ca.pem"
"#,
    );
    let gw = Running::start(&config, 2);
    assert_eq!(gw.addrs.len(), 2, "{}", gw.log());
    assert_ne!(gw.addrs[0], gw.addrs[1]);
    let out = s_client(&pki, gw.addrs[0], Some("a.example"), None);
    assert!(
        out.contains("200 OK") && out.contains("CN = a.example"),
        "{out}"
    );
    // The second listener does not serve a.example, and its wildcard site requires a
    // certificate (client_ca without client_auth means "required").
    let out = s_client(&pki, gw.addrs[1], Some("a.example"), None);
    assert!(out.contains("unrecognized name"), "{out}");
    let out = s_client(&pki, gw.addrs[1], Some("x.b.example"), None);
    assert!(out.contains("alert certificate required"), "{out}");
    let out = s_client(&pki, gw.addrs[1], Some("x.b.example"), Some("client"));
    assert!(out.contains("200 OK"), "{out}");
}

#[test]
fn sighup_rereads_the_file_a_new_allow_rule_takes_effect_and_a_broken_file_keeps_the_running_one() {
    let pki = Pki::new();
    pki.write_client_with_uris(
        "partner",
        &["https://onerecord.partner.example/logistics-agents/p"],
    );
    let base = two_sites(&pki, false);
    let config = write_config(&pki, &base);
    let gw = Running::start(&config, 1);
    let addr = gw.addrs[0];
    let out = s_client(&pki, addr, Some("partners.example"), Some("partner"));
    assert!(out.contains("200 OK"), "{out}");

    // Only acme-cargo's IDs from now on: the other partner is refused after SIGHUP.
    let with_rule = base.replace(
        "  client_ca = \"ca.pem\"\n",
        &format!("  client_ca = \"ca.pem\"\n  allow_uri = [\"{URI_PREFIX}\"]\n"),
    );
    assert_ne!(with_rule, base);
    write_config(&pki, &with_rule);
    gw.hup();
    gw.wait_for_count("reloaded policy for", 1);
    let out = s_client(&pki, addr, Some("partners.example"), Some("partner"));
    assert!(!out.contains("200 OK"), "{out}");
    let out = s_client(&pki, addr, Some("partners.example"), Some("client"));
    assert!(out.contains("200 OK"), "{out}");

    // A broken file (an allow rule on the public site, which has no client authentication):
    // ERROR naming key and line; the running configuration stays.
    let broken = with_rule.replace(
        "  client_auth = \"none\"\n",
        "  client_auth = \"none\"\n  allow_cn = [\"acme-cargo\"]\n",
    );
    write_config(&pki, &broken);
    let line = broken.lines().position(|l| l.contains("allow_cn")).unwrap() + 1;
    gw.hup();
    gw.wait_for_count("reload failed", 1);
    let log = gw.log();
    let err = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(
        err.contains("ERROR")
            && err.contains(&format!("gw.toml:{line}:"))
            && err.contains("allow_cn"),
        "{err}"
    );
    let out = s_client(&pki, addr, Some("public.example"), None);
    assert!(out.contains("200 OK"), "{out}");
    let out = s_client(&pki, addr, Some("partners.example"), Some("partner"));
    assert!(!out.contains("200 OK"), "{out}");
    assert_eq!(gw.log_count("reloaded policy for"), 1, "{log}");
}

#[test]
fn a_reload_keeps_each_sites_sessions_until_that_sites_client_ca_changes() {
    let pki = Pki::new();
    let d = pki.dir.path();
    std::fs::copy(d.join("ca.pem"), d.join("bundle.pem")).unwrap();
    let toml = two_sites(&pki, false).replace("\"ca.pem\"", "\"bundle.pem\"");
    let config = write_config(&pki, &toml);
    let gw = Running::start(&config, 1);
    let addr = gw.addrs[0];
    let (p_sess, q_sess) = (pki.path("partners.sess"), pki.path("public.sess"));
    let partners = |flag: &str, f: &str| {
        s_client_with(
            &pki,
            addr,
            Some("partners.example"),
            Some("client"),
            &["-tls1_3", flag, f],
        )
    };
    let public = |flag: &str, f: &str| {
        s_client_with(
            &pki,
            addr,
            Some("public.example"),
            None,
            &["-tls1_3", flag, f],
        )
    };
    assert!(partners("-sess_out", &p_sess).contains("200 OK"));
    assert!(public("-sess_out", &q_sess).contains("200 OK"));

    // The same file again: both sites' sessions resume.
    gw.hup();
    gw.wait_for_count("reloaded policy for", 1);
    let out = partners("-sess_in", &p_sess);
    assert!(
        out.contains("Reused, TLSv1.3") && out.contains("200 OK"),
        "{out}"
    );
    let out = public("-sess_in", &q_sess);
    assert!(out.contains("Reused, TLSv1.3"), "{out}");

    // The partners' CA bundle changes: their sessions end (a full handshake, still admitted);
    // the public site's trust did not change and its sessions still resume.
    let other = std::fs::read_to_string(d.join("other-ca.pem")).unwrap();
    let ca = std::fs::read_to_string(d.join("ca.pem")).unwrap();
    std::fs::write(d.join("bundle.pem"), format!("{ca}{other}")).unwrap();
    gw.hup();
    gw.wait_for_count("reloaded policy for", 2);
    let out = partners("-sess_in", &p_sess);
    assert!(
        out.contains("New, TLSv1.3") && out.contains("200 OK"),
        "{out}"
    );
    let out = public("-sess_in", &q_sess);
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
}

#[test]
fn reload_interval_key_rereads_the_file_without_a_signal() {
    let pki = Pki::new();
    let base =
        two_sites(&pki, false).replace("workers = 1\n", "workers = 1\nreload_interval = 1\n");
    let config = write_config(&pki, &base);
    let gw = Running::start(&config, 1);
    let out = s_client(&pki, gw.addrs[0], Some("public.example"), None);
    assert!(out.contains("200 OK"), "{out}");
    // The public site becomes mTLS-only; within a few intervals the change is served.
    let changed = base.replace(
        "  client_auth = \"none\"\n",
        "  client_auth = \"required\"\n  client_ca = \"ca.pem\"\n",
    );
    assert_ne!(changed, base);
    write_config(&pki, &changed);
    let start = Instant::now();
    loop {
        let out = s_client(&pki, gw.addrs[0], Some("public.example"), None);
        if out.contains("alert certificate required") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never reloaded: {out}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A global key that only a restart applies is said so.
    write_config(&pki, &changed.replace("workers = 1", "workers = 3"));
    gw.wait_for_count("workers changed", 1);
}

#[test]
fn reload_with_a_moved_listener_address_says_addresses_do_not_change() {
    let pki = Pki::new();
    let base = two_sites(&pki, false);
    let config = write_config(&pki, &base);
    let gw = Running::start(&config, 1);
    let moved = base.replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()));
    write_config(&pki, &moved);
    gw.hup();
    gw.wait_for_count("addresses do not change on reload", 2);
    // The running listener still serves.
    let out = s_client(&pki, gw.addrs[0], Some("public.example"), None);
    assert!(out.contains("200 OK"), "{out}");
}

#[test]
fn check_prints_a_line_per_site_and_exits_0_or_the_error_and_exits_2() {
    let pki = Pki::new();
    let config = write_config(&pki, &two_sites(&pki, true));
    let out = run(&["check", "--config", &config.display().to_string()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let partners = stdout
        .lines()
        .find(|l| l.contains("partners.example"))
        .unwrap();
    assert!(partners.contains("client_auth required"), "{stdout}");
    let public = stdout
        .lines()
        .find(|l| l.contains("public.example"))
        .unwrap();
    assert!(
        public.contains("client_auth none") && public.contains("[default]"),
        "{stdout}"
    );
    assert!(stdout.lines().last().unwrap().ends_with(": ok"), "{stdout}");
    // Nothing was bound: the file says port 0, and check starts no listener.
    assert!(!text(&out).contains("listening on"), "{}", text(&out));

    // A missing file named by a site: exit 2, the key and its line.
    std::fs::remove_file(pki.dir.path().join("public.key")).unwrap();
    let out = run(&["check", "--config", &config.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let line = two_sites(&pki, true)
        .lines()
        .position(|l| l.contains("\"public.key\""))
        .unwrap()
        + 1;
    let err = text(&out);
    assert!(
        err.contains(&format!("gw.toml:{line}:")) && err.contains(": key: "),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));
}

#[test]
fn config_path_comes_from_onerecord_gateway_config() {
    let pki = Pki::new();
    let config = write_config(&pki, &two_sites(&pki, true));
    let path = config.display().to_string();
    let out = run(&["check"], &[("ONERECORD_GATEWAY_CONFIG", &path)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let gw = Running::start_with(&["server"], &[("ONERECORD_GATEWAY_CONFIG", &path)], 1);
    let out = s_client(&pki, gw.addrs[0], Some("public.example"), None);
    assert!(out.contains("200 OK"), "{out}");
    // With server flags as well, the variable is a --config like any other: exit 2.
    let out = run(
        &["server", "--listen", "127.0.0.1:0"],
        &[("ONERECORD_GATEWAY_CONFIG", &path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--listen"), "{}", text(&out));
}

/// Each bad file: (what is wrong, the TOML, the line of the key, the key named).
fn bad_files(pki: &Pki) -> Vec<(&'static str, String, usize, &'static str)> {
    write_site_cert(pki, "a", &["a.example"]);
    let head = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener.site]]\ncert = \"a.pem\"\nkey = \"a.key\"\n";
    let site = |extra: &str| format!("{head}{extra}");
    vec![
        ("unknown key", site("default = true\ncolour = \"blue\"\n"), 7, "colour"),
        ("unknown global key", format!("wokers = 2\n{head}default = true\n"), 1, "wokers"),
        (
            "a wrong type",
            site("default = true\nclient_auth = true\n"),
            7,
            "client_auth",
        ),
        (
            "a client_auth that does not exist",
            site("default = true\nclient_auth = \"sometimes\"\n"),
            7,
            "sometimes",
        ),
        (
            "a missing certificate file",
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener.site]]\ndefault = true\ncert = \"nope.pem\"\nkey = \"a.key\"\n".to_string(),
            5,
            "cert",
        ),
        (
            "h2 offered by the HTTP mode",
            site("default = true\nupstream = \"http://127.0.0.1:9\"\nalpn = [\"h2\", \"http/1.1\"]\n"),
            8,
            "alpn",
        ),
        (
            "an allow rule with client_auth = none",
            site("default = true\nclient_auth = \"none\"\nallow_uri = [\"https://x.example/\"]\n"),
            8,
            "allow_uri",
        ),
        (
            "a crl with client_auth = none",
            site("default = true\ncrl = [\"crl.der\"]\n"),
            7,
            "crl",
        ),
        (
            "client_ca with client_auth = none",
            site("default = true\nclient_auth = \"none\"\nclient_ca = \"ca.pem\"\n"),
            7,
            "client_auth",
        ),
        (
            "client_auth = required without client_ca",
            site("default = true\nclient_auth = \"required\"\n"),
            7,
            "client_auth",
        ),
        (
            "proxy_protocol with an http:// upstream",
            site("default = true\nupstream = \"http://127.0.0.1:8080\"\nproxy_protocol = true\n"),
            8,
            "proxy_protocol",
        ),
        (
            "an HTTP-mode key with a byte-stream upstream",
            site("default = true\nupstream = \"127.0.0.1:8080\"\nclient_cert_header = \"x-ssl-client-cert\"\n"),
            8,
            "client_cert_header",
        ),
        (
            "two sites claiming one name",
            format!("{}{}", site("server_names = [\"a.example\"]\n"), "[[listener.site]]\ncert = \"a.pem\"\nkey = \"a.key\"\nserver_names = [\"b.example\", \"A.example\"]\n"),
            10,
            "server_names",
        ),
        (
            "two defaults",
            format!("{}{}", site("default = true\n"), "[[listener.site]]\ncert = \"a.pem\"\nkey = \"a.key\"\ndefault = true\n"),
            10,
            "default",
        ),
        (
            "two sites of one upstream with different client_cert_header",
            format!(
                "{}{}",
                site("default = true\nupstream = \"http://127.0.0.1:8080\"\nclient_cert_header = \"x-ssl-client-cert\"\n"),
                "[[listener.site]]\ncert = \"a.pem\"\nkey = \"a.key\"\nserver_names = [\"b.example\"]\nupstream = \"http://127.0.0.1:8080\"\n"
            ),
            9,
            "client_cert_header",
        ),
        (
            "a site that serves no name",
            site("client_auth = \"none\"\n"),
            3,
            "server_names",
        ),
        (
            "a listener address that is not IP:PORT",
            "[[listener]]\naddress = \"localhost\"\n[[listener.site]]\ndefault = true\ncert = \"a.pem\"\nkey = \"a.key\"\n".to_string(),
            2,
            "address",
        ),
        (
            "an invalid server name",
            site("server_names = [\"not a name\"]\n"),
            6,
            "server_names",
        ),
        (
            "a missing ticket-key file",
            format!("ticket_keys = \"nope.keys\"\n{head}default = true\n"),
            1,
            "ticket_keys",
        ),
        (
            "a negative timeout",
            format!("idle_timeout = -1\n{head}default = true\n"),
            1,
            "idle_timeout",
        ),
    ]
}

#[test]
fn every_configuration_error_exits_2_naming_the_key_and_its_line() {
    let pki = Pki::new();
    for (what, toml, line, key) in bad_files(&pki) {
        let config = write_config(&pki, &toml);
        let path = config.display().to_string();
        for args in [["check", "--config", &path], ["server", "--config", &path]] {
            let out = run(&args, &[]);
            let err = text(&out);
            assert_eq!(out.status.code(), Some(2), "{what} ({}): {err}", args[0]);
            assert!(
                err.contains(&format!("gw.toml:{line}:")) && err.contains(key),
                "{what} ({}): wants line {line} and {key:?}:\n{toml}\n{err}",
                args[0]
            );
            assert!(!err.contains("listening on"), "{what}: {err}");
        }
    }
}

#[test]
fn a_missing_or_empty_configuration_file_exits_2_naming_it() {
    let pki = Pki::new();
    let missing = pki.path("missing.toml");
    let out = run(&["server", "--config", &missing], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("--config {missing}")),
        "{}",
        text(&out)
    );
    let empty = write_config(&pki, "workers = 1\n");
    let out = run(&["check", "--config", &empty.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("listener"), "{}", text(&out));
}

#[test]
fn config_together_with_server_flags_exits_2_naming_the_flag() {
    let pki = Pki::new();
    let config = write_config(&pki, &two_sites(&pki, true));
    let path = config.display().to_string();
    for (flag, value) in [
        ("--cert", pki.path("server.pem")),
        ("--workers", "2".to_string()),
    ] {
        let out = run(&["server", "--config", &path, flag, &value], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("cannot be combined with {flag}")),
            "{}",
            text(&out)
        );
    }
    let out = run(&["server", "--config", &path, "--tls13-only"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn http_mode_flags_refuse_a_proxy_header_and_need_an_http_upstream() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let base = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let cases: [(&[&str], &str); 6] = [
        (
            &["--upstream", "http://127.0.0.1:9", "--proxy-protocol"],
            "--proxy-protocol",
        ),
        // HTTP/1.1 only: a client that negotiated h2 would get a 400 for its preface.
        (
            &[
                "--upstream",
                "http://127.0.0.1:9",
                "--alpn",
                "h2",
                "--alpn",
                "http/1.1",
            ],
            "--alpn",
        ),
        (&["--alpn", "h2"], "--alpn"),
        (
            &[
                "--upstream",
                "127.0.0.1:9",
                "--client-cert-header",
                "x-ssl-client-cert",
            ],
            "--client-cert-header",
        ),
        (&["--upstream", "127.0.0.1:9", "--no-xfcc"], "--no-xfcc"),
        (&["--upstream", "http://127.0.0.1:9/api"], "--upstream"),
    ];
    for (extra, named) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains(named), "{extra:?}: {}", text(&out));
    }
    // The byte-stream mode stays HOST:PORT, with a PROXY header if asked, and may offer any
    // protocol (the upstream speaks it).
    let gw = Running::start_with(
        &[
            &base[..],
            &[
                "--upstream",
                "127.0.0.1:9",
                "--proxy-protocol",
                "--alpn",
                "h2",
            ],
        ]
        .concat(),
        &[],
        1,
    );
    assert!(gw.log().contains("listening on"), "{}", gw.log());
}

/// README.md's front-door example (the TOML block after the marker comment).
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let marker = "<!-- front-door example -->";
    let after = &readme[readme.find(marker).expect("front-door marker in README.md")..];
    let start = after.find("```toml\n").expect("toml block") + "```toml\n".len();
    let len = after[start..].find("```").expect("end of the toml block");
    after[start..start + len].to_string()
}

/// The files the README example names, from the test PKI: partners-ca.pem (the test CA),
/// partners.crl, the two sites' certificates, and a partner whose ID the allow rule covers.
fn readme_files(pki: &Pki) {
    let d = pki.dir.path();
    std::fs::copy(d.join("ca.pem"), d.join("partners-ca.pem")).unwrap();
    std::fs::copy(d.join("crl.der"), d.join("partners.crl")).unwrap();
    for (file, name) in [
        ("onerecord", "onerecord.example.com"),
        ("public", "www.example.com"),
    ] {
        write_site_cert(pki, file, &[name]);
        std::fs::rename(
            d.join(format!("{file}.pem")),
            d.join(format!("{file}-chain.pem")),
        )
        .unwrap();
    }
    pki.write_client_with_uris(
        "partner",
        &["https://onerecord.acme-cargo.example/logistics-agents/acme"],
    );
}

#[test]
fn readme_front_door_example_passes_check() {
    let pki = Pki::new();
    readme_files(&pki);
    let config = write_config(&pki, &readme_example());
    let out = run(&["check", "--config", &config.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("HTTP to http://"))
            .count(),
        2,
        "{stdout}"
    );
}

#[test]
fn readme_front_door_example_serves_partners_with_mtls_and_the_public_without() {
    let pki = Pki::new();
    readme_files(&pki);
    // The upstream: Python's http.server on a free port, serving the PKI directory.
    let up = free_port();
    let mut upstream = Command::new("python3")
        .args(["-m", "http.server", &up.to_string(), "--bind", "127.0.0.1"])
        .current_dir(pki.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    // Wait (bounded) until the upstream listens.
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", up)).is_err() {
        assert!(
            Instant::now() < until,
            "python3 -m http.server never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = free_port();
    let metrics = free_port();
    let mut toml = readme_example();
    for (from, to) in [
        ("0.0.0.0:8443", format!("127.0.0.1:{port}")),
        ("127.0.0.1:9100", format!("127.0.0.1:{metrics}")),
        ("127.0.0.1:8080", format!("127.0.0.1:{up}")),
    ] {
        assert!(toml.contains(from), "README example no longer says {from}");
        toml = toml.replace(from, &to);
    }
    let config = write_config(&pki, &toml);
    let gw = Running::start(&config, 1);
    let addr = gw.addrs[0];
    let out = s_client(&pki, addr, Some("onerecord.example.com"), None);
    assert!(out.contains("alert certificate required"), "{out}");
    let (ok, out) = curl(&pki, addr, "onerecord.example.com", Some("partner"));
    assert!(ok && out.contains("partners-ca.pem"), "{out}");
    let (ok, out) = curl(&pki, addr, "www.example.com", None);
    assert!(ok && out.contains("partners-ca.pem"), "{out}");
    let _ = upstream.kill();
    let _ = upstream.wait();
}
