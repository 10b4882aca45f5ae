//! Times easel's StyTr² network on the CPU (not a test; driven by `tools/ref/stytr_bench.py`,
//! which also times the same network in PyTorch with the same weights):
//!
//! `cargo run --release -p easel-fast --example bench_stytr -- --dir DIR --size 512 --runs 3`
//!
//! `DIR` holds `transformer.pth`, `embedding.pth`, `decoder.pth` (full-size StyTr² state dicts)
//! and `input_<size>.safetensors` (`content`, `style`: `[1, 3, size, size]` f32), all written by
//! the script. Options: `--size N` (default 512), `--runs R` (default 3, after 1 warm-up run),
//! `--pyramidal` (the transformer file has `ppe.*` weights). Writes the stylized result to
//! `DIR/easel_<size>.safetensors` (`out`) and prints one JSON line with the median milliseconds.
//! candle's CPU thread count follows `RAYON_NUM_THREADS`.

use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_fast::stytr::{Config, StyTr};
use std::path::PathBuf;

mod common;
use common::{time_ms, Args};

fn main() -> Result<()> {
    // As the easel binary runs.
    easel_cpu::keep_freed_memory();
    let args = Args::parse(&["--size", "--runs", "--dir"], &["--pyramidal"])?;
    let size = args.number("--size", 512)?;
    let runs = args.number("--runs", 3)?;
    let dir = args.value("--dir").map(PathBuf::from);
    let cfg = if args.switch("--pyramidal") {
        Config::original_pyramidal()
    } else {
        Config::original()
    };
    let Some(dir) = dir else {
        candle_core::bail!("--dir DIR is required (see tools/ref/stytr_bench.py)")
    };
    let load = |name: &str| -> Result<VarBuilder<'static>> {
        let path = dir.join(name);
        let tensors = read_torch_checkpoint(&std::fs::read(&path)?, &path.display().to_string())?;
        Ok(VarBuilder::from_tensors(
            tensors.into_iter().collect(),
            DType::F32,
            &Device::Cpu,
        ))
    };
    let net = StyTr::new(
        load("transformer.pth")?,
        load("embedding.pth")?,
        load("decoder.pth")?,
        &cfg,
    )?;
    let input = candle_core::safetensors::load(
        dir.join(format!("input_{size}.safetensors")),
        &Device::Cpu,
    )?;
    let (content, style) = (&input["content"], &input["style"]);
    let mut out = net.stylize(content, style)?; // warm-up
    let times = time_ms(0, runs, || {
        out = net.stylize(content, style)?;
        Ok(())
    })?;
    let stats = easel_core::stats::Stats::of(&times)?;
    out.save_safetensors("out", dir.join(format!("easel_{size}.safetensors")))?;
    println!(
        "{{\"size\": {size}, \"runs\": {}, \"threads\": {}, \"median_ms\": {:.1}, \"min_ms\": {:.1}}}",
        times.len(),
        candle_core::utils::get_num_threads(),
        stats.median_ms,
        stats.min_ms
    );
    Ok(())
}
