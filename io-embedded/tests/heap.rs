//! What rustls allocates on the data path, measured with a counting allocator: a capped
//! write allocates one record-sized buffer at a time (bounded by the write cap); a received
//! record is decrypted in place in the incoming buffer, then rustls 0.23 copies its plaintext
//! into a heap buffer of the plaintext's size (up to 16 KiB from a generic peer), freed when
//! the record has been handed up. The README documents both.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{Pki, wall};
use onerecord_tls::{Session, Versions};
use onerecord_tls_embedded::{MAX_PLAINTEXT, MIN_INCOMING, Tls};

/// Counts the live bytes and high-water mark of allocations made by the measuring thread.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: forwards to the system allocator; the counters are thread-local cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap high-water mark of `f` (above what was live when it started).
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, PEAK.with(|p| p.get()) as usize)
}

#[test]
fn data_path_heap_is_one_capped_record_on_send_and_one_plaintext_record_on_receive() {
    let pki = Pki::new();
    let now = wall();
    let policy = pki.client_policy(Versions::Tls13Only);
    let (mut ci, mut co) = (vec![0u8; MIN_INCOMING], vec![0u8; 8192]);
    let mut client = Tls::client(&policy, "localhost", now, &mut ci[..], &mut co[..])
        .expect("client")
        .with_write_cap(1024);
    let mut server = Session::server(&pki.server_policies(), now);
    for _ in 0..20 {
        client.process(now, |_| {}).expect("client");
        let n = server.receive(client.transmit());
        client.transmitted(n);
        server.process(now, |_| {}).expect("server");
        let n = client.receive(server.transmit());
        server.transmitted(n);
    }
    assert!(client.is_established() && server.is_established());
    client.process(now, |_| {}).expect("tickets");

    // Sending 6000 bytes with a 1024-byte cap: one record buffer of ~1 KiB at a time.
    let data = vec![7u8; 6000];
    let (sent, peak) = peak_of(|| client.send(&data).expect("send"));
    assert_eq!(sent, 6000);
    assert!(
        peak <= 1024 + 64,
        "send allocates at most one capped record: {peak} B"
    );
    assert!(
        peak >= 1024,
        "rustls does allocate a record-sized buffer: {peak} B"
    );
    let n = server.receive(client.transmit());
    client.transmitted(n);

    // Receiving a full 16 KiB record.
    let sent = server.send(&vec![9u8; MAX_PLAINTEXT]).expect("server send");
    assert_eq!(sent, MAX_PLAINTEXT);
    assert_eq!(
        server.transmit().len(),
        5 + MAX_PLAINTEXT + 1 + 16,
        "one full record"
    );
    let mut got = 0usize;
    let (_, peak) = peak_of(|| {
        let n = client.receive(server.transmit());
        assert_eq!(n, server.transmit().len(), "the record fits MIN_INCOMING");
        client
            .process(now, |ev| {
                if let onerecord_tls::Event::Data(d) = ev {
                    got += d.len();
                }
            })
            .expect("receive")
    });
    server.transmitted(5 + MAX_PLAINTEXT + 1 + 16);
    assert_eq!(got, MAX_PLAINTEXT);
    assert!(
        (MAX_PLAINTEXT..=MAX_PLAINTEXT + 256).contains(&peak),
        "receiving a full record costs one plaintext-sized heap buffer: {peak} B"
    );
    // Once handed up, nothing of it stays on the heap.
    let (_, idle) = peak_of(|| client.process(now, |_| {}).expect("idle"));
    assert!(idle < 256, "{idle} B");
}
