//! LSAST's official window indexing end to end: a bank whose 30 vectors are read as the
//! official code's `cond[k:k+3]` (layer group `g` of stage `k` reads vector `k + g`) conditions
//! the tiny ControlNet img2img pipeline as `tools/ref/official_ref.py` (case `lsast_windows`)
//! does with diffusers: the same final latents.
//!
//! The fixtures are easel-pipeline's (`tiny-sd/`, `tiny-controlnet/`, `pipeline_cases`,
//! `official_cases`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use easel_bank::bank::Bank;
use easel_bank::conditioning::BankConditioning;
use easel_bank::layout::{Layout, SlotMap, StageMap};
use easel_bank::params::{BankParams, ParamsSpec};
use easel_bank::preset::PromptSpec;
use easel_diffusion::contexts::LayerGroups;
use easel_pipeline::models::{load_controlnet_dir, LoadOptions, StableDiffusion};
use easel_pipeline::noise::ReplayNoise;
use easel_pipeline::pipeline::{ControlGuidance, ControlSettings, StylizeRequest};
use serde_json::Value;

use common::max_rel_diff;

const CASE: &str = "lsast_windows";

fn pipeline_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../easel-pipeline/tests/fixtures")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(pipeline_fixtures().join(name), &Device::Cpu).unwrap()
}

/// `[H, W, 3]` u8 → `[1, 3, H, W]` f32 in `[0, 1]`.
fn to_image(u8_hwc: &Tensor) -> Tensor {
    (u8_hwc.to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .permute((2, 0, 1))
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// The bank of the case with slots reading their vectors as `slot_map` says.
fn bank(case: &Value, vectors: &Tensor, slot_map: SlotMap) -> Bank {
    let spec = &case["windows"];
    let stages = spec["stages"].as_u64().unwrap() as usize;
    let layout = Layout::new(stages, LayerGroups::DownMidUp, 3, 1, StageMap::Uniform)
        .unwrap()
        .with_slot_map(slot_map);
    let dim = vectors.dims()[1];
    let tensors = HashMap::from([("bank.vectors".to_string(), vectors.clone())]);
    let params = BankParams::from_tensors(&ParamsSpec::Direct {}, &layout, dim, tensors).unwrap();
    let prompt = PromptSpec {
        template: spec["template"].as_str().unwrap().to_string(),
        placeholder: spec["placeholder"].as_str().unwrap().to_string(),
    };
    Bank::new(layout, params, prompt, "painting".to_string()).unwrap()
}

/// Final latents' max abs error relative to the reference's largest magnitude.
fn relative_error(sd: &StableDiffusion, req: &StylizeRequest, bank: Bank) -> f32 {
    let expected_cases = load("official_cases.safetensors");
    let noises = (0..2)
        .map(|k| expected_cases[&format!("{CASE}/noise.{k}")].clone())
        .collect();
    let mut noise = ReplayNoise::new(noises);
    let mut conditioning = BankConditioning::from_bank(bank, sd).unwrap();
    let latents = sd
        .denoise(req, &mut conditioning, &mut noise, &mut |_, _| {})
        .unwrap();
    assert_eq!(noise.remaining(), 0, "unused recorded noise");
    max_rel_diff(&latents, &expected_cases[&format!("{CASE}/latents")])
}

#[test]
fn lsast_windows_match_the_official_indexing() {
    let dir = pipeline_fixtures();
    let opts = LoadOptions::cpu();
    let controlnet = load_controlnet_dir(&dir.join("tiny-controlnet"), &opts).unwrap();
    let sd = StableDiffusion::from_diffusers_dir(&dir.join("tiny-sd"), &opts)
        .unwrap()
        .with_controlnet(controlnet);
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("official_cases.json")).unwrap())
            .unwrap();
    let case = &cases[CASE];
    let inputs = load("pipeline_cases.safetensors");
    let f = |k: &str| case[k].as_f64().unwrap();

    let mut req = StylizeRequest::new(to_image(&inputs["image_u8"]));
    req.control_image = Some(to_image(&inputs["control_u8"]));
    req.strength = f("strength");
    req.steps = case["steps"].as_u64().unwrap() as usize;
    req.guidance_scale = f("guidance");
    req.eta = f("eta");
    req.scheduler = case["scheduler"].as_str().unwrap().parse().unwrap();
    req.control = ControlSettings {
        scale: f("control_scale"),
        start: f("control_start"),
        end: f("control_end"),
        guess_mode: false,
        guidance: ControlGuidance::CondOnly,
    };
    assert_eq!(case["control_guidance"], "cond-only");
    assert_eq!(case["negative_prompt"], "");

    let vectors = load("official_cases.safetensors")[&format!("{CASE}/vectors")].clone();
    assert_eq!(vectors.dims(), [30, 32]);
    let err = relative_error(&sd, &req, bank(case, &vectors, SlotMap::Windows));
    println!("{CASE}: final latents max rel err {err:.3e}");
    assert!(err <= 1e-4, "windows: final latents rel err {err}");

    // The same vectors read as separate slots paint something else: the case discriminates.
    let separate = relative_error(&sd, &req, bank(case, &vectors, SlotMap::Separate));
    println!("{CASE} read as separate slots: rel err {separate:.3e}");
    assert!(separate > 1e-2, "separate slots gave rel err {separate}");
}
