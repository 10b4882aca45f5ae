//! Converters from upstream ONNX files and PyTorch checkpoints to easel's safetensors weights.

pub mod adain;
pub mod arbitrary;
pub mod cin26;
pub mod torch_zip;
