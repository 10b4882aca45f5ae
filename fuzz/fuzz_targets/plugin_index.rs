#![no_main]
//! `cargo fuzz run plugin_index`: see easel_fuzz::plugin_index.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::plugin_index(data));
