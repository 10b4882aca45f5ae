//! Loading weights: key maps between diffusers and original (LDM) checkpoints, a checked
//! `VarBuilder` backend, config files and weight file names.
//!
//! - [`ldm_keys`], [`controlnet_keys`]: [`KeyMap`], the config-dependent maps between
//!   diffusers keys and single-file checkpoint keys (UNet, VAE, CLIP, ControlNet), both ways.
//! - [`legacy_keys`]: diffusers' pre-0.14 VAE attention key names.
//! - [`checked`]: [`CheckedTensors`], serving tensors to models with clear missing-key and
//!   shape errors, dtype conversion and a list of unused tensors.
//! - [`config_json`]: model configs from diffusers / transformers `config.json` files.
//! - [`layout`]: weight file names of a component (variants, shards) and the refusal of
//!   pickle checkpoints.
//!
//! Model code never reads files; callers read bytes (or memory-map files) and hand them here.

pub mod checked;
pub mod config_json;
pub mod controlnet_keys;
pub mod layout;
pub mod ldm_keys;
pub mod legacy_keys;

pub use checked::CheckedTensors;
pub use config_json::{
    clip_config_from_transformers_json, controlnet_config_from_diffusers_json,
    unet_config_from_diffusers_json, vae_config_from_diffusers_json,
};
pub use layout::{
    check_safetensors_bytes, check_weights_file_name, component_files, model_index, shard_files,
    Component, ModelIndexEntry,
};
pub use ldm_keys::{is_ldm_checkpoint, Converted, KeyMap};
pub use legacy_keys::upgrade_legacy_attention_keys;
