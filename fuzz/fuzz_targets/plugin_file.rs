#![no_main]
//! `cargo fuzz run plugin_file`: see easel_fuzz::plugin_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::plugin_file(data));
