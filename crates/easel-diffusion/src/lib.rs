//! easel diffusion: Stable Diffusion 1.x model code on candle.
//!
//! - [`tokenizer`]: the CLIP BPE tokenizer.
//! - [`schedulers`]: noise schedulers behind one trait.

pub mod schedulers;
pub mod tokenizer;
