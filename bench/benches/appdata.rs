//! Application data on an established in-memory connection, the engine versus bare rustls.
//!
//! - `appdata/<aead>_<bytes>/<send|recv>/<impl>`: one client-to-server write of 64 B, 1 KiB
//!   or 16 KiB under TLS 1.3 AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305; `send` times the
//!   client (encrypt and hand out), `recv` the server (copy in, decrypt, hand up).
//! - `request/<scenario>/<side>/<impl>`: one 64-byte request and 64-byte response on a
//!   kept-alive connection, server or client work.
//!
//! Times are CPU time of the named side (see `common/mod.rs`).

mod common;

use common::side_cpu;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use onerecord_tls::Versions;
use onerecord_tls_bench::{Aead, EnginePair, Pki, Resume, RustlsPair, Scenario, ServerKey, Side};

const SIZES: [usize; 3] = [64, 1024, 16_384];

fn appdata(c: &mut Criterion) {
    let pki = Pki::new(ServerKey::EcdsaP256);
    let sc = Scenario {
        version: Versions::Tls13Only,
        key: ServerKey::EcdsaP256,
        mtls: false,
        resume: Resume::Full,
    };
    let mut g = c.benchmark_group("appdata");
    for aead in Aead::ALL {
        let mut engine = EnginePair::new(&pki.engine_with_aead(&sc, aead));
        let mut bare = RustlsPair::new(&pki.rustls_with_aead(&sc, aead));
        for size in SIZES {
            let data = vec![0x5a; size];
            g.throughput(Throughput::Bytes(size as u64));
            for (side, label) in [(Side::Client, "send"), (Side::Server, "recv")] {
                let id = format!("{}_{size}/{label}", aead.name());
                g.bench_function(format!("{id}/engine"), |b| {
                    b.iter_custom(|iters| side_cpu(side, iters, |t| engine.send(&data, t)))
                });
                g.bench_function(format!("{id}/rustls"), |b| {
                    b.iter_custom(|iters| side_cpu(side, iters, |t| bare.send(&data, t)))
                });
            }
        }
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    let pki = Pki::new(ServerKey::EcdsaP256);
    let request = [0x41u8; 64];
    let response = [0x42u8; 64];
    let mut g = c.benchmark_group("request");
    for version in [Versions::Tls13Only, Versions::Tls12Only] {
        for mtls in [false, true] {
            let sc = Scenario {
                version,
                key: ServerKey::EcdsaP256,
                mtls,
                resume: Resume::Full,
            };
            let mut engine = EnginePair::new(&pki.engine(&sc));
            let mut bare = RustlsPair::new(&pki.rustls(&sc));
            let name = sc.name();
            let name = name.trim_end_matches("_full");
            for side in [Side::Server, Side::Client] {
                let id = format!("{name}/{}", side.name());
                g.bench_function(format!("{id}/engine"), |b| {
                    b.iter_custom(|iters| {
                        side_cpu(side, iters, |t| engine.round_trip(&request, &response, t))
                    })
                });
                g.bench_function(format!("{id}/rustls"), |b| {
                    b.iter_custom(|iters| {
                        side_cpu(side, iters, |t| bare.round_trip(&request, &response, t))
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_millis(500));
    targets = appdata, requests
}
criterion_main!(benches);
