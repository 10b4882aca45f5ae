#![no_main]
//! `cargo fuzz run bank_file`: see easel_fuzz::bank_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::bank_file(data));
