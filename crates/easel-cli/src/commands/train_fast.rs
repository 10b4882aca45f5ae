//! `easel train-fast --kind adain --content DIR --styles DIR --vgg FILE -o OUT.safetensors`:
//! train AdaIN's decoder on folders of photos and paintings with easel-fast's trainer
//! (`easel_fast::train`; frozen VGG-19, the paper's losses, Adam and learning-rate decay).
//!
//! The run folder (`--run-dir`, default `<OUT stem>.run/`) holds the checkpoint and the sample
//! grids (`samples/step_NNNNNN.png`); `--resume RUN_DIR` continues a run bit-exactly with its
//! settings (only `--steps` may be raised). Ctrl-C checkpoints and stops. The decoder is written
//! atomically at the end as safetensors with `decoder.pth`'s keys, never over an input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use easel_core::DeviceChoice;
use easel_fast::import::torch_zip::read_torch_checkpoint;
use easel_fast::train::checkpoint::Checkpoint;
use easel_fast::train::{vgg_widths, FastTrainer, Hooks, TrainFastConfig, TrainOutcome};

use super::bank::write_atomic;
use crate::progress;

/// The network `easel train-fast` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// AdaIN's decoder (Huang & Belongie 2017).
    Adain,
}

/// The flags of `easel train-fast`.
#[derive(Args, Debug)]
#[command(
    about = "Train a fast feed-forward stylizer (AdaIN's decoder) on folders of photos and \
             paintings with a frozen VGG-19 encoder"
)]
pub struct TrainFastArgs {
    /// The network to train.
    #[arg(long, value_enum, default_value = "adain")]
    kind: KindArg,

    /// Folder of photos (content pictures; its images, not recursively).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    content: Option<PathBuf>,

    /// Folder of paintings (style pictures; its images, not recursively).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    styles: Option<PathBuf>,

    /// The frozen VGG-19 encoder: pytorch-AdaIN's vgg_normalised.pth or its safetensors
    /// conversion (with --resume: default the file the run started with).
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    vgg: Option<PathBuf>,

    /// The trained decoder to write (.safetensors, decoder.pth's keys).
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,

    /// Folder of the run's checkpoint and sample grids (default: OUT with the extension .run).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    run_dir: Option<PathBuf>,

    /// Continue the run checkpointed in RUN_DIR with its settings (only --steps may be given,
    /// to train longer).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["content", "styles", "lr", "lr_decay", "batch", "load_size", "crop", "seed", "save_every", "sample_every", "content_weight", "style_weight"])]
    resume: Option<PathBuf>,

    /// Optimizer steps of the whole run (default 160000).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,

    /// Learning rate at step 0 (default 1e-4).
    #[arg(long, value_name = "RATE")]
    lr: Option<f64>,

    /// Learning-rate decay: the rate at step i is lr / (1 + decay · i) (default 5e-5).
    #[arg(long, value_name = "DECAY")]
    lr_decay: Option<f64>,

    /// Content and style pairs per step (default 8).
    #[arg(long, value_name = "N")]
    batch: Option<usize>,

    /// Short side the pictures are resized to before cropping (default 512).
    #[arg(long, value_name = "PIXELS")]
    load_size: Option<usize>,

    /// Side of the square random training crops, a multiple of 8 (default 256).
    #[arg(long, value_name = "PIXELS")]
    crop: Option<usize>,

    /// Seed of the initial weights and of every random draw (default 0).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Rewrite the checkpoint every N steps (default 10000; one is always written at the end).
    #[arg(long, value_name = "N")]
    save_every: Option<usize>,

    /// Write a sample grid to RUN_DIR/samples every N steps (default 1000; 0: never).
    #[arg(long, value_name = "N")]
    sample_every: Option<usize>,

    /// Content loss weight (default 1).
    #[arg(long, value_name = "W")]
    content_weight: Option<f64>,

    /// Style loss weight (default 10).
    #[arg(long, value_name = "W")]
    style_weight: Option<f64>,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,
}

/// The VGG state dict of `path`: safetensors by extension, else a PyTorch checkpoint (read
/// without executing anything).
fn load_vgg(path: &Path) -> Result<HashMap<String, Tensor>> {
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        return candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("--vgg {}", path.display()));
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("--vgg: cannot read {}", path.display()))?;
    let name = path.to_string_lossy();
    Ok(read_torch_checkpoint(&bytes, &name)
        .with_context(|| format!("--vgg {}", path.display()))?
        .into_iter()
        .collect())
}

/// The settings of a fresh run from the flags.
fn config(args: &TrainFastArgs, vgg_path: PathBuf, widths: [usize; 4]) -> Result<TrainFastConfig> {
    let (Some(content), Some(styles)) = (args.content.clone(), args.styles.clone()) else {
        bail!("--content and --styles are needed for a new run");
    };
    let d = match args.kind {
        KindArg::Adain => TrainFastConfig::adain(content, styles, vgg_path),
    };
    let mut weights = d.weights;
    weights.content = args.content_weight.unwrap_or(weights.content);
    weights.style = args.style_weight.unwrap_or(weights.style);
    Ok(TrainFastConfig {
        widths,
        steps: args.steps.unwrap_or(d.steps),
        lr: args.lr.unwrap_or(d.lr),
        lr_decay: args.lr_decay.unwrap_or(d.lr_decay),
        batch: args.batch.unwrap_or(d.batch),
        load_size: args.load_size.unwrap_or(d.load_size),
        crop: args.crop.unwrap_or(d.crop),
        seed: args.seed.unwrap_or(d.seed),
        save_every: args.save_every.unwrap_or(d.save_every),
        sample_every: args.sample_every.unwrap_or(d.sample_every),
        weights,
        ..d
    })
}

/// Runs `easel train-fast`.
pub fn run(args: TrainFastArgs) -> Result<()> {
    if args.output.is_dir() {
        bail!(
            "-o {} is a folder; give a .safetensors file",
            args.output.display()
        );
    }
    let device = easel_core::select_device(args.device)?;
    let (mut trainer, run_dir) = match &args.resume {
        Some(run_dir) => {
            let mut ckpt = Checkpoint::load(run_dir, &device).with_context(|| {
                format!("--resume: no readable checkpoint in {}", run_dir.display())
            })?;
            if let Some(steps) = args.steps {
                if steps < ckpt.step {
                    bail!(
                        "--steps {steps} is fewer than the {} steps already done",
                        ckpt.step
                    );
                }
                ckpt.config.steps = steps;
            }
            let vgg_path = args.vgg.clone().unwrap_or_else(|| ckpt.config.vgg.clone());
            let vgg = load_vgg(&vgg_path)?;
            let trainer = FastTrainer::from_checkpoint(vgg, ckpt, run_dir, &device)?;
            (trainer, run_dir.clone())
        }
        None => {
            let Some(vgg_path) = args.vgg.clone() else {
                bail!("--vgg is needed for a new run");
            };
            let vgg = load_vgg(&vgg_path)?;
            let widths =
                vgg_widths(&vgg).with_context(|| format!("--vgg {}", vgg_path.display()))?;
            let run_dir = args
                .run_dir
                .clone()
                .unwrap_or_else(|| args.output.with_extension("run"));
            let config = config(&args, vgg_path, widths)?;
            let trainer = FastTrainer::new(vgg, config, &run_dir, &device)?;
            (trainer, run_dir)
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        if let Err(e) = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)) {
            eprintln!("warning: Ctrl-C will not checkpoint: {e}");
        }
    }
    let total = trainer.config().steps;
    let bar = progress::bar(total as u64, "training");
    bar.set_position(trainer.step() as u64);
    let outcome = {
        let mut hooks = Hooks {
            on_step: Some(Box::new(|r| {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "loss {:.4} (content {:.4} style {:.4}) lr {:.2e}",
                    r.loss, r.content, r.style, r.lr
                ));
            })),
            on_sample: Some(Box::new(|_, path| {
                bar.println(format!("samples: {}", path.display()));
            })),
            stop: Some(&stop),
        };
        trainer.train(&mut hooks)?
    };
    bar.finish_and_clear();
    if outcome == TrainOutcome::Stopped {
        bail!(
            "interrupted after {} of {} steps; checkpoint saved in {}; continue with --resume {}",
            trainer.step(),
            total,
            run_dir.display(),
            run_dir.display()
        );
    }
    let config = trainer.config();
    let inputs = [config.vgg.as_path()];
    write_atomic(&args.output, &trainer.weights_bytes()?, &inputs)?;
    eprintln!(
        "wrote {} ({} steps; checkpoint in {})",
        args.output.display(),
        trainer.step(),
        run_dir.display()
    );
    Ok(())
}
