//! End-to-end parity of the img2img pipeline with diffusers 0.42.1
//! (`StableDiffusionControlNetImg2ImgPipeline`, `StableDiffusionImg2ImgPipeline`) on tiny random
//! models, with diffusers' noise replayed; plus the pipeline's refusals and determinism.
//!
//! Fixtures (`tests/fixtures/tiny-sd/`, `tiny-controlnet/`, `pipeline_cases.safetensors`,
//! `pipeline_cases.json`) are written by `tools/ref/pipeline_ref.py`.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::contexts::{LayerGroups, UNetContexts};
use easel_diffusion::schedulers::SchedulerKind;
use easel_pipeline::conditioning::{
    encode_prompt, stage_of, Conditioning, GuidedContexts, PromptConditioning, StagedConditioning,
};
use easel_pipeline::models::{load_controlnet_dir, LoadOptions, StableDiffusion};
use easel_pipeline::noise::ReplayNoise;
use easel_pipeline::pipeline::{
    control_active, ControlGuidance, ControlSettings, NoiseStart, StylizeRequest,
};
use serde_json::Value;

mod common;

use common::{fixtures, max_abs_diff};

const TOLERANCE: f32 = 1e-3;

struct Fixture {
    tensors: HashMap<String, Tensor>,
    cases: Value,
    sd: StableDiffusion,
}

fn fixture() -> Fixture {
    let dir = fixtures();
    let tensors =
        candle_core::safetensors::load(dir.join("pipeline_cases.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pipeline_cases.json")).unwrap())
            .unwrap();
    let opts = LoadOptions::cpu();
    let controlnet = load_controlnet_dir(&dir.join("tiny-controlnet"), &opts).unwrap();
    let sd = StableDiffusion::from_diffusers_dir(&dir.join("tiny-sd"), &opts)
        .unwrap()
        .with_controlnet(controlnet);
    Fixture { tensors, cases, sd }
}

/// `[H, W, 3]` u8 → `[1, 3, H, W]` f32 in `[0, 1]`.
fn to_image(u8_hwc: &Tensor) -> Tensor {
    u8_hwc
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_div(&Tensor::new(255f32, &Device::Cpu).unwrap())
        .unwrap()
        .permute((2, 0, 1))
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn request(fx: &Fixture, case: &Value) -> StylizeRequest {
    let f = |k: &str| case[k].as_f64().unwrap();
    let mut req = StylizeRequest::new(to_image(&fx.tensors["image_u8"]));
    req.control_image = Some(to_image(&fx.tensors["control_u8"]));
    req.strength = f("strength");
    req.steps = case["steps"].as_u64().unwrap() as usize;
    req.guidance_scale = f("guidance");
    req.eta = f("eta");
    req.scheduler = case["scheduler"].as_str().unwrap().parse().unwrap();
    req.batch = case["batch"].as_u64().unwrap() as usize;
    req.control = ControlSettings {
        scale: f("control_scale"),
        start: f("control_start"),
        end: f("control_end"),
        guess_mode: case["guess_mode"].as_bool().unwrap(),
        guidance: match case["control_guidance"].as_str() {
            Some("cond-only") => ControlGuidance::CondOnly,
            _ => ControlGuidance::Batch,
        },
    };
    req.noise_start = case["noise_start"]
        .as_str()
        .map_or(NoiseStart::Img2Img, |s| s.parse().unwrap());
    req
}

/// Runs case `name` with its recorded noise; returns (max abs error, progress calls).
fn run_case(fx: &Fixture, name: &str) -> (f32, Vec<(usize, usize)>) {
    let case = &fx.cases[name];
    let mut req = request(fx, case);
    let mut sd = fx.sd.clone();
    if !case["controlnet"].as_bool().unwrap() {
        sd.controlnet = None;
        req.control_image = None;
    }
    let noises: Vec<Tensor> = (0..)
        .map_while(|k| fx.tensors.get(&format!("{name}/noise.{k}")).cloned())
        .collect();
    let mut noise = ReplayNoise::new(noises);
    let mut conditioning = PromptConditioning::new(
        &sd,
        case["prompt"].as_str().unwrap(),
        case["negative_prompt"].as_str().unwrap(),
    )
    .unwrap();
    let mut calls = Vec::new();
    let out = sd
        .stylize_with_noise(&req, &mut conditioning, &mut noise, &mut |s, n| {
            calls.push((s, n))
        })
        .unwrap();
    assert_eq!(noise.remaining(), 0, "{name}: unused recorded noise");
    let expected = fx.tensors[&format!("{name}/image")]
        .permute((0, 3, 1, 2))
        .unwrap();
    (max_abs_diff(&out, &expected), calls)
}

#[test]
fn matches_diffusers_end_to_end() {
    let fx = fixture();
    // (case, what it covers)
    let cases = [
        (
            "ddim",
            "ControlNet img2img, DDIM, CFG 7.5, control scale 0.8",
        ),
        (
            "euler_a_batch2",
            "Euler ancestral (per-step noise), two images per photo",
        ),
        (
            "dpmpp2m_guess",
            "DPM++ 2M, guess mode, control window [0.2, 0.7]",
        ),
        (
            "ddim_no_cfg_window",
            "guidance 1 (no unconditional pass), control window [0, 0.5]",
        ),
        (
            "img2img_ddim_eta",
            "prompt-only img2img (no ControlNet), DDIM eta 0.3",
        ),
    ];
    for (name, what) in cases {
        let (err, calls) = run_case(&fx, name);
        println!("{name}: max abs err {err:.3e} ({what})");
        assert!(err <= TOLERANCE, "{name} ({what}): max abs err {err}");
        let n = calls.len();
        assert_eq!(n, 7, "{name}: 10 steps at strength 0.7 run 7");
        assert!(calls.iter().enumerate().all(|(i, &c)| c == (i + 1, n)));
    }
}

/// The official LSAST / ArtBank inference logic as `tools/ref/official_ref.py` reimplements it
/// with diffusers: final latents within 1e-4, images within the pipeline tolerance.
#[test]
fn matches_the_official_inference_logic() {
    let fx = fixture();
    let dir = fixtures();
    let tensors =
        candle_core::safetensors::load(dir.join("official_cases.safetensors"), &Device::Cpu)
            .unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("official_cases.json")).unwrap())
            .unwrap();
    let table = [
        (
            "artbank_inversion",
            "ArtBank: stochastic inversion start, no ControlNet, DDIM, CFG 10",
        ),
        (
            "lsast_cond_only",
            "LSAST: the ControlNet once on the conditional context, residuals to both halves",
        ),
        (
            "inversion_cond_only_dpm",
            "both, with DPM++ 2M, strength 0.6, two images per photo",
        ),
        (
            "lsast_ldm_start",
            "LSAST's ldm img2img start: noised one DDIM step above the first denoising step",
        ),
    ];
    for (name, what) in table {
        let case = &cases[name];
        let mut req = request(&fx, case);
        let mut sd = fx.sd.clone();
        if !case["controlnet"].as_bool().unwrap() {
            sd.controlnet = None;
            req.control_image = None;
        }
        let noises: Vec<Tensor> = (0..)
            .map_while(|k| tensors.get(&format!("{name}/noise.{k}")).cloned())
            .collect();
        assert_eq!(noises.len(), 2, "{name}: the posterior and the start noise");
        let mut noise = ReplayNoise::new(noises);
        let mut conditioning = PromptConditioning::new(
            &sd,
            case["prompt"].as_str().unwrap(),
            case["negative_prompt"].as_str().unwrap(),
        )
        .unwrap();
        let latents = sd
            .denoise(&req, &mut conditioning, &mut noise, &mut |_, _| {})
            .unwrap();
        assert_eq!(noise.remaining(), 0, "{name}: unused recorded noise");
        let expected = &tensors[&format!("{name}/latents")];
        let scale = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let err = max_abs_diff(&latents, expected) / scale;
        println!("{name}: final latents max rel err {err:.3e} ({what})");
        assert!(err <= 1e-4, "{name} ({what}): final latents rel err {err}");

        let mut noise = ReplayNoise::new(
            (0..2)
                .map(|k| tensors[&format!("{name}/noise.{k}")].clone())
                .collect(),
        );
        let image = sd
            .stylize_with_noise(&req, &mut conditioning, &mut noise, &mut |_, _| {})
            .unwrap();
        let expected = tensors[&format!("{name}/image")]
            .permute((0, 3, 1, 2))
            .unwrap();
        let err = max_abs_diff(&image, &expected);
        assert!(err <= TOLERANCE, "{name} ({what}): image max abs err {err}");
    }
}

#[test]
fn control_window_follows_diffusers_keep_rule() {
    // diffusers: keep_i = not (i / n < start or (i + 1) / n > end).
    let active =
        |start, end| -> Vec<bool> { (0..7).map(|i| control_active(i, 7, start, end)).collect() };
    assert_eq!(active(0.0, 1.0), [true; 7]);
    assert_eq!(
        active(0.2, 0.7),
        [false, false, true, true, false, false, false]
    );
    assert_eq!(
        active(0.0, 0.5),
        [true, true, true, false, false, false, false]
    );
}

#[test]
fn nan_contexts_stop_with_a_clear_error() {
    let fx = fixture();
    let sd = &fx.sd;
    let case = &fx.cases["ddim"];
    let req = request(&fx, case);
    let good = encode_prompt(sd, "a cat").unwrap();
    let nan = (good.zeros_like().unwrap() * f64::NAN).unwrap();
    let mut conditioning = PromptConditioning::from_contexts(GuidedContexts {
        cond: UNetContexts::single(nan).unwrap(),
        uncond: UNetContexts::single(good).unwrap(),
    });
    let err = sd
        .stylize(&req, &mut conditioning, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NaN at step 1 of 7") && err.contains("try f32 weights"),
        "{err}"
    );
}

#[test]
fn refuses_small_photos_and_bad_requests() {
    let fx = fixture();
    let sd = &fx.sd;
    let mut conditioning = PromptConditioning::new(sd, "a cat", "").unwrap();
    let small = Tensor::zeros((1, 3, 56, 64), DType::F32, &Device::Cpu).unwrap();
    let mut req = StylizeRequest::new(small.clone());
    req.control_image = Some(small);
    let err = sd
        .stylize(&req, &mut conditioning, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("64×56") && err.contains("larger canvas"),
        "{err}"
    );

    let base = request(&fx, &fx.cases["ddim"]);
    type Change = Box<dyn Fn(&mut StylizeRequest)>;
    let bad: [(&str, Change); 6] = [
        ("no control image", Box::new(|r| r.control_image = None)),
        ("strength", Box::new(|r| r.strength = 0.0)),
        ("no denoising step", Box::new(|r| r.steps = 1)),
        (
            "start",
            Box::new(|r| {
                r.control.start = 0.6;
                r.control.end = 0.5;
            }),
        ),
        (
            "multiples of 8",
            Box::new(|r| {
                r.image = Tensor::zeros((1, 3, 68, 64), DType::F32, &Device::Cpu).unwrap();
                r.control_image = Some(r.image.clone());
            }),
        ),
        (
            "control image",
            Box::new(|r| {
                r.control_image =
                    Some(Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap())
            }),
        ),
    ];
    for (needle, change) in bad {
        let mut req = base.clone();
        change(&mut req);
        let err = sd
            .stylize(&req, &mut conditioning, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

/// The estimate is checked before any work: one byte under it refuses the run with both
/// figures, the estimate itself lets it through.
#[test]
fn runs_over_their_memory_limit_are_refused_before_any_work() {
    let fx = fixture();
    let sd = &fx.sd;
    let mut conditioning = PromptConditioning::new(sd, "a cat", "").unwrap();
    let mut req = request(&fx, &fx.cases["ddim"]);
    let needed = sd.estimate_memory_bytes(&req);
    req.memory_limit = Some(needed - 1);
    let mut steps = 0;
    let err = sd
        .stylize(&req, &mut conditioning, &mut |_, _| steps += 1)
        .unwrap_err()
        .to_string();
    assert_eq!(steps, 0);
    let (h, w) = (req.image.dim(2).unwrap(), req.image.dim(3).unwrap());
    assert!(
        err.starts_with(&format!("painting 1 image of {w}×{h} pixels needs about "))
            && err.contains("available on the CPU")
            && err.contains("a smaller canvas, fewer images at once or VAE tiling"),
        "{err}"
    );
    req.memory_limit = Some(needed);
    sd.stylize(&req, &mut conditioning, &mut |_, _| {}).unwrap();

    // What the estimate follows: guidance doubles the UNet's batch, more images and larger
    // photos need more, tiling bounds the VAE's quadratic attention.
    let estimate = |change: &dyn Fn(&mut StylizeRequest)| {
        let mut r = request(&fx, &fx.cases["ddim"]);
        change(&mut r);
        sd.estimate_memory_bytes(&r)
    };
    let unguided = estimate(&|r| r.guidance_scale = 1.0);
    let guided = estimate(&|r| r.guidance_scale = 7.5);
    assert!(unguided < guided, "{unguided} {guided}");
    assert!(estimate(&|r| r.batch = 2) > needed);
    let large = |r: &mut StylizeRequest| {
        r.image = Tensor::zeros((1, 3, 512, 512), DType::F32, &Device::Cpu).unwrap();
        r.control_image = Some(r.image.clone());
    };
    assert!(estimate(&large) > needed);

    // With one-query attention chunks the VAE's untiled attention dominates; tiles bound it.
    let dir = fixtures();
    let opts = LoadOptions::cpu().with_attention_slicing(AttentionSlicing::QueryChunks(1));
    let sliced = StableDiffusion::from_diffusers_dir(&dir.join("tiny-sd"), &opts).unwrap();
    let mut r =
        StylizeRequest::new(Tensor::zeros((1, 3, 512, 512), DType::F32, &Device::Cpu).unwrap());
    let whole = sliced.estimate_memory_bytes(&r);
    r.vae_tiling = true;
    let tiled = sliced.estimate_memory_bytes(&r);
    assert!(tiled < whole / 4, "{whole} {tiled}");
}

#[test]
fn a_seed_gives_the_same_images_on_cpu() {
    let fx = fixture();
    let sd = &fx.sd;
    let mut req = request(&fx, &fx.cases["ddim"]);
    req.scheduler = SchedulerKind::EulerAncestral;
    req.steps = 4;
    req.strength = 1.0;
    let mut conditioning = PromptConditioning::new(sd, "a cat", "").unwrap();
    let mut run = |seed| -> Result<Tensor> {
        req.seed = seed;
        sd.stylize(&req, &mut conditioning, &mut |_, _| {})
    };
    let a = run(7).unwrap();
    let b = run(7).unwrap();
    let c = run(8).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 1e-3);
}

#[test]
fn staged_conditioning_builds_each_stage_once() {
    assert_eq!(stage_of(999, 1000, 4), 3);
    assert_eq!(stage_of(750, 1000, 4), 3);
    assert_eq!(stage_of(749, 1000, 4), 2);
    assert_eq!(stage_of(0, 1000, 4), 0);
    assert_eq!(stage_of(5000, 1000, 4), 3);

    let fx = fixture();
    let sd = &fx.sd;
    let layers = sd.unet.num_cross_attention_layers();
    let negative = encode_prompt(sd, "").unwrap();
    let prompts = ["a cat", "a dog", "a tree", "a house"];
    let mut built = Vec::new();
    let mut staged = StagedConditioning::new(prompts.len(), |stage| {
        built.push(stage);
        // Per-layer contexts: the stage's prompt everywhere but the first layer.
        let first = encode_prompt(sd, "a painting")?;
        let rest = encode_prompt(sd, prompts[stage])?;
        let mut contexts = vec![first];
        contexts.extend(std::iter::repeat_n(rest, layers - 1));
        Ok(GuidedContexts {
            cond: UNetContexts::new(LayerGroups::PerLayer, contexts)?,
            uncond: UNetContexts::single(negative.clone())?,
        })
    })
    .unwrap();
    let mut req = request(&fx, &fx.cases["ddim"]);
    req.seed = 3;
    let mut steps = 0;
    let out = sd
        .stylize(&req, &mut staged, &mut |_, _| steps += 1)
        .unwrap();
    assert_eq!(steps, 7);
    assert_eq!(out.dims(), [1, 3, 64, 64]);
    let second = staged.contexts(10, 1000).unwrap();
    assert_eq!(second.cond.groups(), LayerGroups::PerLayer);
    drop(staged);
    // Timesteps 631..=31 at strength 0.7 of 10 leading steps: stages 2, 1 and 0 (3 never).
    built.sort();
    assert_eq!(built, [0, 1, 2]);
}
