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

mod common;
use common::{median_ms, picture, Args};

fn main() -> Result<()> {
    // As the easel binary runs.
    easel_cpu::keep_freed_memory();
    let args = Args::parse(&["--size", "--runs", "--weights"], &["--plain"])?;
    let size = args.number("--size", 384)?;
    let runs = args.number("--runs", 20)?.max(1);
    let cfg = Config {
        fake_quant: !args.switch("--plain"),
        ..Config::default()
    };
    let weights = args.value("--weights").map_or_else(
        || concat!(env!("CARGO_MANIFEST_DIR"), "/weights/arbitrary.safetensors").to_string(),
        str::to_string,
    );
    let vb =
        VarBuilder::from_buffered_safetensors(std::fs::read(&weights)?, DType::F32, &Device::Cpu)?;
    let predictor = StylePredictor::new(vb.pp("predict"), &cfg)?;
    let transformer = StyleTransformer::new(vb.pp("transform"), &cfg)?;
    let style = picture(STYLE_SIZE, 1.0)?;
    let content = picture(size, 0.0)?;
    let code = predictor.forward(&style)?;
    let predictor_ms = median_ms(2, runs, || predictor.forward(&style).map(|_| ()))?;
    let transformer_ms = median_ms(2, runs, || transformer.forward(&content, &code).map(|_| ()))?;
    let presets = PresetNet::embedded(&Device::Cpu)?;
    let mix = Tensor::new(preset_weights(&[(0, 1.0)])?, &Device::Cpu)?;
    let cin26_ms = median_ms(2, runs, || presets.forward(&content, &mix).map(|_| ()))?;
    println!(
        "{{\"size\": {size}, \"runs\": {runs}, \"fake_quant\": {}, \"threads\": {}, \"transformer_ms\": {transformer_ms:.2}, \"predictor_ms\": {predictor_ms:.2}, \"cin26_ms\": {cin26_ms:.2}}}",
        cfg.fake_quant,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
