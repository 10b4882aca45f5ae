//! Times one Gatys iteration (the loss's forward through EfficientNet-Lite0 and the gradient to
//! the picture) on the CPU. Not a test; driven by `tools/ref/gatys_bench.py`, which times the
//! same loss in PyTorch in the same run:
//!
//! `cargo run --release -p easel-fast --example bench_gatys -- --input FILE --runs 3`
//!
//! `FILE` (written by the script) holds `photo`, `style` and `x` (`[1, 3, S, S]` f32). Prints one
//! JSON line: the median and all milliseconds of `--runs` evaluations after one warm-up, the
//! loss, the process's peak resident memory (`VmHWM`) and its resident memory before the first
//! evaluation (`VmRSS`), in MiB. candle's CPU thread count follows `RAYON_NUM_THREADS`.

use candle_core::{Device, Result};
use easel_fast::efficientnet::EfficientNet;
use easel_fast::gatys::{Objective, Settings};
use std::time::Instant;

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
    let mut input = None;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| candle_core::Error::msg(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--input" => input = Some(value("--input")?),
            "--runs" => runs = value("--runs")?.parse().map_err(candle_core::Error::msg)?,
            other => candle_core::bail!("unknown option {other}"),
        }
    }
    let Some(input) = input else {
        candle_core::bail!("--input FILE is required (see tools/ref/gatys_bench.py)")
    };
    let t = candle_core::safetensors::load(&input, &Device::Cpu)?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let settings = Settings {
        tv_weight: 10.0,
        ..Settings::new()
    };
    let objective = Objective::new(&net, &t["photo"], &[t["style"].clone()], None, &settings)?;
    let rss_before = status_mib("VmRSS:");
    let mut times = Vec::new();
    let mut loss = 0.0;
    for i in 0..=runs {
        let start = Instant::now();
        let (l, g) = objective.evaluate(&t["x"])?;
        // Read the gradient, so that nothing is left pending.
        let _ = g.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        loss = l.total;
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
