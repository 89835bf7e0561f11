//! A refusal is never silent: a handshake message over rustls' 64 KiB bound (here a client
//! Certificate message) is answered by the `onerecord-gateway` binary with `decode_error`,
//! in plaintext in TLS 1.2 and encrypted in TLS 1.3, and the refusal line names that alert.

mod common;

use std::time::Duration;

use common::{Gateway, Pki, http_get};
use onerecord_tls::{ClientPolicy, Time, Versions};
use onerecord_tls_mio::Client;

#[test]
fn oversized_client_certificate_message_is_refused_with_decode_error() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let gw = Gateway::start(
        "server",
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "--client-ca",
            &ca,
            "--require-client-cert",
            "--workers",
            "1",
        ],
    );
    let mut chain = pki.client.chain.clone();
    while chain.iter().map(|c| c.len() + 3).sum::<usize>() < 70_000 {
        chain.push(pki.ca.der());
    }
    for (i, v) in [Versions::Tls13Only, Versions::Tls12Only]
        .into_iter()
        .enumerate()
    {
        let policy = ClientPolicy::builder(pki.ca.trust())
            .versions(v)
            .client_cert(chain.clone(), pki.client.key())
            .build(Time::now())
            .unwrap();
        let mut c = Client::new(policy);
        c.io_timeout = Duration::from_secs(5);
        // In TLS 1.3 the client completes its side first; the alert arrives on the next read.
        let err = match c.connect(gw.addr, "localhost") {
            Err(e) => e,
            Ok(mut s) => http_get(&mut s, "/")
                .err()
                .unwrap_or_else(|| panic!("{v:?}: accepted")),
        };
        assert!(
            err.to_string().contains("decode_error"),
            "{v:?}: the client read the alert: {err}"
        );
        gw.wait_for_count("alert=decode_error", i + 1, Duration::from_secs(5));
    }
    let log = gw.log();
    for line in log.lines().filter(|l| l.contains("refused remote=")) {
        assert!(line.contains("HandshakePayloadTooLarge"), "{line}");
        assert!(line.contains("sent decode_error alert"), "{line}");
    }
}
