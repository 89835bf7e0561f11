//! The host example (`examples/mtls_client.rs`), run as it is: over a `TcpStream`, with a
//! client certificate, against `openssl s_server` on loopback.

mod common;

#[path = "../examples/mtls_client.rs"]
mod example;

use common::{Pki, SServer};

#[test]
fn example_mtls_client_gets_an_answer_from_openssl_s_server() {
    let pki = Pki::new();
    let _server_kept_alive = SServer::start(&[
        "-cert",
        &pki.path("server.pem"),
        "-key",
        &pki.path("server.key"),
        "-CAfile",
        &pki.path("ca.pem"),
        "-Verify",
        "1",
        "-verify_return_error",
        "-www",
    ]);
    let out = example::run(
        &_server_kept_alive.addr.to_string(),
        pki.ca.pem().as_bytes(),
        pki.client.chain_pem.as_bytes(),
        pki.client.key_pem.as_bytes(),
        "localhost",
        "/",
    )
    .expect("the example connects");
    assert!(
        out.summary.starts_with("Tls13") && out.summary.contains("\"localhost\""),
        "{}",
        out.summary
    );
    let body = String::from_utf8_lossy(&out.response);
    assert!(body.starts_with("HTTP/1.0 200 ok"), "{body}");
    assert!(
        body.contains("device-1"),
        "s_server saw the client certificate:\n{body}"
    );
}
