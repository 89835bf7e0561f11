//! In-memory handshakes, server and client CPU measured separately: the engine's `Session`
//! versus bare rustls (buffered `ServerConnection`/`ClientConnection`), same provider, suite
//! order and certificates, in the same run.
//!
//! Ids: `handshake/<scenario>/<side>/<impl>`, e.g. `handshake/tls13_ecdsa_mtls_full/server/engine`
//! (scenarios: `tls13|tls12` × `ecdsa|rsa|ed25519` × `[_mtls]` × `full|ticket|id`).
//! Each iteration is one complete handshake; only the named side's work is timed (creating
//! its connection, copying the peer's bytes in, processing, handing bytes out, dropping it),
//! as CPU time (see `common/mod.rs`).

mod common;

use common::side_cpu;
use criterion::{Criterion, criterion_group, criterion_main};
use onerecord_tls_bench::{
    Pki, Scenario, ServerKey, Side, Unmetered, engine_handshake_metered, rustls_handshake_metered,
};

fn handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for key in ServerKey::ALL {
        let pki = Pki::new(key);
        for sc in Scenario::all().into_iter().filter(|s| s.key == key) {
            let ec = pki.engine(&sc);
            let rc = pki.rustls(&sc);
            // Prime the session caches; from then on every iteration resumes (or not).
            assert!(!engine_handshake_metered(&ec, &mut Unmetered));
            assert!(!rustls_handshake_metered(&rc, &mut Unmetered));
            assert_eq!(
                engine_handshake_metered(&ec, &mut Unmetered),
                sc.resumes(),
                "engine {}",
                sc.name()
            );
            assert_eq!(
                rustls_handshake_metered(&rc, &mut Unmetered),
                sc.resumes(),
                "rustls {}",
                sc.name()
            );
            for side in [Side::Server, Side::Client] {
                let id = format!("{}/{}", sc.name(), side.name());
                g.bench_function(format!("{id}/engine"), |b| {
                    b.iter_custom(|iters| {
                        side_cpu(side, iters, |t| {
                            engine_handshake_metered(&ec, t);
                        })
                    })
                });
                g.bench_function(format!("{id}/rustls"), |b| {
                    b.iter_custom(|iters| {
                        side_cpu(side, iters, |t| {
                            rustls_handshake_metered(&rc, t);
                        })
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
    targets = handshakes
}
criterion_main!(benches);
