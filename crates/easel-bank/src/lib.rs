//! easel bank: a style as a bank of learnable prompt embeddings, arranged by denoising stage ×
//! UNet layer group.
//!
//! - [`layout`]: stages × layer groups × tokens per slot, and the timestep → stage map.
//! - [`preset`]: the TOML presets of `prompts/` (LSAST, ProSpect, P+, textual inversion,
//!   ArtBank), embedded, or parsed from a user's file.
//! - [`params`]: the parameterisations (direct vectors, LSAST's generator, ArtBank's implicit
//!   bank), all differentiable in their variables.
//! - [`bank`]: [`bank::Bank`], the layout, parameters and prompt template together.
//! - [`inject`]: the bank's vectors in the CLIP prompt → per-stage UNet contexts
//!   ([`inject::BankConditioner`]).
//! - [`conditioning`]: a bank file as the pipeline's conditioning, checked against the model.
//! - [`file`]: the bank file (safetensors + metadata), base-model checks and hash.
//! - [`interop`]: export to and import from diffusers and AUTOMATIC1111 embeddings.
//! - [`official`]: the official LSAST and ArtBank checkpoints read as data.
//! - [`show`]: the summary `easel bank show` prints.
//! - [`collection`]: the artworks as cached training views (VAE latents, Canny controls).
//! - [`train`]: the `learn` trainer (inversion with the frozen UNet and ControlNet).
//! - [`checkpoint`]: training checkpoints, written atomically, resumed exactly.

pub mod bank;
pub mod checkpoint;
pub mod collection;
pub mod conditioning;
pub mod file;
pub mod inject;
pub mod interop;
pub mod layout;
pub mod official;
pub mod params;
pub mod preset;
pub mod show;
pub mod train;
