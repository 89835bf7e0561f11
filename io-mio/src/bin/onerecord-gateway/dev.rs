//! `onerecord-gateway dev`: a throwaway development PKI and an mTLS server on loopback.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{ConfigFail, DevArgs, Listener, dev_server_args, server_mode};

/// The ONE Record ID in the development client certificate's URI SAN.
pub const DEV_CLIENT_URI: &str = "https://localhost:8443/logistics-agents/acme-cargo";
/// The company ID in its subject CN.
pub const DEV_CLIENT_CN: &str = "acme-cargo";

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), ConfigFail> {
    fs::write(path, contents).map_err(|e| ConfigFail(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn rc(e: rcgen::Error) -> ConfigFail {
    ConfigFail(format!("generating the development PKI: {e}"))
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
}

/// Make `ca.pem`, `server.pem`/`server.key` (localhost, 127.0.0.1, ::1) and
/// `client.pem`/`client.key` (CN and URI SAN of a ONE Record company) in `dir`.
pub fn generate(dir: &Path) -> Result<(), ConfigFail> {
    fs::create_dir_all(dir).map_err(|e| ConfigFail(format!("{}: {e}", dir.display())))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ONE Record Development CA (throwaway)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, 365);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(rc)?).map_err(rc)?;

    let server_key = KeyPair::generate().map_err(rc)?;
    let mut sp = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(rc)?;
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut sp, 90);
    let server = sp.signed_by(&server_key, &ca).map_err(rc)?;

    let client_key = KeyPair::generate().map_err(rc)?;
    let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    cp.distinguished_name
        .push(DnType::CommonName, DEV_CLIENT_CN);
    cp.distinguished_name
        .push(DnType::OrganizationName, "ACME Cargo (development)");
    cp.subject_alt_names.push(SanType::URI(
        DEV_CLIENT_URI.try_into().map_err(|e: rcgen::Error| rc(e))?,
    ));
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut cp, 90);
    let client = cp.signed_by(&client_key, &ca).map_err(rc)?;

    write(&dir.join("ca.pem"), &ca.pem(), false)?;
    write(&dir.join("server.pem"), &server.pem(), false)?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    write(&dir.join("client.pem"), &client.pem(), false)?;
    write(&dir.join("client.key"), &client_key.serialize_pem(), true)?;
    Ok(())
}

fn usable(dir: &Path) -> bool {
    let files = [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ];
    if !files.iter().all(|f| dir.join(f).is_file()) {
        return false;
    }
    // Regenerate when the server certificate is gone bad or expires within a day.
    match onerecord_tls::pki::certificates_from_file(dir.join("server.pem")) {
        Ok(chain) => chain.first().is_some_and(|c| {
            onerecord_tls::CertInfo::parse(c.as_ref()).is_ok_and(|info| {
                info.not_after.as_unix_secs()
                    > onerecord_tls::Time::now().as_unix_secs() + 24 * 3600
            })
        }),
        Err(_) => false,
    }
}

pub fn start(d: &DevArgs) -> Result<(), ConfigFail> {
    if usable(&d.dir) {
        log::info!("reusing the development PKI in {}", d.dir.display());
    } else {
        generate(&d.dir)?;
        log::info!("generated a development PKI in {}", d.dir.display());
    }
    let dir: PathBuf = fs::canonicalize(&d.dir).unwrap_or_else(|_| d.dir.clone());
    let args = dev_server_args(&dir, d);
    let mode = server_mode(&args, None)?;
    let port = d.listen.port();
    let host = if d.listen.ip().is_loopback() {
        "localhost".to_string()
    } else {
        d.listen.ip().to_string()
    };
    let q = |f: &str| dir.join(f).display().to_string();
    println!(
        "\nonerecord-gateway dev: mTLS server on {listen} (TLS 1.3 and 1.2, client certificate required)\n\
         PKI in {dir} (throwaway, for development only)\n\n\
         Try it:\n\n  \
         curl --cacert {ca} --cert {cert} --key {key} https://{host}:{port}/\n\n  \
         openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {ca} -cert {cert} -key {key}\n\n\
         Without a client certificate the handshake is refused (certificate_required):\n\n  \
         curl --cacert {ca} https://{host}:{port}/\n\n\
         Ctrl-C stops the server.\n",
        listen = d.listen,
        dir = dir.display(),
        ca = q("ca.pem"),
        cert = q("client.pem"),
        key = q("client.key"),
    );
    let listeners = vec![Listener {
        addr: d.listen,
        mode,
    }];
    let a2 = args.clone();
    let watched =
        crate::exposition::watched(Some(&args.cert), args.client_ca.as_deref(), &args.crl);
    crate::run(listeners, &args.common, watched, move |prev| {
        server_mode(&a2, prev.as_ref())
    })
}
