//! The README's "library in one screen" is `io-mio/examples/answer_later.rs` (the part between
//! its `README` markers), verbatim; this file checks that they do not drift and runs that
//! handler in a real server: the answers come from other threads, through the waker.

#[allow(dead_code)]
#[path = "../examples/answer_later.rs"]
mod answer_later;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use onerecord_tls::{ClientPolicy, ServerPolicy, Time};
use onerecord_tls_mio::{Backend, Client, Limits, Listener, Mode, ServerConfig};
use onerecord_tls_tests::{Ca, LeafSpec};

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn readme_library_example_is_the_answer_later_example_verbatim() {
    let readme = repo_file("README.md");
    let section = &readme[readme
        .find("## The library in one screen")
        .expect("README section")..];
    let start = section.find("```rust\n").expect("rust block") + "```rust\n".len();
    let len = section[start..].find("```\n").expect("end of block");
    let example = repo_file("io-mio/examples/answer_later.rs");
    let begin = example.find("// README-BEGIN\n").expect("marker") + 16;
    let end = example.find("// README-END\n").expect("marker");
    assert_eq!(
        &section[start..start + len],
        &example[begin..end],
        "README.md's block under \"The library in one screen\" must equal the marked part of \
         io-mio/examples/answer_later.rs"
    );
}

#[test]
fn the_example_handler_answers_every_line_from_another_thread() {
    let ca = Ca::new("Example CA");
    let server_id = ca.issue(&LeafSpec::server().around_wall_clock());
    let client_id = ca.issue(&LeafSpec::client("acme-cargo").around_wall_clock());
    let policy = ServerPolicy::builder(server_id.chain.clone(), server_id.key())
        .require_client_auth(ca.trust())
        .build(Time::now())
        .unwrap();
    let server = onerecord_tls_mio::start(ServerConfig {
        listeners: vec![Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            mode: Mode::Terminate {
                policies: policy.into_set(),
                backend: Backend::Service(Arc::new(answer_later::LookupService)),
            },
        }],
        workers: 1,
        limits: Limits::default(),
        reuse_port: false,
    })
    .unwrap();
    let client = Client::new(
        ClientPolicy::builder(ca.trust())
            .client_cert(client_id.chain.clone(), client_id.key())
            .build(Time::now())
            .unwrap(),
    );
    let mut s = client
        .connect(server.local_addrs()[0], "localhost")
        .unwrap();
    s.write_all(b"hello\nONE Record\n").unwrap();
    let mut r = BufReader::new(s);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        answers.push(line);
    }
    // The lookup threads may finish in either order.
    answers.sort();
    assert_eq!(answers, ["acme-cargo: 10 bytes\n", "acme-cargo: 5 bytes\n"]);
    drop(r);
    server.shutdown();
    server.join();
}
