//! Size probe: an mTLS server alone (the client code is not linked), speaking TLS over the
//! UART. Built to measure the flash and RAM of the server role; run, it waits for a ClientHello
//! and exits when none arrives.

#![no_std]
#![no_main]

extern crate alloc;

#[allow(dead_code)]
#[path = "../heap.rs"]
mod heap;
#[allow(dead_code)]
#[cfg_attr(target_arch = "riscv32", path = "../rt.rs")]
#[cfg_attr(target_arch = "arm", path = "../rt_arm.rs")]
mod rt;

use core::ptr::addr_of_mut;

use onerecord_tls::{Certificate, PrivateKey};
use onerecord_tls::{ServerPolicy, Time, TrustStore};
use onerecord_tls_embedded::{MIN_INCOMING, Tls};

static CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));
static CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/server.der"));
static KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/server.key.der"));

static mut INCOMING: [u8; MIN_INCOMING] = [0; MIN_INCOMING];
static mut OUTGOING: [u8; 4096] = [0; 4096];

#[unsafe(no_mangle)]
extern "C" fn fw_main() -> ! {
    heap::init();
    let now = Time::from_unix_secs(env!("FW_BUILD_UNIX_SECS").parse().unwrap_or(0));
    let mut trust = TrustStore::new();
    if trust.add_der(Certificate::from(CA)).is_err() {
        rt::exit(1);
    }
    let Ok(policy) = ServerPolicy::builder(
        alloc::vec![Certificate::from(CERT).into_owned()],
        PrivateKey::Pkcs8(KEY.to_vec().into()),
    )
    .require_client_auth(trust)
    .build(now) else {
        rt::exit(1)
    };
    let policies = policy.into_set();
    // SAFETY: the only borrow of these buffers.
    let (i, o) = unsafe { (&mut *addr_of_mut!(INCOMING), &mut *addr_of_mut!(OUTGOING)) };
    let mut tls = Tls::server(&policies, now, &mut i[..], &mut o[..]);
    let mut chunk = [0u8; 256];
    for _ in 0..1000 {
        if tls.process(now, |_| {}).is_err() {
            rt::exit(1);
        }
        rt::uart_write(tls.transmit());
        tls.transmitted(tls.transmit().len());
        let n = rt::uart_read(&mut chunk);
        if n == 0 {
            break;
        }
        tls.receive(&chunk[..n]);
    }
    rt::exit(0)
}
