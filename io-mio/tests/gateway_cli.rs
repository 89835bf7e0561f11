//! The `onerecord-gateway` command line as an operator meets it: an address already in use,
//! `--reuse-port`, the `dev` PKI and its second partner certificate, `--help`, the CA flag's
//! name in both modes, and `client` mode checking the partner's identity
//! (`--verify-*`). Against the real binary and real peers (openssl, curl) over loopback.

mod cli_support;
mod common;

use std::net::TcpStream;
use std::time::Duration;

use cli_support::{Proc, run_to_exit};
use common::{Gateway, Pki};

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
