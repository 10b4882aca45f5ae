//! Converters from upstream ONNX files to easel's safetensors weights.

pub mod arbitrary;
pub mod cin26;
