#![no_main]
//! `cargo fuzz run model_configs`: see easel_fuzz::model_configs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::model_configs(data));
