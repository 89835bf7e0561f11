#![no_main]
//! See `onerecord_tls_fuzz::targets::cert_info`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| onerecord_tls_fuzz::targets::cert_info(data));
