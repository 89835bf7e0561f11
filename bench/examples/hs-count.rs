//! Runs N in-memory handshakes of one named scenario, for the engine or bare rustls, with
//! each side's work inside a function of its own (`measured_server` / `measured_client`),
//! so that an instruction counter can count one side: `scripts/callgrind.sh` runs this
//! under `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*measured_server*`.
//!
//!     hs-count <scenario> <engine|rustls> <N>     e.g. hs-count tls12_ecdsa_id engine 200
//!
//! Set-up (PKI, policies) and the priming handshake that fills the session caches run
//! outside the measured functions.

use onerecord_tls_bench::{
    Meter, Pki, Scenario, Unmetered, engine_handshake_metered, rustls_handshake_metered,
};

#[inline(never)]
fn measured_server<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

#[inline(never)]
fn measured_client<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

/// Routes each side's work through its marker function.
struct Marked;

impl Meter for Marked {
    fn server<R>(&mut self, f: impl FnOnce() -> R) -> R {
        measured_server(f)
    }
    fn client<R>(&mut self, f: impl FnOnce() -> R) -> R {
        measured_client(f)
    }
}

fn usage() -> ! {
    eprintln!("usage: hs-count <scenario> <engine|rustls> <N>");
    eprintln!("scenarios:");
    for s in Scenario::all() {
        eprintln!("  {}", s.name());
    }
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        usage();
    }
    let Some(sc) = Scenario::parse(&args[0]) else {
        usage()
    };
    let n: u32 = match args[2].parse() {
        Ok(n) if (1..=1_000_000).contains(&n) => n,
        _ => usage(),
    };
    let pki = Pki::new(sc.key);
    let mut resumed = 0u32;
    match args[1].as_str() {
        "engine" => {
            let case = pki.engine(&sc);
            engine_handshake_metered(&case, &mut Unmetered);
            for _ in 0..n {
                resumed += u32::from(engine_handshake_metered(&case, &mut Marked));
            }
        }
        "rustls" => {
            let case = pki.rustls(&sc);
            rustls_handshake_metered(&case, &mut Unmetered);
            for _ in 0..n {
                resumed += u32::from(rustls_handshake_metered(&case, &mut Marked));
            }
        }
        _ => usage(),
    }
    let expected = if sc.resumes() { n } else { 0 };
    assert_eq!(resumed, expected, "{} resumed {resumed} of {n}", sc.name());
    println!("{} {} handshakes={n} resumed={resumed}", sc.name(), args[1]);
}
