//! Times `learn` training steps on the tiny random SD 1.x + ControlNet of easel-pipeline's
//! fixtures and the test collection, and reports the process's peak memory (VmHWM) and the
//! gradients computed beyond the bank's variables.
//!
//! `cargo run --release -p easel-bank --example learn_steps -- [RESOLUTION] [STEPS]`
//! (defaults 64 and 20).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Result};
use easel_bank::bank::Bank;
use easel_bank::collection::prepare_examples;
use easel_bank::inject::init_embedding;
use easel_bank::preset::Preset;
use easel_bank::train::{TrainConfig, Trainer};
use easel_pipeline::models::{load_controlnet_dir, LoadOptions, StableDiffusion};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| -> Result<usize> {
        args.next()
            .map_or(Ok(default), |a| a.parse().map_err(candle_core::Error::wrap))
    };
    let resolution = next(64)?;
    let steps = next(20)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("../easel-pipeline/tests/fixtures");
    let opts = LoadOptions::cpu();
    let sd =
        StableDiffusion::from_diffusers_dir(&fixtures.join("tiny-sd"), &opts)?.with_controlnet(
            load_controlnet_dir(&fixtures.join("tiny-controlnet"), &opts)?,
        );
    let mut images = vec![];
    let mut paths: Vec<_> = std::fs::read_dir(root.join("tests/fixtures/collection"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    for p in paths {
        images.push(image::open(&p).map_err(candle_core::Error::wrap)?.to_rgb8());
    }
    let config = TrainConfig {
        steps: steps + 2,
        lr: 0.1,
        warmup_steps: 0,
        batch: 4,
        grad_accumulation: 1,
        resolution,
        checkpoint_every: 0,
        validate_every: 0,
        ..TrainConfig::default()
    };
    let device = Device::Cpu;
    let examples = prepare_examples(&images, &sd.vae, &config, None, "tiny", &device, DType::F32)?;
    let init = init_embedding(&sd.text_encoder, &sd.tokenizer, "painting")?;
    let bank = Bank::from_preset(
        &Preset::builtin("lsast")?,
        &sd.unet.cross_attention_layout(),
        "painting",
        &init,
        0,
        &device,
    )?;
    let run = std::env::temp_dir().join(format!("easel-learn-steps-{}", std::process::id()));
    let mut trainer = Trainer::new(&sd, bank, examples, config, &run)?;
    let other = trainer.gradients(0)?.other_gradients;
    for _ in 0..2 {
        trainer.train_step()?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        trainer.train_step()?;
    }
    let per_step = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "n/a".to_string());
    println!(
        "resolution {resolution} batch 4: {per_step:.1} ms/step over {steps} steps, \
         peak RSS (VmHWM) {hwm}, other gradient entries per step {other}"
    );
    Ok(())
}
