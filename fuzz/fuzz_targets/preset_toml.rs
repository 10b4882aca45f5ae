#![no_main]
//! `cargo fuzz run preset_toml`: see easel_fuzz::preset_toml.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::preset_toml(data));
