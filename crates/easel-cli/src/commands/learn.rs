//! `easel learn COLLECTION --layout NAME -o OUT.bank`: learn a prompt bank from a folder of
//! artworks with easel-bank's trainer (inversion through the frozen SD 1.5 + ControlNet).
//!
//! The run folder (`--run-dir`, default `<OUT stem>.run/`) holds the checkpoint and the cached
//! training views; `--resume` continues from its checkpoint bit-exactly (with its settings;
//! only `--steps`, `--validate-every` and the validation flags may change). Ctrl-C checkpoints
//! and stops. Every `--validate-every` steps a validation image (`--validation-photo`, default
//! the collection's first artwork by file name, stylized through its own Canny edges with the
//! current bank in `--validation-steps` denoising steps) goes to
//! `RUN_DIR/validation/step_NNNNNN.png`. The bank is written atomically at the end, never over
//! an input.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use easel_bank::bank::Bank;
use easel_bank::checkpoint::Checkpoint;
use easel_bank::collection::{collection_hash, prepare_examples};
use easel_bank::file::{save_bank, BankMetadata};
use easel_bank::inject::init_embedding;
use easel_bank::preset::{InferenceDefaults, Preset, BUILTIN_PRESETS};
use easel_bank::train::{Hooks, TrainConfig, TrainOutcome, Trainer};
use easel_core::{DeviceChoice, Parameters};
use easel_pipeline::canny::{self, CannyOptions};
use easel_pipeline::models::StableDiffusion;
use easel_pipeline::pipeline::{ControlGuidance, NoiseStart, StylizeRequest};
use easel_styles::convert::bank_plugin;
use easel_styles::PluginInfo;
use image::RgbImage;

use crate::args::{parse_dtype, source_hints, word};
use crate::{plugins, progress};
use easel_bank::conditioning::{base_model_info, BankConditioning};
use easel_core::time::now_rfc3339;
use easel_diffusion::attention::AttentionSlicing;
use easel_host::diffusion::{resize_to, target_size};
use easel_host::sources::ModelSources;

/// The flags of `easel learn`.
#[derive(Args, Debug)]
#[command(
    about = "Learn a style from a folder of artworks: fit a prompt bank by inversion through the \
             frozen Stable Diffusion (and ControlNet, with --control on), written as a .bank file"
)]
pub struct LearnArgs {
    /// Folder of the artist's artworks (its images, not recursively).
    #[arg(value_name = "COLLECTION")]
    collection: PathBuf,

    /// The bank's layout: a builtin preset (lsast, lsast-official, prospect, p-plus, ti,
    /// artbank) or a preset TOML file.
    #[arg(long, value_name = "NAME|FILE.toml", default_value = "lsast")]
    layout: String,

    /// The word whose token embeddings the bank starts from.
    #[arg(long, value_name = "WORD", default_value = "painting")]
    init_word: String,

    /// The bank file to write (OUT.bank), or a style plugin (OUT.safetensors: a bank file
    /// too, with the latest validation image as its thumbnail, for `easel styles install`).
    #[arg(short, long, value_name = "OUT.bank|OUT.safetensors")]
    output: PathBuf,

    /// Folder of the run's checkpoint and cached training views (default: OUT with the
    /// extension .run, e.g. vangogh.run/).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,

    /// Continue the run checkpointed in the run folder, with its settings (only --steps may
    /// be given, to train longer).
    #[arg(long, conflicts_with_all = ["layout", "init_word", "lr", "batch", "grad_accumulation", "resolution", "seed", "checkpoint_every", "control", "caption"])]
    resume: bool,

    /// Optimizer steps of the whole run (default: the preset's [training] steps, else 1000).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,

    /// Peak learning rate (default: the preset's, else 5e-3).
    #[arg(long, value_name = "RATE")]
    lr: Option<f64>,

    /// Samples per forward pass (default: the preset's, else 1).
    #[arg(long, value_name = "N")]
    batch: Option<usize>,

    /// Forward passes whose gradients make one step (default: the preset's, else 4).
    #[arg(long, value_name = "N")]
    grad_accumulation: Option<usize>,

    /// Side of the square training views in pixels (default: the preset's, else 512).
    #[arg(long, value_name = "PIXELS")]
    resolution: Option<usize>,

    /// Train through the ControlNet on each artwork's Canny edges (on) or without it (off, as
    /// the official LSAST and ArtBank code does; the ControlNet is then the content branch at
    /// inference only) (default: the preset's, else on).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    control: Option<bool>,

    /// The caption the artworks are learned under, with {} where the bank's tokens go (e.g.
    /// "{}" alone, as the official LSAST code trains) (default: the preset's training caption,
    /// else the bank's prompt template). The bank paints with its prompt template either way.
    #[arg(long, value_name = "TEMPLATE")]
    caption: Option<String>,

    /// Seed of the training draws and of the bank's random initial parts (default 0).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Write a checkpoint every N steps (default 250; one is always written at the end).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,

    /// Write a validation image every N steps into RUN_DIR/validation/step_NNNNNN.png (default
    /// 250; 0: none).
    #[arg(long, value_name = "N")]
    validate_every: Option<usize>,

    /// The photo of the validation images (default: the collection's first artwork by file
    /// name, stylized through its own Canny edges).
    #[arg(long, value_name = "FILE")]
    validation_photo: Option<PathBuf>,

    /// Denoising steps of each validation image, painted as the bank paints by default (the
    /// preset's inference settings; else DDIM, strength 0.7, guidance 7.5).
    #[arg(long, value_name = "N", default_value_t = 10)]
    validation_steps: usize,

    /// Stable Diffusion 1.x weights: a hub repo id org/name[@revision], a local diffusers
    /// folder, or a single .safetensors checkpoint (default: the preset's base model, e.g.
    /// CompVis/stable-diffusion-v1-4 for artbank, else stable-diffusion-v1-5; with --resume,
    /// the run's).
    #[arg(long, value_name = "SOURCE")]
    sd: Option<String>,

    /// ControlNet weights: a hub repo id, a local diffusers folder or a single .safetensors
    /// file (default: the registry's canny entry).
    #[arg(long, value_name = "SOURCE")]
    controlnet: Option<String>,

    /// The models' dtype: f32, f16 or bf16 (default f16 on CUDA, f32 on the CPU).
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    dtype: Option<DType>,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,

    /// Never download: use only the Hugging Face cache (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,

    /// Print a JSON summary on standard output: the file written, whether it is a bank or a
    /// plugin, the steps, the number of artworks and the run folder.
    #[arg(long)]
    json: bool,
}

/// The preset of `--layout`: a builtin name or a TOML file.
fn load_preset(layout: &str) -> Result<Preset> {
    if BUILTIN_PRESETS.iter().any(|(name, _)| *name == layout) {
        return Preset::builtin(layout).map_err(|e| anyhow::anyhow!("--layout {layout}: {e}"));
    }
    let path = Path::new(layout);
    if !path.is_file() {
        let names: Vec<&str> = BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "--layout {layout}: neither a builtin layout ({}) nor a preset file",
            names.join(", ")
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--layout: cannot read {}", path.display()))?;
    Preset::parse(&text, layout).map_err(|e| anyhow::anyhow!("--layout {layout}: {e}"))
}

/// The training settings of a fresh run: the flags, else the preset's training defaults, else
/// easel's; the preset's inference defaults go into the bank.
fn config(args: &LearnArgs, preset: &Preset) -> TrainConfig {
    let d = TrainConfig::default();
    let p = &preset.training;
    TrainConfig {
        steps: args.steps.or(p.steps).unwrap_or(d.steps),
        lr: args.lr.or(p.lr).unwrap_or(d.lr),
        batch: args.batch.or(p.batch).unwrap_or(d.batch),
        grad_accumulation: args
            .grad_accumulation
            .or(p.grad_accumulation)
            .unwrap_or(d.grad_accumulation),
        resolution: args.resolution.or(p.resolution).unwrap_or(d.resolution),
        seed: args.seed.unwrap_or(d.seed),
        checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
        validate_every: args.validate_every.unwrap_or(d.validate_every),
        control: args.control.or(p.control).unwrap_or(d.control),
        inference: preset.inference.clone(),
        caption: args.caption.clone().or_else(|| p.caption.clone()),
        base_model: args.sd.clone().or_else(|| p.base_model.clone()),
        ..d
    }
}

fn parse_on_off(text: &str) -> std::result::Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{text:?} is neither on nor off")),
    }
}

/// How validation images are made.
struct ValidationSettings {
    /// Denoising steps.
    steps: usize,
    /// Noise seed (the run's).
    seed: u64,
    /// Edges of the photo, as the training views'.
    canny: CannyOptions,
    /// How the bank paints by default (its preset's).
    inference: InferenceDefaults,
}

/// Writes the validation image of step `step`: `photo` stylized with `bank` as the bank paints
/// by default (its inference defaults, `settings.steps` steps) through its own Canny edges
/// (when the models have a ControlNet and the bank paints through one), seeded by the run's
/// seed.
fn write_validation(
    sd: &StableDiffusion,
    bank: &Bank,
    photo: &RgbImage,
    settings: &ValidationSettings,
    step: usize,
    out: &Path,
    protected: &[PathBuf],
) -> Result<()> {
    let ValidationSettings {
        steps,
        seed,
        ref canny,
        ref inference,
    } = *settings;
    let mut request = StylizeRequest::new(easel_core::rgb_to_tensor(photo, &Device::Cpu)?);
    let through_control = inference.apply(&mut request)?;
    let without_control;
    let sd = if through_control || sd.controlnet.is_none() {
        sd
    } else {
        without_control = StableDiffusion {
            controlnet: None,
            ..sd.clone()
        };
        &without_control
    };
    if sd.controlnet.is_some() {
        let edges = canny::canny(photo, canny)?;
        request.control_image = Some(easel_core::rgb_to_tensor(
            &canny::control_image(&edges),
            &Device::Cpu,
        )?);
    }
    request.steps = steps;
    request.seed = seed;
    let mut conditioning = BankConditioning::from_bank(bank.clone(), sd)?;
    let images = sd.stylize(&request, &mut conditioning, &mut |_, _| {})?;
    let image = easel_core::tensor_to_rgb(&images.narrow(0, 0, 1)?)?;
    let mut params = Parameters::new(if sd.controlnet.is_some() {
        "sd-controlnet"
    } else {
        "sd-img2img"
    });
    params.prompt = Some(bank.prompt().template.clone());
    params.seed = Some(seed);
    params.strength = Some(request.strength);
    params.extra.push(("Steps".into(), steps.to_string()));
    params
        .extra
        .push(("Guidance".into(), request.guidance_scale.to_string()));
    params
        .extra
        .push(("Scheduler".into(), request.scheduler.to_string()));
    if request.noise_start != NoiseStart::Img2Img {
        params
            .extra
            .push(("Noise start".into(), request.noise_start.name().into()));
    }
    if sd.controlnet.is_some() {
        if request.control.guidance != ControlGuidance::Batch {
            params.extra.push((
                "Control guidance".into(),
                request.control.guidance.name().into(),
            ));
        }
        params.extra.push((
            "Control".into(),
            format!("canny {}:{}", canny.low, canny.high),
        ));
    }
    params
        .extra
        .push(("Training step".into(), step.to_string()));
    easel_core::save_image(&image, out, Some(&params), protected)?;
    Ok(())
}

/// Runs `easel learn`.
pub fn run(args: LearnArgs) -> Result<()> {
    let paths = easel_core::collect_images(std::slice::from_ref(&args.collection))?;
    let mut images = Vec::with_capacity(paths.len());
    for p in &paths {
        let img = image::open(p).with_context(|| format!("cannot read {}", p.display()))?;
        images.push(img.to_rgb8());
    }
    let inputs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    if args.output.exists() && args.output.is_dir() {
        bail!(
            "-o {} is a folder; give a .bank or .safetensors file",
            args.output.display()
        );
    }
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| args.output.with_extension("run"));
    let preset = if args.resume {
        None
    } else {
        Some(load_preset(&args.layout)?)
    };

    let device = easel_core::select_device(args.device)?;
    // No model named: the preset's (a fresh run) or the run's own (--resume).
    let sd_source = match (&args.sd, &preset) {
        (Some(sd), _) => Some(sd.clone()),
        (None, Some(preset)) => preset.training.base_model.clone(),
        (None, None) => Checkpoint::load(&run_dir, &Device::Cpu)
            .ok()
            .and_then(|ckpt| ckpt.config.base_model),
    };
    let mut sources =
        ModelSources::with_default_controlnet(sd_source, args.controlnet.clone(), args.offline)
            .map_err(word)?;
    sources.hints = source_hints();
    let models = sources
        .load(
            &device,
            args.dtype,
            AttentionSlicing::Full,
            Some(progress::download_hook()),
        )
        .map_err(word)?;
    let sd = &models.sd;
    let unet = models.resolved.unet_file();
    let info = base_model_info(sd, &models.resolved.base_model_id, unet.as_deref())
        .map_err(|e| word(e.into()))?;

    let cache = run_dir.join("views");
    // Said once the run's inputs are all checked, just before training starts.
    let mut preset_notice = None;
    let mut trainer = if args.resume {
        let mut ckpt = Checkpoint::load(&run_dir, &sd.device).with_context(|| {
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
        if let Some(every) = args.validate_every {
            ckpt.config.validate_every = every;
        }
        if args.steps.is_some() || args.validate_every.is_some() {
            ckpt.save(&run_dir)?;
        }
        let examples = prepare_examples(
            &images,
            &sd.vae,
            &ckpt.config,
            Some(&cache),
            &info.hash,
            &sd.device,
            sd.dtype,
        )?;
        Trainer::resume(sd, examples, &run_dir)?
    } else {
        let preset = preset.context("internal error: no preset")?;
        let config = config(&args, &preset);
        config.validate()?;
        if preset.training != Default::default() {
            let mut details = match &config.caption {
                Some(c) => format!(", caption {c:?}"),
                None => String::new(),
            };
            if let (None, Some(base)) = (&args.sd, &preset.training.base_model) {
                details.push_str(&format!(", on {base} (--sd overrides)"));
            }
            preset_notice = Some(format!(
                "{} preset: {} steps at lr {:e}, {} the ControlNet{details} (--steps, --lr, \
                 --control and --caption override)",
                preset.name,
                config.steps,
                config.lr,
                if config.control { "through" } else { "without" }
            ));
        }
        let init = init_embedding(&sd.text_encoder, &sd.tokenizer, &args.init_word)?;
        let bank = Bank::from_preset(
            &preset,
            &sd.unet.cross_attention_layout(),
            &args.init_word,
            &init,
            config.seed,
            &sd.device,
        )
        .map_err(|e| anyhow::anyhow!("--layout {}: {e}", args.layout))?;
        let examples = prepare_examples(
            &images,
            &sd.vae,
            &config,
            Some(&cache),
            &info.hash,
            &sd.device,
            sd.dtype,
        )?;
        Trainer::new(sd, bank, examples, config, &run_dir)?
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        if let Err(e) = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)) {
            eprintln!("warning: Ctrl-C will not checkpoint: {e}");
        }
    }
    let validation_photo = match &args.validation_photo {
        Some(path) => image::open(path)
            .with_context(|| format!("--validation-photo: cannot read {}", path.display()))?
            .to_rgb8(),
        // collect_images sorts by path and refuses an empty collection.
        None => images[0].clone(),
    };
    let resolution = u32::try_from(trainer.config().resolution)
        .with_context(|| format!("resolution {} is too large", trainer.config().resolution))?;
    let (width, height) = target_size(
        validation_photo.width(),
        validation_photo.height(),
        resolution,
    )
    .map_err(word)
    .context("--validation-photo")?;
    let validation_photo = resize_to(validation_photo, width, height);
    let validation_dir = run_dir.join("validation");
    let mut protected = paths.clone();
    protected.extend(args.validation_photo.iter().cloned());
    if args.validation_steps == 0 {
        bail!("--validation-steps must be at least 1");
    }
    let cfg = trainer.config();
    let validation = ValidationSettings {
        steps: args.validation_steps,
        seed: cfg.seed,
        canny: CannyOptions::with_thresholds(cfg.canny_low, cfg.canny_high),
        inference: cfg.inference.clone(),
    };

    if let Some(notice) = &preset_notice {
        eprintln!("{notice}");
    }
    let total = trainer.config().steps;
    let bar = progress::bar(total as u64, "learning");
    bar.set_position(trainer.step() as u64);
    let outcome = {
        let mut hooks = Hooks {
            on_step: Some(Box::new(|r| {
                bar.set_position(r.step as u64);
                bar.set_message(format!("loss {:.4} lr {:.2e}", r.loss, r.lr));
            })),
            on_validate: Some(Box::new(|step, bank| {
                std::fs::create_dir_all(&validation_dir)?;
                let out = validation_dir.join(format!("step_{step:06}.png"));
                write_validation(
                    sd,
                    bank,
                    &validation_photo,
                    &validation,
                    step,
                    &out,
                    &protected,
                )
                .map_err(|e| candle_core::Error::Msg(format!("validation image: {e:#}")))
            })),
            stop: Some(&stop),
        };
        trainer.train(&mut hooks)?
    };
    bar.finish_and_clear();
    if outcome == TrainOutcome::Stopped {
        bail!(
            "interrupted after {} of {} steps; checkpoint saved in {}; run the same command with --resume to continue",
            trainer.step(),
            total,
            run_dir.display()
        );
    }
    let metadata = BankMetadata {
        base_model: info.id.clone(),
        base_model_hash: info.hash.clone(),
        training: trainer.training_metadata()?,
        collection_hash: collection_hash(&images),
        created: now_rfc3339(),
    };
    let mut bytes = save_bank(trainer.bank(), &metadata)?;
    if plugins::is_plugin(&args.output) {
        // The latest validation image, else (none were made) the collection's first artwork.
        let thumbnail =
            plugins::latest_step_picture(&validation_dir)?.unwrap_or_else(|| images[0].clone());
        let info = PluginInfo {
            description: Some(format!(
                "learned by easel learn from {} artworks ({}), {} steps, layout {}",
                images.len(),
                args.collection.display(),
                trainer.step(),
                args.layout
            )),
            thumbnail: Some(thumbnail),
            ..PluginInfo::default()
        };
        let name = easel_styles::plugin::file_name(&args.output);
        let title = args
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        bytes = bank_plugin(&bytes, &name, title, &info)?.to_bytes()?;
    }
    easel_core::write_output(&args.output, &bytes, &inputs)?;
    if args.json {
        let summary = serde_json::json!({
            "output": args.output,
            "format": if plugins::is_plugin(&args.output) { "plugin" } else { "bank" },
            "steps": trainer.step(),
            "artworks": images.len(),
            "run_dir": run_dir,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    eprintln!(
        "wrote {} ({} steps on {} artworks; checkpoint in {})",
        args.output.display(),
        trainer.step(),
        images.len(),
        run_dir.display()
    );
    Ok(())
}
