#![no_main]
//! `cargo fuzz run image_decode`: see easel_fuzz::image_decode.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::image_decode(data));
