#![no_main]
//! See `onerecord_tls_fuzz::embedded::embedded_tls`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::embedded::embedded_tls(data));
