#![no_main]
//! `cargo fuzz run torch_checkpoint`: see easel_fuzz::torch_checkpoint.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::torch_checkpoint(data));
