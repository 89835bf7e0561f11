//! The `onerecord-gateway` command line as an operator meets it: an address already in use,
//! `--reuse-port`, the `dev` PKI and its second partner certificate, `--help`, the CA flag's
//! name in both modes, and `client` mode checking the partner's identity
//! (`--verify-*`). Against the real binary and real peers (openssl, curl) over loopback.

mod cli_support;
mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use cli_support::{
    Proc, gateway_command, openssl, run_to_exit, s_server, serial_and_spki, through,
};
use common::{GET10, Gateway, Pki, s_client, text};

/// Server arguments with the test PKI's server certificate, listening on `listen`.
fn server_args(pki: &Pki, listen: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "server".into(),
        "--listen".into(),
        listen.into(),
        "--cert".into(),
        pki.path("server.pem"),
        "--key".into(),
        pki.path("server.key"),
        "--workers".into(),
        "2".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn second_gateway_on_an_occupied_port_exits_2_naming_the_address() {
    let pki = Pki::new();
    let first = Gateway::start(
        "server",
        &[
            "--cert",
            &pki.path("server.pem"),
            "--key",
            &pki.path("server.key"),
            "--workers",
            "2",
        ],
    );
    let addr = first.addr.to_string();
    // The second one with and without --reuse-port: the first did not opt in, so neither
    // may take a share of its port.
    for extra in [&[][..], &["--reuse-port"][..]] {
        let out = run_to_exit(&refs(&server_args(&pki, &addr, extra)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: exit code; {stderr}");
        assert!(stderr.contains(&addr), "{extra:?}: names {addr}: {stderr}");
        assert!(stderr.contains("in use"), "{extra:?}: says why: {stderr}");
    }
    // The first still serves.
    assert!(TcpStream::connect_timeout(&first.addr, Duration::from_secs(5)).is_ok());
}

#[test]
fn with_reuse_port_on_both_a_second_gateway_starts_on_the_same_address() {
    let pki = Pki::new();
    let first = Proc::gateway(
        &refs(&server_args(&pki, "127.0.0.1:0", &["--reuse-port"])),
        None,
        &[],
    );
    let addr = first.listening();
    let second = Proc::gateway(
        &refs(&server_args(&pki, &addr.to_string(), &["--reuse-port"])),
        None,
        &[],
    );
    assert_eq!(second.listening(), addr);
    for p in [&first, &second] {
        let log = p.log();
        assert!(
            log.contains("WARN") && log.contains("--reuse-port"),
            "the opt-in is logged at start:\n{log}"
        );
    }
}

#[test]
fn library_start_refuses_an_address_another_server_holds() {
    use onerecord_tls::{ServerPolicy, Time, pki};
    use onerecord_tls_mio::{Backend, IdentityResponder, Limits, Listener, Mode, ServerConfig};
    use std::sync::Arc;
    let pki_files = Pki::new();
    let chain = pki::certificates_from_file(pki_files.path("server.pem")).unwrap();
    let key = pki::private_key_from_file(pki_files.path("server.key")).unwrap();
    let policy = ServerPolicy::builder(chain, key)
        .build(Time::now())
        .unwrap();
    let config = |addr: std::net::SocketAddr, reuse_port: bool| ServerConfig {
        listeners: vec![Listener {
            addr,
            mode: Mode::Terminate {
                policies: policy.clone().into_set(),
                backend: Backend::Service(Arc::new(IdentityResponder)),
            },
        }],
        workers: 2,
        limits: Limits::default(),
        reuse_port,
    };
    let first = onerecord_tls_mio::start(config("127.0.0.1:0".parse().unwrap(), false)).unwrap();
    let addr = first.local_addrs()[0];
    for reuse_port in [false, true] {
        let err = onerecord_tls_mio::start(config(addr, reuse_port))
            .err()
            .expect("the address is held");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
    // Two servers that both opt in share the address.
    let a = onerecord_tls_mio::start(config("127.0.0.1:0".parse().unwrap(), true)).unwrap();
    let shared = a.local_addrs()[0];
    let b = onerecord_tls_mio::start(config(shared, true)).unwrap();
    assert_eq!(b.local_addrs()[0], shared);
}

#[test]
fn client_mode_verify_flags_refuse_a_partner_that_does_not_match_and_pass_one_that_does() {
    let pki = Pki::new();
    let (_server, port) = s_server(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
    ]);
    let partner = format!("127.0.0.1:{port}");
    let (_, spki) = serial_and_spki(&pki.path("server.pem"));
    let zeros = "0".repeat(64);
    // The partner's certificate: CN localhost, DNS SAN localhost, no URI SAN.
    let cases: [(&str, &str, bool); 7] = [
        ("--verify-cn", "localhost", true),
        ("--verify-cn", "another-partner", false),
        ("--verify-dns", "localhost", true),
        ("--verify-dns", "onerecord.example", false),
        ("--verify-spki", &spki, true),
        ("--verify-spki", &zeros, false),
        ("--verify-uri", "https://onerecord.example/", false),
    ];
    for (flag, value, passes) in cases {
        let gw = Gateway::start(
            "client",
            &[
                "--connect",
                &partner,
                "--server-name",
                "localhost",
                "--ca",
                &pki.path("ca.pem"),
                "--workers",
                "1",
                flag,
                value,
            ],
        );
        let page = through(gw.addr, GET10);
        if passes {
            assert!(
                page.starts_with("HTTP/1.0 200 ok"),
                "{flag} {value}: data passes:\n{page}\n{}",
                gw.log()
            );
        } else {
            assert!(page.is_empty(), "{flag} {value}: closed: {page}");
            gw.wait_for_log("WARN", Duration::from_secs(10));
            let log = gw.log();
            let warn = log.lines().find(|l| l.contains("WARN")).unwrap();
            assert!(
                warn.contains(&partner) && warn.contains("IdentityDenied"),
                "{flag} {value}: {warn}"
            );
        }
    }
}

#[test]
fn client_mode_verify_spki_that_is_not_hex_exits_2() {
    let pki = Pki::new();
    let out = run_to_exit(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "127.0.0.1:9",
        "--ca",
        &pki.path("ca.pem"),
        "--verify-spki",
        "not-hex",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--verify-spki") && stderr.contains("not 64 hex digits"),
        "{stderr}"
    );
}

#[test]
fn server_takes_the_ca_bundle_as_ca_like_client_mode_and_keeps_client_ca_as_alias() {
    let pki = Pki::new();
    for flag in ["--ca", "--client-ca"] {
        let gw = Gateway::start(
            "server",
            &[
                "--cert",
                &pki.path("server.pem"),
                "--key",
                &pki.path("server.key"),
                flag,
                &pki.path("ca.pem"),
                "--require-client-cert",
                "--workers",
                "1",
            ],
        );
        let ca = pki.path("ca.pem");
        let anon = text(&s_client(gw.addr, &["-CAfile", &ca], GET10));
        assert!(
            !anon.contains(" 200 OK"),
            "{flag}: anonymous refused:\n{anon}"
        );
        let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
        let with_cert = text(&s_client(
            gw.addr,
            &["-CAfile", &ca, "-cert", &cert, "-key", &key],
            GET10,
        ));
        assert!(with_cert.contains(" 200 OK"), "{flag}: {with_cert}");
    }
}

#[test]
fn help_opens_with_a_sentence_and_documents_signals_logging_exit_codes_and_proxy_header() {
    for args in [
        &["--help"][..],
        &["server", "--help"],
        &["client", "--help"],
    ] {
        let out = run_to_exit(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        if args.len() == 1 {
            let first = help.lines().next().unwrap_or("");
            assert!(
                first.contains("ONE Record") && first.contains("TLS") && !first.contains("Usage"),
                "opens with a sentence for users: {first}"
            );
        }
        for needle in [
            "SIGHUP",
            "SIGTERM",
            "RUST_LOG",
            "--log-format",
            "json",
            "Exit codes",
            "2  bad configuration",
            "PROXY protocol v2",
            "0xE0",
            "SPKI SHA-256",
            "onerecord::access",
        ] {
            assert!(help.contains(needle), "{args:?}: {needle:?} in:\n{help}");
        }
    }
    for mode in ["server", "client", "dev"] {
        let out = run_to_exit(&[mode, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        // The flag's text: its line and, when clap lays the help out on the next lines
        // (long help), the lines up to the next flag.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("--workers"))
            .unwrap_or_else(|| panic!("{mode}: --workers in:\n{help}"));
        let workers = lines[at..]
            .iter()
            .take_while({
                let mut first = true;
                move |l| std::mem::take(&mut first) || !l.trim_start().starts_with('-')
            })
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(workers.contains("number of CPUs"), "{mode}: {workers}");
        assert!(!workers.contains("[default: 0]"), "{mode}: {workers}");
    }
}

/// A `dev` gateway on a free port in `cwd` with `env`; the process and its address.
fn dev(cwd: &Path, env: &[(&str, &str)], extra: &[&str]) -> (Proc, std::net::SocketAddr) {
    let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--workers", "1"];
    args.extend(extra);
    let mut cmd = gateway_command(&args);
    cmd.current_dir(cwd).env_remove("XDG_STATE_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Proc::spawn(cmd);
    let addr = p.listening();
    (p, addr)
}

/// `curl` to the dev server at `addr` with the client certificate `name` from `dir`.
fn curl_dev(dir: &Path, addr: std::net::SocketAddr, name: &str) -> std::process::Output {
    let f = |n: &str| dir.join(n).display().to_string();
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert", &f("ca.pem")])
        .args(["--cert", &f(&format!("{name}.pem"))])
        .args(["--key", &f(&format!("{name}.key"))])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg(format!("https://localhost:{}/", addr.port()))
        .output()
        .expect("curl")
}

#[test]
fn dev_keeps_its_pki_outside_the_working_directory_and_issues_a_second_partner_certificate() {
    let cwd = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_s = state.path().display().to_string();
    let env = [("XDG_STATE_HOME", state_s.as_str())];
    let (p, addr) = dev(cwd.path(), &env, &[]);
    let dir = state.path().join("onerecord-gateway").join("dev");
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing written to the working directory"
    );
    for f in ["ca.pem", "ca.key", "server.pem", "client.pem", "client.key"] {
        assert!(dir.join(f).is_file(), "{f} in {}", dir.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode("ca.key") & 0o077, 0, "the CA key is the owner's only");
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o077, 0, "the PKI directory is the owner's only");
    }
    assert!(p.stdout().contains("--issue-client"), "{}", p.stdout());

    // A second partner from the kept CA key, while the server runs.
    let mut cmd = gateway_command(&["dev", "--issue-client", "forwarder-2"]);
    cmd.current_dir(cwd.path()).env("XDG_STATE_HOME", &state_s);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = openssl(&[
        "verify",
        "-CAfile",
        &dir.join("ca.pem").display().to_string(),
        &dir.join("forwarder-2.pem").display().to_string(),
    ]);
    assert!(verify.contains("OK"), "{verify}");
    let resp = curl_dev(&dir, addr, "forwarder-2");
    let body = String::from_utf8_lossy(&resp.stdout);
    assert!(
        resp.status.success(),
        "{}",
        String::from_utf8_lossy(&resp.stderr)
    );
    assert!(body.contains("\"common_name\": \"forwarder-2\""), "{body}");
    assert!(
        body.contains("https://localhost:8443/logistics-agents/forwarder-2"),
        "{body}"
    );
    // The first partner still works; names that would overwrite the PKI are refused.
    assert!(curl_dev(&dir, addr, "client").status.success());
    for bad in ["ca", "server", "../x", ""] {
        let mut cmd = gateway_command(&["dev", "--issue-client", bad]);
        cmd.current_dir(cwd.path()).env("XDG_STATE_HOME", &state_s);
        assert_eq!(cmd.output().unwrap().status.code(), Some(2), "{bad:?}");
    }
    assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none());
    drop(p);

    // Without XDG_STATE_HOME: under $HOME/.local/state.
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().display().to_string();
    let (_p, _) = dev(cwd.path(), &[("HOME", home_s.as_str())], &[]);
    assert!(
        home.path()
            .join(".local/state/onerecord-gateway/dev/ca.pem")
            .is_file()
    );
    assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none());
}
