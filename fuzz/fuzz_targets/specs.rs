#![no_main]
//! `cargo fuzz run specs`: see easel_fuzz::specs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::specs(data));
