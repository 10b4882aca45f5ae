#![no_main]
//! `cargo fuzz run tokenizer`: see easel_fuzz::tokenizer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::tokenizer(data));
