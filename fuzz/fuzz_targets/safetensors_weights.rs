#![no_main]
//! `cargo fuzz run safetensors_weights`: see easel_fuzz::safetensors_weights.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::safetensors_weights(data));
