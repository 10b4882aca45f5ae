//! Times one Gatys iteration (the loss's forward through EfficientNet-Lite0 and the gradient to
//! the picture) on the CPU. Not a test; driven by `tools/ref/gatys_bench.py`, which times the
//! same loss in PyTorch in the same run:
//!
//! `cargo run --release -p easel-fast --example bench_gatys -- --input FILE --runs 3 [--grad-out G]
//! [--vgg19 WEIGHTS]`
//!
//! On EfficientNet-Lite0, or on VGG-19 from `WEIGHTS` (its default layers) with `--vgg19`.
//! `FILE` (written by the script) holds `photo`, `style` and `x` (`[1, 3, S, S]` f32). Prints one
//! JSON line: the median and all milliseconds of `--runs` evaluations after one warm-up, the
//! loss, the process's peak resident memory (`VmHWM`) and its resident memory before the first
//! evaluation (`VmRSS`), in MiB. `--grad-out` writes the last gradient (`grad`) as safetensors,
//! for the script to compare with PyTorch's. candle's CPU thread count follows
//! `RAYON_NUM_THREADS`.

use candle_core::{Device, Result};
use easel_fast::efficientnet::EfficientNet;
use easel_fast::gatys::{Objective, Perceptual, Settings};
use easel_fast::vgg19::Vgg19;

mod common;
use common::{time_ms, Args};

/// A `/proc/self/status` field in MiB (0 where it cannot be read).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    // As the easel binary runs.
    easel_cpu::keep_freed_memory();
    let args = Args::parse(&["--input", "--runs", "--grad-out", "--vgg19"], &[])?;
    let runs = args.number("--runs", 3)?;
    let input = args.value("--input");
    let Some(input) = input else {
        candle_core::bail!("--input FILE is required (see tools/ref/gatys_bench.py)")
    };
    let t = candle_core::safetensors::load(input, &Device::Cpu)?;
    let net: Box<dyn Perceptual> = match args.value("--vgg19") {
        Some(path) => Box::new(Vgg19::load(std::path::Path::new(path), &Device::Cpu)?),
        None => Box::new(EfficientNet::lite0_embedded(&Device::Cpu)?),
    };
    let settings = Settings {
        tv_weight: 10.0,
        ..Settings::new()
    };
    let objective = Objective::new(
        net.as_ref(),
        &t["photo"],
        &[t["style"].clone()],
        None,
        &settings,
    )?;
    let rss_before = status_mib("VmRSS:");
    let mut loss = 0.0;
    let mut grad = None;
    let times = time_ms(1, runs, || {
        let (l, g) = objective.evaluate(&t["x"])?;
        // Read the gradient, so that nothing is left pending.
        let _ = g.sum_all()?.to_scalar::<f32>()?;
        loss = l.total;
        grad = Some(g);
        Ok(())
    })?;
    if let (Some(path), Some(g)) = (args.value("--grad-out"), grad) {
        candle_core::safetensors::save(&std::collections::HashMap::from([("grad", g)]), path)?;
    }
    let median_ms = easel_core::stats::Stats::of(&times)?.median_ms;
    println!(
        "{{\"median_ms\": {:.1}, \"ms\": {:?}, \"loss\": {loss}, \"peak_mib\": {:.1}, \"rss_before_mib\": {:.1}}}",
        median_ms,
        times,
        status_mib("VmHWM:"),
        rss_before
    );
    Ok(())
}
