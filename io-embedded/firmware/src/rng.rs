//! The random source ring reads through getrandom's custom hook (demo only).

static RNG: critical_section::Mutex<core::cell::Cell<u64>> =
    critical_section::Mutex::new(core::cell::Cell::new(0x243f_6a88_85a3_08d3));

/// NOT A CSPRNG: the QEMU boards used here have no TRNG this firmware can reach without a
/// driver, so this demo uses SplitMix64 stirred with the timer. Real firmware registers its
/// hardware TRNG here.
fn demo_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    critical_section::with(|cs| {
        let cell = RNG.borrow(cs);
        let mut s = cell.get() ^ super::millis().rotate_left(17);
        for chunk in buf.chunks_mut(8) {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        cell.set(s);
    });
    Ok(())
}
getrandom::register_custom_getrandom!(demo_random);
