#![no_main]
//! `cargo fuzz run png_parameters`: see easel_fuzz::png_parameters.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::png_parameters(data));
