//! The CLIP byte-pair-encoding tokenizer of Stable Diffusion 1.x text encoders.
