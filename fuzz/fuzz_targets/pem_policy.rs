#![no_main]
//! See `onerecord_tls_fuzz::targets::pem_policy`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::pem_policy(data));
