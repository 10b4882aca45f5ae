//! `easel stylize --prompt`: paint photos with Stable Diffusion 1.5, their structure held by a
//! ControlNet (Canny edges by default), through `easel-pipeline`.
//!
//! Flow: check the flags → resolve every weight file at once (Hugging Face cache, hub, or local
//! folders / single files) → load the models → encode the prompts once → for each photo:
//! resize (short side `--size`, multiples of 8), make the control image (Canny or
//! `--control-image`), denoise with a progress bar, save `--batch` images with their
//! parameters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use easel_core::{DownloadEvent, HubResolver, Parameters, RepoFiles, WeightSource};
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::controlnet::ControlNetConfig;
use easel_diffusion::schedulers::SchedulerKind;
use easel_diffusion::weights::{component_files, Component};
use easel_pipeline::canny::{self, CannyOptions};
use easel_pipeline::conditioning::{Conditioning, PromptConditioning};
use easel_pipeline::models::{
    self, load_controlnet_dir, load_controlnet_single_file, load_tokenizer_dir, ControlNet,
    ModelConfigs, StableDiffusion,
};
use easel_pipeline::noise::{NoiseSource, ReplayNoise, SeededNoise};
use easel_pipeline::pipeline::{ControlSettings, StylizeRequest, MIN_SIDE};
use image::imageops::FilterType;
use image::RgbImage;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::controlnet_registry::{self, ControlNetEntry};
use super::stylize::{output_paths, StylizeArgs};
use super::stylize_bank;
use crate::progress;

/// The Stable Diffusion weights used when `--sd` is not given.
pub const DEFAULT_SD: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// Where the tokenizer of a single-file checkpoint comes from (such files carry none).
pub const DEFAULT_TOKENIZER_REPO: &str = "openai/clip-vit-large-patch14";
/// The largest `--size` accepted.
pub const MAX_SIZE: u32 = 4096;

/// The flags of the diffusion method (`--prompt`).
#[derive(Args, Debug, Clone, Default)]
pub struct DiffusionArgs {
    /// Paint with Stable Diffusion 1.5 + ControlNet, guided by this text prompt (selects the
    /// diffusion method instead of --style/--preset; needs the SD 1.5 weights, see the README).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["styles", "preset", "keep_colors", "max_size"])]
    pub prompt: Option<String>,

    /// Paint in the style of a learned prompt bank (an easel .bank file; selects the diffusion
    /// method). Alone, the bank's own prompt template is used; with --prompt, write {bank}
    /// where the style goes ("a city at dusk in the style of {bank}"). The bank must have the
    /// text encoder's embedding width, and unless --force-bank, the base-model hash it was
    /// learned on (computed from the text encoder's token table and the UNet's
    /// conv_in/conv_out/cross-attention weights of a diffusers folder; a single-file --sd
    /// checkpoint cannot be hashed and needs --force-bank).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["styles", "preset", "keep_colors", "max_size"])]
    pub bank: Option<PathBuf>,

    /// Use a --bank learned on a different base model (same embedding width), printing a
    /// warning instead of failing; the style may not transfer.
    #[arg(long, requires = "bank")]
    pub force_bank: bool,

    /// What the painting should not look like (classifier-free guidance steers away from it;
    /// default: empty).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,

    /// Resize each photo so its short side is this many pixels, keeping the aspect ratio; both
    /// sides are rounded to multiples of 8 (default 512; SD 1.5 was trained at 512, larger
    /// sizes up to 1024 and beyond work with more time and memory; at least 64).
    #[arg(long, value_name = "PIXELS")]
    pub size: Option<u32>,

    /// Denoising steps of the full schedule; the run does floor(steps × strength) of them
    /// (default 50).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,

    /// Classifier-free guidance scale: how strongly the prompt is followed (default 7.5; 1 or
    /// less disables guidance).
    #[arg(long, value_name = "SCALE")]
    pub guidance: Option<f64>,

    /// The sampler: ddim, dpm++2m or euler-a (default ddim).
    #[arg(long, value_name = "NAME", value_parser = parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,

    /// DDIM's eta: 0 is deterministic, larger values add fresh noise each step (default 0;
    /// ignored by other samplers).
    #[arg(long, value_name = "ETA")]
    pub eta: Option<f64>,

    /// Seed of the random noise; the same seed, settings and models give the same image on the
    /// CPU (default: a random seed, printed and stored in the PNG parameters).
    #[arg(long, value_name = "N", conflicts_with = "noise_file")]
    pub seed: Option<u64>,

    /// Paint this many images from each photo, each with its own noise (outputs are named
    /// <stem>-0, <stem>-1, ...; default 1).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,

    /// ControlNet conditioning scale: how strongly the control image holds the structure
    /// (default: the registry entry's, 1.0 for canny).
    #[arg(long, value_name = "SCALE")]
    pub control_scale: Option<f64>,

    /// Fraction of the denoising steps after which the ControlNet starts acting (default 0).
    #[arg(long, value_name = "0..1")]
    pub control_start: Option<f64>,

    /// Fraction of the denoising steps after which the ControlNet stops acting (default 1).
    #[arg(long, value_name = "0..1")]
    pub control_end: Option<f64>,

    /// Guess mode: the ControlNet sees only the prompt's half of the guidance batch, and its
    /// deeper layers weigh more (recognises content even with an empty prompt).
    #[arg(long)]
    pub guess_mode: bool,

    /// Canny edge thresholds LOW:HIGH for the control image (default: the registry entry's,
    /// 100:200).
    #[arg(long, value_name = "LOW:HIGH", conflicts_with = "control_image")]
    pub canny: Option<String>,

    /// Use this image as the control image instead of the photo's Canny edges (resized to the
    /// photo's size).
    #[arg(long, value_name = "FILE")]
    pub control_image: Option<PathBuf>,

    /// Also write the control image (the Canny edge map, or the resized --control-image) to
    /// this file (.png or .jpg; with several photos, <stem>-<photo stem>.<ext>).
    #[arg(long, value_name = "FILE")]
    pub save_control: Option<PathBuf>,

    /// Plain img2img: no ControlNet, only the prompt and the photo.
    #[arg(long, conflicts_with_all = [
        "controlnet", "control_scale", "control_start", "control_end", "guess_mode", "canny",
        "control_image", "save_control",
    ])]
    pub no_control: bool,

    /// Stable Diffusion 1.x weights: a hub repo id org/name[@revision] (downloaded into the
    /// Hugging Face cache when missing), a local diffusers folder, or a single .safetensors
    /// checkpoint (default: stable-diffusion-v1-5/stable-diffusion-v1-5).
    #[arg(long, value_name = "SOURCE")]
    pub sd: Option<String>,

    /// For a single-file --sd checkpoint of another shape than SD 1.5: a local diffusers
    /// folder whose unet/, vae/ and text_encoder/ config.json (and scheduler/, tokenizer/ when
    /// present) describe it (default: SD 1.5's configurations and the tokenizer of
    /// openai/clip-vit-large-patch14).
    #[arg(long, value_name = "DIR")]
    pub sd_config: Option<PathBuf>,

    /// ControlNet weights: a hub repo id org/name[@revision], a local diffusers folder
    /// (config.json + diffusion_pytorch_model.safetensors) or a single .safetensors file
    /// (default: the registry's canny entry, lllyasviel/control_v11p_sd15_canny).
    #[arg(long, value_name = "SOURCE")]
    pub controlnet: Option<String>,

    /// The models' dtype: f32, f16 or bf16 (default f16 on CUDA, f32 on the CPU; the CPU
    /// supports only f32).
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    pub dtype: Option<DType>,

    /// Never download: use only the Hugging Face cache (same as HF_HUB_OFFLINE=1); missing
    /// files are listed with the commands that fetch them.
    #[arg(long)]
    pub offline: bool,

    /// Decode the latents tile by tile: bounded memory for large sizes, slight differences at
    /// tile seams.
    #[arg(long)]
    pub vae_tiling: bool,

    /// Advanced: replay the random draws from a safetensors file instead of drawing them from
    /// --seed, to reproduce another implementation's run (e.g. diffusers'). It holds f32
    /// tensors noise.0, noise.1, ... in draw order: the VAE posterior sample [1, 4, h, w], the
    /// img2img noise [batch, 4, h, w], then one [batch, 4, h, w] per denoising step for
    /// samplers that draw (euler-a, ddim with --eta > 0); h, w = the size / 8.
    #[arg(long, value_name = "FILE")]
    pub noise_file: Option<PathBuf>,

    /// PNG bit depth of the painted images: 8 or 16 (default 8; 16 keeps the model's
    /// precision and needs a .png output).
    #[arg(long, value_name = "BITS", value_parser = parse_depth)]
    pub depth: Option<u8>,
}

impl DiffusionArgs {
    /// The diffusion-only flags that were given (for refusing them without --prompt).
    pub fn given_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--force-bank", self.force_bank),
            ("--negative-prompt", self.negative_prompt.is_some()),
            ("--size", self.size.is_some()),
            ("--steps", self.steps.is_some()),
            ("--guidance", self.guidance.is_some()),
            ("--scheduler", self.scheduler.is_some()),
            ("--eta", self.eta.is_some()),
            ("--seed", self.seed.is_some()),
            ("--batch", self.batch.is_some()),
            ("--control-scale", self.control_scale.is_some()),
            ("--control-start", self.control_start.is_some()),
            ("--control-end", self.control_end.is_some()),
            ("--guess-mode", self.guess_mode),
            ("--canny", self.canny.is_some()),
            ("--control-image", self.control_image.is_some()),
            ("--save-control", self.save_control.is_some()),
            ("--no-control", self.no_control),
            ("--sd", self.sd.is_some()),
            ("--sd-config", self.sd_config.is_some()),
            ("--controlnet", self.controlnet.is_some()),
            ("--dtype", self.dtype.is_some()),
            ("--offline", self.offline),
            ("--vae-tiling", self.vae_tiling),
            ("--noise-file", self.noise_file.is_some()),
            ("--depth", self.depth.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(flag, _)| flag)
            .collect()
    }
}

fn parse_scheduler(s: &str) -> std::result::Result<SchedulerKind, String> {
    s.parse::<SchedulerKind>().map_err(|e| e.to_string())
}

pub(crate) fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(format!(
            "unknown dtype {s:?}, expected one of: f32, f16, bf16"
        )),
    }
}

fn parse_depth(s: &str) -> std::result::Result<u8, String> {
    match s.trim() {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("PNG depth must be 8 or 16, got {s:?}")),
    }
}

/// The run's settings with every default filled in.
struct Settings {
    prompt: String,
    negative_prompt: String,
    size: u32,
    strength: f64,
    steps: usize,
    guidance: f64,
    scheduler: SchedulerKind,
    eta: f64,
    seed: Option<u64>,
    batch: usize,
    control: Option<ControlChoice>,
    dtype: DType,
    depth: u8,
    /// The --bank file's name and sha256.
    bank: Option<(String, String)>,
}

/// Where the control image comes from.
enum ControlSource {
    Canny(f32, f32),
    Image(PathBuf),
}

struct ControlChoice {
    source: ControlSource,
    settings: ControlSettings,
    entry: ControlNetEntry,
}

/// Fills in the defaults and checks every value before anything is loaded.
fn settings(
    d: &DiffusionArgs,
    strength: Option<f64>,
    device: &Device,
    prompt: String,
) -> Result<Settings> {
    let size = d.size.unwrap_or(512);
    if size < MIN_SIDE as u32 {
        bail!("--size {size} is too small: Stable Diffusion needs at least {MIN_SIDE} pixels on a side; use --size {MIN_SIDE} or more");
    }
    if size > MAX_SIZE {
        bail!("--size {size} is too large; use at most {MAX_SIZE}");
    }
    let strength = strength.unwrap_or(0.7);
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("--strength {strength} is outside (0, 1] (the diffusion method needs some noise)");
    }
    let steps = d.steps.unwrap_or(50);
    if steps == 0 || steps > 1000 {
        bail!("--steps {steps} must be between 1 and 1000");
    }
    if ((steps as f64) * strength).floor() < 1.0 {
        bail!("--steps {steps} at --strength {strength} runs no denoising step; raise either");
    }
    let guidance = d.guidance.unwrap_or(7.5);
    if !guidance.is_finite() {
        bail!("--guidance must be a finite number, got {guidance}");
    }
    let eta = d.eta.unwrap_or(0.0);
    if !(eta.is_finite() && eta >= 0.0) {
        bail!("--eta must be a non-negative number, got {eta}");
    }
    let batch = d.batch.unwrap_or(1);
    if batch == 0 || batch > 64 {
        bail!("--batch {batch} must be between 1 and 64");
    }
    let dtype = d.dtype.unwrap_or(if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    });
    models::check_dtype(device, dtype)?;
    let control = if d.no_control {
        None
    } else {
        let entry = controlnet_registry::entry(controlnet_registry::DEFAULT_ENTRY)?;
        let source = match (&d.control_image, &d.canny) {
            (Some(path), _) => ControlSource::Image(path.clone()),
            (None, Some(text)) => {
                let (low, high) = canny::parse_thresholds(text)
                    .map_err(|e| anyhow::anyhow!("--canny {text}: {e}"))?;
                ControlSource::Canny(low, high)
            }
            (None, None) => ControlSource::Canny(entry.low_threshold, entry.high_threshold),
        };
        let settings = ControlSettings {
            scale: d.control_scale.unwrap_or(entry.scale),
            start: d.control_start.unwrap_or(0.0),
            end: d.control_end.unwrap_or(1.0),
            guess_mode: d.guess_mode,
        };
        if !settings.scale.is_finite() {
            bail!("--control-scale must be a finite number");
        }
        if !(0.0 <= settings.start && settings.start < settings.end && settings.end <= 1.0) {
            bail!(
                "--control-start {} and --control-end {} must satisfy 0 <= start < end <= 1",
                settings.start,
                settings.end
            );
        }
        Some(ControlChoice {
            source,
            settings,
            entry,
        })
    };
    Ok(Settings {
        prompt,
        negative_prompt: d.negative_prompt.clone().unwrap_or_default(),
        size,
        strength,
        steps,
        guidance,
        scheduler: d.scheduler.unwrap_or(SchedulerKind::Ddim),
        eta,
        seed: d.seed,
        batch,
        control,
        dtype,
        depth: d.depth.unwrap_or(8),
        bank: None,
    })
}

/// The photo's size with its short side `short`, aspect kept, sides rounded to multiples of 8.
pub fn target_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    let round8 = |x: f64| ((x / 8.0).round().max(1.0) as u32) * 8;
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let s = f64::from(short);
    if width <= height {
        (round8(s), round8(h * s / w))
    } else {
        (round8(w * s / h), round8(s))
    }
}

/// Resizes `img` to `width`×`height` (Lanczos3), or returns it unchanged if it has that size.
pub(crate) fn resize_to(img: RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, FilterType::Lanczos3)
    }
}

fn load_image(path: &Path) -> Result<RgbImage> {
    let opts = easel_core::LoadOptions {
        max_side: None,
        max_pixels: easel_core::DOWNSCALE_MAX_PIXELS,
    };
    Ok(easel_core::load_rgb(path, &opts)?)
}

/// Where the Stable Diffusion weights are, once resolved.
enum SdLocation {
    /// A diffusers folder (local, or a hub snapshot), the weights variant to read, and the
    /// tokenizer folder when the folder has no `tokenizer/`.
    Dir {
        dir: PathBuf,
        variant: Option<String>,
        tokenizer: Option<PathBuf>,
    },
    /// A single-file checkpoint, the folder of its tokenizer and the diffusers folder of its
    /// configurations (`None`: SD 1.5's).
    SingleFile {
        file: PathBuf,
        tokenizer: PathBuf,
        configs: Option<PathBuf>,
    },
}

enum ControlNetLocation {
    Dir {
        dir: PathBuf,
        variant: Option<String>,
    },
    SingleFile(PathBuf),
}

/// Resolved weights and the ids that go into the PNG parameters.
struct ResolvedModels {
    sd: SdLocation,
    controlnet: Option<ControlNetLocation>,
    ids: Vec<String>,
}

/// The commit a snapshot folder is named after (`.../snapshots/<hash>`), for the parameters.
fn snapshot_id(repo_id: &str, revision: &str, dir: &Path) -> String {
    match dir.file_name().map(|n| n.to_string_lossy().into_owned()) {
        Some(hash) if hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("{repo_id}@{hash}")
        }
        _ => format!("{repo_id}@{revision}"),
    }
}

/// The weights variant of a local folder: the `.fp16.` file when preferred and present, else
/// the plain file when present, else the `.fp16.` one if that is all there is.
fn dir_variant(component_dir: &Path, component: Component, prefer_fp16: bool) -> Option<String> {
    let has = |variant: Option<&str>| {
        component_files(component, variant)
            .map(|names| names.iter().any(|n| component_dir.join(n).is_file()))
            .unwrap_or(false)
    };
    let (fp16, plain) = (has(Some("fp16")), has(None));
    (fp16 && (prefer_fp16 || !plain)).then(|| "fp16".to_string())
}

/// The variant a resolved weight path belongs to (`...fp16.safetensors` → fp16).
fn path_variant(path: &Path) -> Option<String> {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".fp16.safetensors"))
        .then(|| "fp16".to_string())
}

/// Weight file alternatives of a diffusers component inside a pipeline repository.
fn weight_alternatives(component: Component, prefer_fp16: bool) -> Result<Vec<String>> {
    let plain = component_files(component, None)?;
    let fp16 = component_files(component, Some("fp16"))?;
    let (first, second) = if prefer_fp16 {
        (&fp16[0], &plain[0])
    } else {
        (&plain[0], &fp16[0])
    };
    Ok(vec![
        format!("{}/{first}", component.folder()),
        format!("{}/{second}", component.folder()),
    ])
}

/// A download bar per file, on stderr.
fn download_hook() -> easel_core::ProgressHook {
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    Arc::new(move |event: DownloadEvent<'_>| {
        // A poisoned lock only means another bar update panicked; the bars are cosmetic.
        let Ok(mut bars) = bars.lock() else { return };
        match event {
            DownloadEvent::Started {
                repo_id,
                file,
                total_bytes,
            } => {
                let bar = multi.add(ProgressBar::new(total_bytes));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{repo_id}/{file}"));
                bars.insert(format!("{repo_id}/{file}"), bar);
            }
            DownloadEvent::Progress {
                repo_id,
                file,
                downloaded_bytes,
                ..
            } => {
                if let Some(bar) = bars.get(&format!("{repo_id}/{file}")) {
                    bar.set_position(downloaded_bytes);
                }
            }
            DownloadEvent::Finished { repo_id, file } => {
                if let Some(bar) = bars.remove(&format!("{repo_id}/{file}")) {
                    bar.finish_and_clear();
                }
            }
        }
    })
}

/// Resolves every weight file of the run: hub sources in one `resolve_many` call (one error
/// listing everything missing), local folders and files as they are.
fn resolve_models(
    d: &DiffusionArgs,
    control: Option<&ControlChoice>,
    prefer_fp16: bool,
) -> Result<ResolvedModels> {
    let sd_source = WeightSource::parse(d.sd.as_deref().unwrap_or(DEFAULT_SD)).context("--sd")?;
    let cn_source = match control {
        None => None,
        Some(choice) => Some(match &d.controlnet {
            Some(s) => WeightSource::parse(s).context("--controlnet")?,
            None => WeightSource::Hub {
                repo_id: choice.entry.repo.clone(),
                revision: choice.entry.revision.clone(),
            },
        }),
    };
    let mut resolver: Option<HubResolver> = None;
    let mut get_resolver = || -> Result<HubResolver> {
        if let Some(r) = &resolver {
            return Ok(r.clone());
        }
        let mut r = HubResolver::from_env()?.with_progress(download_hook());
        if d.offline {
            r = r.with_offline(true);
        }
        resolver = Some(r.clone());
        Ok(r)
    };

    if let (Some(dir), false) = (
        &d.sd_config,
        matches!(sd_source, WeightSource::SingleFile(_)),
    ) {
        bail!(
            "--sd-config {} describes a single-file --sd checkpoint; a folder or hub --sd has its own configurations",
            dir.display()
        );
    }
    // A single file's tokenizer comes from --sd-config's tokenizer/, else the hub; a local
    // folder without tokenizer/ gets the hub's too.
    let config_tokenizer = d
        .sd_config
        .as_ref()
        .map(|dir| dir.join("tokenizer"))
        .filter(|t| t.is_dir());
    let needs_hub_tokenizer = match &sd_source {
        WeightSource::SingleFile(_) => config_tokenizer.is_none(),
        WeightSource::LocalDir(dir) => !dir.join("tokenizer").is_dir(),
        WeightSource::Hub { .. } => false,
    };
    // Hub requests, in order: SD (or the single file's tokenizer), then the ControlNet.
    let mut requests: Vec<RepoFiles> = Vec::new();
    let mut sd_request = None;
    let mut tokenizer_request = None;
    match &sd_source {
        WeightSource::Hub { repo_id, revision } => {
            let resolver = get_resolver()?;
            // SD 1.5 repositories ship vocab.json + merges.txt; converted ones may have a
            // tokenizer.json instead: use it when it is already cached.
            let tokenizer: Vec<&str> = if resolver
                .cached_path(repo_id, revision, "tokenizer/tokenizer.json")?
                .is_some()
            {
                vec!["tokenizer/tokenizer.json"]
            } else {
                vec![
                    "tokenizer/vocab.json",
                    "tokenizer/merges.txt",
                    "tokenizer/special_tokens_map.json",
                    "tokenizer/tokenizer_config.json",
                ]
            };
            let mut files = vec![
                "model_index.json",
                "scheduler/scheduler_config.json",
                "unet/config.json",
                "vae/config.json",
                "text_encoder/config.json",
            ];
            files.extend(tokenizer);
            let mut request = RepoFiles::new(repo_id.clone(), revision.clone(), &files).with_hint(
                "pass --sd DIR with a local diffusers folder (or --sd FILE.safetensors)",
            );
            for component in [Component::Unet, Component::Vae, Component::TextEncoder] {
                let alternatives = weight_alternatives(component, prefer_fp16)?;
                let alternatives: Vec<&str> = alternatives.iter().map(String::as_str).collect();
                request = request.with_one_of(&alternatives);
            }
            sd_request = Some(requests.len());
            requests.push(request);
        }
        WeightSource::SingleFile(_) | WeightSource::LocalDir(_) if needs_hub_tokenizer => {
            let request = RepoFiles::new(
                DEFAULT_TOKENIZER_REPO,
                easel_core::hub::DEFAULT_REVISION,
                &[
                    "vocab.json",
                    "merges.txt",
                    "special_tokens_map.json",
                    "tokenizer_config.json",
                ],
            )
            .with_hint(
                "pass --sd DIR with a diffusers folder that has tokenizer/ (or --sd-config DIR)",
            );
            tokenizer_request = Some(requests.len());
            requests.push(request);
        }
        WeightSource::SingleFile(_) | WeightSource::LocalDir(_) => {}
    }
    let mut cn_request = None;
    if let (Some(WeightSource::Hub { repo_id, revision }), Some(choice)) = (&cn_source, control) {
        let files: Vec<&str> = choice.entry.files.iter().map(String::as_str).collect();
        let request = RepoFiles::new(repo_id.clone(), revision.clone(), &files)
            .with_one_of(&choice.entry.weights_in_order(prefer_fp16))
            .with_hint("pass --controlnet DIR with a local ControlNet folder");
        cn_request = Some(requests.len());
        requests.push(request);
    }
    let resolved = if requests.is_empty() {
        Vec::new()
    } else {
        get_resolver()?.resolve_many(&requests)?
    };
    let parent = |path: &Path| path.parent().map(Path::to_path_buf).unwrap_or_default();

    let mut ids = Vec::new();
    let sd = match (&sd_source, sd_request, tokenizer_request) {
        (WeightSource::Hub { repo_id, revision }, Some(k), _) => {
            let paths = &resolved[k];
            // model_index.json is the first file: its folder is the snapshot.
            let dir = parent(&paths[0]);
            let weights = &paths[paths.len() - 3..];
            let variants: Vec<Option<String>> = weights.iter().map(|p| path_variant(p)).collect();
            if variants.iter().any(|v| v != &variants[0]) {
                bail!(
                    "{repo_id}: the cached weights mix fp16 and full-precision files ({}); \
                     download the same kind for unet, vae and text_encoder",
                    weights
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            ids.push(snapshot_id(repo_id, revision, &dir));
            SdLocation::Dir {
                dir,
                variant: variants[0].clone(),
                tokenizer: None,
            }
        }
        (WeightSource::LocalDir(dir), _, k) => {
            ids.push(dir.display().to_string());
            let tokenizer = k.map(|k| parent(&resolved[k][0]));
            if let Some(t) = &tokenizer {
                ids.push(snapshot_id(
                    DEFAULT_TOKENIZER_REPO,
                    easel_core::hub::DEFAULT_REVISION,
                    t,
                ));
            }
            SdLocation::Dir {
                dir: dir.clone(),
                variant: dir_variant(&dir.join("unet"), Component::Unet, prefer_fp16),
                tokenizer,
            }
        }
        (WeightSource::SingleFile(file), _, k) => {
            ids.push(file.display().to_string());
            let tokenizer = match (k, &config_tokenizer) {
                (Some(k), _) => {
                    let tokenizer = parent(&resolved[k][0]);
                    ids.push(snapshot_id(
                        DEFAULT_TOKENIZER_REPO,
                        easel_core::hub::DEFAULT_REVISION,
                        &tokenizer,
                    ));
                    tokenizer
                }
                (None, Some(t)) => t.clone(),
                (None, None) => bail!("internal error: no tokenizer for the single file"),
            };
            if let Some(dir) = &d.sd_config {
                ids.push(format!("config {}", dir.display()));
            }
            SdLocation::SingleFile {
                file: file.clone(),
                tokenizer,
                configs: d.sd_config.clone(),
            }
        }
        _ => bail!("internal error: the SD weights were not resolved"),
    };
    let controlnet = match (&cn_source, cn_request) {
        (None, _) => None,
        (Some(WeightSource::Hub { repo_id, revision }), Some(k)) => {
            let paths = &resolved[k];
            let dir = parent(&paths[0]);
            ids.push(snapshot_id(repo_id, revision, &dir));
            let variant = paths.last().and_then(|p| path_variant(p));
            Some(ControlNetLocation::Dir { dir, variant })
        }
        (Some(WeightSource::LocalDir(dir)), _) => {
            ids.push(dir.display().to_string());
            Some(ControlNetLocation::Dir {
                dir: dir.clone(),
                variant: dir_variant(dir, Component::ControlNet, prefer_fp16),
            })
        }
        (Some(WeightSource::SingleFile(file)), _) => {
            ids.push(file.display().to_string());
            Some(ControlNetLocation::SingleFile(file.clone()))
        }
        _ => bail!("internal error: the ControlNet weights were not resolved"),
    };
    Ok(ResolvedModels {
        sd,
        controlnet,
        ids,
    })
}

fn load_models(
    models: &ResolvedModels,
    device: &Device,
    dtype: DType,
    slicing: AttentionSlicing,
) -> Result<StableDiffusion> {
    let base = models::LoadOptions::new(device.clone(), dtype)?.with_attention_slicing(slicing);
    let with_variant = |variant: &Option<String>| match variant {
        Some(v) => base.clone().with_variant(v.clone()),
        None => base.clone(),
    };
    let sd = match &models.sd {
        SdLocation::Dir {
            dir,
            variant,
            tokenizer,
        } => {
            let tokenizer = tokenizer.as_deref().map(load_tokenizer_dir).transpose()?;
            StableDiffusion::from_diffusers_dir_with_tokenizer(
                dir,
                tokenizer,
                &with_variant(variant),
            )
            .with_context(|| format!("loading Stable Diffusion from {}", dir.display()))?
        }
        SdLocation::SingleFile {
            file,
            tokenizer,
            configs,
        } => {
            let tokenizer = load_tokenizer_dir(tokenizer)?;
            let configs = match configs {
                Some(dir) => ModelConfigs::from_diffusers_dir(dir)
                    .with_context(|| format!("--sd-config {}", dir.display()))?,
                None => ModelConfigs::sd15(),
            };
            StableDiffusion::from_single_file(file, &configs, tokenizer, &base)
                .with_context(|| format!("loading Stable Diffusion from {}", file.display()))?
        }
    };
    let controlnet: Option<ControlNet> = match &models.controlnet {
        None => None,
        Some(ControlNetLocation::Dir { dir, variant }) => Some(
            load_controlnet_dir(dir, &with_variant(variant))
                .with_context(|| format!("loading the ControlNet from {}", dir.display()))?,
        ),
        Some(ControlNetLocation::SingleFile(file)) => Some(
            load_controlnet_single_file(file, &ControlNetConfig::sd15(), &base)
                .with_context(|| format!("loading the ControlNet from {}", file.display()))?,
        ),
    };
    Ok(match controlnet {
        Some(c) => sd.with_controlnet(c),
        None => {
            let mut sd = sd;
            // A pipeline folder with its own controlnet/ is still plain img2img here.
            sd.controlnet = None;
            sd
        }
    })
}

/// The models of a training run (`easel learn`), resolved and loaded exactly as `stylize`
/// loads them from the model flags of `d` (`--sd`, `--controlnet`, `--dtype`, `--offline`).
pub(crate) struct TrainingModels {
    /// The loaded Stable Diffusion (with its ControlNet).
    pub sd: StableDiffusion,
    /// The diffusers UNet weights file, to hash the base model (`None` for a single file).
    pub unet_file: Option<PathBuf>,
}

/// Resolves and loads the models of `d` on `device` for training.
pub(crate) fn load_training_models(d: &DiffusionArgs, device: &Device) -> Result<TrainingModels> {
    load_models_with_slicing(d, device, AttentionSlicing::Full)
}

/// [`load_training_models`] with the UNet's and ControlNet's attention evaluated by `slicing`
/// (`easel bench`).
pub(crate) fn load_models_with_slicing(
    d: &DiffusionArgs,
    device: &Device,
    slicing: AttentionSlicing,
) -> Result<TrainingModels> {
    let s = settings(d, None, device, String::new())?;
    let prefer_fp16 = !device.is_cpu() && s.dtype != DType::F32;
    let resolved = resolve_models(d, s.control.as_ref(), prefer_fp16)?;
    let sd = load_models(&resolved, device, s.dtype, slicing)?;
    let unet_file = match &resolved.sd {
        SdLocation::Dir { dir, variant, .. } => stylize_bank::unet_file(dir, variant.as_deref()),
        SdLocation::SingleFile { .. } => None,
    };
    Ok(TrainingModels { sd, unet_file })
}

/// Reads `noise.0`, `noise.1`, ... of a `--noise-file`.
fn load_noise_file(path: &Path) -> Result<Vec<Tensor>> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("--noise-file {}: {e}", path.display()))?;
    let noises: Vec<Tensor> = (0..)
        .map_while(|k| tensors.remove(&format!("noise.{k}")))
        .collect();
    if noises.is_empty() {
        bail!(
            "--noise-file {}: no tensor named noise.0 (the draws must be named noise.0, noise.1, \
             ... in draw order)",
            path.display()
        );
    }
    Ok(noises)
}

/// A seed when none is given: OS-seeded hashing mixed with the time, kept below 2^53 so that
/// JSON readers see it exactly.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    hasher.write_u32(std::process::id());
    hasher.finish() & ((1 << 53) - 1)
}

/// The output file of image `index` of a batch of `batch` for `output`.
fn batch_output(output: &Path, index: usize, batch: usize) -> PathBuf {
    if batch == 1 {
        return output.to_path_buf();
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".to_string());
    output.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// Where `--save-control FILE` goes for `input`: `FILE` itself for one photo, else
/// `<FILE stem>-<photo stem>.<FILE ext>` next to it.
fn control_output(path: &Path, input: &Path, photos: usize) -> PathBuf {
    if photos == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let photo = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".to_string());
    path.with_file_name(format!("{stem}-{photo}.{ext}"))
}

#[derive(Serialize)]
struct Summary {
    method: &'static str,
    device: String,
    dtype: &'static str,
    seed: Option<u64>,
    size: u32,
    seconds: f64,
    models: Vec<String>,
    outputs: Vec<OutputRecord>,
}

#[derive(Serialize)]
struct OutputRecord {
    input: PathBuf,
    output: PathBuf,
    width: u32,
    height: u32,
    seconds: f64,
}

/// Runs `easel stylize --prompt ...` / `--bank ...`.
pub fn run(args: &StylizeArgs) -> Result<()> {
    let started = Instant::now();
    let d = &args.diffusion;
    let device = easel_core::select_device(args.device)?;
    if let Some(bank) = &d.bank {
        if !bank.is_file() {
            bail!("--bank {}: no such file", bank.display());
        }
    }
    let mut s = settings(
        d,
        args.strength,
        &device,
        d.prompt.clone().unwrap_or_default(),
    )?;
    let noises = d.noise_file.as_deref().map(load_noise_file).transpose()?;
    let inputs = easel_core::collect_images(&args.inputs)?;
    let outputs = output_paths(&inputs, &args.output)?;
    if s.depth == 16 {
        for out in &outputs {
            let ext = out
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if ext.as_deref() != Some("png") {
                bail!(
                    "--depth 16 needs PNG output, but -o gives {}",
                    out.display()
                );
            }
        }
    }
    let seed = match (&noises, s.seed) {
        (Some(_), _) => None,
        (None, Some(seed)) => Some(seed),
        (None, None) => Some(random_seed()),
    };

    let prefer_fp16 = !device.is_cpu() && s.dtype != DType::F32;
    let resolved = resolve_models(d, s.control.as_ref(), prefer_fp16)?;
    let sd = load_models(&resolved, &device, s.dtype, AttentionSlicing::Full)?;
    let mut conditioning: Box<dyn Conditioning> = match &d.bank {
        None => Box::new(
            PromptConditioning::new(&sd, &s.prompt, &s.negative_prompt)
                .context("encoding the prompt")?,
        ),
        Some(path) => {
            let unet = match &resolved.sd {
                SdLocation::Dir { dir, variant, .. } => {
                    stylize_bank::unet_file(dir, variant.as_deref())
                }
                SdLocation::SingleFile { .. } => None,
            };
            let model = stylize_bank::base_model_info(
                &sd,
                d.sd.as_deref().unwrap_or(DEFAULT_SD),
                unet.as_deref(),
            )?;
            let run = stylize_bank::prepare(
                path,
                d.prompt.as_deref(),
                &s.negative_prompt,
                d.force_bank,
                &sd,
                &model,
            )?;
            s.prompt = run.prompt;
            s.bank = Some((run.file_name, run.sha256));
            Box::new(run.conditioning)
        }
    };

    if args.output.extension().is_none() || args.output.is_dir() {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    }
    let mut protected: Vec<PathBuf> = inputs.clone();
    if let Some(ControlChoice {
        source: ControlSource::Image(path),
        ..
    }) = &s.control
    {
        protected.push(path.clone());
    }
    protected.extend(d.noise_file.iter().cloned());
    protected.extend(d.bank.iter().cloned());

    let mut records = Vec::new();
    for (input, output) in inputs.iter().zip(&outputs) {
        let photo_started = Instant::now();
        let photo = load_image(input)?;
        let (width, height) = target_size(photo.width(), photo.height(), s.size);
        let photo = resize_to(photo, width, height);
        let control = match &s.control {
            None => None,
            Some(choice) => {
                let image = match &choice.source {
                    ControlSource::Canny(low, high) => {
                        let edges =
                            canny::canny(&photo, &CannyOptions::with_thresholds(*low, *high))?;
                        canny::control_image(&edges)
                    }
                    ControlSource::Image(path) => {
                        resize_to(load_image(path).context("--control-image")?, width, height)
                    }
                };
                if let Some(path) = &d.save_control {
                    let path = control_output(path, input, inputs.len());
                    easel_core::save_image(&image, &path, None, &protected)
                        .context("--save-control")?;
                }
                Some(easel_core::rgb_to_tensor(&image, &Device::Cpu)?)
            }
        };
        let mut request = StylizeRequest::new(easel_core::rgb_to_tensor(&photo, &Device::Cpu)?);
        request.control_image = control;
        request.strength = s.strength;
        request.steps = s.steps;
        request.guidance_scale = s.guidance;
        request.scheduler = s.scheduler;
        request.eta = s.eta;
        if let Some(choice) = &s.control {
            request.control = choice.settings;
        }
        request.seed = seed.unwrap_or(0);
        request.batch = s.batch;
        request.vae_tiling = d.vae_tiling;

        let mut noise: Box<dyn NoiseSource> = match &noises {
            Some(tensors) => Box::new(ReplayNoise::new(tensors.clone())),
            None => Box::new(SeededNoise::new(request.seed)),
        };
        let bar = progress::bar(0, "denoising");
        bar.set_message(input.display().to_string());
        let images = sd
            .stylize_with_noise(
                &request,
                conditioning.as_mut(),
                noise.as_mut(),
                &mut |step, n| {
                    bar.set_length(n as u64);
                    bar.set_position(step as u64);
                },
            )
            .with_context(|| format!("painting {}", input.display()))?;
        bar.finish_and_clear();

        let params = parameters(&s, d, seed, &resolved.ids, width, height);
        for index in 0..s.batch {
            let out = batch_output(output, index, s.batch);
            let image = images.narrow(0, index, 1)?;
            let mut params = params.clone();
            if s.batch > 1 {
                params.extra.push(("Batch index".into(), index.to_string()));
            }
            if s.depth == 16 {
                let img = easel_core::tensor_to_rgb16(&image)?;
                easel_core::save_image16(&img, &out, Some(&params), &protected)?;
            } else {
                let img = easel_core::tensor_to_rgb(&image)?;
                easel_core::save_image(&img, &out, Some(&params), &protected)?;
            }
            protected.push(out.clone());
            records.push(OutputRecord {
                input: input.clone(),
                output: out,
                width,
                height,
                seconds: photo_started.elapsed().as_secs_f64(),
            });
        }
    }

    if args.json {
        let summary = Summary {
            method: if s.control.is_some() {
                "sd-controlnet"
            } else {
                "sd-img2img"
            },
            device: format!("{device:?}"),
            dtype: s.dtype.as_str(),
            seed,
            size: s.size,
            seconds: started.elapsed().as_secs_f64(),
            models: resolved.ids.clone(),
            outputs: records,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let seed = seed.map(|s| format!(", seed {s}")).unwrap_or_default();
        for r in &records {
            eprintln!(
                "wrote {} ({}x{}{seed})",
                r.output.display(),
                r.width,
                r.height
            );
        }
    }
    Ok(())
}

/// Everything needed to reproduce an image, for the PNG `parameters` chunk.
fn parameters(
    s: &Settings,
    d: &DiffusionArgs,
    seed: Option<u64>,
    ids: &[String],
    width: u32,
    height: u32,
) -> Parameters {
    let mut params = Parameters::new(if s.control.is_some() {
        "sd-controlnet"
    } else {
        "sd-img2img"
    });
    params.prompt = Some(s.prompt.clone());
    params.negative_prompt = Some(s.negative_prompt.clone());
    params.seed = seed;
    params.strength = Some(s.strength);
    params.models = ids.to_vec();
    let mut extra = |k: &str, v: String| params.extra.push((k.to_string(), v));
    extra("Steps", s.steps.to_string());
    extra("Guidance", s.guidance.to_string());
    extra("Scheduler", s.scheduler.to_string());
    extra("Eta", s.eta.to_string());
    extra("Size", format!("{width}x{height}"));
    extra("Short side", s.size.to_string());
    extra("Batch", s.batch.to_string());
    if let Some(choice) = &s.control {
        extra(
            "Control",
            match &choice.source {
                ControlSource::Canny(low, high) => format!("canny {low}:{high}"),
                ControlSource::Image(path) => format!("image {}", path.display()),
            },
        );
        extra("Control scale", choice.settings.scale.to_string());
        extra("Control start", choice.settings.start.to_string());
        extra("Control end", choice.settings.end.to_string());
        extra("Guess mode", choice.settings.guess_mode.to_string());
    }
    if let Some((name, sha256)) = &s.bank {
        extra("Bank", name.clone());
        extra("Bank sha256", sha256.clone());
    }
    extra("Dtype", s.dtype.as_str().to_string());
    extra("VAE tiling", d.vae_tiling.to_string());
    if let Some(path) = &d.noise_file {
        extra("Noise file", path.display().to_string());
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_keeps_aspect_in_multiples_of_eight() {
        assert_eq!(target_size(64, 64, 64), (64, 64));
        assert_eq!(target_size(640, 480, 512), (680, 512));
        assert_eq!(target_size(480, 640, 512), (512, 680));
        assert_eq!(target_size(96, 80, 64), (80, 64));
        assert_eq!(target_size(4000, 3000, 1024), (1368, 1024));
        assert_eq!(target_size(100, 100, 500), (504, 504));
    }

    #[test]
    fn batch_outputs_are_numbered() {
        let out = Path::new("dir/cat.png");
        assert_eq!(batch_output(out, 0, 1), PathBuf::from("dir/cat.png"));
        assert_eq!(batch_output(out, 0, 2), PathBuf::from("dir/cat-0.png"));
        assert_eq!(batch_output(out, 1, 2), PathBuf::from("dir/cat-1.png"));
    }

    #[test]
    fn control_images_of_several_photos_are_named_after_them() {
        let path = Path::new("out/edges.png");
        assert_eq!(
            control_output(path, Path::new("p/cat.jpg"), 1),
            PathBuf::from("out/edges.png")
        );
        assert_eq!(
            control_output(path, Path::new("p/cat.jpg"), 2),
            PathBuf::from("out/edges-cat.png")
        );
    }

    #[test]
    fn flags_parse_dtypes_depths_and_schedulers() {
        assert_eq!(parse_dtype("f16"), Ok(DType::F16));
        assert_eq!(parse_dtype("BF16"), Ok(DType::BF16));
        assert!(parse_dtype("f64").unwrap_err().contains("f32, f16, bf16"));
        assert_eq!(parse_depth("16"), Ok(16));
        assert!(parse_depth("12").is_err());
        assert_eq!(
            parse_scheduler("euler-a"),
            Ok(SchedulerKind::EulerAncestral)
        );
        assert!(parse_scheduler("pndm").unwrap_err().contains("ddim"));
    }

    #[test]
    fn weight_alternatives_follow_the_device() {
        assert_eq!(
            weight_alternatives(Component::TextEncoder, true).unwrap(),
            [
                "text_encoder/model.fp16.safetensors",
                "text_encoder/model.safetensors"
            ]
        );
        assert_eq!(
            weight_alternatives(Component::Unet, false).unwrap(),
            [
                "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors"
            ]
        );
        assert_eq!(
            path_variant(Path::new("x/unet/diffusion_pytorch_model.fp16.safetensors")),
            Some("fp16".to_string())
        );
        assert_eq!(path_variant(Path::new("x/model.safetensors")), None);
    }
}
