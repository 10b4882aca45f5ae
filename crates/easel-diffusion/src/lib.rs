//! easel diffusion: Stable Diffusion 1.x model code on candle.
//!
//! - [`tokenizer`]: the CLIP BPE tokenizer.
//! - [`ops`]: differentiable softmax and layer norm (candle's fused kernels have no backward).
//! - [`schedulers`]: noise schedulers behind one trait.

pub mod ops;
pub mod schedulers;
pub mod tokenizer;
