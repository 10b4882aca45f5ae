//! Helpers shared by the integration tests: a tiny random CLIP text encoder (seeded, built in
//! the test, no fixture) and the small CLIP tokenizer of easel-diffusion's fixtures
//! (`crates/easel-diffusion/tests/fixtures/tokenizer_small.json`, written by
//! `tools/ref/tokenizer_ref.py`: 2512 BPE tokens, start 2512, end 2513, one added token 2514).
//!
//! Every test binary compiles this module with `mod common;` and uses only some of it.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_bank::bank::Bank;
use easel_bank::inject::init_embedding;
use easel_bank::preset::Preset;
use easel_diffusion::clip::{ClipActivation, ClipTextConfig, ClipTextModel};
use easel_diffusion::contexts::CrossAttentionLayout;
use easel_diffusion::tokenizer::ClipTokenizer;

/// SD 1.5's cross-attention layout (6 down, 1 mid, 9 up layers).
pub const SD15: CrossAttentionLayout = CrossAttentionLayout {
    down: 6,
    mid: 1,
    up: 9,
};

/// The tokenizer fixture.
pub fn tokenizer() -> ClipTokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../easel-diffusion/tests/fixtures/tokenizer_small.json"
    );
    let json = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    ClipTokenizer::from_tokenizer_json(&json).unwrap()
}

/// A tiny CLIP text encoder config over the tokenizer fixture's vocabulary: width `dim`, 2
/// layers of 4 heads, MLP 37, 77 positions, first-eos pooling on the end token 2513.
pub fn clip_config(dim: usize) -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: 2515,
        hidden_size: dim,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 37,
        max_position_embeddings: 77,
        hidden_act: ClipActivation::QuickGelu,
        layer_norm_eps: 1e-5,
        eos_token_id: 2513,
    }
}

/// Deterministic values in [-scale, scale) (64-bit LCG).
pub fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A random tiny CLIP text encoder of width `dim` (weights from `seed`).
pub fn clip(dim: usize, seed: u64) -> ClipTextModel {
    let cfg = clip_config(dim);
    let dev = Device::Cpu;
    let mut weights = HashMap::new();
    let mut k = seed * 1000;
    let mut add = |name: String, dims: &[usize], scale: f32, offset: f32| {
        k += 1;
        let n = dims.iter().product();
        let v: Vec<f32> = uniform(n, k, scale)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        weights.insert(name, Tensor::from_vec(v, dims, &dev).unwrap());
    };
    let (d, m) = (dim, cfg.intermediate_size);
    add(
        "embeddings.token_embedding.weight".into(),
        &[cfg.vocab_size, d],
        0.5,
        0.0,
    );
    add(
        "embeddings.position_embedding.weight".into(),
        &[77, d],
        0.2,
        0.0,
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), &[d, d], 0.4, 0.0);
            add(format!("{p}.self_attn.{proj}.bias"), &[d], 0.1, 0.0);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{ln}.weight"), &[d], 0.1, 1.0);
            add(format!("{p}.{ln}.bias"), &[d], 0.1, 0.0);
        }
        add(format!("{p}.mlp.fc1.weight"), &[m, d], 0.4, 0.0);
        add(format!("{p}.mlp.fc1.bias"), &[m], 0.1, 0.0);
        add(format!("{p}.mlp.fc2.weight"), &[d, m], 0.3, 0.0);
        add(format!("{p}.mlp.fc2.bias"), &[d], 0.1, 0.0);
    }
    add("final_layer_norm.weight".into(), &[d], 0.1, 1.0);
    add("final_layer_norm.bias".into(), &[d], 0.1, 0.0);
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    ClipTextModel::new(vb, &cfg).unwrap()
}

/// A fresh bank of the built-in `preset` for SD 1.5's layout on `clip`, from the init word
/// "painting style" (two tokens), seed 0.
pub fn bank(preset: &Preset, clip: &ClipTextModel) -> Bank {
    let init = init_embedding(clip, &tokenizer(), "painting style").unwrap();
    Bank::from_preset(preset, &SD15, "painting style", &init, 0, &Device::Cpu).unwrap()
}

/// The values of `t` as a flat f32 vector.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `max |a − b|`.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `max |a − b|` relative to the reference `b`'s largest magnitude.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = values(b).iter().fold(0.0f32, |m, x| m.max(x.abs()));
    max_abs_diff(a, b) / scale
}
