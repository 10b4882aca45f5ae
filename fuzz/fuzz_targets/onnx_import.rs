#![no_main]
//! `cargo fuzz run onnx_import`: see easel_fuzz::onnx_import.
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel_fuzz::onnx_import(data));
