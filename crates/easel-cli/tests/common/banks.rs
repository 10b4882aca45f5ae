//! Prompt banks for the tiny SD of easel-pipeline's fixtures: the model, its base-model hash,
//! the LSAST preset's bank, and bank files saved with metadata.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use easel_bank::bank::Bank;
use easel_bank::file::{base_model_hash, save_bank, BankMetadata};
use easel_bank::inject::init_embedding;
use easel_bank::preset::Preset;
use easel_pipeline::models::{LoadOptions, StableDiffusion};

use super::fixtures;

pub fn tiny_sd() -> StableDiffusion {
    let opts = LoadOptions::new(Device::Cpu, DType::F32).unwrap();
    StableDiffusion::from_diffusers_dir(&fixtures().join("tiny-sd"), &opts).unwrap()
}

/// The base-model hash of the tiny SD, computed with the library from its files.
pub fn tiny_hash(sd: &StableDiffusion) -> String {
    let vocab = sd.text_encoder.config().vocab_size as u32;
    let ids = Tensor::arange(0u32, vocab, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let table = sd
        .text_encoder
        .token_embeddings(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let unet = candle_core::safetensors::load(
        fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    base_model_hash(&table, unet.iter().map(|(k, v)| (k.as_str(), v))).unwrap()
}

/// The LSAST preset's bank (10 stages × down/mid/up) for the tiny SD.
pub fn lsast(sd: &StableDiffusion) -> Bank {
    let init = init_embedding(&sd.text_encoder, &sd.tokenizer, "painting").unwrap();
    let layout = sd.unet.cross_attention_layout();
    Bank::from_preset(
        &Preset::builtin("lsast").unwrap(),
        &layout,
        "painting",
        &init,
        0,
        &Device::Cpu,
    )
    .unwrap()
}

pub fn metadata(hash: &str) -> BankMetadata {
    BankMetadata {
        base_model: "org/tiny-sd".to_string(),
        base_model_hash: hash.to_string(),
        training: serde_json::json!({"steps": 120}),
        collection_hash: "c0ffee".to_string(),
        created: "2024-05-01T12:00:00Z".to_string(),
    }
}

pub fn save(bank: &Bank, hash: &str, path: &Path) {
    std::fs::write(path, save_bank(bank, &metadata(hash)).unwrap()).unwrap();
}

/// The values of `t` as bits, for exact comparisons.
pub fn tensor_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// The bank's vectors as bits, for exact comparisons.
pub fn vector_bits(bank: &Bank) -> Vec<u32> {
    tensor_bits(&bank.vectors().unwrap())
}
