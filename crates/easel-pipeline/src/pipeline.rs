//! The img2img loop: paint a photo with Stable Diffusion, optionally held to its structure by a
//! ControlNet. It reproduces diffusers' `StableDiffusionControlNetImg2ImgPipeline` (and, without
//! a ControlNet, `StableDiffusionImg2ImgPipeline`) step for step:
//!
//! 1. the photo `[1, 3, H, W]` in `[0, 1]` is mapped to `[-1, 1]`, encoded by the VAE and a
//!    posterior sample (seeded noise) is scaled by the VAE's `scaling_factor`, then repeated
//!    over the batch;
//! 2. the schedule's tail for `strength` is run ([`img2img_start`]): the latents are noised to
//!    its first timestep ([`NoiseStart::Img2Img`]), to the schedule's timestep above it as
//!    ldm's img2img does ([`NoiseStart::LdmImg2Img`], LSAST's), or ArtBank's stochastic
//!    inversion noises them with the UNet's own prediction ([`NoiseStart::StochasticInversion`]);
//! 3. at each timestep the [`Conditioning`] gives the contexts; with classifier-free guidance
//!    (`guidance_scale > 1`) the UNet sees the batch `[uncond, cond]` and the predictions are
//!    combined as `uncond + g · (cond − uncond)`; the ControlNet's residuals (scale
//!    `control.scale`) are added while the step lies in `[control.start, control.end]`
//!    (diffusers' `controlnet_keep`: step `i` of `n` is kept unless `i/n < start` or
//!    `(i+1)/n > end`); in guess mode the ControlNet sees only the conditional half and the
//!    unconditional half gets zero residuals; with [`ControlGuidance::CondOnly`] (LSAST's) it
//!    sees only the conditional half and both halves get its residuals;
//! 4. the scheduler steps (ancestral schedulers take seeded noise);
//! 5. the latents are divided by `scaling_factor`, decoded, and mapped to `[0, 1]`.
//!
//! **Failures.** Latents that turn NaN or infinite stop the run with the step number; a decode
//! that overflows in f16 / bf16 is redone in f32 before giving up. Photos smaller than
//! [`MIN_SIDE`] pixels are refused, and so is a run whose estimated activation memory
//! ([`StableDiffusion::estimate_memory_bytes`]) exceeds what the device has available, before
//! any work instead of by the OOM killer. Randomness comes from a [`NoiseSource`]
//! ([`SeededNoise`] for a seed: the same image for the same seed on the CPU).

use candle_core::{bail, DType, Result, Tensor};
use easel_core::memory::{self, OutOfMemory};
use easel_diffusion::contexts::{CrossAttentionLayout, LayerGroups, UNetContexts};
use easel_diffusion::schedulers::{
    build, img2img_start, Ddim, PredictionType, Scheduler, SchedulerKind,
};
use easel_diffusion::unet::ControlResiduals;
use easel_diffusion::vae::AutoencoderKL;

use crate::conditioning::Conditioning;
use crate::models::StableDiffusion;
use crate::noise::{NoiseSource, NoiseUse, SeededNoise};

/// The smallest photo side the pipeline accepts, in pixels.
pub const MIN_SIDE: usize = 64;

/// Measured activation peaks over [`easel_diffusion::memory`]'s counts, as a fraction: what
/// [`StableDiffusion::estimate_memory_bytes`] multiplies the count by.
const MEASURED_OVER_COUNTED: (u128, u128) = (8, 5);

/// Which contexts the ControlNet sees under classifier-free guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlGuidance {
    /// diffusers' way: the ControlNet runs on the whole `[uncond, cond]` batch, each half with
    /// its own context.
    #[default]
    Batch,
    /// LSAST's way (`ldm/models/diffusion/ddim.py`, `decode`): the ControlNet runs once, on the
    /// conditional context, and its residuals are added to both halves.
    CondOnly,
}

/// How the photo's latents become the input of the first denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseStart {
    /// diffusers' img2img: the latents noised with fresh noise to the run's first timestep.
    #[default]
    Img2Img,
    /// ArtBank's stochastic inversion (`test.py`): the latents are noised with fresh noise to
    /// training timestep `t = floor(strength · T)` (at most `T − 1`), the UNet's conditional
    /// prediction of the noise there (with the ControlNet's residuals when one is loaded)
    /// becomes the noise that takes the clean latents to `t` (`stochastic_encode(...,
    /// noise=model_output, use_original_steps=True)`), and the run goes on from the img2img
    /// start as before.
    StochasticInversion,
    /// The CompVis ldm code's img2img, which the official LSAST code runs
    /// (`stochastic_encode(x0, t_enc)` at DDIM index `t_enc = strength · steps`, then `decode`
    /// from index `t_enc − 1`): the latents are noised with fresh noise to the schedule's
    /// timestep one step above the first denoising step (701 for the first step 681 of 50 DDIM
    /// steps at strength 0.7), or to the first step itself at strength 1.
    LdmImg2Img,
}

impl ControlGuidance {
    /// Every choice, in the order of their names in messages.
    pub const ALL: [ControlGuidance; 2] = [Self::Batch, Self::CondOnly];

    /// The name users give: `batch` or `cond-only`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::CondOnly => "cond-only",
        }
    }
}

impl NoiseStart {
    /// Every choice, in the order of their names in messages.
    pub const ALL: [NoiseStart; 3] = [Self::Img2Img, Self::StochasticInversion, Self::LdmImg2Img];

    /// The name users give: `img2img`, `stochastic-inversion` or `ldm-img2img`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Img2Img => "img2img",
            Self::StochasticInversion => "stochastic-inversion",
            Self::LdmImg2Img => "ldm-img2img",
        }
    }
}

/// The choice of `all` named `text`, or a message listing the names.
fn parse_named<T: Copy>(
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> std::result::Result<T, String> {
    all.iter()
        .copied()
        .find(|&c| name(c) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&c| name(c)).collect();
            format!("{text:?} is not one of {}", names.join(", "))
        })
}

impl std::str::FromStr for ControlGuidance {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        parse_named(text, &Self::ALL, Self::name)
    }
}

impl std::str::FromStr for NoiseStart {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        parse_named(text, &Self::ALL, Self::name)
    }
}

/// How the ControlNet steers the denoising.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlSettings {
    /// Multiplier of the ControlNet residuals (diffusers' `controlnet_conditioning_scale`).
    pub scale: f64,
    /// Fraction of the run's steps after which the ControlNet starts acting, in `[0, 1]`.
    pub start: f64,
    /// Fraction of the run's steps after which it stops, in `[start, 1]`.
    pub end: f64,
    /// Guess mode: the ControlNet sees only the conditional half of the batch and its residuals
    /// are scaled from 0.1 (shallowest) to 1 (mid block). Forced on by ControlNets with
    /// `global_pool_conditions`.
    pub guess_mode: bool,
    /// Which contexts the ControlNet sees under guidance (guess mode runs it on the
    /// conditional half alone either way, with zeros for the unconditional half).
    pub guidance: ControlGuidance,
}

impl Default for ControlSettings {
    /// Scale 1, active over the whole run, no guess mode, the ControlNet on the whole batch.
    fn default() -> Self {
        Self {
            scale: 1.0,
            start: 0.0,
            end: 1.0,
            guess_mode: false,
            guidance: ControlGuidance::Batch,
        }
    }
}

/// One stylization run.
#[derive(Debug, Clone)]
pub struct StylizeRequest {
    /// The photo, `[1, 3, H, W]` in `[0, 1]`, already resized so that `H` and `W` are
    /// multiples of 8 (the VAE's downsampling factor) and at least [`MIN_SIDE`].
    pub image: Tensor,
    /// The ControlNet's conditioning image (e.g. Canny edges), `[1, 3, H, W]` in `[0, 1]`;
    /// required when the models have a ControlNet, refused otherwise.
    pub control_image: Option<Tensor>,
    /// How much of the photo is repainted, in `(0, 1]`: the run starts at step
    /// `steps − floor(steps · strength)` of the schedule.
    pub strength: f64,
    /// Inference steps of the full schedule (the run does `floor(steps · strength)` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 disables guidance (no unconditional pass).
    pub guidance_scale: f64,
    /// How the photo's latents start the run.
    pub noise_start: NoiseStart,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// DDIM's eta (0: deterministic; `> 0` draws noise each step); ignored by other samplers.
    pub eta: f64,
    /// ControlNet settings.
    pub control: ControlSettings,
    /// Seed of [`SeededNoise`] (used by [`StableDiffusion::stylize`]).
    pub seed: u64,
    /// Number of images painted from the photo (each with its own noise).
    pub batch: usize,
    /// Encode the photo and decode the latents tile by tile (bounded memory for large images,
    /// slightly different pixels at tile seams; the VAE's own tile size), as diffusers'
    /// `enable_vae_tiling` does.
    pub vae_tiling: bool,
    /// The bytes the run may use for activations; `None`: what the device has available when
    /// the run starts ([`easel_core::memory::available_bytes`]). A run whose estimate
    /// ([`StableDiffusion::estimate_memory_bytes`]) exceeds it is refused before any work.
    pub memory_limit: Option<u64>,
}

impl StylizeRequest {
    /// A request with the defaults: strength 0.7, 50 steps, guidance 7.5, the img2img start,
    /// DDIM (eta 0),
    /// default [`ControlSettings`], seed 0, one image, no VAE tiling, the device's available
    /// memory as the limit.
    pub fn new(image: Tensor) -> Self {
        Self {
            image,
            control_image: None,
            strength: 0.7,
            steps: 50,
            guidance_scale: 7.5,
            noise_start: NoiseStart::Img2Img,
            scheduler: SchedulerKind::Ddim,
            eta: 0.0,
            control: ControlSettings::default(),
            seed: 0,
            batch: 1,
            vae_tiling: false,
            memory_limit: None,
        }
    }
}

/// Whether diffusers' `controlnet_keep` keeps the ControlNet at step `i` of `n`.
pub fn control_active(i: usize, n: usize, start: f64, end: f64) -> bool {
    let (a, b) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
    !(a < start || b > end)
}

impl StableDiffusion {
    /// Runs `request` with noise seeded by `request.seed` ([`SeededNoise`]); returns the
    /// images `[batch, 3, H, W]` (f32, in `[0, 1]`, on the models' device).
    /// `progress(step, total)` is called after each denoising step.
    pub fn stylize(
        &self,
        request: &StylizeRequest,
        conditioning: &mut dyn Conditioning,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let mut noise = SeededNoise::new(request.seed);
        self.stylize_with_noise(request, conditioning, &mut noise, progress)
    }

    /// [`Self::stylize`] with noise from `noise` (`request.seed` is not read).
    pub fn stylize_with_noise(
        &self,
        request: &StylizeRequest,
        conditioning: &mut dyn Conditioning,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let latents = self.denoise(request, conditioning, noise, progress)?;
        // 5. Decode.
        let scaling = self.vae.config().scaling_factor;
        self.decode_latents(&(latents / scaling)?, request.vae_tiling)
    }

    /// Steps 1-4 of the run: the final latents `[batch, c, h, w]` in the models' dtype, scaled
    /// by the VAE's `scaling_factor` (what diffusers' `callback_on_step_end` sees last).
    pub fn denoise(
        &self,
        request: &StylizeRequest,
        conditioning: &mut dyn Conditioning,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.check_request(request)?;
        let device = &self.device;
        let dtype = self.dtype;
        let batch = request.batch;
        let mut scheduler: Box<dyn Scheduler> = match request.scheduler {
            SchedulerKind::Ddim => Box::new(Ddim::new(
                &self.scheduler_config,
                request.steps,
                request.eta,
            )?),
            kind => build(kind, &self.scheduler_config, request.steps)?,
        };
        let start = img2img_start(request.steps, request.strength)?;
        let timesteps = scheduler.timesteps()[start..].to_vec();
        let n = timesteps.len();
        let Some(&first) = timesteps.first() else {
            bail!(
                "strength {} with {} steps runs no denoising step; raise the strength or the \
                 steps",
                request.strength,
                request.steps
            )
        };

        // 1-2. Photo latents, noised to the first timestep.
        let photo = request.image.to_device(device)?.to_dtype(dtype)?;
        let photo = photo.affine(2.0, -1.0)?;
        let posterior = if request.vae_tiling {
            self.vae.encode_tiled(&photo, &self.vae.config().tiling())?
        } else {
            self.vae.encode(&photo)?
        };
        let vae_noise = noise
            .next(NoiseUse::VaeSample, posterior.mean().dims(), device)?
            .to_dtype(dtype)?;
        let scaling = self.vae.config().scaling_factor;
        let init = (posterior.sample(&vae_noise)? * scaling)?.repeat((batch, 1, 1, 1))?;
        let init_noise = noise
            .next(NoiseUse::Img2Img, init.dims(), device)?
            .to_dtype(dtype)?;

        let guided = request.guidance_scale > 1.0;
        let layout = self.unet.cross_attention_layout();
        let control = match (&self.controlnet, &request.control_image) {
            (Some(controlnet), Some(image)) => Some((
                controlnet,
                image
                    .to_device(device)?
                    .to_dtype(dtype)?
                    .repeat((batch, 1, 1, 1))?,
            )),
            _ => None,
        };
        let guess_mode = request.control.guess_mode
            || control
                .as_ref()
                .is_some_and(|(c, _)| c.config.global_pool_conditions);
        let train_steps = self.scheduler_config.num_train_timesteps;

        let mut latents = match request.noise_start {
            NoiseStart::Img2Img => scheduler.add_noise(&init, init_noise, first)?,
            NoiseStart::LdmImg2Img => {
                // The schedule runs descending: the step above the first is the one before it.
                let above = match start.checked_sub(1) {
                    Some(i) => scheduler.timesteps()[i],
                    None => first,
                };
                scheduler.add_noise(&init, init_noise, above)?
            }
            NoiseStart::StochasticInversion => {
                // floor, as the official `int(strength * 1000)`; strength 1 would index past
                // the schedule.
                let t = ((request.strength * train_steps as f64).floor() as usize)
                    .min(train_steps.saturating_sub(1));
                // The noised latents the UNet sees are DDPM's (variance-preserving, unscaled),
                // whatever the sampler.
                let ddpm = Ddim::new(&self.scheduler_config, request.steps, 0.0)?;
                let noised = ddpm.add_noise(&init, init_noise, t)?;
                let cond = repeat_contexts(
                    &conditioning.contexts(t, train_steps)?.cond,
                    batch,
                    dtype,
                    device,
                )?;
                let residuals = match &control {
                    Some((controlnet, image)) => Some(controlnet.model.forward(
                        &noised,
                        t as f64,
                        &cond,
                        image,
                        request.control.scale,
                        guess_mode,
                    )?),
                    None => None,
                };
                let output = self
                    .unet
                    .forward(&noised, t as f64, &cond, residuals.as_ref())?;
                let predicted_noise = self.predicted_noise(output, &noised, t)?;
                scheduler.add_noise(&init, predicted_noise, t)?
            }
        };

        // 3-4. Denoising.
        for (i, &t) in timesteps.iter().enumerate() {
            let contexts = conditioning.contexts(t, train_steps)?;
            let cond = repeat_contexts(&contexts.cond, batch, dtype, device)?;
            let unet_contexts = if guided {
                let uncond = repeat_contexts(&contexts.uncond, batch, dtype, device)?;
                stack_contexts(&uncond, &cond, &layout)?
            } else {
                cond.clone()
            };
            let model_input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_input = scheduler.scale_model_input(model_input, t)?;
            let timestep = t as f64;

            let residuals = match &control {
                Some((controlnet, image))
                    if control_active(i, n, request.control.start, request.control.end) =>
                {
                    let scale = request.control.scale;
                    let model = &controlnet.model;
                    let cond_only = request.control.guidance == ControlGuidance::CondOnly;
                    Some(if guided && (guess_mode || cond_only) {
                        let input = scheduler.scale_model_input(latents.clone(), t)?;
                        let half =
                            model.forward(&input, timestep, &cond, image, scale, guess_mode)?;
                        if guess_mode {
                            zero_uncond_half(half)?
                        } else {
                            both_halves(half)?
                        }
                    } else {
                        let image = if guided {
                            Tensor::cat(&[image, image], 0)?
                        } else {
                            image.clone()
                        };
                        model.forward(
                            &model_input,
                            timestep,
                            &unet_contexts,
                            &image,
                            scale,
                            guess_mode,
                        )?
                    })
                }
                _ => None,
            };

            let prediction =
                self.unet
                    .forward(&model_input, timestep, &unet_contexts, residuals.as_ref())?;
            let prediction = if guided {
                let uncond = prediction.narrow(0, 0, batch)?;
                let cond = prediction.narrow(0, batch, batch)?;
                (&uncond + ((cond - &uncond)? * request.guidance_scale)?)?
            } else {
                prediction
            };
            let step_noise = if scheduler.needs_noise() {
                Some(
                    noise
                        .next(NoiseUse::Step(i), latents.dims(), device)?
                        .to_dtype(dtype)?,
                )
            } else {
                None
            };
            latents = scheduler.step(&prediction, t, &latents, step_noise.as_ref())?;
            if !all_finite(&latents)? {
                bail!(
                    "the model produced NaN at step {} of {n}; try f32 weights or a lower \
                     guidance scale",
                    i + 1
                )
            }
            progress(i + 1, n);
        }
        Ok(latents)
    }

    /// The noise the UNet's `output` at training timestep `t` predicts for `noised`: the output
    /// itself for ε-prediction; `sqrt(ᾱ_t)·v + sqrt(1 − ᾱ_t)·x_t` for v-prediction.
    fn predicted_noise(&self, output: Tensor, noised: &Tensor, t: usize) -> Result<Tensor> {
        match self.scheduler_config.prediction_type {
            PredictionType::Epsilon => Ok(output),
            PredictionType::VPrediction => {
                let alphas = self.scheduler_config.alphas_cumprod()?;
                let Some(&a) = alphas.get(t) else {
                    bail!(
                        "timestep {t} is outside the training range 0..{}",
                        alphas.len()
                    )
                };
                (output * a.sqrt())? + (noised * (1.0 - a).sqrt())?
            }
        }
    }

    /// Decodes unscaled latents to images in `[0, 1]` (f32), redoing an overflowing f16 / bf16
    /// decode in f32.
    fn decode_latents(&self, latents: &Tensor, tiling: bool) -> Result<Tensor> {
        let decode = |vae: &AutoencoderKL, latents: &Tensor| -> Result<Tensor> {
            let images = if tiling {
                vae.decode_tiled(latents, &vae.config().tiling())?
            } else {
                vae.decode(latents)?
            };
            images.to_dtype(DType::F32)
        };
        let mut images = decode(&self.vae, latents)?;
        if !all_finite(&images)? && self.dtype != DType::F32 {
            let vae = self.vae_in(DType::F32)?;
            images = decode(&vae, &latents.to_dtype(DType::F32)?)?;
        }
        if !all_finite(&images)? {
            bail!(
                "the VAE decoder produced NaN or infinite values; try f32 weights or a lower \
                 guidance scale"
            )
        }
        images.affine(0.5, 0.5)?.clamp(0f32, 1f32)
    }

    fn check_request(&self, request: &StylizeRequest) -> Result<()> {
        let (b, c, h, w) = request.image.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "the photo must be a [1, 3, H, W] tensor, got {:?}",
                request.image.dims()
            ))
        })?;
        if b != 1 || c != 3 {
            bail!(
                "the photo must be a [1, 3, H, W] tensor, got {:?}",
                request.image.dims()
            )
        }
        if h < MIN_SIDE || w < MIN_SIDE {
            bail!(
                "the photo is {w}×{h} pixels, smaller than {MIN_SIDE} on a side; paint a \
                 larger canvas (at least {MIN_SIDE} on a side)"
            )
        }
        let factor = self.vae.config().downsampling_factor();
        if h % factor != 0 || w % factor != 0 {
            bail!("the photo is {w}×{h} pixels; both sides must be multiples of {factor}")
        }
        if request.batch == 0 {
            bail!("the batch must hold at least one image")
        }
        if request.steps == 0 {
            bail!("steps must be at least 1")
        }
        if !(request.strength > 0.0 && request.strength <= 1.0) {
            bail!("strength must be in (0, 1], got {}", request.strength)
        }
        if !request.guidance_scale.is_finite() {
            bail!(
                "guidance must be a finite number, got {}",
                request.guidance_scale
            )
        }
        if !(request.eta.is_finite() && request.eta >= 0.0) {
            bail!("eta must be a non-negative number, got {}", request.eta)
        }
        let control = &request.control;
        if !control.scale.is_finite() {
            bail!(
                "the control scale must be a finite number, got {}",
                control.scale
            )
        }
        if !(0.0 <= control.start && control.start < control.end && control.end <= 1.0) {
            bail!(
                "the control start {} and end {} must satisfy 0 <= start < end <= 1",
                control.start,
                control.end
            )
        }
        match (&self.controlnet, &request.control_image) {
            (Some(_), None) => bail!("a ControlNet is loaded but no control image was given"),
            (None, Some(_)) => bail!("a control image was given but no ControlNet is loaded"),
            (Some(_), Some(image)) if image.dims() != [1, 3, h, w] => bail!(
                "the control image is {:?}, it must be [1, 3, {h}, {w}] like the photo",
                image.dims()
            ),
            _ => {}
        }
        self.check_memory(request).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{e}; a smaller canvas, fewer images at once or VAE tiling need less"
            ))
        })
    }

    /// The estimated activation peak of `request` in bytes, weights excluded (they are loaded
    /// already): the largest of the photo's encoding, a denoising step (the UNet on the
    /// guided batch, the ControlNet before it and its residuals held while the UNet runs) and
    /// the decoding, plus the photo, control image and latents kept throughout. The model
    /// behind each term is [`easel_diffusion::memory`]'s; the count is scaled by the measured
    /// ratio of real peaks to it (1.6). A photo that is not `[.., H, W]` counts as empty (it is
    /// refused by the run's other checks).
    pub fn estimate_memory_bytes(&self, request: &StylizeRequest) -> u64 {
        let (h, w) = match request.image.dims() {
            [.., h, w] => (*h, *w),
            _ => (0, 0),
        };
        let elem = self.dtype.size_in_bytes();
        let e = elem as u64;
        let vae = self.vae.config();
        let factor = vae.downsampling_factor().max(1);
        let (lh, lw) = (h.div_ceil(factor), w.div_ceil(factor));
        let batch = request.batch;
        let guided_batch = batch.saturating_mul(if request.guidance_scale > 1.0 { 2 } else { 1 });
        let tiles = request.vae_tiling.then(|| vae.tiling());
        let mul = easel_diffusion::memory::product;
        let pixels = mul(&[h as u64, w as u64]);

        let encode = vae.encode_bytes(1, h, w, elem, tiles.as_ref());
        let unet = self
            .unet
            .config()
            .inference_bytes(guided_batch, lh, lw, elem);
        let denoise = match &self.controlnet {
            Some(controlnet) => {
                let cfg = &controlnet.config;
                let image = mul(&[guided_batch as u64, 3, pixels, e]);
                let residuals = cfg.residual_bytes(guided_batch, lh, lw, elem);
                image.saturating_add(
                    cfg.inference_bytes(guided_batch, lh, lw, elem)
                        .max(residuals.saturating_add(unet)),
                )
            }
            None => unet,
        };
        // The decoded images and their f32 copy.
        let images = mul(&[batch as u64, 3, pixels, e.saturating_add(4)]);
        let decode = vae
            .decode_bytes(batch, lh, lw, elem, tiles.as_ref())
            .saturating_add(images);
        // The photo (f32 and model dtype) and about four latent tensors of the guided batch.
        let photo = mul(&[3, pixels, e.saturating_add(4)]);
        let latents = mul(&[
            4,
            guided_batch as u64,
            vae.latent_channels as u64,
            lh as u64,
            lw as u64,
            e,
        ]);
        let counted = encode
            .max(denoise)
            .max(decode)
            .saturating_add(photo)
            .saturating_add(latents);
        // The count misses allocator slack and short-lived temporaries: on the CPU with SD 1.5
        // shapes at 512² the measured peaks above the weights were 1.49× (ControlNet + UNet
        // step) and 1.63× (VAE decode) the counted ones (docs/reliability.md).
        let (num, den) = MEASURED_OVER_COUNTED;
        u64::try_from(u128::from(counted) * num / den).unwrap_or(u64::MAX)
    }

    /// Refuses `request` when [`Self::estimate_memory_bytes`] exceeds its `memory_limit`, or
    /// without one what the models' device has available.
    pub fn check_memory(&self, request: &StylizeRequest) -> std::result::Result<(), OutOfMemory> {
        let needed = self.estimate_memory_bytes(request);
        let available = request
            .memory_limit
            .or_else(|| memory::available_bytes(&self.device));
        let what = || {
            let (h, w) = match request.image.dims() {
                [.., h, w] => (*h, *w),
                _ => (0, 0),
            };
            let images = match request.batch {
                1 => "1 image".to_string(),
                n => format!("{n} images"),
            };
            format!("painting {images} of {w}×{h} pixels")
        };
        memory::ensure_fits_in(what, needed, available, memory::device_label(&self.device))
    }
}

/// Contexts of batch 1 (or already `batch`) repeated to `batch`, in `dtype` on `device`.
fn repeat_contexts(
    contexts: &UNetContexts,
    batch: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<UNetContexts> {
    let tensors = contexts
        .contexts()
        .iter()
        .map(|c| {
            let c = c.to_device(device)?.to_dtype(dtype)?;
            match c.dim(0)? {
                b if b == batch => Ok(c),
                1 => c.repeat((batch, 1, 1)),
                b => bail!("conditioning contexts have batch {b}, expected 1 or {batch}"),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    UNetContexts::new(contexts.groups(), tensors)
}

/// `[uncond, cond]` along the batch. Contexts of different groupings are expanded to one
/// context per layer of `layout` first.
fn stack_contexts(
    uncond: &UNetContexts,
    cond: &UNetContexts,
    layout: &CrossAttentionLayout,
) -> Result<UNetContexts> {
    let (groups, pairs): (LayerGroups, Vec<(&Tensor, &Tensor)>) =
        if uncond.groups() == cond.groups() && uncond.contexts().len() == cond.contexts().len() {
            (
                cond.groups(),
                uncond.contexts().iter().zip(cond.contexts()).collect(),
            )
        } else {
            let u = uncond.per_layer(layout)?;
            let c = cond.per_layer(layout)?;
            (LayerGroups::PerLayer, u.into_iter().zip(c).collect())
        };
    let stacked = pairs
        .into_iter()
        .map(|(u, c)| Tensor::cat(&[u, c], 0))
        .collect::<Result<Vec<_>>>()?;
    UNetContexts::new(groups, stacked)
}

/// Residuals of the conditional half with zeros prepended for the unconditional half.
fn zero_uncond_half(half: ControlResiduals) -> Result<ControlResiduals> {
    let pad = |r: &Tensor| Tensor::cat(&[&r.zeros_like()?, r], 0);
    Ok(ControlResiduals {
        down: half.down.iter().map(pad).collect::<Result<Vec<_>>>()?,
        mid: pad(&half.mid)?,
    })
}

/// Residuals of the conditional half, for both halves of the guided batch.
fn both_halves(half: ControlResiduals) -> Result<ControlResiduals> {
    let twice = |r: &Tensor| Tensor::cat(&[r, r], 0);
    Ok(ControlResiduals {
        down: half.down.iter().map(twice).collect::<Result<Vec<_>>>()?,
        mid: twice(&half.mid)?,
    })
}

/// Whether every value of `xs` is finite (a sum is NaN or infinite otherwise).
fn all_finite(xs: &Tensor) -> Result<bool> {
    Ok(xs
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_finite())
}
