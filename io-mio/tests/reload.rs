//! The reload trust rule at the library: `ServerHandle::reload` lets a new policy keep the
//! ticket keys and session cache of the one it replaces only while client authentication
//! trusts the same CA bundle and CRLs. A real server over loopback, the library's `Client`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use onerecord_tls::Crl;
use onerecord_tls::{ClientPolicy, Revocation, ServerPolicy, Time};
use onerecord_tls_mio::{
    Backend, Client, IdentityResponder, Limits, Listener, Mode, ServerConfig, ServerHandle,
};
use onerecord_tls_tests::{Ca, Identity, LeafSpec, wall_secs};

struct Fixture {
    ca: Ca,
    server: Identity,
    client: Identity,
    /// A CRL revoking nothing, and one revoking the client (each signed once: a CRL signed
    /// again is another file).
    crl_empty: Crl,
    crl_revoking_client: Crl,
}

impl Fixture {
    fn new() -> Self {
        let ca = Ca::new("Reload Test CA");
        let server = ca.issue(&LeafSpec::server().around_wall_clock());
        let client = ca.issue(&LeafSpec::client("ACME").around_wall_clock());
        let crl_empty = ca.crl_at(wall_secs(), &[], 30);
        let crl_revoking_client = ca.crl_at(wall_secs(), &[client.serial], 30);
        Self {
            ca,
            server,
            client,
            crl_empty,
            crl_revoking_client,
        }
    }

    /// mTLS against the CA and `crl`, keeping the resumption state of `previous` (as a
    /// reload that re-reads its files does).
    fn mode(&self, crl: &Crl, previous: Option<&ServerPolicy>) -> Mode {
        let mut b = ServerPolicy::builder(self.server.chain.clone(), self.server.key())
            .require_client_auth(self.ca.trust());
        b = b.revocation(Revocation::with_crls(vec![crl.clone()]));
        if let Some(p) = previous {
            b = b.resumption_from(p);
        }
        Mode::Terminate {
            policies: b.build(Time::now()).expect("server policy").into_set(),
            backend: Backend::Service(Arc::new(IdentityResponder)),
        }
    }

    fn client(&self) -> Client {
        let policy = ClientPolicy::builder(self.ca.trust())
            .client_cert(self.client.chain.clone(), self.client.key())
            .build(Time::now())
            .expect("client policy");
        Client::new(policy)
    }
}

fn current(server: &ServerHandle) -> ServerPolicy {
    match server.mode(0) {
        Some(Mode::Terminate { policies, .. }) => policies.policies().next().unwrap().clone(),
        _ => panic!("no server mode"),
    }
}

/// One request on a new connection: whether the session resumed, and whether the server
/// answered (a client it refuses learns it after its side of the handshake is done).
fn request(client: &Client, addr: SocketAddr) -> std::io::Result<(bool, bool)> {
    let mut s = client.connect(addr, "localhost")?;
    let resumed = s.session().peer_identity().is_some_and(|id| id.resumed());
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    // Read the answer to the end: the session tickets arrive on the way.
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    Ok((resumed, answer.starts_with(b"HTTP/1.1 200")))
}

#[test]
fn reload_keeps_resumption_while_trust_is_unchanged_and_ends_it_when_a_crl_changes() {
    let f = Fixture::new();
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: f.mode(&f.crl_empty, None),
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .expect("server");
    let addr = server.local_addrs()[0];
    let client = f.client();

    assert_eq!(request(&client, addr).expect("first"), (false, true));
    assert_eq!(
        request(&client, addr).expect("second"),
        (true, true),
        "resumes"
    );

    // Same CA bundle, same (empty) CRL: the new policy keeps the resumption state.
    assert!(server.reload(0, f.mode(&f.crl_empty, Some(&current(&server)))));
    assert_eq!(
        request(&client, addr).expect("after a reload with the same trust"),
        (true, true),
        "a reload that keeps the CA bundle and CRLs keeps resumption"
    );

    // A CRL that revokes the client: resuming would skip the certificate check that
    // refuses it now. The new state makes the client do a full handshake, which fails.
    let previous = current(&server);
    assert!(server.reload(0, f.mode(&f.crl_revoking_client, Some(&previous))));
    assert!(
        !current(&server).shares_resumption_with(&previous),
        "new resumption state after the CRL changed"
    );
    let refused = request(&client, addr);
    assert!(
        matches!(refused, Err(_) | Ok((false, false))),
        "a revoked client must neither resume nor be answered: {refused:?}"
    );
}
