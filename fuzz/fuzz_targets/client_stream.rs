#![no_main]
//! See `onerecord_tls_fuzz::targets::client_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::client_stream(data));
