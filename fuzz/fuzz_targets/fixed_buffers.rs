#![no_main]
//! See `onerecord_tls_fuzz::targets::fixed_buffers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::fixed_buffers(data));
