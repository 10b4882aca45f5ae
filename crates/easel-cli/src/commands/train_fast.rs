//! `easel train-fast --kind adain|transformer --content DIR --styles DIR --vgg FILE -o OUT`:
//! train AdaIN's decoder, or a StyTr² network, on folders of photos and paintings with
//! easel-fast's trainer (`easel_fast::train`; frozen VGG-19, the papers' losses, Adam and
//! learning-rate schedules).
//!
//! The run folder (`--run-dir`, default `OUT` with the extension `.run`) holds the checkpoint
//! and the sample grids (`samples/step_NNNNNN.png`); `--resume RUN_DIR` continues a run
//! bit-exactly with its settings (only `--steps` may be raised). Ctrl-C checkpoints and stops.
//! At the end the weights are written atomically, never over an input: AdaIN's decoder to the
//! file `OUT` (safetensors, `decoder.pth`'s keys); StyTr²'s three state dicts to the folder
//! `OUT` as `transformer.safetensors`, `embedding.safetensors` and `decoder.safetensors` (the
//! keys of StyTR-2's `*_iter_*.pth`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_core::DeviceChoice;
use easel_fast::stytr;
use easel_fast::train::checkpoint::Checkpoint;
use easel_fast::train::{
    vgg_widths, FastTrainer, Hooks, Kind, LrSchedule, TrainFastConfig, TrainOutcome,
};

use crate::{plugins, progress};
use easel_fast::import::stytr::Settings as StytrSettings;
use easel_styles::convert::make_plugin;
use easel_styles::{PluginInfo, PluginSource};

/// The network `easel train-fast` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// AdaIN's decoder (Huang & Belongie 2017).
    Adain,
    /// StyTr² (Deng et al. 2022): patch embedding, transformer and CNN decoder.
    Transformer,
}

/// The StyTr² network sizes `--preset` starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// The published network: d_model 512, 8 heads, 3 + 3 + 3 layers, feed-forward 2048.
    Original,
    /// The test network of tools/ref/stytr_ref.py: d_model 32, 4 heads, feed-forward 64.
    Tiny,
}

/// The positional encoding of the StyTr² content tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PosArg {
    /// StyTr²'s content-aware positional encoding (CAPE).
    Cape,
    /// easel's pyramidal encoding (after PyramidStyler).
    Pyramidal,
}

/// The flags of `easel train-fast`.
#[derive(Args, Debug)]
#[command(
    about = "Train a fast feed-forward stylizer (AdaIN's decoder or StyTr²) on folders of \
             photos and paintings with a frozen VGG-19 encoder"
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

    /// Where the weights go: for adain the decoder file (.safetensors, decoder.pth's keys); for
    /// transformer a folder that gets transformer.safetensors, embedding.safetensors and
    /// decoder.safetensors (the keys of StyTR-2's *_iter_*.pth).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,

    /// Also write the trained network as a style plugin here (FILE.safetensors, for `easel
    /// styles install`): AdaIN's decoder with its VGG encoder, or StyTr²'s three parts with
    /// their settings; the latest sample grid is its thumbnail.
    #[arg(long, value_name = "FILE.safetensors")]
    plugin: Option<PathBuf>,

    /// Folder of the run's checkpoint and sample grids (default: OUT with the extension .run).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    run_dir: Option<PathBuf>,

    /// Continue the run checkpointed in RUN_DIR with its settings (only --steps may be given,
    /// to train longer).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["content", "styles", "lr", "lr_decay", "warmup_steps", "batch", "load_size", "crop", "seed", "save_every", "sample_every", "content_weight", "style_weight", "identity_pixels_weight", "identity_features_weight", "preset", "heads", "pos", "cape_grid"])]
    resume: Option<PathBuf>,

    /// Optimizer steps of the whole run (default 160000).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,

    /// Base learning rate (default 1e-4 for adain: the rate at step 0; 5e-4 for transformer:
    /// warm-up from lr/10 to 0.4·lr, then decay).
    #[arg(long, value_name = "RATE")]
    lr: Option<f64>,

    /// Learning-rate decay: the rate at step i is lr / (1 + decay · i) for adain (default
    /// 5e-5), 0.4·lr / (1 + decay · (i − warm-up)) after the warm-up for transformer (1e-5).
    #[arg(long, value_name = "DECAY")]
    lr_decay: Option<f64>,

    /// Transformer only: warm-up steps, the rate rising linearly from lr/10 to 0.4·lr
    /// (default 10000, StyTR-2's train.py).
    #[arg(long, value_name = "N")]
    warmup_steps: Option<usize>,

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

    /// Content loss weight (default 1 for adain, 7 for transformer).
    #[arg(long, value_name = "W")]
    content_weight: Option<f64>,

    /// Style loss weight (default 10).
    #[arg(long, value_name = "W")]
    style_weight: Option<f64>,

    /// Transformer only: weight of the pixel identity loss λ_id1 (default 70).
    #[arg(long, value_name = "W")]
    identity_pixels_weight: Option<f64>,

    /// Transformer only: weight of the feature identity loss λ_id2 (default 1).
    #[arg(long, value_name = "W")]
    identity_features_weight: Option<f64>,

    /// Transformer only: the network sizes (default original, the published StyTr²).
    #[arg(long, value_enum, value_name = "PRESET")]
    preset: Option<PresetArg>,

    /// Transformer only: attention heads (default: the preset's, 8 for original); must divide
    /// the token width.
    #[arg(long, value_name = "N")]
    heads: Option<usize>,

    /// Transformer only: the content tokens' positional encoding (default cape).
    #[arg(long, value_enum, value_name = "KIND")]
    pos: Option<PosArg>,

    /// Transformer only: side of CAPE's pooled grid (default: the preset's, 18 for original).
    #[arg(long, value_name = "N")]
    cape_grid: Option<usize>,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,

    /// Print a JSON summary on standard output: the weights written, the network, the steps,
    /// the run folder and the plugin (null without --plugin).
    #[arg(long)]
    json: bool,
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
        KindArg::Adain => {
            let transformer_only = [
                ("--warmup-steps", args.warmup_steps.is_some()),
                (
                    "--identity-pixels-weight",
                    args.identity_pixels_weight.is_some(),
                ),
                (
                    "--identity-features-weight",
                    args.identity_features_weight.is_some(),
                ),
                ("--preset", args.preset.is_some()),
                ("--heads", args.heads.is_some()),
                ("--pos", args.pos.is_some()),
                ("--cape-grid", args.cape_grid.is_some()),
            ];
            if let Some((flag, _)) = transformer_only.iter().find(|(_, given)| *given) {
                bail!("{flag} applies to --kind transformer only");
            }
            TrainFastConfig::adain(content, styles, vgg_path)
        }
        KindArg::Transformer => {
            TrainFastConfig::transformer(content, styles, vgg_path, stytr_config(args)?)
        }
    };
    let mut weights = d.weights;
    weights.content = args.content_weight.unwrap_or(weights.content);
    weights.style = args.style_weight.unwrap_or(weights.style);
    weights.identity_pixels = args
        .identity_pixels_weight
        .unwrap_or(weights.identity_pixels);
    weights.identity_features = args
        .identity_features_weight
        .unwrap_or(weights.identity_features);
    let schedule = match (d.schedule, args.warmup_steps) {
        (LrSchedule::Warmup { .. }, Some(steps)) => LrSchedule::Warmup { steps },
        (schedule, _) => schedule,
    };
    Ok(TrainFastConfig {
        widths,
        steps: args.steps.unwrap_or(d.steps),
        lr: args.lr.unwrap_or(d.lr),
        lr_decay: args.lr_decay.unwrap_or(d.lr_decay),
        schedule,
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

/// The StyTr² network of the flags: the preset with --heads, --pos and --cape-grid applied.
fn stytr_config(args: &TrainFastArgs) -> Result<stytr::Config> {
    let preset = args.preset.unwrap_or(PresetArg::Original);
    let mut net = match (preset, args.pos.unwrap_or(PosArg::Cape)) {
        (PresetArg::Original, PosArg::Cape) => stytr::Config::original(),
        (PresetArg::Original, PosArg::Pyramidal) => stytr::Config::original_pyramidal(),
        (PresetArg::Tiny, PosArg::Cape) => stytr::Config::tiny(),
        (PresetArg::Tiny, PosArg::Pyramidal) => stytr::Config::tiny_pyramidal(),
    };
    if let Some(heads) = args.heads {
        net.nhead = heads;
    }
    if let Some(grid) = args.cape_grid {
        match &mut net.pos {
            stytr::PositionalEncoding::Cape { grid: g } if grid > 0 => *g = grid,
            stytr::PositionalEncoding::Cape { .. } => bail!("--cape-grid must be at least 1"),
            stytr::PositionalEncoding::Pyramidal { .. } => {
                bail!("--cape-grid applies to --pos cape only")
            }
        }
    }
    net.validate().context("--heads")?;
    Ok(net)
}

/// Runs `easel train-fast`.
pub fn run(args: TrainFastArgs) -> Result<()> {
    if let Some(path) = args.plugin.as_ref().filter(|p| !plugins::is_plugin(p)) {
        bail!(
            "--plugin {}: a plugin is a .safetensors file",
            path.display()
        );
    }
    // A new run's output is checked before training (a resumed run's kind is its checkpoint's;
    // its output is checked when written).
    if args.resume.is_none() {
        match args.kind {
            KindArg::Adain if args.output.is_dir() => bail!(
                "-o {} is a folder; give a .safetensors file",
                args.output.display()
            ),
            KindArg::Transformer if args.output.is_file() => bail!(
                "-o {} is a file; a transformer run writes a folder of three files",
                args.output.display()
            ),
            _ => {}
        }
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
                let identity = match r.identity {
                    Some((pixels, features)) => format!(" id1 {pixels:.4} id2 {features:.4}"),
                    None => String::new(),
                };
                bar.set_message(format!(
                    "loss {:.4} (content {:.4} style {:.4}{identity}) lr {:.2e}",
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
    let files = trainer.weight_files()?;
    match config.kind {
        Kind::Adain => {
            for (_, bytes) in &files {
                easel_core::write_output(&args.output, bytes, &inputs)?;
            }
        }
        Kind::Transformer => {
            if args.output.is_file() {
                bail!(
                    "-o {} is a file; a transformer run writes a folder of three files",
                    args.output.display()
                );
            }
            std::fs::create_dir_all(&args.output).with_context(|| {
                format!("-o {}: cannot create the folder", args.output.display())
            })?;
            for (part, bytes) in &files {
                let path = args.output.join(format!("{part}.safetensors"));
                easel_core::write_output(&path, bytes, &inputs)?;
            }
        }
    }
    if let Some(path) = &args.plugin {
        let source = match config.kind {
            Kind::Adain => PluginSource::AdainFiles {
                vgg: config.vgg.clone(),
                decoder: args.output.clone(),
            },
            Kind::Transformer => PluginSource::StytrDir(args.output.clone()),
        };
        let info = PluginInfo {
            title: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
            description: Some(format!(
                "trained by easel train-fast on the photos of {} and the paintings of {}, {} steps",
                config.content_dir.display(),
                config.style_dir.display(),
                trainer.step()
            )),
            thumbnail: plugins::latest_step_picture(&run_dir.join("samples"))?,
            stytr: config.transformer.as_ref().map(stytr_settings),
            ..PluginInfo::default()
        };
        let plugin = make_plugin(&source, &info)?;
        easel_core::write_output(path, &plugin.to_bytes()?, &inputs)?;
        eprintln!("wrote the style plugin {}", path.display());
    }
    if args.json {
        let summary = serde_json::json!({
            "output": args.output,
            "kind": match config.kind { Kind::Adain => "adain", Kind::Transformer => "transformer" },
            "steps": trainer.step(),
            "run_dir": run_dir,
            "plugin": args.plugin,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    eprintln!(
        "wrote {} ({} steps; checkpoint in {})",
        args.output.display(),
        trainer.step(),
        run_dir.display()
    );
    Ok(())
}

/// The settings a StyTr² plugin records for a network of `config` (what its weights do not
/// hold; the encoding it does not use keeps the published value).
fn stytr_settings(config: &stytr::Config) -> StytrSettings {
    let published = StytrSettings::published();
    let (cape_grid, pyramid_windows) = match &config.pos {
        stytr::PositionalEncoding::Cape { grid } => (*grid, published.pyramid_windows),
        stytr::PositionalEncoding::Pyramidal { windows, .. } => {
            (published.cape_grid, windows.clone())
        }
    };
    StytrSettings {
        nhead: config.nhead,
        cape_grid,
        pyramid_windows,
    }
}
