//! easel bank: a style as a bank of learnable prompt embeddings, arranged by denoising stage ×
//! UNet layer group.
