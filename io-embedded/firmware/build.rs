//! Generates the firmware's test PKI at build time (no key material is checked in): a CA, a
//! server certificate for `device.local` and a client certificate with a ONE Record URI SAN,
//! all ECDSA P-256, valid from one day before the build to one year after. The build time
//! becomes the firmware's "last known good time" (`FW_BUILD_UNIX_SECS`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    println!("cargo:rustc-link-search={}", manifest.display());
    println!("cargo:rustc-link-arg=-Tlink.ld");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let day = 86_400;
    let at = |s: u64| OffsetDateTime::from_unix_timestamp(s as i64).expect("time");

    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, "Firmware Test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = at(now - 2 * day);
    ca.not_after = at(now + 3650 * day);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
    write(&out, "ca.der", ca.der());

    let leaf = |name: &str, file: &str, client: bool| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationName, "ONE Record Test Org");
        if client {
            p.subject_alt_names.push(SanType::URI(
                "https://onerecord.example/logistics-agents/device-1"
                    .try_into()
                    .expect("uri"),
            ));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.subject_alt_names
                .push(SanType::DnsName(name.try_into().expect("dns")));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = at(now - day);
        p.not_after = at(now + 365 * day);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        write(&out, &format!("{file}.der"), cert.der());
        write(&out, &format!("{file}.key.der"), &key.serialize_der());
    };
    leaf("device.local", "server", false);
    leaf("device-1", "client", true);

    println!("cargo:rustc-env=FW_BUILD_UNIX_SECS={now}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write pki");
}
