//! [`Host`]: paints photos with any style, keeping what it loaded for the next call: one
//! [`FastPainter`] per fast style, the last [`GatysPainter`], and one Stable Diffusion
//! (+ ControlNet) per set of model sources, dtype and attention slicing. Each [`Painting`]
//! reports its load and paint times apart, and the peak memory of the call.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use easel_bank::conditioning::{base_model_info, prepare};
use easel_core::Parameters;
use easel_diffusion::attention::AttentionSlicing;
use easel_pipeline::conditioning::{Conditioning, PromptConditioning};
use easel_pipeline::models::StableDiffusion;
use easel_pipeline::noise::SeededNoise;
use image::RgbImage;

use crate::diffusion::{self, DiffusionOptions};
use crate::error::{HostError, Result};
use crate::fast::{FastPainter, FastStyle};
use crate::gatys::{GatysPainter, GatysStyle};
use crate::sources::{ModelSources, ResolvedModels};

/// What to paint with, fully described.
#[derive(Debug, Clone)]
pub enum Style {
    /// A fast method.
    Fast(FastStyle),
    /// Optimisation-based style transfer (Gatys et al.) with these paintings and settings; the
    /// host runs it to the end (callers that show progress or stop on Ctrl-C use
    /// [`GatysPainter::paint`] themselves).
    Gatys {
        /// The paintings (and mask).
        style: GatysStyle,
        /// Iterations, weights, optimiser, scale, colour control.
        settings: crate::gatys::Settings,
    },
    /// Stable Diffusion + ControlNet guided by a prompt.
    Prompt {
        /// The prompt.
        prompt: String,
        /// Where the models come from.
        sources: ModelSources,
    },
    /// Stable Diffusion + ControlNet conditioned on a prompt bank.
    Bank {
        /// The bank file.
        path: PathBuf,
        /// A template with `{bank}` (else the bank's own).
        prompt: Option<String>,
        /// Load a bank learned on another base model of the same width.
        force: bool,
        /// Where the models come from.
        sources: ModelSources,
    },
}

impl Style {
    /// The method name recorded in outputs.
    pub fn method(&self) -> &'static str {
        match self {
            Style::Fast(style) => style.method(),
            Style::Gatys { .. } => "gatys",
            Style::Prompt { .. } | Style::Bank { .. } => "diffusion",
        }
    }
}

/// How to paint, for any style.
#[derive(Debug, Clone)]
pub struct PaintRequest {
    /// How much style: see [`FastPainter::paint`]; for diffusion the fraction of the schedule
    /// (`None`: 1.0 fast, 0.7 diffusion).
    pub strength: Option<f64>,
    /// Fast methods: keep the photo's colours.
    pub keep_colors: bool,
    /// Fast methods: the photo's (and paintings') long side cap.
    pub max_side: u32,
    /// Arbitrary and AdaIN: brush strokes this many times their painted size (see
    /// [`FastPainter::build_scaled`]; 1: as painted).
    pub style_scale: f64,
    /// Diffusion: everything else (size, steps, seed, control, dtype, ...).
    pub diffusion: DiffusionOptions,
}

impl Default for PaintRequest {
    fn default() -> Self {
        Self {
            strength: None,
            keep_colors: false,
            max_side: 1024,
            style_scale: 1.0,
            diffusion: DiffusionOptions::default(),
        }
    }
}

/// One photo painted.
pub struct Painting {
    /// The images (one unless a diffusion batch was asked for), `[1, 3, H, W]` each in [0, 1].
    pub images: Vec<Tensor>,
    /// What reproduces them.
    pub parameters: Parameters,
    /// Seconds spent resolving and loading models and styles in this call (0 when cached).
    pub load_seconds: f64,
    /// Seconds spent painting.
    pub paint_seconds: f64,
    /// The peak memory of the call in bytes, when it can be measured.
    pub peak_memory_bytes: Option<u64>,
    /// What the user should know about the result (e.g. a bank forced onto another model).
    pub warnings: Vec<String>,
}

/// Cache key of a loaded Stable Diffusion.
#[derive(Debug, Clone, PartialEq)]
struct SdKey {
    resolved: ResolvedModels,
    dtype: DType,
}

/// The style host: paints with any [`Style`], keeping loaded models across calls.
pub struct Host {
    device: Device,
    fast: Vec<(String, FastPainter)>,
    gatys: Option<(String, GatysPainter)>,
    sd: Option<(SdKey, StableDiffusion)>,
}

impl Host {
    /// A host painting on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            fast: Vec::new(),
            gatys: None,
            sd: None,
        }
    }

    /// The device it paints on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Paints `photo` with `style`.
    pub fn paint(
        &mut self,
        style: &Style,
        photo: &RgbImage,
        request: &PaintRequest,
    ) -> Result<Painting> {
        // Memory is reported when it can be measured; painting does not depend on it.
        let probe = easel_core::memory::MemoryProbe::start(&self.device).ok();
        let mut painting = match style {
            Style::Fast(fast) => self.paint_fast(fast, photo, request)?,
            Style::Gatys { style, settings } => {
                self.paint_gatys(style, settings, photo, request)?
            }
            Style::Prompt { prompt, sources } => {
                self.paint_diffusion(sources, photo, request, |sd, _, s| {
                    let c = PromptConditioning::new(sd, prompt, &s.negative_prompt)
                        .map_err(HostError::compute("encoding the prompt"))?;
                    Ok(Conditioned {
                        conditioning: Box::new(c),
                        prompt: prompt.clone(),
                        extra: Vec::new(),
                        warning: None,
                    })
                })?
            }
            Style::Bank {
                path,
                prompt,
                force,
                sources,
            } => {
                // What the request leaves unset, the bank's inference defaults give.
                let defaults = diffusion::bank_defaults(path)?;
                let mut with_defaults = request.clone();
                let (options, taken) = request.diffusion.with_defaults(&defaults.inference)?;
                with_defaults.strength = request.strength.or(options.strength);
                with_defaults.diffusion = options;
                let request = &with_defaults;
                // No model named: the one the bank was learned on.
                let mut sources = sources.clone();
                if sources.sd.is_none() {
                    sources.sd = defaults.base_model;
                }
                self.paint_diffusion(&sources, photo, request, |sd, resolved, s| {
                    let unet = resolved.unet_file();
                    let info = base_model_info(sd, &resolved.base_model_id, unet.as_deref())?;
                    let run = prepare(
                        path,
                        prompt.as_deref(),
                        &s.negative_prompt,
                        *force,
                        sd,
                        &info,
                    )?;
                    let mut extra = vec![
                        ("Bank".to_string(), run.name),
                        ("Bank sha256".to_string(), run.sha256),
                    ];
                    if !taken.is_empty() {
                        extra.push(("Bank defaults".to_string(), taken.join(", ")));
                    }
                    Ok(Conditioned {
                        conditioning: Box::new(run.conditioning),
                        prompt: run.prompt,
                        extra,
                        warning: run.warning,
                    })
                })?
            }
        };
        painting.peak_memory_bytes = probe
            .and_then(|p| p.finish().ok())
            .and_then(|m| m.peak_bytes);
        Ok(painting)
    }

    fn paint_gatys(
        &mut self,
        style: &GatysStyle,
        settings: &crate::gatys::Settings,
        photo: &RgbImage,
        request: &PaintRequest,
    ) -> Result<Painting> {
        let started = Instant::now();
        // Styles and settings are plain data: their debug form identifies what was loaded.
        let key = format!("{style:?}/{settings:?}");
        let painter = match self.gatys.take() {
            Some((cached, painter)) if cached == key => &self.gatys.insert((cached, painter)).1,
            _ => {
                let painter = GatysPainter::build(style, settings.clone(), &self.device)?;
                &self.gatys.insert((key, painter)).1
            }
        };
        let load_seconds = started.elapsed().as_secs_f64();
        let painting = Instant::now();
        let photo = easel_core::downscale_to_fit(photo.clone(), request.max_side);
        let tensor = easel_core::rgb_to_tensor(&photo, &self.device)?;
        let never = std::sync::atomic::AtomicBool::new(false);
        let out = painter.paint(&tensor, &never, &mut |_| Ok(()))?;
        Ok(Painting {
            images: vec![out.image],
            parameters: painter.parameters(request.max_side),
            load_seconds,
            paint_seconds: painting.elapsed().as_secs_f64(),
            peak_memory_bytes: None,
            warnings: Vec::new(),
        })
    }

    fn paint_fast(
        &mut self,
        style: &FastStyle,
        photo: &RgbImage,
        request: &PaintRequest,
    ) -> Result<Painting> {
        let started = Instant::now();
        // Styles are plain data: their debug form identifies what was loaded.
        let key = format!("{style:?}/{}/{}", request.max_side, request.style_scale);
        let index = match self.fast.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let painter = FastPainter::build_scaled(
                    style,
                    &self.device,
                    request.max_side,
                    request.style_scale,
                )?;
                self.fast.push((key, painter));
                self.fast.len() - 1
            }
        };
        let load_seconds = started.elapsed().as_secs_f64();
        let painter = &self.fast[index].1;
        let painting = Instant::now();
        let strength = request.strength.unwrap_or(1.0);
        let photo = easel_core::downscale_to_fit(photo.clone(), request.max_side);
        let tensor = easel_core::rgb_to_tensor(&photo, &self.device)?;
        let painted = painter.paint(&tensor, strength, request.keep_colors)?;
        Ok(Painting {
            images: vec![painted],
            parameters: painter.parameters(strength, request.keep_colors, request.max_side),
            load_seconds,
            paint_seconds: painting.elapsed().as_secs_f64(),
            peak_memory_bytes: None,
            warnings: Vec::new(),
        })
    }

    fn paint_diffusion(
        &mut self,
        sources: &ModelSources,
        photo: &RgbImage,
        request: &PaintRequest,
        condition: impl FnOnce(
            &StableDiffusion,
            &ResolvedModels,
            &diffusion::DiffusionSettings,
        ) -> Result<Conditioned>,
    ) -> Result<Painting> {
        let started = Instant::now();
        let mut options = request.diffusion.clone();
        options.strength = request.strength;
        let mut settings = options.settings(String::new(), &self.device)?;
        let mut sources = sources.clone();
        sources.controlnet = settings.controlnet_source();
        let prefer_fp16 = !self.device.is_cpu() && settings.dtype != DType::F32;
        let resolved = sources.resolve(prefer_fp16, None)?;
        let key = SdKey {
            resolved: resolved.clone(),
            dtype: settings.dtype,
        };
        // Taken out first, so that other models are freed before new ones load.
        let sd: &StableDiffusion = match self.sd.take() {
            Some((cached, sd)) if cached == key => &self.sd.insert((cached, sd)).1,
            _ => {
                let sd = resolved.load(&self.device, settings.dtype, AttentionSlicing::PAINTING)?;
                &self.sd.insert((key, sd)).1
            }
        };
        let Conditioned {
            mut conditioning,
            prompt,
            extra,
            warning,
        } = condition(sd, &resolved, &settings)?;
        settings.prompt = prompt;
        let load_seconds = started.elapsed().as_secs_f64();
        let painting = Instant::now();
        let seed = options.seed.unwrap_or(0);
        let mut noise = SeededNoise::new(seed);
        let painted = diffusion::paint_photo(
            sd,
            &settings,
            conditioning.as_mut(),
            photo.clone(),
            seed,
            &mut noise,
            &mut |_, _| {},
        )?;
        let mut parameters =
            settings.parameters(Some(seed), &resolved.ids, painted.width, painted.height);
        parameters.extra.extend(extra);
        let images = (0..settings.batch)
            .map(|i| painted.images.narrow(0, i, 1))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(HostError::compute("splitting the batch"))?;
        Ok(Painting {
            images,
            parameters,
            load_seconds,
            paint_seconds: painting.elapsed().as_secs_f64(),
            peak_memory_bytes: None,
            warnings: warning.into_iter().collect(),
        })
    }
}

/// A diffusion style's conditioning and what it records.
struct Conditioned {
    conditioning: Box<dyn Conditioning>,
    /// The prompt as recorded.
    prompt: String,
    /// More parameters to record.
    extra: Vec<(String, String)>,
    /// Something the user should know (a forced bank).
    warning: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The shared test images' folder and the cat photo in it.
    fn shared_images_and_cat() -> (PathBuf, RgbImage) {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/images");
        let photo = easel_core::load_rgb(
            &images.join("content/chelsea_cat.png"),
            &easel_core::LoadOptions::default(),
        )
        .unwrap();
        (images, photo)
    }

    /// The host paints a Gatys style exactly as its painter does, and keeps the painter (the
    /// embedded network and the paintings) for the next call with the same style.
    #[test]
    fn gatys_paints_what_its_painter_paints() {
        let (images, photo) = shared_images_and_cat();
        let style = GatysStyle {
            network: crate::gatys::GatysNetwork::EfficientNetLite0,
            paintings: vec![images.join("style/vangogh_starry_night.jpg")],
            mask: None,
        };
        let mut settings = crate::gatys::Settings::new();
        settings.iterations = 2;
        let gatys = Style::Gatys {
            style: style.clone(),
            settings: settings.clone(),
        };
        assert_eq!(gatys.method(), "gatys");
        let request = PaintRequest {
            max_side: 48,
            ..PaintRequest::default()
        };
        let mut host = Host::new(Device::Cpu);
        let first = host.paint(&gatys, &photo, &request).unwrap();
        let again = host.paint(&gatys, &photo, &request).unwrap();

        let painter = GatysPainter::build(&style, settings, &Device::Cpu).unwrap();
        let small = easel_core::downscale_to_fit(photo.clone(), 48);
        let tensor = easel_core::rgb_to_tensor(&small, &Device::Cpu).unwrap();
        let never = std::sync::atomic::AtomicBool::new(false);
        let direct = painter
            .paint(&tensor, &never, &mut |_| Ok(()))
            .unwrap()
            .image;
        assert_eq!(first.images[0].dims(), [1, 3, 32, 48]);
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values(&first.images[0]) == values(&direct));
        assert!(values(&again.images[0]) == values(&direct));
        assert_eq!(first.parameters, painter.parameters(48));
        assert!(host.gatys.is_some());
    }

    /// The request's style scale reaches the fast painter: the host paints what
    /// `FastPainter::build_scaled` paints, and another scale is another painter.
    #[test]
    fn the_style_scale_reaches_fast_painters() {
        let (images, photo) = shared_images_and_cat();
        let style = FastStyle::Arbitrary {
            paintings: vec![crate::fast::WeightedPath {
                path: images.join("style/vangogh_starry_night.jpg"),
                weight: 1.0,
            }],
        };
        let mut host = Host::new(Device::Cpu);
        let paint = |host: &mut Host, scale: f64| {
            let request = PaintRequest {
                max_side: 64,
                style_scale: scale,
                ..PaintRequest::default()
            };
            let painted = host
                .paint(&Style::Fast(style.clone()), &photo, &request)
                .unwrap();
            painted.images[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (plain, doubled) = (paint(&mut host, 1.0), paint(&mut host, 2.0));
        assert_eq!(host.fast.len(), 2);
        let painter = FastPainter::build_scaled(&style, &Device::Cpu, 64, 2.0).unwrap();
        let small = easel_core::downscale_to_fit(photo.clone(), 64);
        let tensor = easel_core::rgb_to_tensor(&small, &Device::Cpu).unwrap();
        let direct = painter.paint(&tensor, 1.0, false).unwrap();
        assert!(doubled == direct.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(plain != doubled);
    }
}
