#![no_main]
//! See `onerecord_tls_fuzz::targets::server_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::server_stream(data));
