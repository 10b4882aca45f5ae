//! Times easel's AdaIN on the CPU (not a test; driven by `tools/ref/adain_bench.py`, which times
//! the same network in PyTorch in the same run):
//!
//! `cargo run --release -p easel-fast --example bench_adain -- --size 512 --runs 5`
//!
//! Options: `--size N` (content and style N×N, default 512), `--runs R` (default 5, after 2
//! warm-up runs). Full-width networks
//! (`Config::original()`) with deterministic pseudo-random He-scaled weights. Prints one JSON
//! line with the median milliseconds of one `AdaIN::stylize` (encode content and style, AdaIN,
//! decode). candle's CPU thread count follows `RAYON_NUM_THREADS`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_fast::adain::{AdaIN, Config};
use std::collections::HashMap;

mod common;
use common::{median_ms, picture, Args};

/// `(module index, in, out, k)` of one conv.
type ConvSpec = (usize, usize, usize, usize);

/// The encoder's convs to relu4_1 and the decoder's.
fn convs(cfg: &Config) -> (Vec<ConvSpec>, Vec<ConvSpec>) {
    let [a, b, c, d] = cfg.widths;
    let vgg = vec![
        (0, 3, 3, 1),
        (2, 3, a, 3),
        (5, a, a, 3),
        (9, a, b, 3),
        (12, b, b, 3),
        (16, b, c, 3),
        (19, c, c, 3),
        (22, c, c, 3),
        (25, c, c, 3),
        (29, c, d, 3),
    ];
    let dec = vec![
        (1, d, c, 3),
        (5, c, c, 3),
        (8, c, c, 3),
        (11, c, c, 3),
        (14, c, b, 3),
        (18, b, b, 3),
        (21, b, a, 3),
        (25, a, a, 3),
        (28, a, 3, 3),
    ];
    (vgg, dec)
}

/// Deterministic weights: a xorshift stream scaled to He's standard deviation.
fn weights(plan: &[ConvSpec], seed: u64) -> Result<VarBuilder<'static>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut map = HashMap::new();
    for &(i, cin, cout, k) in plan {
        let scale = (12.0 * 2.0 / (cin * k * k) as f32).sqrt();
        let w: Vec<f32> = (0..cout * cin * k * k).map(|_| next() * scale).collect();
        let b: Vec<f32> = (0..cout).map(|_| next() * 0.1).collect();
        map.insert(
            format!("{i}.weight"),
            Tensor::from_vec(w, (cout, cin, k, k), &Device::Cpu)?,
        );
        map.insert(
            format!("{i}.bias"),
            Tensor::from_vec(b, cout, &Device::Cpu)?,
        );
    }
    Ok(VarBuilder::from_tensors(map, DType::F32, &Device::Cpu))
}

fn main() -> Result<()> {
    // As the easel binary runs.
    easel_cpu::keep_freed_memory();
    let args = Args::parse(&["--size", "--runs"], &[])?;
    let size = args.number("--size", 512)?;
    let runs = args.number("--runs", 5)?.max(1);
    let cfg = Config::original();
    let (vgg, dec) = convs(&cfg);
    let net = AdaIN::new(weights(&vgg, 1)?, weights(&dec, 2)?, &cfg)?;
    let (content, style) = (picture(size, 0.0)?, picture(size, 1.0)?);
    let styles = [(style, 1.0)];
    let stylize_ms = median_ms(2, runs, || {
        net.stylize(&content, &styles, 1.0, None).map(|_| ())
    })?;
    println!(
        "{{\"size\": {size}, \"runs\": {runs}, \"threads\": {}, \"stylize_ms\": {stylize_ms:.1}}}",
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
