//! Noise schedulers behind one trait.
//!
//! Every scheduler follows the semantics of its `diffusers` counterpart, and the
//! parity test `tests/scheduler_parity.rs` checks our trajectories against golden
//! runs recorded with `tools/ref/schedulers_ref.py`:
//!
//! | [`SchedulerKind`] | name      | type                | diffusers class                                          |
//! |-------------------|-----------|---------------------|----------------------------------------------------------|
//! | `Ddim`            | `ddim`    | [`Ddim`]            | `DDIMScheduler`                                          |
//! | `DpmPlusPlus2M`   | `dpm++2m` | [`DpmPlusPlus2M`]   | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint) |
//! | `EulerAncestral`  | `euler-a` | [`EulerAncestral`]  | `EulerAncestralDiscreteScheduler`                        |
//! | -                 | -         | [`DdimInverse`]     | `DDIMInverseScheduler` (for DDIM inversion)              |
//!
//! Schedule math (betas, cumulative alphas, sigmas, solver coefficients) is done
//! in `f64`; tensors stay in the sample's dtype, except that `f16`/`bf16` samples
//! are upcast to `f32` for the update (as diffusers does) and cast back.
//!
//! **Noise.** Ancestral updates ([`EulerAncestral`], [`Ddim`] with `eta > 0`) do
//! not draw random numbers themselves: the caller passes the noise for each step
//! to [`Scheduler::step`] (a standard normal tensor shaped like the sample), so a
//! seed fully determines a run and tests can inject diffusers' noise.
//! [`Scheduler::needs_noise`] tells whether a scheduler wants it; passing `None`
//! to a scheduler that needs noise is an error, and deterministic schedulers
//! ignore it.
//!
//! **State.** Multistep schedulers keep their history inside; it is cleared by
//! [`Scheduler::set_timesteps`] and by the constructors.
//!
//! A typical text-to-image loop:
//!
//! ```no_run
//! # use candle_core::{Device, Result, Tensor};
//! # use easel_diffusion::schedulers::*;
//! # fn unet(x: &Tensor, t: usize) -> Result<Tensor> { Ok(x.clone()) }
//! # fn main() -> Result<()> {
//! let mut scheduler = build(SchedulerKind::EulerAncestral, &SchedulerConfig::sd15(), 25)?;
//! let mut latents = Tensor::randn(0f32, 1., (1, 4, 64, 64), &Device::Cpu)?
//!     .affine(scheduler.init_noise_sigma(), 0.)?;
//! for &t in scheduler.timesteps().to_vec().iter() {
//!     let input = scheduler.scale_model_input(latents.clone(), t)?;
//!     let eps = unet(&input, t)?;
//!     let noise = latents.randn_like(0., 1.)?;
//!     latents = scheduler.step(&eps, t, &latents, Some(&noise))?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Result, Tensor};

mod ddim;
mod dpm_solver;
mod euler_ancestral;

pub use ddim::{Ddim, DdimInverse};
pub use dpm_solver::DpmPlusPlus2M;
pub use euler_ancestral::EulerAncestral;

/// A noise scheduler: the timestep schedule and the update rule of one sampler.
pub trait Scheduler: Send {
    /// The inference timesteps, in the order they are visited (descending for
    /// denoising, ascending for inversion).
    fn timesteps(&self) -> &[usize];

    /// Recomputes the schedule for `steps` inference steps and clears any
    /// multistep history. Errors if `steps` is 0 or larger than the number of
    /// training timesteps.
    fn set_timesteps(&mut self, steps: usize) -> Result<()>;

    /// Standard deviation of the initial noise: multiply unit Gaussian noise by
    /// this before the first step of text-to-image.
    fn init_noise_sigma(&self) -> f64;

    /// Scales the denoising model input at `timestep` (identity for DDIM and
    /// DPM-Solver; `x / sqrt(sigma^2 + 1)` for Euler). `timestep` must be in the
    /// schedule for schedulers that scale.
    fn scale_model_input(&self, sample: Tensor, timestep: usize) -> Result<Tensor>;

    /// Whether [`Scheduler::step`] needs a noise tensor.
    fn needs_noise(&self) -> bool {
        false
    }

    /// One update from `timestep` to the next timestep of the schedule.
    ///
    /// `model_output` is the model's prediction (epsilon or v, see
    /// [`PredictionType`]) for `sample` at `timestep`, which must be one of
    /// [`Scheduler::timesteps`]. `noise` is a standard normal tensor shaped like
    /// `sample`; it is required when [`Scheduler::needs_noise`] is true and
    /// ignored otherwise. Returns the sample at the next timestep.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Noises a clean sample to the noise level of `timestep` (the forward
    /// process), as img2img does with the first timestep it runs.
    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor>;

    /// The tail of the schedule that img2img runs for `strength` in `[0, 1]`
    /// (diffusers' `get_timesteps`): `&timesteps()[img2img_start(len, strength)?..]`.
    /// For 50 steps and strength 0.7 this is the last 35 timesteps. Strength 0
    /// gives an empty slice.
    fn timesteps_for_strength(&self, strength: f64) -> Result<&[usize]> {
        let timesteps = self.timesteps();
        let start = img2img_start(timesteps.len(), strength)?;
        Ok(&timesteps[start..])
    }
}

/// Index of the first timestep that img2img runs, as in diffusers'
/// `StableDiffusionImg2ImgPipeline.get_timesteps`:
/// `init = min(floor(steps * strength), steps)`, start = `steps - init`.
///
/// Errors if `strength` is not a number in `[0, 1]`.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        bail!("img2img strength must be in [0, 1], got {strength}")
    }
    let init = ((steps as f64 * strength) as usize).min(steps);
    Ok(steps - init)
}

/// How beta grows from `beta_start` to `beta_end` over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)` (diffusers `"linear"`).
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end))^2` (`"scaled_linear"`, SD 1.x/2.x).
    ScaledLinear,
    /// The cosine alpha-bar schedule of improved DDPM, betas capped at 0.999
    /// (`"squaredcos_cap_v2"`); ignores `beta_start`/`beta_end`.
    SquaredcosCapV2,
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise (`"epsilon"`, SD 1.x and SD 2.x-base).
    Epsilon,
    /// The velocity `v = sqrt(a) * eps - sqrt(1 - a) * x0` (`"v_prediction"`, SD 2.x 768).
    VPrediction,
}

/// How inference timesteps are spread over the training timesteps
/// (table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly from 0 to `T - 1`, rounded (`"linspace"`).
    Linspace,
    /// Multiples of `T / steps` from 0, plus `steps_offset` (`"leading"`, SD 1.5).
    Leading,
    /// Multiples of `T / steps` counted down from `T`, minus one (`"trailing"`).
    Trailing,
}

macro_rules! name_enum {
    ($ty:ident, $what:literal, $($name:literal => $variant:ident),+ $(,)?) => {
        impl $ty {
            /// The name diffusers uses in `scheduler_config.json`.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl FromStr for $ty {
            type Err = candle_core::Error;
            fn from_str(s: &str) -> Result<Self> {
                match s.trim() {
                    $($name => Ok($ty::$variant),)+
                    other => bail!(
                        "unknown {} {other:?}, expected one of: {}",
                        $what,
                        [$($name),+].join(", ")
                    ),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

name_enum!(BetaSchedule, "beta schedule",
    "linear" => Linear, "scaled_linear" => ScaledLinear, "squaredcos_cap_v2" => SquaredcosCapV2);
name_enum!(PredictionType, "prediction type", "epsilon" => Epsilon, "v_prediction" => VPrediction);
name_enum!(TimestepSpacing, "timestep spacing",
    "linspace" => Linspace, "leading" => Leading, "trailing" => Trailing);

/// The training noise schedule and sampling options shared by all schedulers;
/// field names and meanings follow diffusers' `scheduler_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Number of diffusion steps the model was trained with (`T`, 1000 for SD).
    pub num_train_timesteps: usize,
    /// Beta at the first training timestep.
    pub beta_start: f64,
    /// Beta at the last training timestep.
    pub beta_end: f64,
    /// How beta goes from `beta_start` to `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// DDIM only: clamp the predicted clean sample to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// DDIM only: the clamp bound when `clip_sample` is set.
    pub clip_sample_range: f64,
    /// DDIM: use alpha-bar 1 (instead of the first training alpha-bar) after the
    /// last step. DDIM inversion: use it before the first step.
    pub set_alpha_to_one: bool,
    /// Added to every timestep of the `Leading` spacing (1 for SD 1.5).
    pub steps_offset: usize,
    /// How inference timesteps are chosen.
    pub timestep_spacing: TimestepSpacing,
}

impl SchedulerConfig {
    /// Stable Diffusion 1.5: T = 1000, scaled-linear betas 0.00085..0.012,
    /// epsilon prediction, no clipping, `set_alpha_to_one = false`,
    /// `steps_offset = 1`, leading spacing.
    pub fn sd15() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: false,
            steps_offset: 1,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }

    /// SD 1.5's schedule with v-prediction (as SD 2.x 768 models use).
    pub fn sd15_v_prediction() -> Self {
        Self {
            prediction_type: PredictionType::VPrediction,
            ..Self::sd15()
        }
    }

    /// Checks the values that would make the schedule meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps < 2 {
            bail!(
                "num_train_timesteps must be at least 2, got {}",
                self.num_train_timesteps
            )
        }
        if self.beta_schedule != BetaSchedule::SquaredcosCapV2 {
            for (name, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(b > 0.0 && b < 1.0) {
                    bail!("{name} must be in (0, 1), got {b}")
                }
            }
        }
        if self.clip_sample && !(self.clip_sample_range > 0.0 && self.clip_sample_range.is_finite())
        {
            bail!(
                "clip_sample_range must be positive, got {}",
                self.clip_sample_range
            )
        }
        Ok(())
    }

    /// Cumulative products of `1 - beta` over the training timesteps.
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>> {
        self.validate()?;
        let n = self.num_train_timesteps;
        let betas: Vec<f64> = match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredcosCapV2 => {
                let alpha_bar = |t: f64| {
                    let c = ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos();
                    c * c
                };
                (0..n)
                    .map(|i| {
                        let t1 = i as f64 / n as f64;
                        let t2 = (i + 1) as f64 / n as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        let mut acc = 1.0;
        Ok(betas
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect())
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

/// The samplers a user can pick by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// DDIM, eta 0 (`ddim`).
    Ddim,
    /// DPM-Solver++ 2M (`dpm++2m`).
    DpmPlusPlus2M,
    /// Euler ancestral (`euler-a`).
    EulerAncestral,
}

impl SchedulerKind {
    /// All kinds, in the order of [`SchedulerKind::name`]s shown to users.
    pub const ALL: [SchedulerKind; 3] = [Self::Ddim, Self::DpmPlusPlus2M, Self::EulerAncestral];

    /// The user-facing name: `ddim`, `dpm++2m` or `euler-a`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::DpmPlusPlus2M => "dpm++2m",
            Self::EulerAncestral => "euler-a",
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = candle_core::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match Self::ALL.iter().find(|k| k.name().eq_ignore_ascii_case(s)) {
            Some(k) => Ok(*k),
            None => bail!("unknown scheduler {s:?}, expected one of: ddim, dpm++2m, euler-a"),
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds the scheduler `kind` for `steps` inference steps (DDIM with eta 0).
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(Ddim::new(config, steps, 0.0)?),
        SchedulerKind::DpmPlusPlus2M => Box::new(DpmPlusPlus2M::new(config, steps)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
    })
}

// ---------------------------------------------------------------------------
// Shared helpers.

/// numpy's `linspace(start, end, n)` (endpoint included, last value exact).
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = end;
            v
        }
    }
}

/// numpy's `arange(start, stop, step)` for floats.
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len.is_finite() && len > 0.0 {
        len as usize
    } else {
        0
    };
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// Checks `steps` against the training schedule.
pub(crate) fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<()> {
    if steps == 0 {
        bail!("the number of inference steps must be at least 1, got 0")
    }
    if steps > config.num_train_timesteps {
        bail!(
            "the number of inference steps ({steps}) cannot exceed num_train_timesteps ({})",
            config.num_train_timesteps
        )
    }
    Ok(())
}

/// The descending inference timesteps of `steps` steps for `config.timestep_spacing`, as
/// diffusers computes them before any rounding: `Linspace` positions as they fall, `Leading`
/// multiples of `T / steps` plus `steps_offset`, `Trailing` multiples of `T / steps` counted
/// down from `T`, rounded, minus one. `steps` must be at least 1 (callers run
/// [`check_steps`] first, or ask for more steps than they were given).
pub(crate) fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let t = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f64 + config.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(t as f64, 0.0, -(t as f64 / steps as f64))
            .into_iter()
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Converts rounded float timesteps to indices, checking they are training timesteps.
pub(crate) fn to_train_timesteps(values: &[f64], config: &SchedulerConfig) -> Result<Vec<usize>> {
    let timesteps = values
        .iter()
        .map(|&v| {
            if v >= 0.0 && v < config.num_train_timesteps as f64 {
                Ok(v as usize)
            } else {
                bail!(
                    "timestep {v} is outside the training range 0..{} (check steps_offset = {})",
                    config.num_train_timesteps,
                    config.steps_offset
                )
            }
        })
        .collect::<Result<Vec<usize>>>()?;
    if let Some(w) = timesteps.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "{} inference steps repeat timestep {} with {} spacing; use fewer steps",
            timesteps.len(),
            w[0],
            config.timestep_spacing
        )
    }
    Ok(timesteps)
}

/// Position of `timestep` in `timesteps`, or an error naming it.
pub(crate) fn index_of(timesteps: &[usize], timestep: usize, who: &str) -> Result<usize> {
    match timesteps.iter().position(|&t| t == timestep) {
        Some(i) => Ok(i),
        None => bail!(
            "{who}: timestep {timestep} is not in the schedule ({} steps, from {:?} to {:?})",
            timesteps.len(),
            timesteps.first(),
            timesteps.last()
        ),
    }
}

/// Checks a training timestep for `add_noise`.
pub(crate) fn check_train_timestep(config: &SchedulerConfig, timestep: usize) -> Result<()> {
    if timestep >= config.num_train_timesteps {
        bail!(
            "timestep {timestep} is outside the training range 0..{}",
            config.num_train_timesteps
        )
    }
    Ok(())
}

/// `sqrt((1 - a) / a)` for each training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// numpy's `interp(x, arange(len(fp)), fp)`.
pub(crate) fn interp(fp: &[f64], x: f64) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let i = x.floor() as usize;
    let frac = x - i as f64;
    fp[i] + (fp[i + 1] - fp[i]) * frac
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at noise level `sigma`.
pub(crate) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The noise level of training timestep `timestep` for `add_noise` in a sigma schedule: the
/// schedule's (`sigmas[i]`) when `timestep` is `timesteps[i]`, else the training sigma.
pub(crate) fn add_noise_sigma(
    config: &SchedulerConfig,
    timesteps: &[usize],
    sigmas: &[f64],
    train_sigmas: &[f64],
    timestep: usize,
) -> Result<f64> {
    check_train_timestep(config, timestep)?;
    Ok(match timesteps.iter().position(|&t| t == timestep) {
        Some(i) => sigmas[i],
        None => train_sigmas[timestep],
    })
}

/// The dtype updates are computed in: `f32` for half types, else the sample's.
pub(crate) fn work_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// Casts `model_output` and `sample` (and the optional noise) to the work dtype
/// after checking their shapes agree.
pub(crate) fn prepare(
    who: &str,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<(Tensor, Tensor, DType)> {
    if model_output.dims() != sample.dims() {
        bail!(
            "{who}: model output shape {:?} differs from sample shape {:?}",
            model_output.dims(),
            sample.dims()
        )
    }
    if !sample.dtype().is_float() {
        bail!(
            "{who}: sample must be a float tensor, got {:?}",
            sample.dtype()
        )
    }
    let wd = work_dtype(sample.dtype());
    Ok((model_output.to_dtype(wd)?, sample.to_dtype(wd)?, wd))
}

/// Checks and casts a step's noise.
pub(crate) fn prepare_noise(
    who: &str,
    noise: Option<&Tensor>,
    sample: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    let Some(noise) = noise else {
        bail!("{who}: this scheduler is ancestral and needs a noise tensor for each step, got None")
    };
    if noise.dims() != sample.dims() {
        bail!(
            "{who}: noise shape {:?} differs from sample shape {:?}",
            noise.dims(),
            sample.dims()
        )
    }
    noise.to_dtype(dtype)
}

/// `a * x + b * y`.
pub(crate) fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// Checks `add_noise` inputs and returns them in the work dtype.
pub(crate) fn prepare_add_noise(original: &Tensor, noise: Tensor) -> Result<(Tensor, Tensor)> {
    if original.dims() != noise.dims() {
        bail!(
            "add_noise: noise shape {:?} differs from sample shape {:?}",
            noise.dims(),
            original.dims()
        )
    }
    if !original.dtype().is_float() {
        bail!(
            "add_noise: sample must be a float tensor, got {:?}",
            original.dtype()
        )
    }
    let wd = work_dtype(original.dtype());
    Ok((original.to_dtype(wd)?, noise.to_dtype(wd)?))
}
