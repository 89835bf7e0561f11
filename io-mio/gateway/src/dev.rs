//! `onerecord-gateway dev`: a throwaway development PKI and an mTLS server on loopback.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::config_file::Plan;
use crate::{ConfigFail, DevArgs, dev_server_args, plan_modes};

/// The ONE Record ID in the development client certificate's URI SAN.
pub const DEV_CLIENT_URI: &str = "https://localhost:8443/logistics-agents/acme-cargo";
/// The company ID in its subject CN.
pub const DEV_CLIENT_CN: &str = "acme-cargo";
/// The prefix of the development client certificates' URI SANs (`--issue-client NAME` adds
/// NAME).
const DEV_URI_PREFIX: &str = "https://localhost:8443/logistics-agents/";

/// Where the PKI goes without `--dir`: a per-user state directory, never the working tree
/// (a throwaway CA key must not end up in a commit). `$XDG_STATE_HOME/onerecord-gateway/dev`,
/// else `$HOME/.local/state/onerecord-gateway/dev` (`%LOCALAPPDATA%` on Windows).
pub fn default_dir() -> Result<PathBuf, ConfigFail> {
    let nonempty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = nonempty("XDG_STATE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| nonempty("HOME").map(|h| h.join(".local").join("state")))
        .or_else(|| nonempty("LOCALAPPDATA"))
        .ok_or_else(|| {
            ConfigFail(
                "dev: no state directory (XDG_STATE_HOME, HOME or LOCALAPPDATA): pass --dir"
                    .to_string(),
            )
        })?;
    Ok(base.join("onerecord-gateway").join("dev"))
}

/// Create `dir` (and its parents), owner-only on Unix: it holds private keys.
fn create_dir(dir: &Path) -> Result<(), ConfigFail> {
    let err = |e: std::io::Error| ConfigFail(format!("{}: {e}", dir.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(err)
}

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

/// The development CA's parameters. Signing with [`Issuer::new`] over these and the kept
/// `ca.key` gives certificates whose issuer name and authority key identifier match
/// `ca.pem` (rcgen encodes the same name the same way and derives the identifier from the
/// key).
fn ca_params() -> Result<CertificateParams, ConfigFail> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ONE Record Development CA (throwaway)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, 365);
    Ok(ca_params)
}

/// A client certificate for the company `cn` (CN and URI SAN), signed by `ca`.
fn client_cert(
    cn: &str,
    ca: &Issuer<'_, KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair), ConfigFail> {
    let client_key = KeyPair::generate().map_err(rc)?;
    let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    cp.distinguished_name.push(DnType::CommonName, cn);
    cp.distinguished_name
        .push(DnType::OrganizationName, "ONE Record development partner");
    let uri = format!("{DEV_URI_PREFIX}{cn}");
    cp.subject_alt_names.push(SanType::URI(
        uri.as_str().try_into().map_err(|e: rcgen::Error| rc(e))?,
    ));
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut cp, 90);
    let cert = cp.signed_by(&client_key, ca).map_err(rc)?;
    Ok((cert, client_key))
}

/// Make `ca.pem`/`ca.key`, `server.pem`/`server.key` (localhost, 127.0.0.1, ::1) and
/// `client.pem`/`client.key` (CN and URI SAN of a ONE Record company) in `dir`. The CA key
/// is kept so that `--issue-client` can add partners.
pub fn generate(dir: &Path) -> Result<(), ConfigFail> {
    create_dir(dir)?;
    let ca_key = KeyPair::generate().map_err(rc)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key).map_err(rc)?;

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

    let (client, client_key) = client_cert(DEV_CLIENT_CN, &ca)?;
    debug_assert_eq!(format!("{DEV_URI_PREFIX}{DEV_CLIENT_CN}"), DEV_CLIENT_URI);

    write(&dir.join("ca.pem"), &ca.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key_pem, true)?;
    write(&dir.join("server.pem"), &server.pem(), false)?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    write(&dir.join("client.pem"), &client.pem(), false)?;
    write(&dir.join("client.key"), &client_key.serialize_pem(), true)?;
    Ok(())
}

fn usable(dir: &Path) -> bool {
    let files = [
        "ca.pem",
        "ca.key",
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

/// `--issue-client NAME`: NAME.pem / NAME.key signed by the kept development CA key.
fn issue_client(dir: &Path, name: &str, d: &DevArgs) -> Result<(), ConfigFail> {
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
        && !["ca", "server", "client"].contains(&name);
    if !ok_name {
        return Err(ConfigFail(format!(
            "--issue-client {name:?}: use letters, digits, '-', '_' or '.' (at most 64), not \
             ca, server or client"
        )));
    }
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read_to_string(&p).map_err(|e| {
            ConfigFail(format!(
                "--issue-client: {}: {e} (run `onerecord-gateway dev` once to create the \
                 development PKI)",
                p.display()
            ))
        })
    };
    let key = KeyPair::from_pem(&read("ca.key")?)
        .map_err(|e| ConfigFail(format!("{}: {e}", dir.join("ca.key").display())))?;
    let _ = read("ca.pem")?;
    let ca = Issuer::new(ca_params()?, key);
    let (cert, cert_key) = client_cert(name, &ca)?;
    let (pem, keyf) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write(&pem, &cert.pem(), false)?;
    write(&keyf, &cert_key.serialize_pem(), true)?;
    let port = d.listen.port();
    println!(
        "issued {pem} and {key} (CN {name}, URI {DEV_URI_PREFIX}{name}) from the development CA\n\n  \
         curl --cacert {ca} --cert {pem} --key {key} https://localhost:{port}/\n",
        pem = pem.display(),
        key = keyf.display(),
        ca = dir.join("ca.pem").display(),
    );
    Ok(())
}

pub fn start(d: &DevArgs) -> Result<(), ConfigFail> {
    let dir = match &d.dir {
        Some(dir) => dir.clone(),
        None => default_dir()?,
    };
    if let Some(name) = &d.issue_client {
        return issue_client(&dir, name, d);
    }
    if usable(&dir) {
        log::info!("reusing the development PKI in {}", dir.display());
    } else {
        generate(&dir)?;
        log::info!("generated a development PKI in {}", dir.display());
    }
    let dir: PathBuf = fs::canonicalize(&dir).unwrap_or(dir);
    let args = dev_server_args(&dir, d);
    let plan = Plan::from_flags(&args)?;
    let modes = plan_modes(&plan, &[])?;
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
         Another partner certificate from the same development CA (ca.key is kept):\n\n  \
         onerecord-gateway dev --issue-client NAME{dir_arg}\n\n\
         Ctrl-C stops the server.\n",
        listen = d.listen,
        dir = dir.display(),
        ca = q("ca.pem"),
        cert = q("client.pem"),
        key = q("client.key"),
        dir_arg = d
            .dir
            .as_ref()
            .map_or(String::new(), |_| format!(" --dir {}", dir.display())),
    );
    crate::serve_with(plan, modes)
}
