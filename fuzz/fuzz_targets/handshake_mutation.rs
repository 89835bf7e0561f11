#![no_main]
//! See `onerecord_tls_fuzz::targets::handshake_mutation`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::handshake_mutation(data));
