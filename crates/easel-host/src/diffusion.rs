//! The diffusion method's request: its settings with every default filled in and checked
//! ([`DiffusionOptions::settings`]) before anything is loaded, the canvas of a photo
//! ([`target_size`]), its control image, one photo painted ([`paint_photo`]) and the
//! parameters that reproduce it ([`DiffusionSettings::parameters`]).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use easel_bank::preset::InferenceDefaults;
use easel_core::Parameters;
use easel_diffusion::schedulers::SchedulerKind;
use easel_pipeline::canny::{self, CannyOptions};
use easel_pipeline::conditioning::Conditioning;
use easel_pipeline::models::{self, StableDiffusion};
use easel_pipeline::noise::NoiseSource;
use easel_pipeline::pipeline::{
    ControlGuidance, ControlSettings, NoiseStart, StylizeRequest, MIN_SIDE,
};
use image::imageops::FilterType;
use image::RgbImage;

use crate::controlnet_registry::{self, ControlNetEntry};
use crate::error::{HostError, Result, Setting};
use crate::sources::ControlNetSource;

/// The largest short side of the canvas.
pub const MAX_SIZE: u32 = 4096;
/// The largest long side / short side ratio of a canvas: beyond it the latent grows without
/// bound for a fixed short side (a 100:1 photo at 512 would be a 51 200-pixel-wide canvas).
pub const MAX_ASPECT: u32 = 8;
/// The most denoising steps of a schedule.
pub const MAX_STEPS: usize = 1000;
/// The most images painted from one photo.
pub const MAX_BATCH: usize = 64;

/// What the caller asked of the diffusion method; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct DiffusionOptions {
    /// What the painting should not look like (default empty).
    pub negative_prompt: Option<String>,
    /// Short side of the canvas (default 512).
    pub size: Option<u32>,
    /// Fraction of the schedule run, in (0, 1] (default 0.7).
    pub strength: Option<f64>,
    /// Steps of the full schedule (default 50).
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default 7.5).
    pub guidance: Option<f64>,
    /// The sampler (default DDIM).
    pub scheduler: Option<SchedulerKind>,
    /// How the photo's latents start the run (default img2img).
    pub noise_start: Option<NoiseStart>,
    /// DDIM's eta (default 0).
    pub eta: Option<f64>,
    /// Seed of the noise.
    pub seed: Option<u64>,
    /// Images per photo (default 1).
    pub batch: Option<usize>,
    /// The content branch; `None`: plain img2img.
    pub control: Option<ControlOptions>,
    /// Model dtype (default f16 on CUDA, f32 on the CPU).
    pub dtype: Option<DType>,
    /// Encode the photo and decode the latents tile by tile.
    pub vae_tiling: bool,
}

/// What the caller asked of the ControlNet; `None` takes the registry entry's default.
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// Conditioning scale.
    pub scale: Option<f64>,
    /// Fraction of the steps after which the ControlNet starts acting (default 0).
    pub start: Option<f64>,
    /// Fraction of the steps after which it stops (default 1).
    pub end: Option<f64>,
    /// Guess mode.
    pub guess_mode: bool,
    /// Which contexts the ControlNet sees under guidance (default: the whole batch).
    pub guidance: Option<ControlGuidance>,
    /// Where the control image comes from (default: Canny with the entry's thresholds).
    pub source: Option<ControlSource>,
    /// Other ControlNet weights than the registry entry's (hub id, folder or file).
    pub weights: Option<String>,
}

impl ControlOptions {
    /// Whether no setting was given (every default taken).
    pub fn is_unset(&self) -> bool {
        self.scale.is_none()
            && self.start.is_none()
            && self.end.is_none()
            && !self.guess_mode
            && self.guidance.is_none()
            && self.source.is_none()
            && self.weights.is_none()
    }
}

/// How a bank file paints when the request leaves something unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BankDefaults {
    /// The inference defaults it carries (none for banks that record none, such as
    /// textual-inversion embeddings; an official checkpoint's preset's).
    pub inference: InferenceDefaults,
    /// The Stable Diffusion it was learned on, when that names a hub repository
    /// (`CompVis/stable-diffusion-v1-4` for a bank of the `artbank` preset): what it paints on
    /// when no model is named. `None` for imported embeddings and banks learned on local files.
    pub base_model: Option<String>,
}

/// Reads the [`BankDefaults`] of the bank file (or embedding) at `path`.
pub fn bank_defaults(path: &std::path::Path) -> Result<BankDefaults> {
    let bytes = std::fs::read(path).map_err(|e| HostError::ReadWeights {
        what: "bank",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let unreadable = |e: candle_core::Error| HostError::ReadWeights {
        what: "bank",
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match easel_bank::file::read_bank(&bytes, &Device::Cpu) {
        Ok((_, metadata)) => Ok(BankDefaults {
            inference: metadata.inference_defaults().map_err(unreadable)?,
            base_model: match easel_core::WeightSource::parse(&metadata.base_model) {
                Ok(easel_core::WeightSource::Hub { .. }) => Some(metadata.base_model),
                _ => None,
            },
        }),
        // Not a bank file: an embedding, imported when it is loaded, paints with the defaults
        // of its import (an official checkpoint's preset's; none for textual inversion).
        Err(_) => Ok(BankDefaults {
            inference: easel_bank::interop::import_embedding(&bytes, None, &Device::Cpu)
                .map(|imported| imported.inference)
                .unwrap_or_default(),
            base_model: None,
        }),
    }
}

/// Where the control image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlSource {
    /// The photo's Canny edges with these thresholds.
    Canny(f32, f32),
    /// This image, resized to the canvas.
    Image(PathBuf),
}

/// The ControlNet of a run, settled.
#[derive(Debug, Clone)]
pub struct ControlChoice {
    /// Where the control image comes from.
    pub source: ControlSource,
    /// Scale, window, guess mode.
    pub settings: ControlSettings,
    /// The registry entry.
    pub entry: ControlNetEntry,
    /// Other weights for it.
    pub weights: Option<String>,
}

/// The settings of a diffusion run with every default filled in and checked.
#[derive(Debug, Clone)]
pub struct DiffusionSettings {
    /// The prompt (for a bank: its template with `{bank}`).
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// Short side of the canvas.
    pub size: u32,
    /// Fraction of the schedule run.
    pub strength: f64,
    /// Steps of the full schedule.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// How the photo's latents start the run.
    pub noise_start: NoiseStart,
    /// DDIM's eta.
    pub eta: f64,
    /// Images per photo.
    pub batch: usize,
    /// The content branch, if any.
    pub control: Option<ControlChoice>,
    /// Model dtype.
    pub dtype: DType,
    /// Tiled VAE encoding and decoding.
    pub vae_tiling: bool,
}

impl DiffusionOptions {
    /// These options with what they leave unset taken from a bank's inference `defaults`, and
    /// the names of the settings taken (for the parameters). A bank whose defaults paint
    /// without the ControlNet drops it unless a ControlNet setting was given.
    pub fn with_defaults(&self, defaults: &InferenceDefaults) -> Result<(Self, Vec<&'static str>)> {
        let mut options = self.clone();
        let mut taken = Vec::new();
        let parse_error = |what: &str, e: String| HostError::setting(Setting::Style, what, e);
        macro_rules! fill {
            ($field:ident, $value:expr, $name:literal) => {
                if options.$field.is_none() {
                    if let Some(value) = $value {
                        options.$field = Some(value);
                        taken.push($name);
                    }
                }
            };
        }
        fill!(guidance, defaults.guidance, "guidance");
        fill!(strength, defaults.strength, "strength");
        fill!(steps, defaults.steps, "steps");
        let scheduler = match &defaults.scheduler {
            Some(s) => Some(
                s.parse::<SchedulerKind>()
                    .map_err(|e| parse_error(s, e.to_string()))?,
            ),
            None => None,
        };
        fill!(scheduler, scheduler, "scheduler");
        fill!(
            negative_prompt,
            defaults.negative_prompt.clone(),
            "negative prompt"
        );
        let noise_start = match &defaults.noise_start {
            Some(s) => Some(s.parse::<NoiseStart>().map_err(|e| parse_error(s, e))?),
            None => None,
        };
        fill!(noise_start, noise_start, "noise start");
        let unset = options
            .control
            .as_ref()
            .is_some_and(ControlOptions::is_unset);
        if defaults.control == Some(false) && unset {
            options.control = None;
            taken.push("no control");
        }
        if let Some(control) = &mut options.control {
            if control.scale.is_none() {
                if let Some(scale) = defaults.control_scale {
                    control.scale = Some(scale);
                    taken.push("control scale");
                }
            }
            if control.guidance.is_none() {
                if let Some(s) = &defaults.control_cfg {
                    control.guidance = Some(s.parse().map_err(|e| parse_error(s, e))?);
                    taken.push("control guidance");
                }
            }
        }
        Ok((options, taken))
    }

    /// Fills in the defaults and checks every value for `device`.
    pub fn settings(&self, prompt: String, device: &Device) -> Result<DiffusionSettings> {
        let size = self.size.unwrap_or(512);
        if size < MIN_SIDE as u32 {
            return Err(HostError::setting(
                Setting::Size,
                size,
                format!(
                    "is too small: Stable Diffusion needs at least {MIN_SIDE} pixels on a side"
                ),
            ));
        }
        if size > MAX_SIZE {
            return Err(HostError::setting(
                Setting::Size,
                size,
                format!("is too large; the most is {MAX_SIZE}"),
            ));
        }
        let strength = self.strength.unwrap_or(0.7);
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(HostError::setting(
                Setting::Strength,
                strength,
                "is outside (0, 1] (the diffusion method needs some noise)",
            ));
        }
        let steps = self.steps.unwrap_or(50);
        if steps == 0 || steps > MAX_STEPS {
            return Err(HostError::setting(
                Setting::Steps,
                steps,
                format!("must be between 1 and {MAX_STEPS}"),
            ));
        }
        if ((steps as f64) * strength).floor() < 1.0 {
            return Err(HostError::setting(
                Setting::Steps,
                steps,
                format!("at strength {strength} runs no denoising step; raise either"),
            ));
        }
        let guidance = self.guidance.unwrap_or(7.5);
        if !guidance.is_finite() {
            return Err(HostError::setting(
                Setting::Guidance,
                guidance,
                "is not a finite number",
            ));
        }
        let eta = self.eta.unwrap_or(0.0);
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(HostError::setting(
                Setting::Eta,
                eta,
                "is not a non-negative number",
            ));
        }
        let batch = self.batch.unwrap_or(1);
        if batch == 0 || batch > MAX_BATCH {
            return Err(HostError::setting(
                Setting::Batch,
                batch,
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        let dtype = self.dtype.unwrap_or(if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        });
        models::check_dtype(device, dtype).map_err(|e| {
            HostError::setting(
                Setting::Dtype,
                dtype.as_str(),
                format!("cannot be used: {e}"),
            )
        })?;
        let control = self.control.as_ref().map(control_choice).transpose()?;
        Ok(DiffusionSettings {
            prompt,
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            size,
            strength,
            steps,
            guidance,
            scheduler: self.scheduler.unwrap_or(SchedulerKind::Ddim),
            noise_start: self.noise_start.unwrap_or_default(),
            eta,
            batch,
            control,
            dtype,
            vae_tiling: self.vae_tiling,
        })
    }
}

fn control_choice(c: &ControlOptions) -> Result<ControlChoice> {
    let entry = controlnet_registry::entry(controlnet_registry::DEFAULT_ENTRY)?;
    let source = c.source.clone().unwrap_or(ControlSource::Canny(
        entry.low_threshold,
        entry.high_threshold,
    ));
    let settings = ControlSettings {
        scale: c.scale.unwrap_or(entry.scale),
        start: c.start.unwrap_or(0.0),
        end: c.end.unwrap_or(1.0),
        guess_mode: c.guess_mode,
        guidance: c.guidance.unwrap_or_default(),
    };
    if !settings.scale.is_finite() {
        return Err(HostError::setting(
            Setting::ControlScale,
            settings.scale,
            "is not a finite number",
        ));
    }
    if !(0.0 <= settings.start && settings.start < settings.end && settings.end <= 1.0) {
        return Err(HostError::setting(
            Setting::ControlWindow,
            format!("{}..{}", settings.start, settings.end),
            "must satisfy 0 <= start < end <= 1",
        ));
    }
    Ok(ControlChoice {
        source,
        settings,
        entry,
        weights: c.weights.clone(),
    })
}

impl DiffusionSettings {
    /// The method name recorded in outputs.
    pub fn method(&self) -> &'static str {
        if self.control.is_some() {
            "sd-controlnet"
        } else {
            "sd-img2img"
        }
    }

    /// The ControlNet to resolve, if any.
    pub fn controlnet_source(&self) -> Option<ControlNetSource> {
        self.control.as_ref().map(|c| ControlNetSource {
            entry: c.entry.clone(),
            weights: c.weights.clone(),
        })
    }

    /// Everything needed to reproduce an image of `width`×`height`: the settings, the seed
    /// (`None` for replayed noise) and the models' ids.
    pub fn parameters(
        &self,
        seed: Option<u64>,
        model_ids: &[String],
        width: u32,
        height: u32,
    ) -> Parameters {
        let mut params = Parameters::new(self.method());
        params.prompt = Some(self.prompt.clone());
        params.negative_prompt = Some(self.negative_prompt.clone());
        params.seed = seed;
        params.strength = Some(self.strength);
        params.models = model_ids.to_vec();
        let mut extra = |k: &str, v: String| params.extra.push((k.to_string(), v));
        extra("Steps", self.steps.to_string());
        extra("Guidance", self.guidance.to_string());
        extra("Scheduler", self.scheduler.to_string());
        extra("Eta", self.eta.to_string());
        extra("Size", format!("{width}x{height}"));
        extra("Short side", self.size.to_string());
        extra("Batch", self.batch.to_string());
        // Recorded when not the default, so that older outputs keep their parameters.
        if self.noise_start != NoiseStart::Img2Img {
            extra("Noise start", self.noise_start.name().to_string());
        }
        if let Some(choice) = &self.control {
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
            if choice.settings.guidance == ControlGuidance::CondOnly {
                extra(
                    "Control guidance",
                    choice.settings.guidance.name().to_string(),
                );
            }
        }
        params
    }
}

/// The canvas of a `width`×`height` photo: its short side `short`, aspect kept, both sides
/// rounded to multiples of 8. Refuses photos more elongated than [`MAX_ASPECT`]:1.
pub fn target_size(width: u32, height: u32, short: u32) -> Result<(u32, u32)> {
    let (long_side, short_side) = (width.max(height), width.min(height));
    if short_side == 0 || long_side / short_side >= MAX_ASPECT {
        return Err(HostError::setting(
            Setting::Size,
            short,
            format!(
                "cannot paint a {width}x{height} photo: it is more elongated than \
                 {MAX_ASPECT}:1; crop it first"
            ),
        ));
    }
    // Both results are at most MAX_ASPECT · short + 8, far inside u32 for short ≤ u32::MAX / 16.
    let round8 = |x: f64| -> Result<u32> {
        let eighths = (x / 8.0).round().max(1.0);
        u32::try_from(eighths as u64)
            .ok()
            .and_then(|e| e.checked_mul(8))
            .ok_or_else(|| HostError::setting(Setting::Size, x, "pixels is too large a side"))
    };
    let (w, h, s) = (f64::from(width), f64::from(height), f64::from(short));
    if width <= height {
        Ok((round8(s)?, round8(h * s / w)?))
    } else {
        Ok((round8(w * s / h)?, round8(s)?))
    }
}

/// `img` resized to `width`×`height` (Lanczos3), or unchanged if it has that size.
pub fn resize_to(img: RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, FilterType::Lanczos3)
    }
}

/// Loads an image at full size (the canvas resize happens after).
pub fn load_image(path: &std::path::Path) -> Result<RgbImage> {
    let opts = easel_core::LoadOptions {
        max_side: None,
        max_pixels: easel_core::DOWNSCALE_MAX_PIXELS,
    };
    Ok(easel_core::load_rgb(path, &opts)?)
}

/// One photo painted: the images and what they were painted from.
pub struct PaintedPhoto {
    /// `[batch, 3, H, W]` in [0, 1].
    pub images: Tensor,
    /// The control image, when a ControlNet ran.
    pub control_image: Option<RgbImage>,
    /// The canvas width.
    pub width: u32,
    /// The canvas height.
    pub height: u32,
}

/// Paints `photo` with `sd`: resized to its canvas, its control image made, `seed` recorded in
/// the request (the noise itself comes from `noise`), `progress(step, steps)` after each
/// denoising step.
pub fn paint_photo(
    sd: &StableDiffusion,
    settings: &DiffusionSettings,
    conditioning: &mut dyn Conditioning,
    photo: RgbImage,
    seed: u64,
    noise: &mut dyn NoiseSource,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PaintedPhoto> {
    let (width, height) = target_size(photo.width(), photo.height(), settings.size)?;
    let photo = resize_to(photo, width, height);
    let control_image = match &settings.control {
        None => None,
        Some(choice) => Some(match &choice.source {
            ControlSource::Canny(low, high) => {
                let edges = canny::canny(&photo, &CannyOptions::with_thresholds(*low, *high))?;
                canny::control_image(&edges)
            }
            ControlSource::Image(path) => resize_to(load_image(path)?, width, height),
        }),
    };
    let to_tensor = |img: &RgbImage| easel_core::rgb_to_tensor(img, &Device::Cpu);
    let mut request = StylizeRequest::new(to_tensor(&photo)?);
    request.control_image = control_image.as_ref().map(to_tensor).transpose()?;
    request.strength = settings.strength;
    request.steps = settings.steps;
    request.guidance_scale = settings.guidance;
    request.scheduler = settings.scheduler;
    request.noise_start = settings.noise_start;
    request.eta = settings.eta;
    if let Some(choice) = &settings.control {
        request.control = choice.settings;
    }
    request.seed = seed;
    request.batch = settings.batch;
    request.vae_tiling = settings.vae_tiling;
    sd.check_memory(&request)
        .map_err(|error| HostError::Memory {
            error,
            relief: &[Setting::Size, Setting::Batch, Setting::VaeTiling],
        })?;
    let images = sd
        .stylize_with_noise(&request, conditioning, noise, progress)
        .map_err(HostError::compute("denoising"))?;
    Ok(PaintedPhoto {
        images,
        control_image,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_keeps_aspect_in_multiples_of_eight() {
        let cases = [
            ((64, 64, 64), (64, 64)),
            ((640, 480, 512), (680, 512)),
            ((480, 640, 512), (512, 680)),
            ((96, 80, 64), (80, 64)),
            ((4000, 3000, 1024), (1368, 1024)),
            ((100, 100, 500), (504, 504)),
        ];
        for ((w, h, s), expected) in cases {
            assert_eq!(target_size(w, h, s).unwrap(), expected, "{w}x{h} at {s}");
        }
    }

    #[test]
    fn elongated_photos_are_refused_not_overflowed() {
        for (w, h) in [(8_400_000, 1), (1, 8_400_000), (10_000, 100), (0, 5)] {
            let err = target_size(w, h, 512).unwrap_err().to_string();
            assert!(err.contains("more elongated than 8:1"), "{w}x{h}: {err}");
        }
        assert_eq!(target_size(7000, 1000, 64).unwrap(), (448, 64));
    }
}
