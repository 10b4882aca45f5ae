//! easel fast path: feed-forward style transfer networks that run in one pass.
//!
//! - [`arbitrary`]: the arbitrary-style network of Ghiasi et al. 2017 (style prediction network →
//!   100-d style code → transformer network with conditional instance norm).
//! - [`cin26`]: a 26-style network with conditional instance norm (Dumoulin et al. 2017).
//! - [`import`]: converters from the upstream ONNX files to easel's safetensors weights.

pub mod arbitrary;
pub mod cin26;
pub mod import;
