//! easel diffusion: Stable Diffusion 1.x model code on candle.
//!
//! - [`tokenizer`]: the CLIP BPE tokenizer.
//! - [`clip`]: the CLIP text encoder, taking token ids or patched (learnable) token embeddings.
//! - [`frozen`]: linear, convolution and group-norm layers whose backward computes the input
//!   gradient only (frozen weights get none).
//! - [`ops`]: differentiable softmax and layer norm (candle's fused kernels have no backward).
//! - [`schedulers`]: noise schedulers behind one trait.
//! - [`resnet`]: the residual block shared by the UNet, the ControlNet and the VAE.
//! - [`sampling`]: stride-2 conv downsampling and nearest ×2 + conv upsampling.
//! - [`attention`], [`embeddings`], [`unet_blocks`]: the UNet's layers and blocks.
//! - [`contexts`]: routing of text contexts to groups of cross-attention layers.
//! - [`unet`]: the SD denoiser (`UNet2DConditionModel`) with per-group contexts and ControlNet
//!   residuals.
//! - [`controlnet`]: `ControlNetModel`, producing those residuals from a conditioning image.
//! - [`vae`]: the SD1.x variational autoencoder (`AutoencoderKL`), whole or tiled.
//! - [`memory`]: activation-memory estimates of one pass of the UNet, ControlNet and VAE.
//! - [`weights`]: key maps for original single-file checkpoints, a checked `VarBuilder`
//!   backend, `config.json` parsing and weight file names.

pub mod attention;
pub mod clip;
pub mod contexts;
pub mod controlnet;
pub mod embeddings;
pub mod frozen;
pub mod memory;
pub mod ops;
pub mod resnet;
pub mod sampling;
pub mod schedulers;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;
