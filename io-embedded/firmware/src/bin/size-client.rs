//! Size probe: an mTLS client alone (the server code is not linked), speaking TLS over the
//! UART. Built to measure the flash and RAM of the client role; run, it sends a ClientHello
//! and exits when no answer arrives.

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
use onerecord_tls::{ClientPolicy, Time, TrustStore};
use onerecord_tls_embedded::{MIN_INCOMING, Tls};

static CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));
static CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/client.der"));
static KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/client.key.der"));

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
    let Ok(policy) = ClientPolicy::builder(trust)
        .client_cert(
            alloc::vec![Certificate::from(CERT).into_owned()],
            PrivateKey::Pkcs8(KEY.to_vec().into()),
        )
        .build(now)
    else {
        rt::exit(1)
    };
    // SAFETY: the only borrow of these buffers.
    let (i, o) = unsafe { (&mut *addr_of_mut!(INCOMING), &mut *addr_of_mut!(OUTGOING)) };
    let Ok(mut tls) = Tls::client(&policy, "device.local", now, &mut i[..], &mut o[..]) else {
        rt::exit(1)
    };
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
