//! `easel bench`: time the diffusion workloads (UNet step with guidance, ControlNet + UNet step,
//! VAE encode and decode, a whole stylization, a prompt-bank training step) and the fast
//! stylizers (AdaIN, StyTr²), and measure their peak memory, on the weights of `--sd` /
//! `--controlnet` or on seeded random weights of SD 1.5's (and the published fast networks')
//! shapes (`--config sd15|tiny`).
//!
//! Each workload's inputs are made once; then `--warmup` untimed calls and `--runs` timed calls,
//! each between two device synchronisations (easel-pipeline's `bench` module documents the
//! timer, the random weights and what the memory figures mean). `--parity FILE` first runs the
//! fixed inputs of FILE and compares with its references (`tools/ref/bench_diffusers.py` writes
//! it), refusing to time anything when an output differs by more than `--parity-tol`: speed
//! must not come from computing less.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use easel_bank::bank::Bank;
use easel_bank::collection::TrainExample;
use easel_bank::inject::init_embedding;
use easel_bank::preset::Preset;
use easel_bank::train::{TrainConfig, Trainer};
use easel_bench::{
    model_workload, parity_outputs, random_models, rel_err, seeded_normal, seeded_unit, time_runs,
    MemoryProbe, ModelPreset, PeakMemory, Stats, Workload, WorkloadSettings,
};
use easel_core::DeviceChoice;
use easel_diffusion::attention::AttentionSlicing;
use easel_pipeline::models::{check_dtype, LoadOptions, StableDiffusion};
use serde::Serialize;
use serde_json::{json, Value};

use super::bench_fast::{fast_workload, FastWorkload};
use crate::args::{parse_dtype, source_hints, word};
use crate::progress;
use easel_host::sources::ModelSources;

/// Time the diffusion workloads (UNet, ControlNet, VAE, a whole stylization, a prompt-bank
/// training step) and the fast stylizers, and measure their peak memory, on given or seeded
/// random weights
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated: unet-cfg (UNet step with guidance, batch 2),
    /// unet-controlnet (ControlNet + UNet step, batch 2), vae-encode, vae-decode, stylize (35
    /// DDIM steps of ControlNet + UNet, VAE and CLIP), learn (one prompt-bank training step,
    /// batch 1), adain (one AdaIN stylization: photo and painting --size², published network
    /// with random weights), transformer (one StyTr² stylization, likewise; f32 only) or all.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        default_value = "all"
    )]
    workload: Vec<String>,

    /// Image side in pixels (square; latents are a eighth of it).
    #[arg(long, value_name = "PIXELS", default_value_t = 512)]
    size: usize,

    /// The models' dtype: f32, f16 or bf16 (default f16 on CUDA, f32 on the CPU; the CPU
    /// supports only f32).
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    dtype: Option<DType>,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,

    /// Timed runs per workload (the median, minimum and 90th percentile are reported).
    #[arg(long, value_name = "N", default_value_t = 20)]
    runs: usize,

    /// Untimed runs before the timed ones (kernel loading, allocator warm-up).
    #[arg(long, value_name = "N", default_value_t = 3)]
    warmup: usize,

    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Stable Diffusion 1.x weights, as for `easel stylize --sd`: a hub repo id, a local
    /// diffusers folder or a single .safetensors file (default: random weights, see --config).
    #[arg(long, value_name = "SOURCE")]
    sd: Option<String>,

    /// ControlNet weights, as for `easel stylize --controlnet` (with --sd; default: the
    /// registry's canny ControlNet).
    #[arg(long, value_name = "SOURCE", requires = "sd")]
    controlnet: Option<String>,

    /// Never download model files (with --sd): use only the Hugging Face cache.
    #[arg(long, requires = "sd")]
    offline: bool,

    /// Shapes of the random weights used without --sd: sd15 (Stable Diffusion 1.5 and its
    /// ControlNet; the published AdaIN and StyTr² networks) or tiny (the small test models, for
    /// quick checks).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "sd15",
        conflicts_with = "sd"
    )]
    config: String,

    /// Seed of the random weights and of the inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// Encode and decode with the tiled VAE (bounded memory for large sizes).
    #[arg(long)]
    vae_tiling: bool,

    /// Attention query chunk of the UNet and ControlNet: 0 materialises all scores at once;
    /// default: what painting uses, chunks that keep each score matrix under 1 GiB (all at
    /// once at 512² with guidance, 1024 queries at 1024²).
    #[arg(long, value_name = "TOKENS")]
    attention_chunk: Option<usize>,

    /// Before timing, run the fixed inputs of this safetensors file (sample [2, 4, h, w],
    /// timestep [1], context [2, 77, D], optional cond [2, 3, 8h, 8w] and latents [1, 4, h, w],
    /// as tools/ref/bench_diffusers.py writes them) and compare with its `ref/unet`,
    /// `ref/unet_controlnet` and `ref/vae_decode`; nothing is timed if an output is off by
    /// more than --parity-tol.
    #[arg(long, value_name = "FILE")]
    parity: Option<PathBuf>,

    /// Largest accepted relative error ‖ours − ref‖∞ / ‖ref‖∞ of the --parity outputs.
    #[arg(long, value_name = "TOL", default_value_t = 1e-2, requires = "parity")]
    parity_tol: f64,

    /// Also write our --parity outputs (f32) to this safetensors file.
    #[arg(long, value_name = "FILE", requires = "parity")]
    parity_dump: Option<PathBuf>,
}

/// One workload's results.
#[derive(Serialize)]
struct WorkloadReport {
    name: &'static str,
    /// The dtype it ran in (the transformer runs in f32 whatever --dtype says).
    dtype: &'static str,
    median_ms: f64,
    min_ms: f64,
    p90_ms: f64,
    mean_ms: f64,
    runs: usize,
    samples_ms: Vec<f64>,
    /// Peak bytes ([`PeakMemory::peak_bytes`]).
    peak_memory_bytes: Option<u64>,
    memory_kind: &'static str,
    /// CUDA: peak device memory in use, sampled.
    sampled_device_peak_bytes: Option<u64>,
}

/// The attention evaluation for `--attention-chunk`.
fn attention_slicing(chunk: Option<usize>) -> AttentionSlicing {
    match chunk {
        Some(0) => AttentionSlicing::Full,
        Some(n) => AttentionSlicing::QueryChunks(n),
        None => AttentionSlicing::PAINTING,
    }
}

fn slicing_name(slicing: AttentionSlicing) -> String {
    match slicing {
        AttentionSlicing::Full => "full".to_string(),
        AttentionSlicing::QueryChunks(n) => format!("query-chunks-{n}"),
        AttentionSlicing::MaxScoreBytes(n) => format!("max-score-bytes-{n}"),
    }
}

/// A workload of `easel bench`: the diffusion pipeline's or a fast stylizer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BenchWorkload {
    Diffusion(Workload),
    Fast(FastWorkload),
}

impl BenchWorkload {
    fn name(self) -> &'static str {
        match self {
            Self::Diffusion(w) => w.name(),
            Self::Fast(w) => w.name(),
        }
    }

    /// The diffusion workloads, then the fast ones.
    fn all() -> Vec<Self> {
        let diffusion = Workload::ALL.into_iter().map(Self::Diffusion);
        diffusion
            .chain(FastWorkload::ALL.into_iter().map(Self::Fast))
            .collect()
    }

    fn parse(name: &str) -> Result<Self> {
        if let Some(w) = FastWorkload::parse(name) {
            return Ok(Self::Fast(w));
        }
        match Workload::parse(name) {
            Ok(w) => Ok(Self::Diffusion(w)),
            Err(e) => bail!(
                "--workload: {e} (or a fast stylizer: {})",
                FastWorkload::ALL.map(|w| w.name()).join(", ")
            ),
        }
    }
}

/// The workloads named by `--workload`, in the order given (`all` expands in place).
fn workloads(names: &[String]) -> Result<Vec<BenchWorkload>> {
    let mut out: Vec<BenchWorkload> = Vec::new();
    for name in names {
        let name = name.trim();
        let add: Vec<BenchWorkload> = if name == "all" {
            BenchWorkload::all()
        } else {
            vec![BenchWorkload::parse(name)?]
        };
        for w in add {
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    if out.is_empty() {
        bail!("--workload: name at least one workload");
    }
    Ok(out)
}

/// One bank training step through easel-bank's trainer: the `lsast` layout initialised from
/// "painting", one cached view of seeded random latents and control image, batch 1, no
/// gradient accumulation.
fn learn_step(sd: &StableDiffusion, size: usize, seed: u64) -> Result<Trainer> {
    let preset = Preset::builtin("lsast")?;
    let init = init_embedding(&sd.text_encoder, &sd.tokenizer, "painting")?;
    let bank = Bank::from_preset(
        &preset,
        &sd.unet.cross_attention_layout(),
        "painting",
        &init,
        seed,
        &sd.device,
    )?;
    let factor = sd.vae.config().downsampling_factor();
    let example = TrainExample {
        latents: seeded_normal(
            seed + 7,
            &[1, 4, size / factor, size / factor],
            DType::F32,
            &sd.device,
        )?,
        control: seeded_unit(seed + 8, &[1, 3, size, size], DType::F32, &sd.device)?,
    };
    let config = TrainConfig {
        steps: 1_000_000,
        warmup_steps: 0,
        batch: 1,
        grad_accumulation: 1,
        resolution: size,
        seed,
        checkpoint_every: 0,
        validate_every: 0,
        views_per_image: 1,
        ..TrainConfig::default()
    };
    // train_step never writes the run folder (only checkpoints do, and none is asked for).
    let run_dir = std::env::temp_dir().join("easel-bench-learn");
    Ok(Trainer::new(sd, bank, vec![example], config, &run_dir)?)
}

/// Runs the `--parity` check; fails when an output is off by more than the tolerance.
fn parity(sd: &StableDiffusion, path: &std::path::Path, args: &BenchArgs) -> Result<Value> {
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("--parity {}", path.display()))?;
    let outputs =
        parity_outputs(sd, &tensors).with_context(|| format!("--parity {}", path.display()))?;
    let mut report = serde_json::Map::new();
    let mut worst: f64 = 0.0;
    for (name, ours) in &outputs {
        let Some(reference) = tensors.get(&format!("ref/{name}")) else {
            continue;
        };
        let err = rel_err(ours, reference).with_context(|| format!("--parity output {name}"))?;
        worst = worst.max(if err.is_nan() { f64::INFINITY } else { err });
        report.insert(name.clone(), json!({ "rel_err": err }));
    }
    if report.is_empty() {
        bail!(
            "--parity {}: no reference (ref/unet, ref/unet_controlnet, ref/vae_decode) to compare with",
            path.display()
        );
    }
    if let Some(dump) = &args.parity_dump {
        let map: HashMap<String, Tensor> = outputs.into_iter().collect();
        candle_core::safetensors::save(&map, dump)
            .with_context(|| format!("--parity-dump {}", dump.display()))?;
    }
    let pass = worst <= args.parity_tol;
    let value = json!({
        "file": path.display().to_string(),
        "tol": args.parity_tol,
        "max_rel_err": worst,
        "pass": pass,
        "outputs": report,
    });
    if !pass {
        bail!(
            "parity failed, nothing timed: max relative error {worst:.3e} > --parity-tol {} ({value})",
            args.parity_tol
        );
    }
    Ok(value)
}

fn gib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "-".to_string(),
    }
}

/// Runs `easel bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let list = workloads(&args.workload)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.size < 64 || !args.size.is_multiple_of(8) {
        bail!(
            "--size {} must be a multiple of 8 and at least 64",
            args.size
        );
    }
    let preset = match args.sd {
        Some(_) => None,
        None => {
            Some(ModelPreset::parse(&args.config).map_err(|e| anyhow::anyhow!("--config: {e}"))?)
        }
    };
    let device = easel_core::select_device(args.device)?;
    let dtype = args.dtype.unwrap_or(if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    });
    check_dtype(&device, dtype)?;
    let slicing = attention_slicing(args.attention_chunk);

    // The diffusion models are built only when a diffusion workload or --parity needs them.
    let needs_sd = args.parity.is_some()
        || list
            .iter()
            .any(|w| matches!(w, BenchWorkload::Diffusion(_)));
    let loading = Instant::now();
    let (sd, weights) = match (&args.sd, preset) {
        (Some(sd), _) => {
            let mut sources = ModelSources::with_default_controlnet(
                Some(sd.clone()),
                args.controlnet.clone(),
                args.offline,
            )
            .map_err(word)?;
            sources.hints = source_hints();
            let models = sources
                .load(
                    &device,
                    Some(dtype),
                    slicing,
                    Some(progress::download_hook()),
                )
                .map_err(word)?;
            let weights = json!({
                "kind": "files",
                "sd": sd,
                "controlnet": args.controlnet,
            });
            (Some(models.sd), weights)
        }
        (None, Some(preset)) => {
            let sd = if needs_sd {
                let opts = LoadOptions::new(device.clone(), dtype)?.with_attention_slicing(slicing);
                Some(
                    random_models(preset, args.seed, &opts)
                        .context("building the random models")?,
                )
            } else {
                None
            };
            let weights = json!({ "kind": "random", "config": preset.name(), "seed": args.seed });
            (sd, weights)
        }
        (None, None) => bail!("internal error: no weights chosen"),
    };
    device.synchronize()?;
    let load_s = loading.elapsed().as_secs_f64();

    let parity = match (&sd, &args.parity) {
        (Some(sd), Some(path)) => Some(parity(sd, path, &args)?),
        _ => None,
    };

    let settings = WorkloadSettings {
        size: args.size,
        vae_tiling: args.vae_tiling,
        seed: args.seed,
    };
    let mut reports = Vec::new();
    for workload in list {
        let bar = progress::bar((args.warmup + args.runs) as u64, workload.name());
        let probe = MemoryProbe::start(&device)?;
        let mut run_dtype = dtype;
        let samples = {
            let mut trainer;
            let mut call: Box<dyn FnMut() -> candle_core::Result<()> + '_> = match (workload, &sd) {
                (BenchWorkload::Fast(w), _) => {
                    run_dtype = w.dtype(dtype);
                    // With --sd the fast networks keep their published sizes.
                    let shapes = preset.unwrap_or(ModelPreset::Sd15);
                    fast_workload(w, shapes, args.size, dtype, args.seed, &device)
                        .with_context(|| format!("preparing the {} workload", w.name()))?
                }
                (BenchWorkload::Diffusion(Workload::Learn), Some(sd)) => {
                    trainer = learn_step(sd, args.size, args.seed)
                        .context("preparing the learn workload")?;
                    Box::new(move || trainer.train_step().map(|_| ()))
                }
                (BenchWorkload::Diffusion(w), Some(sd)) => model_workload(sd, w, &settings)
                    .with_context(|| format!("preparing the {} workload", w.name()))?,
                (BenchWorkload::Diffusion(w), None) => {
                    bail!("internal error: no models for the {} workload", w.name())
                }
            };
            let mut ticking = || {
                let r = call();
                bar.inc(1);
                r
            };
            time_runs(&device, args.warmup, args.runs, &mut ticking)
                .with_context(|| format!("running the {} workload", workload.name()))?
        };
        let memory: PeakMemory = probe.finish()?;
        bar.finish_and_clear();
        let stats = Stats::of(&samples)?;
        reports.push(WorkloadReport {
            name: workload.name(),
            dtype: run_dtype.as_str(),
            median_ms: stats.median_ms,
            min_ms: stats.min_ms,
            p90_ms: stats.p90_ms,
            mean_ms: stats.mean_ms,
            runs: samples.len(),
            samples_ms: samples,
            peak_memory_bytes: memory.peak_bytes,
            memory_kind: memory.kind.name(),
            sampled_device_peak_bytes: memory.sampled_device_peak_bytes,
        });
    }

    let device_name = if device.is_cpu() { "cpu" } else { "cuda" };
    if args.json {
        let report = json!({
            "device": device_name,
            "dtype": dtype.as_str(),
            "size": args.size,
            "weights": weights,
            "runs": args.runs,
            "warmup": args.warmup,
            "vae_tiling": args.vae_tiling,
            "attention": slicing_name(slicing),
            "load_s": load_s,
            "parity": parity,
            "workloads": reports,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let source = match (&args.sd, preset) {
        (Some(sd), _) => sd.clone(),
        (None, Some(p)) => format!("random {} weights (seed {})", p.name(), args.seed),
        (None, None) => String::new(),
    };
    println!(
        "easel bench: {device_name} {}, {}², {source}, attention {}{}; {} runs after {} warm-up (load {load_s:.1} s)",
        dtype.as_str(),
        args.size,
        slicing_name(slicing),
        if args.vae_tiling { ", tiled VAE" } else { "" },
        args.runs,
        args.warmup,
    );
    if let Some(p) = &parity {
        println!(
            "parity: max rel err {:.3e} (tol {})",
            p["max_rel_err"].as_f64().unwrap_or(f64::NAN),
            args.parity_tol
        );
    }
    println!(
        "{:<16} {:>6} {:>11} {:>11} {:>11} {:>12} {:>14}",
        "workload", "dtype", "median ms", "min ms", "p90 ms", "peak memory", "device (smi)"
    );
    for r in &reports {
        println!(
            "{:<16} {:>6} {:>11.2} {:>11.2} {:>11.2} {:>12} {:>14}",
            r.name,
            r.dtype,
            r.median_ms,
            r.min_ms,
            r.p90_ms,
            gib(r.peak_memory_bytes),
            gib(r.sampled_device_peak_bytes)
        );
    }
    if let Some(r) = reports.first() {
        println!("peak memory: {}", r.memory_kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists_expand_and_deduplicate() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = workloads(&names(&["all"])).unwrap();
        assert_eq!(all.len(), Workload::ALL.len() + FastWorkload::ALL.len());
        assert_eq!(all[0], BenchWorkload::Diffusion(Workload::UnetCfg));
        assert_eq!(
            all.last(),
            Some(&BenchWorkload::Fast(FastWorkload::Transformer))
        );
        assert_eq!(
            workloads(&names(&["vae-decode", "adain", "unet-cfg", "vae-decode"])).unwrap(),
            vec![
                BenchWorkload::Diffusion(Workload::VaeDecode),
                BenchWorkload::Fast(FastWorkload::Adain),
                BenchWorkload::Diffusion(Workload::UnetCfg)
            ]
        );
        let err = workloads(&names(&["unet"])).unwrap_err().to_string();
        assert!(
            err.contains("unknown workload \"unet\"")
                && err.contains("unet-cfg")
                && err.contains("adain, transformer"),
            "{err}"
        );
    }

    #[test]
    fn attention_defaults_to_what_painting_uses() {
        assert_eq!(attention_slicing(None), AttentionSlicing::PAINTING);
        assert_eq!(attention_slicing(Some(0)), AttentionSlicing::Full);
        assert_eq!(
            attention_slicing(Some(256)),
            AttentionSlicing::QueryChunks(256)
        );
        assert_eq!(
            slicing_name(AttentionSlicing::PAINTING),
            "max-score-bytes-1073741824"
        );
    }
}
