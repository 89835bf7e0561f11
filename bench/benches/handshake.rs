//! In-memory handshakes: the engine's `Session` versus bare rustls (buffered
//! `ServerConnection`/`ClientConnection`), same provider and suite order, same run.
//! Each iteration is one complete handshake, client and server CPU together.

use criterion::{Criterion, criterion_group, criterion_main};
use onerecord_tls::{Time, Versions};
use onerecord_tls_bench::{Pki, ServerKey, engine_handshake, rustls_handshake};

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new(ServerKey::EcdsaP256);
    let now = Time::now();
    for (name, versions) in [
        ("tls13", Versions::Tls13Only),
        ("tls12", Versions::Tls12Only),
    ] {
        for mtls in [false, true] {
            for resume in [false, true] {
                let label = format!(
                    "{name}_ecdsa{}_{}",
                    if mtls { "_mtls" } else { "" },
                    if resume { "resumed" } else { "full" }
                );
                let mut g = c.benchmark_group(label);
                let es = pki.engine_server(mtls, versions);
                let ec = pki.engine_client(mtls, versions, resume);
                let rs = pki.rustls_server(mtls, versions);
                let rc = pki.rustls_client(mtls, versions, resume);
                // Prime the caches so that the resumed variants resume on every iteration.
                assert!(!engine_handshake(&es, &ec, now));
                rustls_handshake(&rs, &rc);
                assert_eq!(engine_handshake(&es, &ec, now), resume);
                assert_eq!(rustls_handshake(&rs, &rc), resume);
                g.bench_function("engine", |b| b.iter(|| engine_handshake(&es, &ec, now)));
                g.bench_function("rustls", |b| b.iter(|| rustls_handshake(&rs, &rc)));
                g.finish();
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_millis(500));
    targets = handshakes
}
criterion_main!(benches);
