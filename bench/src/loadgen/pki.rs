//! A throwaway benchmark PKI (ECDSA P-256 everywhere) written as PEM files, so that every
//! server under test (the gateway, the rustls baseline, `openssl s_server`, nginx) and the
//! load generator use the same certificates.

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The client certificate's URI SAN (a ONE Record organisation ID).
pub const CLIENT_URI: &str = "https://localhost/logistics-agents/loadgen";

/// Write `ca.pem`, `server.pem`/`server.key` (`localhost`, `127.0.0.1`) and
/// `client.pem`/`client.key` into `dir` (created if missing).
pub fn generate(dir: &Path) -> Result<(), String> {
    let rc = |e: rcgen::Error| format!("generating the PKI: {e}");
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "onerecord-loadgen CA (throwaway)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(rc)?).map_err(rc)?;

    let server_key = KeyPair::generate().map_err(rc)?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(rc)?;
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca).map_err(rc)?;

    let client_key = KeyPair::generate().map_err(rc)?;
    let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    cp.distinguished_name
        .push(DnType::CommonName, "loadgen-client");
    cp.subject_alt_names
        .push(SanType::URI(CLIENT_URI.try_into().map_err(rc)?));
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca).map_err(rc)?;

    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
