//! Times easel's arbitrary-style network on the CPU (not a test; driven by
//! `tools/ref/arbitrary_bench.py`, which also times onnxruntime):
//!
//! `cargo run --release -p easel-fast --example bench_arbitrary -- --size 384 --runs 20`
//!
//! Options: `--size N` (content N×N, default 384), `--runs R` (default 20, after 2 warm-up runs),
//! `--plain` (`Config { fake_quant: false }`), `--weights FILE`. Prints one JSON line with the
//! median milliseconds of the transformer (content N×N), of the predictor (256×256) and of the
//! 26-preset network `cin26::PresetNet` (embedded weights, preset 0, content N×N).
//! candle's CPU thread count follows `RAYON_NUM_THREADS`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_fast::arbitrary::{Config, StylePredictor, StyleTransformer, STYLE_SIZE};
use easel_fast::cin26::{preset_weights, PresetNet};
use std::time::Instant;

fn picture(n: usize, phase: f32) -> Result<Tensor> {
    let v: Vec<f32> = (0..3 * n * n)
        .map(|i| {
            let (c, y, x) = (i / (n * n), (i / n) % n, i % n);
            0.5 + 0.45 * ((x as f32 * 0.031 + c as f32 + phase).sin() * (y as f32 * 0.017).cos())
        })
        .collect();
    Tensor::from_vec(v, (1, 3, n, n), &Device::Cpu)
}

fn median_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(easel_core::stats::Stats::of(&times)?.median_ms)
}

fn main() -> Result<()> {
    let mut size = 384usize;
    let mut runs = 20usize;
    let mut cfg = Config::default();
    let mut weights =
        concat!(env!("CARGO_MANIFEST_DIR"), "/weights/arbitrary.safetensors").to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| candle_core::Error::msg(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--size" => size = value("--size")?.parse().map_err(candle_core::Error::msg)?,
            "--runs" => runs = value("--runs")?.parse().map_err(candle_core::Error::msg)?,
            "--weights" => weights = value("--weights")?,
            "--plain" => cfg.fake_quant = false,
            other => candle_core::bail!("unknown option {other}"),
        }
    }
    let runs = runs.max(1);
    let vb =
        VarBuilder::from_buffered_safetensors(std::fs::read(&weights)?, DType::F32, &Device::Cpu)?;
    let predictor = StylePredictor::new(vb.pp("predict"), &cfg)?;
    let transformer = StyleTransformer::new(vb.pp("transform"), &cfg)?;
    let style = picture(STYLE_SIZE, 1.0)?;
    let content = picture(size, 0.0)?;
    let code = predictor.forward(&style)?;
    let predictor_ms = median_ms(runs, || predictor.forward(&style).map(|_| ()))?;
    let transformer_ms = median_ms(runs, || transformer.forward(&content, &code).map(|_| ()))?;
    let presets = PresetNet::embedded(&Device::Cpu)?;
    let mix = Tensor::new(preset_weights(&[(0, 1.0)])?, &Device::Cpu)?;
    let cin26_ms = median_ms(runs, || presets.forward(&content, &mix).map(|_| ()))?;
    println!(
        "{{\"size\": {size}, \"runs\": {runs}, \"fake_quant\": {}, \"threads\": {}, \"transformer_ms\": {transformer_ms:.2}, \"predictor_ms\": {predictor_ms:.2}, \"cin26_ms\": {cin26_ms:.2}}}",
        cfg.fake_quant,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
