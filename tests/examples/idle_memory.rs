//! Heap held by an established, idle server session (after `release_buffers`), measured with
//! a counting global allocator: TLS and mTLS, TLS 1.3 and 1.2.
//!
//!     cargo run --release -p onerecord-tls-tests --example idle_memory [N]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use onerecord_tls::{ClientPolicy, ServerPolicy, TlsVersion, Versions};
use onerecord_tls_tests::{Ca, LeafSpec, Pair, now};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let ca = Ca::new("Idle Memory CA");
    let server_id = ca.issue(&LeafSpec::server());
    let client_id = ca.issue(&LeafSpec::client("acme-cargo"));
    println!("| scenario | heap per idle server session (bytes) | of which peer identity |");
    println!("|---|---|---|");
    for (name, mtls, version) in [
        ("TLS 1.3", false, TlsVersion::Tls13),
        ("TLS 1.3 mTLS", true, TlsVersion::Tls13),
        ("TLS 1.2", false, TlsVersion::Tls12),
        ("TLS 1.2 mTLS", true, TlsVersion::Tls12),
    ] {
        let versions = match version {
            TlsVersion::Tls13 => Versions::Tls13Only,
            TlsVersion::Tls12 => Versions::Tls12Only,
        };
        let mut s = ServerPolicy::builder(server_id.chain.clone(), server_id.key());
        if mtls {
            s = s.require_client_auth(ca.trust());
        }
        let server = s.build(now()).expect("server policy").into_set();
        let mut c = ClientPolicy::builder(ca.trust()).versions(versions);
        if mtls {
            c = c.client_cert(client_id.chain.clone(), client_id.key());
        }
        let client = c.build(now()).expect("client policy");
        let mut kept = Vec::with_capacity(n);
        let mut id_bytes = 0usize;
        let before = LIVE.load(Ordering::Relaxed);
        for _ in 0..n {
            let mut p = Pair::new(&server, &client, "localhost");
            p.run();
            assert!(p.server.is_established(), "{name}: {:?}", p.server_error);
            p.server.release_buffers();
            p.server_events.clear();
            p.server_events.shrink_to_fit();
            if let Some(id) = p.server_saw() {
                let b = LIVE.load(Ordering::Relaxed);
                let copy = Box::new(id.clone());
                id_bytes = (LIVE.load(Ordering::Relaxed) - b) as usize;
                drop(copy);
            }
            let Pair { server, .. } = p;
            kept.push(server);
        }
        let after = LIVE.load(Ordering::Relaxed);
        let per = (after - before) as f64 / n as f64;
        println!("| {name} | {per:.0} | {id_bytes} |");
        drop(kept);
    }
}
