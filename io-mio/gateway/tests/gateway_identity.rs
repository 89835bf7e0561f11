//! Client identity at the real gateway binary, with `openssl` as the peer: URI allow rules
//! compare URIs component by component, an allow rule makes a client certificate required,
//! `--client-ca` alone warns that anonymous clients are admitted, and configuration the
//! gateway cannot use (an unparsable `--allow-uri`, an encrypted `--key`) exits 2 naming it.

mod common;

use std::process::{Command, Stdio};

use common::{GET10, Gateway, Pki, s_client, text};

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The server flags with the test PKI's certificate, key and client CA, then `extra`.
fn server_args(pki: &Pki, extra: &[&str]) -> Vec<String> {
    let mut args = owned(&["--cert", "", "--key", "", "--client-ca", ""]);
    args[1] = pki.path("server.pem");
    args[3] = pki.path("server.key");
    args[5] = pki.path("ca.pem");
    args.extend(owned(extra));
    args
}

/// `openssl s_client` arguments presenting the certificate `name` (or none).
fn client_args(pki: &Pki, name: Option<&str>, version: &str) -> Vec<String> {
    let mut args = vec![
        "-CAfile".to_string(),
        pki.path("ca.pem"),
        "-verify_return_error".to_string(),
        version.to_string(),
    ];
    if let Some(n) = name {
        args.extend([
            "-cert".to_string(),
            pki.path(&format!("{n}.pem")),
            "-key".to_string(),
            pki.path(&format!("{n}.key")),
        ]);
    }
    args
}

/// Write a client certificate whose only URI SAN is `uri` as `name`.pem/.key.
/// Run `onerecord-gateway server` until it exits by itself (bounded by `timeout 20`); its
/// exit code and stderr.
fn run_to_exit(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_onerecord-gateway"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run onerecord-gateway");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn allow_uri_without_trailing_slash_refuses_a_certificate_for_a_longer_host() {
    let pki = Pki::new();
    pki.write_client_with_uris("evil", &["https://onerecord.example.evil.com/x"]);
    pki.write_client_with_uris("otherport", &["https://onerecord.example:8443/x"]);
    let args = server_args(
        &pki,
        &[
            "--require-client-cert",
            "--allow-uri",
            "https://onerecord.example",
        ],
    );
    let gw = Gateway::start("server", &refs(&args));
    for version in ["-tls1_3", "-tls1_2"] {
        for who in ["evil", "otherport"] {
            let out = text(&s_client(
                gw.addr,
                &refs(&client_args(&pki, Some(who), version)),
                GET10,
            ));
            assert!(
                out.contains("alert access denied"),
                "{who} {version}:\n{out}"
            );
            assert!(!out.contains("HTTP/1.0 200"), "{who} {version}:\n{out}");
        }
        // The fixture's client has https://onerecord.example/logistics-agents/acme-cargo.
        let out = text(&s_client(
            gw.addr,
            &refs(&client_args(&pki, Some("client"), version)),
            GET10,
        ));
        assert!(out.contains("HTTP/1.0 200 OK"), "{version}:\n{out}");
    }
    assert!(gw.log().contains("failure=identity_denied"), "{}", gw.log());
}

#[test]
fn unparsable_allow_uri_exits_2_naming_the_flag_and_the_rule() {
    let pki = Pki::new();
    for bad in [
        "onerecord.example",
        "https://acme@onerecord.example/",
        "https://onerecord.example/?a=1",
    ] {
        let (code, err) = run_to_exit(&server_args(&pki, &["--allow-uri", bad]));
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(
            err.contains("--allow-uri") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}

#[test]
fn allow_rule_without_require_client_cert_refuses_anonymous_clients() {
    let pki = Pki::new();
    let gw = Gateway::start(
        "server",
        &refs(&server_args(&pki, &["--allow-cn", "acme-cargo"])),
    );
    for (version, alert) in [
        ("-tls1_3", "alert certificate required"),
        ("-tls1_2", "alert handshake failure"),
    ] {
        let out = text(&s_client(
            gw.addr,
            &refs(&client_args(&pki, None, version)),
            GET10,
        ));
        assert!(out.contains(alert), "anonymous {version}:\n{out}");
        assert!(!out.contains("HTTP/1.0 200"), "anonymous {version}:\n{out}");
        let out = text(&s_client(
            gw.addr,
            &refs(&client_args(&pki, Some("client"), version)),
            GET10,
        ));
        assert!(
            out.contains("HTTP/1.0 200 OK"),
            "acme-cargo {version}:\n{out}"
        );
    }
    assert!(!gw.log().contains("admitted (anonymous)"), "{}", gw.log());
}

#[test]
fn client_ca_alone_warns_at_start_that_anonymous_clients_are_admitted() {
    let pki = Pki::new();
    let gw = Gateway::start("server", &refs(&server_args(&pki, &[])));
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("admitted (anonymous)"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains("WARN") && line.contains("--ca "), "{line}");
    // What the warning says is what happens.
    let out = text(&s_client(
        gw.addr,
        &refs(&client_args(&pki, None, "-tls1_3")),
        GET10,
    ));
    assert!(out.contains("HTTP/1.0 200 OK"), "{out}");
    let mtls = Gateway::start(
        "server",
        &refs(&server_args(&pki, &["--require-client-cert"])),
    );
    assert!(
        !mtls.log().contains("admitted (anonymous)"),
        "{}",
        mtls.log()
    );
}

#[test]
fn encrypted_server_key_exits_2_naming_the_key_file_and_the_decrypt_command() {
    let pki = Pki::new();
    let rsa = pki.path("rsa.key");
    let ok = Command::new("openssl")
        .args([
            "genrsa",
            "-traditional",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            &rsa,
            "2048",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("openssl genrsa")
        .success();
    assert!(ok, "openssl genrsa");
    for (file, cmd) in [("pkcs8.key", "pkey"), ("sec1.key", "ec")] {
        let ok = Command::new("openssl")
            .args([
                cmd,
                "-in",
                &pki.path("server.key"),
                "-aes256",
                "-passout",
                "pass:secret",
            ])
            .args(["-out", &pki.path(file)])
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {cmd}");
    }
    for (file, head) in [
        ("pkcs8.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        ("sec1.key", "Proc-Type: 4,ENCRYPTED"),
        ("rsa.key", "Proc-Type: 4,ENCRYPTED"),
    ] {
        let path = pki.path(file);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(
            pem.contains(head),
            "{file} is encrypted as expected:\n{pem}"
        );
        let mut args = server_args(&pki, &["--require-client-cert"]);
        args[3] = path.clone();
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{file}: {err}");
        assert!(err.contains(&format!("--key: {path}: ")), "{file}: {err}");
        assert!(
            err.contains("encrypted private keys are not supported"),
            "{file}: {err}"
        );
        assert!(
            err.contains("openssl pkey -in key.pem -out key-decrypted.pem"),
            "{file}: {err}"
        );
    }
}
