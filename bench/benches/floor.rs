//! The crypto floor: the ring operations a handshake cannot avoid, so that a handshake's cost
//! can be given as a multiple of it.
//!
//! - `floor/op/<op>`: one operation (`x25519` is key generation plus agreement, what each
//!   side of an ECDHE handshake does; signatures are over a 130-byte TLS 1.3
//!   CertificateVerify-sized message; RSA signs with PSS-SHA256 as TLS 1.3 does).
//! - `floor/<scenario>/<side>/ring`: the operations of one side of a handshake in sequence:
//!   a full TLS 1.3 server does x25519 and one signature (plus two ECDSA verifications with
//!   mTLS: the client's certificate and its CertificateVerify); the client does x25519 and
//!   two verifications (the server's certificate, signed by the ECDSA CA, and its
//!   CertificateVerify), plus one ECDSA signature with mTLS. A resumed TLS 1.3 handshake
//!   (PSK with ECDHE) does x25519 on each side; a resumed TLS 1.2 one does no public-key
//!   operation.

mod common;

use common::batch_cpu;
use criterion::{Criterion, criterion_group, criterion_main};
use onerecord_tls_bench::ServerKey;
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use std::hint::black_box;

/// The signing and verifying half of one server key type.
enum Signer {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

struct Ops {
    rng: SystemRandom,
    peer_x25519: Vec<u8>,
    msg: [u8; 130],
}

impl Ops {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let peer = EphemeralPrivateKey::generate(&X25519, &rng).expect("x25519");
        Self {
            peer_x25519: peer.compute_public_key().expect("pub").as_ref().to_vec(),
            rng,
            msg: [0x20; 130],
        }
    }

    fn x25519(&self) {
        let k = EphemeralPrivateKey::generate(&X25519, &self.rng).expect("x25519");
        black_box(k.compute_public_key().expect("pub"));
        let peer = UnparsedPublicKey::new(&X25519, &self.peer_x25519);
        agreement::agree_ephemeral(k, &peer, |s| black_box(s[0])).expect("agree");
    }

    fn signer(&self, key: ServerKey) -> (Signer, Vec<u8>, Vec<u8>) {
        let der = key.generate().serialize_der();
        let s = match key {
            ServerKey::EcdsaP256 => Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &der,
                    &self.rng,
                )
                .expect("ecdsa"),
            ),
            ServerKey::Rsa2048 => Signer::Rsa(RsaKeyPair::from_pkcs8(&der).expect("rsa")),
            ServerKey::Ed25519 => {
                Signer::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).expect("ed25519"))
            }
        };
        let public = match &s {
            Signer::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Signer::Rsa(k) => k.public_key().as_ref().to_vec(),
            Signer::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        let sig = self.sign(&s);
        (s, public, sig)
    }

    fn sign(&self, s: &Signer) -> Vec<u8> {
        match s {
            Signer::Ecdsa(k) => k
                .sign(&self.rng, &self.msg)
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PSS_SHA256, &self.rng, &self.msg, &mut sig)
                    .expect("sign");
                sig
            }
            Signer::Ed25519(k) => k.sign(&self.msg).as_ref().to_vec(),
        }
    }

    fn verify(&self, s: &Signer, public: &[u8], sig: &[u8]) {
        let alg: &dyn signature::VerificationAlgorithm = match s {
            Signer::Ecdsa(_) => &signature::ECDSA_P256_SHA256_ASN1,
            Signer::Rsa(_) => &signature::RSA_PSS_2048_8192_SHA256,
            Signer::Ed25519(_) => &signature::ED25519,
        };
        signature::UnparsedPublicKey::new(alg, public)
            .verify(&self.msg, sig)
            .expect("verify");
    }
}

fn floor(c: &mut Criterion) {
    let ops = Ops::new();
    let keys: Vec<_> = ServerKey::ALL
        .iter()
        .map(|k| (*k, ops.signer(*k)))
        .collect();
    // The CA and the client certificate are ECDSA P-256 in every scenario.
    let ecdsa = &keys[0].1;
    let mut g = c.benchmark_group("floor");
    g.bench_function("op/x25519", |b| {
        b.iter_custom(|n| batch_cpu(n, || ops.x25519()))
    });
    for (key, (s, public, sig)) in &keys {
        let name = match key {
            ServerKey::EcdsaP256 => "ecdsa_p256",
            ServerKey::Rsa2048 => "rsa2048_pss",
            ServerKey::Ed25519 => "ed25519",
        };
        g.bench_function(format!("op/{name}_sign"), |b| {
            b.iter_custom(|n| batch_cpu(n, || ops.sign(s)))
        });
        g.bench_function(format!("op/{name}_verify"), |b| {
            b.iter_custom(|n| batch_cpu(n, || ops.verify(s, public, sig)))
        });
    }
    let ca_verify = || ops.verify(&ecdsa.0, &ecdsa.1, &ecdsa.2);
    for (key, (s, public, sig)) in &keys {
        for mtls in [false, true] {
            let sc = format!(
                "tls13_{}{}_full",
                key.name(),
                if mtls { "_mtls" } else { "" }
            );
            g.bench_function(format!("{sc}/server/ring"), |b| {
                b.iter_custom(|n| {
                    batch_cpu(n, || {
                        ops.x25519();
                        ops.sign(s);
                        if mtls {
                            ca_verify();
                            ca_verify();
                        }
                    })
                })
            });
            g.bench_function(format!("{sc}/client/ring"), |b| {
                b.iter_custom(|n| {
                    batch_cpu(n, || {
                        ops.x25519();
                        ca_verify();
                        ops.verify(s, public, sig);
                        if mtls {
                            ops.sign(&ecdsa.0);
                        }
                    })
                })
            });
        }
    }
    g.bench_function("tls13_resumed/side/ring", |b| {
        b.iter_custom(|n| batch_cpu(n, || ops.x25519()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_millis(500));
    targets = floor
}
criterion_main!(benches);
