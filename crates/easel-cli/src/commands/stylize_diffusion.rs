//! `easel stylize --prompt`: paint photos with Stable Diffusion 1.5, their structure held by a
//! ControlNet (Canny edges by default), through `easel-pipeline`.
//!
//! Flow: check the flags → resolve every weight file at once (Hugging Face cache, hub, or local
//! folders / single files) → load the models → encode the prompts once → for each photo:
//! resize (short side `--size`, multiples of 8), make the control image (Canny or
//! `--control-image`), denoise with a progress bar, save `--batch` images with their
//! parameters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use easel_bank::conditioning::{self as bank_conditioning, BankRun};
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::schedulers::SchedulerKind;
use easel_host::diffusion::{
    self, ControlOptions, ControlSource, DiffusionOptions, DiffusionSettings,
};
use easel_host::sources::ModelSources;
use easel_pipeline::canny;
use easel_pipeline::conditioning::{Conditioning, PromptConditioning};
use easel_pipeline::noise::{NoiseSource, ReplayNoise, SeededNoise};
use easel_pipeline::pipeline::{ControlGuidance, NoiseStart};
use serde::Serialize;

use super::stylize::{
    create_output_dirs, output_paths, photo_inputs, save_output, PhotoInput, StylizeArgs, STDIO,
};
use crate::args::{parse_depth, parse_dtype, parse_scheduler, source_hints, word};
use crate::progress;

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

    /// How the photo's latents start the run: img2img (noised with fresh noise to the first
    /// step, diffusers' way), ldm-img2img (LSAST's, the CompVis code's: noised to the step above
    /// the first) or stochastic-inversion (ArtBank's: noised with the UNet's own prediction of
    /// the noise at timestep strength·1000) (default img2img).
    #[arg(long, value_name = "START", value_parser = parse_noise_start)]
    pub noise_start: Option<NoiseStart>,

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

    /// Which contexts the ControlNet sees under guidance: batch (the prompt's and the negative
    /// prompt's, diffusers' way) or cond-only (the prompt's alone, its residuals added to both;
    /// LSAST's) (default batch).
    #[arg(long, value_name = "MODE", value_parser = parse_control_guidance)]
    pub control_cfg: Option<ControlGuidance>,

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
        "controlnet", "control_scale", "control_start", "control_end", "guess_mode", "control_cfg", "canny",
        "control_image", "save_control",
    ])]
    pub no_control: bool,

    /// Stable Diffusion 1.x weights: a hub repo id org/name[@revision] (downloaded into the
    /// Hugging Face cache when missing), a local diffusers folder, or a single .safetensors
    /// checkpoint (default: with --bank, the hub model the bank was learned on; else
    /// stable-diffusion-v1-5/stable-diffusion-v1-5).
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

    /// Encode the photo and decode the latents tile by tile: bounded memory for large sizes,
    /// slight differences at tile seams.
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
            ("--noise-start", self.noise_start.is_some()),
            ("--eta", self.eta.is_some()),
            ("--seed", self.seed.is_some()),
            ("--batch", self.batch.is_some()),
            ("--control-scale", self.control_scale.is_some()),
            ("--control-start", self.control_start.is_some()),
            ("--control-end", self.control_end.is_some()),
            ("--guess-mode", self.guess_mode),
            ("--control-cfg", self.control_cfg.is_some()),
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

impl DiffusionArgs {
    /// The model sources these flags name; `control` says whether a ControlNet is used.
    pub fn sources(&self, settings: &DiffusionSettings) -> ModelSources {
        ModelSources {
            sd: self.sd.clone(),
            sd_config: self.sd_config.clone(),
            controlnet: settings.controlnet_source(),
            offline: self.offline,
            hints: source_hints(),
        }
    }

    /// The request these flags describe (defaults left to the host).
    pub fn options(&self, strength: Option<f64>) -> Result<DiffusionOptions> {
        let control = if self.no_control {
            None
        } else {
            let source = match (&self.control_image, &self.canny) {
                (Some(path), _) => Some(ControlSource::Image(path.clone())),
                (None, Some(text)) => {
                    let (low, high) = canny::parse_thresholds(text)
                        .map_err(|e| anyhow::anyhow!("--canny {text}: {e}"))?;
                    Some(ControlSource::Canny(low, high))
                }
                (None, None) => None,
            };
            Some(ControlOptions {
                scale: self.control_scale,
                start: self.control_start,
                end: self.control_end,
                guess_mode: self.guess_mode,
                guidance: self.control_cfg,
                source,
                weights: self.controlnet.clone(),
            })
        };
        Ok(DiffusionOptions {
            negative_prompt: self.negative_prompt.clone(),
            size: self.size,
            strength,
            steps: self.steps,
            guidance: self.guidance,
            scheduler: self.scheduler,
            noise_start: self.noise_start,
            eta: self.eta,
            seed: self.seed,
            batch: self.batch,
            control,
            dtype: self.dtype,
            vae_tiling: self.vae_tiling,
        })
    }
}

fn parse_noise_start(text: &str) -> std::result::Result<NoiseStart, String> {
    text.parse()
}

fn parse_control_guidance(text: &str) -> std::result::Result<ControlGuidance, String> {
    text.parse()
}

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

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(t.as_nanos());
    }
    hasher.write_u32(std::process::id());
    hasher.finish() & ((1 << 53) - 1)
}

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

pub fn run(args: &StylizeArgs) -> Result<()> {
    let started = Instant::now();
    let d = &args.diffusion;
    let device = easel_core::select_device(args.device)?;
    if let Some(bank) = &d.bank {
        if !bank.is_file() {
            bail!("--bank {}: no such file", bank.display());
        }
    }
    let mut options = d.options(args.strength)?;
    // What the flags leave unset, the bank's inference defaults give (its preset's).
    let mut bank_defaults_taken = Vec::new();
    let mut bank_base_model = None;
    if let Some(bank) = &d.bank {
        let defaults = easel_host::diffusion::bank_defaults(bank).map_err(word)?;
        (options, bank_defaults_taken) =
            options.with_defaults(&defaults.inference).map_err(word)?;
        bank_base_model = defaults.base_model;
    }
    let mut s = options
        .settings(d.prompt.clone().unwrap_or_default(), &device)
        .map_err(word)?;
    let depth = d.depth.unwrap_or(8);
    let noises = d.noise_file.as_deref().map(load_noise_file).transpose()?;
    let photos = photo_inputs(&args.inputs)?;
    let inputs: Vec<PathBuf> = photos.iter().map(PhotoInput::path).collect();
    let outputs = output_paths(&inputs, &args.output)?;
    if args.json && args.output == Path::new(STDIO) {
        bail!("--json prints on standard output, where -o - writes the image; use one of them");
    }
    if s.batch > 1 && args.output == Path::new(STDIO) {
        bail!(
            "-o - writes one image to standard output; --batch {} needs a directory",
            s.batch
        );
    }
    if depth == 16 {
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
    let seed = match (&noises, d.seed) {
        (Some(_), _) => None,
        (None, Some(seed)) => Some(seed),
        (None, None) => Some(random_seed()),
    };

    let prefer_fp16 = !device.is_cpu() && s.dtype != DType::F32;
    let mut sources = d.sources(&s);
    if let (None, Some(sd)) = (&sources.sd, bank_base_model) {
        eprintln!("painting on {sd}, the model the bank was learned on (--sd overrides)");
        sources.sd = Some(sd);
    }
    let resolved = sources
        .resolve(prefer_fp16, Some(progress::download_hook()))
        .map_err(word)?;
    let sd = resolved
        .load(&device, s.dtype, AttentionSlicing::PAINTING)
        .map_err(word)?;
    let mut bank_record = None;
    let mut conditioning: Box<dyn Conditioning> = match &d.bank {
        None => Box::new(
            PromptConditioning::new(&sd, &s.prompt, &s.negative_prompt)
                .context("encoding the prompt")?,
        ),
        Some(path) => {
            let unet = resolved.unet_file();
            let model =
                bank_conditioning::base_model_info(&sd, &resolved.base_model_id, unet.as_deref())
                    .map_err(|e| word(e.into()))?;
            let run: BankRun = bank_conditioning::prepare(
                path,
                d.prompt.as_deref(),
                &s.negative_prompt,
                d.force_bank,
                &sd,
                &model,
            )
            .map_err(|e| word(e.into()))?;
            if let Some(warning) = &run.warning {
                eprintln!("warning: {warning}");
            }
            s.prompt = run.prompt;
            bank_record = Some((run.name, run.sha256));
            Box::new(run.conditioning)
        }
    };

    create_output_dirs(&args.output)?;
    let mut protected: Vec<PathBuf> = inputs.clone();
    if let Some(diffusion::ControlChoice {
        source: ControlSource::Image(path),
        ..
    }) = &s.control
    {
        protected.push(path.clone());
    }
    protected.extend(d.noise_file.iter().cloned());
    protected.extend(d.bank.iter().cloned());

    let mut records = Vec::new();
    let full_size = easel_core::LoadOptions {
        max_side: None,
        max_pixels: easel_core::DOWNSCALE_MAX_PIXELS,
    };
    for ((photo, input), output) in photos.iter().zip(&inputs).zip(&outputs) {
        let photo_started = Instant::now();
        let photo = photo.load(&full_size)?;
        let request_seed = seed.unwrap_or(0);
        let mut noise: Box<dyn NoiseSource> = match &noises {
            Some(tensors) => Box::new(ReplayNoise::new(tensors.clone())),
            None => Box::new(SeededNoise::new(request_seed)),
        };
        let bar = progress::bar(0, "denoising");
        bar.set_message(input.display().to_string());
        let painted = diffusion::paint_photo(
            &sd,
            &s,
            conditioning.as_mut(),
            photo,
            request_seed,
            noise.as_mut(),
            &mut |step, n| {
                bar.set_length(n as u64);
                bar.set_position(step as u64);
            },
        )
        .map_err(word)
        .with_context(|| format!("painting {}", input.display()))?;
        bar.finish_and_clear();
        if let (Some(path), Some(image)) = (&d.save_control, &painted.control_image) {
            let path = control_output(path, input, inputs.len());
            create_output_dirs(&path)?;
            easel_core::save_image(image, &path, None, &protected).context("--save-control")?;
        }

        let (width, height) = (painted.width, painted.height);
        let mut params = s.parameters(seed, &resolved.ids, width, height);
        if let Some((name, sha256)) = &bank_record {
            params.extra.push(("Bank".into(), name.clone()));
            params.extra.push(("Bank sha256".into(), sha256.clone()));
            if !bank_defaults_taken.is_empty() {
                params
                    .extra
                    .push(("Bank defaults".into(), bank_defaults_taken.join(", ")));
            }
        }
        params
            .extra
            .push(("Dtype".into(), s.dtype.as_str().to_string()));
        params
            .extra
            .push(("VAE tiling".into(), s.vae_tiling.to_string()));
        if let Some(path) = &d.noise_file {
            params
                .extra
                .push(("Noise file".into(), path.display().to_string()));
        }
        for index in 0..s.batch {
            let out = batch_output(output, index, s.batch);
            let image = painted.images.narrow(0, index, 1)?;
            let mut params = params.clone();
            if s.batch > 1 {
                params.extra.push(("Batch index".into(), index.to_string()));
            }
            if depth == 16 {
                let img = easel_core::tensor_to_rgb16(&image)?;
                easel_core::save_image16(&img, &out, Some(&params), &protected)?;
            } else {
                let img = easel_core::tensor_to_rgb(&image)?;
                save_output(&img, &out, Some(&params), &protected)?;
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
            method: s.method(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
