//! Helpers shared by the integration tests: fixture loading (the files under `tests/fixtures/`,
//! written by the scripts in `tools/ref/`) and error measures.
//!
//! Every test binary compiles this module with `mod common;` and uses only some of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use candle_core::{DType, Device, Tensor};
use easel_diffusion::vae::AutoencoderKLConfig;
use serde_json::Value;

/// The path of `tests/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The tensors of the safetensors fixture `name`, on the CPU.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixture_path(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// The tensors of the safetensors fixture `name`, loaded once per test binary and shared by
/// its tests.
pub fn cached(name: &'static str) -> &'static HashMap<String, Tensor> {
    type Cache = HashMap<&'static str, &'static HashMap<String, Tensor>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    // A test that panicked while loading leaves nothing half-inserted: keep using the cache.
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    cache
        .entry(name)
        .or_insert_with(|| Box::leak(Box::new(load(name))))
}

/// The tensor `key` of a fixture; panics naming a missing key.
pub fn tensor(tensors: &HashMap<String, Tensor>, key: &str) -> Tensor {
    tensors
        .get(key)
        .unwrap_or_else(|| panic!("fixture has no {key}"))
        .clone()
}

/// The JSON fixture `name`.
pub fn read_json(name: &str) -> Value {
    let path = fixture_path(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// `max |t|`, computed in f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `max |a − b|`, computed in f32; `a` and `b` must have the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    max_abs(&diff)
}

/// The `deep` VAE config of `tools/ref/vae_ref.py` (three levels, two resnets per level).
pub fn vae_deep_config() -> AutoencoderKLConfig {
    AutoencoderKLConfig {
        block_out_channels: vec![8, 16, 16],
        layers_per_block: 2,
        norm_num_groups: 4,
        sample_size: 16,
        ..AutoencoderKLConfig::sd15()
    }
}
