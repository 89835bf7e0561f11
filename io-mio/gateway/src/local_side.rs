//! The egress proxy's local side, for as long as the library's listeners hand a `Service`
//! only terminated TLS (`Mode::Terminate`).
//!
//! The application's plain TCP connections reach the forward proxy through a loopback hop
//! inside this process: the public listener forwards each connection (`Mode::Originate`)
//! over TLS to an internal listener on `127.0.0.1:0` (`Mode::Terminate`, whose backend is the
//! proxy). The hop's CA, certificates and keys are made at start, in memory, and never
//! written; the internal listener requires the hop's client certificate, so no other process
//! can use it. Each local connection costs a (resumed) TLS handshake on loopback and the
//! encryption of its bytes once more; the partner side is untouched. When the library lets
//! a plain listener serve a `Service`, the public listener takes the proxy directly and this
//! module goes away.

use std::net::SocketAddr;
use std::sync::Arc;

use onerecord_tls::{ClientPolicy, ServerPolicy, Time, TrustStore, pki};
use onerecord_tls_mio::{Backend, ForwardProxy, Limits, Listener, Metrics, Mode, ServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::ConfigFail;

/// The internal listener's server name (and the CN of both its certificates): the logger
/// leaves out access lines that carry it.
pub const HOP_NAME: &str = "egress-hop.internal";

/// The internal listener and the policies of both ends of the hop.
pub struct LocalSide {
    server: onerecord_tls_mio::ServerHandle,
    addr: SocketAddr,
    server_policy: ServerPolicy,
    client_policy: ClientPolicy,
}

fn rc(e: rcgen::Error) -> ConfigFail {
    ConfigFail(format!("egress: making the local hop's certificates: {e}"))
}

fn tls(e: onerecord_tls::ConfigError) -> ConfigFail {
    ConfigFail(format!("egress: the local hop's policy: {e}"))
}

/// A leaf signed by `ca` for `name` with extended key usage `eku`: (chain PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    name: &str,
    eku: ExtendedKeyUsagePurpose,
) -> Result<(String, String), ConfigFail> {
    let key = KeyPair::generate().map_err(rc)?;
    let mut p = CertificateParams::new(vec![name.to_string()]).map_err(rc)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![eku];
    validity(&mut p);
    let cert = p.signed_by(&key, ca).map_err(rc)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Valid from a day ago for ten years: the hop lives as long as the process.
fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
}

impl LocalSide {
    /// Make the hop's certificates and start the internal listener with `proxy` as its
    /// backend (`workers` threads, `limits` as the public listener's).
    pub fn start(
        proxy: ForwardProxy,
        workers: usize,
        limits: Limits,
        handshake_timeout: std::time::Duration,
    ) -> Result<Self, ConfigFail> {
        let ca_key = KeyPair::generate().map_err(rc)?;
        let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        cp.distinguished_name.push(
            DnType::CommonName,
            "onerecord-gateway egress hop (ephemeral)",
        );
        cp.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cp.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        validity(&mut cp);
        let ca = CertifiedIssuer::self_signed(cp, ca_key).map_err(rc)?;
        let (server_pem, server_key) = leaf(&ca, HOP_NAME, ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_pem, client_key) = leaf(&ca, HOP_NAME, ExtendedKeyUsagePurpose::ClientAuth)?;
        let trust = || TrustStore::from_pem(ca.pem().as_bytes()).map_err(tls);
        let chain =
            |pem: &str| pki::certificates_from_pem(pem.as_bytes(), "certificate").map_err(tls);
        let key = |pem: &str| pki::private_key_from_pem(pem.as_bytes()).map_err(tls);
        let now = Time::now();
        let server_policy = ServerPolicy::builder(chain(&server_pem)?, key(&server_key)?)
            .require_client_auth(trust()?)
            .handshake_timeout(handshake_timeout)
            .build(now)
            .map_err(tls)?;
        let client_policy = ClientPolicy::builder(trust()?)
            .client_cert(chain(&client_pem)?, key(&client_key)?)
            .handshake_timeout(handshake_timeout)
            .build(now)
            .map_err(tls)?;
        let server = onerecord_tls_mio::start(ServerConfig {
            listeners: vec![Listener {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                mode: Self::inner_mode(&server_policy, proxy),
            }],
            workers,
            limits,
            reuse_port: false,
        })
        .map_err(|e| ConfigFail(format!("egress: the local hop's listener: {e}")))?;
        let addr = *server.local_addrs().first().ok_or_else(|| {
            ConfigFail("egress: the local hop's listener has no address".to_string())
        })?;
        Ok(Self {
            server,
            addr,
            server_policy,
            client_policy,
        })
    }

    fn inner_mode(policy: &ServerPolicy, proxy: ForwardProxy) -> Mode {
        Mode::Terminate {
            policies: policy.clone().into_set(),
            backend: Backend::Service(Arc::new(proxy)),
        }
    }

    /// The public listener's mode: forward to the internal listener over the hop.
    pub fn public_mode(&self) -> Mode {
        Mode::Originate {
            policy: self.client_policy.clone(),
            connect: self.addr,
            server_name: HOP_NAME.to_string(),
        }
    }

    /// Serve new connections with `proxy` (a reload); open ones keep theirs.
    pub fn install(&self, proxy: ForwardProxy) -> bool {
        self.server
            .reload_all(Self::inner_mode(&self.server_policy, proxy))
    }

    /// The internal server's metrics: its upstream pools are the proxy's.
    pub fn metrics(&self) -> Metrics {
        self.server.metrics().clone()
    }

    /// Stop the internal listener once the public one has drained.
    pub fn stop(&self) {
        self.server.shutdown();
        self.server.join();
    }
}
