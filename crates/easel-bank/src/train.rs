//! The `learn` trainer: fits a bank to an artwork collection by inversion — the ε-prediction
//! loss of the frozen UNet (and ControlNet), optimised in the bank's variables only.
//!
//! One optimizer step `s` draws `n = batch · grad_accumulation` samples from a generator seeded
//! by `(seed, s)`:
//!
//! - timesteps **stratified** over `[0, T)`: sample `i` gets `t_i = ⌊(i + u_i) · T / n⌋`,
//!   `u_i ~ U[0, 1)`. Each `t_i` is still uniform over its stratum, so the loss is the usual
//!   one in expectation, but every step sees the whole noise range; the ε-loss varies more with
//!   `t` than with anything else, so this makes step losses comparable from step to step;
//! - the training view of each sample, uniform over the cached views
//!   ([`crate::collection`]);
//! - ε ~ N(0, 1) per sample (Box–Muller on easel's own generator: the same on every device).
//!
//! Then per micro-batch of `batch` samples: `x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε` (the forward
//! process, as the schedulers' `add_noise`, with per-sample `t`); the contexts of each sample's
//! stage come from the bank through CLIP with gradients
//! ([`BankConditioner::train_contexts_for_stage`], one CLIP pass per distinct stage); the
//! ControlNet (with `control`, when the models have one) sees the view's own Canny edges at
//! `control_scale`; the loss is
//! `mean((unet(x_t, t, ctx, residuals) − ε)²) / grad_accumulation`, back-propagated and summed
//! over the micro-batches. The frozen models hold plain tensors, never [`candle_core::Var`]s,
//! and their layers back-propagate to their inputs only ([`easel_diffusion::frozen`]), so
//! gradients are computed for the bank's variables and for no model weight
//! ([`StepGradients::other_gradients`] counts any other entry of the gradient store: 0).
//!
//! The update is AdamW (decoupled weight decay, bias-corrected moments, as PyTorch's), written
//! here so that its moments can be checkpointed; the learning rate warms up linearly over
//! `warmup_steps` then follows [`LrSchedule`]. Since step `s`'s draws depend only on
//! `(seed, s)`, a checkpoint (bank, moments, steps done: [`crate::checkpoint`]) continues a run
//! bit-exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Result, Tensor, Var};
use easel_core::rng::SplitMix64;
use easel_core::training::Adam;
use easel_diffusion::contexts::UNetContexts;
use easel_diffusion::controlnet::ControlNetModel;
use easel_diffusion::unet::UNet2DConditionModel;
use easel_pipeline::models::StableDiffusion;
use serde::{Deserialize, Serialize};

use crate::bank::Bank;
use crate::checkpoint::{Checkpoint, Moments};
use crate::collection::TrainExample;
use crate::inject::{BankConditioner, ConditionerOptions};

/// How the learning rate evolves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The peak rate until the end.
    Constant,
    /// Half a cosine from the peak rate to 0 at the last step.
    Cosine,
    /// A straight line from the peak rate to 0 at the last step.
    Linear,
}

/// The settings of a training run (stored as JSON in the bank's `training` metadata and in
/// checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps of the run.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    pub warmup_steps: usize,
    /// The learning rate after warm-up.
    pub lr_schedule: LrSchedule,
    /// Samples per forward pass.
    pub batch: usize,
    /// Forward passes whose gradients make one step.
    pub grad_accumulation: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW's moment decay rates `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// AdamW's denominator epsilon.
    pub eps: f64,
    /// Side of the square training views in pixels (512 for SD 1.5; a multiple of 8).
    pub resolution: usize,
    /// Seed of every random draw of the run.
    pub seed: u64,
    /// Write a checkpoint every this many steps (0: only when stopped and at the end).
    pub checkpoint_every: usize,
    /// Call the validation hook every this many steps (0: never).
    pub validate_every: usize,
    /// Training timesteps of the model's noise schedule (1000 for SD).
    pub num_train_timesteps: usize,
    /// Cached views (crops and flips) per artwork ([`crate::collection`]).
    pub views_per_image: usize,
    /// Low Canny threshold of the control images.
    pub canny_low: f32,
    /// High Canny threshold of the control images.
    pub canny_high: f32,
    /// Multiplier of the ControlNet residuals.
    pub control_scale: f64,
    /// Train through the ControlNet on each view's Canny edges (when the models have one).
    /// LSAST and ArtBank train without it (`apply_model(..., control=None)`); it is the content
    /// branch at inference only. Runs from before this setting trained through it.
    #[serde(default = "trained_through_control")]
    pub control: bool,
    /// How the learned bank paints by default (its preset's; the bank file carries them).
    #[serde(default)]
    pub inference: crate::preset::InferenceDefaults,
    /// The caption template the artworks are learned under, `{}` where the bank's tokens go
    /// (LSAST's official caption is the placeholder alone, `{}`); `None`: the bank's own
    /// prompt template, which it also paints with.
    #[serde(default)]
    pub caption: Option<String>,
    /// The Stable Diffusion the run learns on, as it was named (a hub id, folder or file;
    /// `None`: the default model); a resumed run loads it again.
    #[serde(default)]
    pub base_model: Option<String>,
}

/// Checks a training caption: `{}` exactly once.
pub fn check_caption(caption: &str) -> Result<()> {
    if caption.matches("{}").count() != 1 {
        bail!("training caption {caption:?} must contain {{}} exactly once (where the bank's tokens go)")
    }
    Ok(())
}

fn trained_through_control() -> bool {
    true
}

/// Largest training resolution (SD 1.x was trained at 512; 2048 is already 16× its latent).
pub const MAX_RESOLUTION: usize = 2048;

impl Default for TrainConfig {
    /// 1000 steps at 5e-3 (50 warm-up, then constant), batch 1 × 4 accumulated, AdamW
    /// (0.9, 0.999), eps 1e-8, weight decay 1e-2, 512 px, seed 0, checkpoints and validation
    /// every 250 steps, T = 1000, 4 views per artwork, Canny 100:200, through the ControlNet
    /// at scale 1.
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 5e-3,
            warmup_steps: 50,
            lr_schedule: LrSchedule::Constant,
            batch: 1,
            grad_accumulation: 4,
            weight_decay: 1e-2,
            betas: (0.9, 0.999),
            eps: 1e-8,
            resolution: 512,
            seed: 0,
            checkpoint_every: 250,
            validate_every: 250,
            num_train_timesteps: 1000,
            views_per_image: 4,
            canny_low: 100.0,
            canny_high: 200.0,
            control_scale: 1.0,
            control: true,
            inference: crate::preset::InferenceDefaults::default(),
            caption: None,
            base_model: None,
        }
    }
}

impl TrainConfig {
    /// Checks the settings; the error names the wrong one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("steps", self.steps),
            ("batch", self.batch),
            ("grad_accumulation", self.grad_accumulation),
            ("resolution", self.resolution),
            ("num_train_timesteps", self.num_train_timesteps),
            ("views_per_image", self.views_per_image),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("training: {name} must be at least 1")
            }
        }
        if self.resolution > MAX_RESOLUTION {
            bail!(
                "training: resolution {} is larger than {MAX_RESOLUTION}",
                self.resolution
            )
        }
        if !self.resolution.is_multiple_of(8) {
            bail!(
                "training: resolution {} is not a multiple of 8",
                self.resolution
            )
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("training: lr must be positive, got {}", self.lr)
        }
        self.adam().validate("training")?;
        if !self.control_scale.is_finite() {
            bail!("training: control_scale must be finite")
        }
        self.inference.validate()?;
        if let Some(caption) = &self.caption {
            check_caption(caption)?;
        }
        Ok(())
    }

    /// The optimizer: AdamW with these betas, eps and weight decay.
    pub fn adam(&self) -> Adam {
        Adam {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// The learning rate of the update made at step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            LrSchedule::Linear => self.lr * (1.0 - p),
        }
    }
}

/// Normal draws from easel's seeded generator.
pub(crate) trait Normals {
    /// `n` standard normal values (Box–Muller).
    fn normals(&mut self, n: usize) -> Vec<f32>;
}

impl Normals for SplitMix64 {
    fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.unit(); // (0, 1]
            let u2 = self.unit();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// The gradients of one step, before the update.
#[derive(Debug, Clone)]
pub struct StepGradients {
    /// The step's loss (mean over its samples).
    pub loss: f32,
    /// The samples' timesteps.
    pub timesteps: Vec<usize>,
    /// The samples' bank stages.
    pub stages: Vec<usize>,
    /// The gradient of each bank variable, by name (sorted), summed over micro-batches.
    pub grads: Vec<(String, Tensor)>,
    /// Entries of candle's gradient stores that were not bank variables (weights or other
    /// constants whose gradient was computed for nothing), summed over micro-batches: 0 with
    /// easel's frozen layers.
    pub other_gradients: usize,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done after it (1-based number of the step).
    pub step: usize,
    /// Its loss.
    pub loss: f32,
    /// Its learning rate.
    pub lr: f64,
    /// Its samples' timesteps.
    pub timesteps: Vec<usize>,
}

/// How [`Trainer::train`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// All `steps` were done.
    Finished,
    /// The stop flag was raised; a checkpoint was written after the last finished step.
    Stopped,
}

/// The progress callback of [`Hooks`].
pub type StepHook<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// The validation callback of [`Hooks`]: steps done and the current bank.
pub type ValidateHook<'a> = Box<dyn FnMut(usize, &Bank) -> Result<()> + 'a>;

/// Callbacks of [`Trainer::train`].
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every step.
    pub on_step: Option<StepHook<'a>>,
    /// Called every `validate_every` steps with the steps done and the current bank.
    pub on_validate: Option<ValidateHook<'a>>,
    /// Checked before every step: when set, the run checkpoints and returns
    /// [`TrainOutcome::Stopped`] (the CLI sets it on Ctrl-C).
    pub stop: Option<&'a AtomicBool>,
}

/// Bytes the trainer holds besides the frozen models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// The bank's variables (f32).
    pub parameter_bytes: usize,
    /// The optimizer's two moments per variable.
    pub optimizer_bytes: usize,
    /// The cached latents and control images.
    pub example_bytes: usize,
}

/// A training run: the frozen models, the bank being learned, its optimizer state and the
/// cached views.
#[derive(Debug)]
pub struct Trainer {
    conditioner: BankConditioner,
    unet: UNet2DConditionModel,
    controlnet: Option<(ControlNetModel, bool)>,
    alphas_cumprod: Vec<f64>,
    examples: Vec<TrainExample>,
    config: TrainConfig,
    moments: Vec<Moments>,
    step: usize,
    run_dir: PathBuf,
    dtype: DType,
}

impl Trainer {
    /// A new run learning `bank` on `examples` with the models of `sd` (its ControlNet, if it
    /// has one, conditioned on the views' edges); checkpoints go to `run_dir`. Fails for
    /// invalid settings, no examples, views that do not fit the models, or a
    /// `num_train_timesteps` other than the model's schedule's.
    pub fn new(
        sd: &StableDiffusion,
        bank: Bank,
        examples: Vec<TrainExample>,
        config: TrainConfig,
        run_dir: &Path,
    ) -> Result<Self> {
        config.validate()?;
        if examples.is_empty() {
            bail!("training needs at least one view of an artwork")
        }
        let schedule = &sd.scheduler_config;
        if schedule.num_train_timesteps != config.num_train_timesteps {
            bail!(
                "training: num_train_timesteps is {} but the model's schedule has {}",
                config.num_train_timesteps,
                schedule.num_train_timesteps
            )
        }
        let factor = sd.vae.config().downsampling_factor();
        let latent = config.resolution / factor;
        let control = config.resolution;
        for (i, e) in examples.iter().enumerate() {
            let ok = matches!(e.latents.dims(), [1, _, h, w] if *h == latent && *w == latent)
                && matches!(e.control.dims(), [1, 3, h, w] if *h == control && *w == control);
            if !ok {
                bail!(
                    "training view {i}: latents {:?} and control {:?} do not fit resolution {}",
                    e.latents.shape(),
                    e.control.shape(),
                    config.resolution
                )
            }
        }
        let moments = bank
            .params()
            .vars()
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Moments {
                    name,
                    m: zeros.clone(),
                    v: zeros,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let options = ConditionerOptions {
            num_train_timesteps: config.num_train_timesteps,
            template: config.caption.clone(),
            ..ConditionerOptions::default()
        };
        let conditioner = BankConditioner::for_model(sd, bank, &options)?;
        Ok(Self {
            conditioner,
            unet: sd.unet.clone(),
            controlnet: sd
                .controlnet
                .as_ref()
                .filter(|_| config.control)
                .map(|c| (c.model.clone(), c.config.global_pool_conditions)),
            alphas_cumprod: schedule.alphas_cumprod()?,
            examples,
            config,
            moments,
            step: 0,
            run_dir: run_dir.to_path_buf(),
            dtype: sd.dtype,
        })
    }

    /// Continues the run checkpointed in `run_dir` (bank, optimizer moments, steps done,
    /// settings), with the same models and views as it was started with.
    pub fn resume(
        sd: &StableDiffusion,
        examples: Vec<TrainExample>,
        run_dir: &Path,
    ) -> Result<Self> {
        let ckpt = Checkpoint::load(run_dir, &sd.device)?;
        let mut trainer = Self::new(sd, ckpt.bank, examples, ckpt.config, run_dir)?;
        trainer.moments = ckpt.moments;
        trainer.step = ckpt.step;
        Ok(trainer)
    }

    /// Steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The bank being learned.
    pub fn bank(&self) -> &Bank {
        self.conditioner.bank()
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The optimizer moments, one per bank variable, sorted by name.
    pub fn moments(&self) -> &[Moments] {
        &self.moments
    }

    /// The `training` metadata of a bank file written from this run: the settings as JSON
    /// plus `steps_done`.
    pub fn training_metadata(&self) -> Result<serde_json::Value> {
        let mut value = serde_json::to_value(&self.config).map_err(candle_core::Error::wrap)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("steps_done".to_string(), self.step.into());
        }
        Ok(value)
    }

    /// Bytes of the bank's variables, the optimizer's moments and the cached views (on CUDA
    /// the activations' peak comes on top).
    pub fn memory_report(&self) -> MemoryReport {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        MemoryReport {
            parameter_bytes: self
                .bank()
                .vars()
                .iter()
                .map(|v| bytes(v.as_tensor()))
                .sum(),
            optimizer_bytes: self.moments.iter().map(|m| bytes(&m.m) + bytes(&m.v)).sum(),
            example_bytes: self
                .examples
                .iter()
                .map(|e| bytes(&e.latents) + bytes(&e.control))
                .sum(),
        }
    }

    /// The loss and gradients of step `step` (0-based) at the bank's current values, without
    /// updating anything.
    pub fn gradients(&self, step: usize) -> Result<StepGradients> {
        let cfg = &self.config;
        let n = cfg.batch * cfg.grad_accumulation;
        let big_t = cfg.num_train_timesteps;
        let mut rng = SplitMix64::for_step(cfg.seed, step);
        let mut timesteps = Vec::with_capacity(n);
        let mut views = Vec::with_capacity(n);
        for i in 0..n {
            let t = ((i as f64 + rng.unit()) * big_t as f64 / n as f64) as usize;
            timesteps.push(t.min(big_t - 1));
            views.push(rng.below(self.examples.len() as u64) as usize);
        }
        let latent_dims = self.examples[0].latents.dims().to_vec();
        let per_sample: usize = latent_dims[1..].iter().product();
        let noise = rng.normals(n * per_sample);
        let stages = timesteps
            .iter()
            .map(|&t| self.conditioner.stage_of(t))
            .collect::<Result<Vec<_>>>()?;

        let vars: Vec<(String, Var)> = self.bank().params().vars();
        let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss_total = 0f32;
        let mut other_gradients = 0;
        for micro in 0..cfg.grad_accumulation {
            let range = micro * cfg.batch..(micro + 1) * cfg.batch;
            let loss = self.micro_batch_loss(
                &timesteps[range.clone()],
                &stages[range.clone()],
                &views[range.clone()],
                &noise[range.start * per_sample..range.end * per_sample],
            )?;
            let loss = (loss / cfg.grad_accumulation as f64)?;
            loss_total += loss.to_scalar::<f32>()?;
            let mut grads = loss.backward()?;
            for ((_, var), sum) in vars.iter().zip(sums.iter_mut()) {
                if let Some(g) = grads.remove(var.as_tensor()) {
                    *sum = Some(match sum.take() {
                        Some(s) => (s + g)?,
                        None => g,
                    });
                }
            }
            other_gradients += grads.get_ids().count();
        }
        let grads = vars
            .iter()
            .zip(sums)
            .map(|((name, var), sum)| {
                Ok((
                    name.clone(),
                    match sum {
                        Some(s) => s,
                        None => var.as_tensor().zeros_like()?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StepGradients {
            loss: loss_total,
            timesteps,
            stages,
            grads,
            other_gradients,
        })
    }

    /// `mean((prediction − ε)²)` of one micro-batch (f32 scalar, differentiable in the bank).
    fn micro_batch_loss(
        &self,
        timesteps: &[usize],
        stages: &[usize],
        views: &[usize],
        noise: &[f32],
    ) -> Result<Tensor> {
        let b = timesteps.len();
        let first = &self.examples[views[0]];
        let device = first.latents.device().clone();
        let mut dims = first.latents.dims().to_vec();
        dims[0] = b;
        let x0 = Tensor::cat(
            &views
                .iter()
                .map(|&v| &self.examples[v].latents)
                .collect::<Vec<_>>(),
            0,
        )?
        .to_dtype(DType::F32)?;
        let eps = Tensor::from_vec(noise.to_vec(), dims.as_slice(), &device)?;
        let coef = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = timesteps
                .iter()
                .map(|&t| f(self.alphas_cumprod[t]) as f32)
                .collect();
            Tensor::from_vec(v, (b, 1, 1, 1), &device)
        };
        let signal = coef(&|a| a.sqrt())?;
        let sigma = coef(&|a| (1.0 - a).sqrt())?;
        let x_t =
            (x0.broadcast_mul(&signal)? + eps.broadcast_mul(&sigma)?)?.to_dtype(self.dtype)?;
        let t = Tensor::from_vec(
            timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            b,
            &device,
        )?;

        let mut by_stage: BTreeMap<usize, UNetContexts> = BTreeMap::new();
        for &s in stages {
            if let std::collections::btree_map::Entry::Vacant(e) = by_stage.entry(s) {
                e.insert(self.conditioner.train_contexts_for_stage(s)?);
            }
        }
        let groups = self.bank().layout().groups();
        let num_groups = self.bank().layout().num_groups();
        let contexts = (0..num_groups)
            .map(|g| {
                let parts = stages
                    .iter()
                    .map(|s| by_stage[s].contexts()[g].clone())
                    .collect::<Vec<_>>();
                Tensor::cat(&parts, 0)?.to_dtype(self.dtype)
            })
            .collect::<Result<Vec<_>>>()?;
        let contexts = UNetContexts::new(groups, contexts)?;

        let residuals = match &self.controlnet {
            Some((model, guess_mode)) => {
                let control = Tensor::cat(
                    &views
                        .iter()
                        .map(|&v| &self.examples[v].control)
                        .collect::<Vec<_>>(),
                    0,
                )?
                .to_dtype(self.dtype)?;
                Some(model.forward(
                    &x_t,
                    &t,
                    &contexts,
                    &control,
                    self.config.control_scale,
                    *guess_mode,
                )?)
            }
            None => None,
        };
        let pred = self.unet.forward(&x_t, &t, &contexts, residuals.as_ref())?;
        easel_diffusion::frozen::sub(&pred.to_dtype(DType::F32)?, &eps)?
            .sqr()?
            .mean_all()
    }

    /// One optimizer step: gradients of step [`Self::step`], AdamW update of the bank.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let step = self.step;
        let grads = self.gradients(step)?;
        let lr = self.config.lr_at(step);
        self.apply_adamw(&grads.grads, lr)?;
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: grads.loss,
            lr,
            timesteps: grads.timesteps,
        })
    }

    /// One AdamW update of every bank variable ([`easel_core::training::Adam`]).
    fn apply_adamw(&mut self, grads: &[(String, Tensor)], lr: f64) -> Result<()> {
        let adam = self.config.adam();
        let vars = self.conditioner.bank().params().vars();
        for (((name, var), (gname, g)), moments) in
            vars.iter().zip(grads).zip(self.moments.iter_mut())
        {
            if name != gname || name != &moments.name {
                bail!(
                    "optimizer: variable {name} met gradient {gname} and moments {}",
                    moments.name
                )
            }
            adam.update(self.step + 1, lr, var, g, (&mut moments.m, &mut moments.v))?;
        }
        Ok(())
    }

    /// The current state as a [`Checkpoint`].
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let bank = self.bank();
        // A copy of the variables, so the checkpoint does not follow later updates.
        let tensors = bank
            .params()
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.copy()?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let params = crate::params::BankParams::from_tensors(
            &bank.params().spec(),
            bank.layout(),
            bank.dim(),
            tensors,
        )?;
        Ok(Checkpoint {
            step: self.step,
            config: self.config.clone(),
            bank: Bank::new(
                bank.layout().clone(),
                params,
                bank.prompt().clone(),
                bank.init_word().to_string(),
            )?,
            moments: self.moments.clone(),
        })
    }

    /// Writes the checkpoint to the run folder atomically; returns its path.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.checkpoint()?.save(&self.run_dir)
    }

    /// Trains until `steps` are done or `hooks.stop` is raised, calling the hooks, writing
    /// checkpoints every `checkpoint_every` steps and at the end (finished or stopped).
    pub fn train(&mut self, hooks: &mut Hooks) -> Result<TrainOutcome> {
        while self.step < self.config.steps {
            if hooks.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                self.save_checkpoint()?;
                return Ok(TrainOutcome::Stopped);
            }
            let report = self.train_step()?;
            if let Some(f) = hooks.on_step.as_mut() {
                f(&report);
            }
            let every = |n: usize| n > 0 && self.step.is_multiple_of(n);
            if every(self.config.checkpoint_every) {
                self.save_checkpoint()?;
            }
            if every(self.config.validate_every) {
                if let Some(f) = hooks.on_validate.as_mut() {
                    f(self.step, self.conditioner.bank())?;
                }
            }
        }
        self.save_checkpoint()?;
        Ok(TrainOutcome::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_is_bounded_and_a_multiple_of_8() {
        assert!(TrainConfig::default().validate().is_ok());
        for (resolution, expected) in [
            (1 << 40, "larger than 2048"),
            (2056, "larger than 2048"),
            (100, "not a multiple of 8"),
            (0, "at least 1"),
        ] {
            let cfg = TrainConfig {
                resolution,
                ..TrainConfig::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{resolution}: {err}");
        }
    }
}
