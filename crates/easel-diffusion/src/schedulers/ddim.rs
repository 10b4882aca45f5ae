//! DDIM ("Denoising Diffusion Implicit Models", Song et al. 2020) and its
//! inversion, following diffusers' `DDIMScheduler` and `DDIMInverseScheduler`.

use candle_core::{bail, Result, Tensor};

use super::{
    check_steps, check_train_timestep, index_of, lin2, prepare, prepare_add_noise, prepare_noise,
    spaced_timesteps, to_train_timesteps, PredictionType, Scheduler, SchedulerConfig,
    TimestepSpacing,
};

/// The alpha-bar on the far side of training timestep 0: 1 with `set_alpha_to_one`, else
/// that of timestep 0 (where [`Ddim`] ends and [`DdimInverse`] starts).
fn boundary_alpha_cumprod(config: &SchedulerConfig, alphas_cumprod: &[f64]) -> f64 {
    if config.set_alpha_to_one {
        1.0
    } else {
        alphas_cumprod[0]
    }
}

/// Predicted clean sample and noise from a model output.
fn predict_x0_eps(
    config: &SchedulerConfig,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f64,
) -> Result<(Tensor, Tensor)> {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
    let (x0, eps) = match config.prediction_type {
        PredictionType::Epsilon => (
            // (x - sqrt(1 - a) * eps) / sqrt(a)
            lin2(1.0 / sa, sample, -sb / sa, model_output)?,
            model_output.clone(),
        ),
        PredictionType::VPrediction => (
            lin2(sa, sample, -sb, model_output)?,
            lin2(sa, model_output, sb, sample)?,
        ),
    };
    let x0 = if config.clip_sample {
        let r = config.clip_sample_range;
        x0.clamp(-r, r)?
    } else {
        x0
    };
    Ok((x0, eps))
}

/// DDIM sampling (diffusers `DDIMScheduler`).
///
/// `eta` = 0 is the deterministic DDIM sampler; `eta` = 1 adds DDPM-like
/// noise, and then [`Scheduler::step`] needs a noise tensor per step.
#[derive(Debug, Clone)]
pub struct Ddim {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    eta: f64,
    steps: usize,
    timesteps: Vec<usize>,
}

impl Ddim {
    /// A DDIM scheduler for `steps` inference steps with noise weight `eta`
    /// (`>= 0`; 0 is deterministic).
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Result<Self> {
        if !(eta >= 0.0 && eta.is_finite()) {
            bail!("DDIM eta must be a finite number >= 0, got {eta}")
        }
        let alphas_cumprod = config.alphas_cumprod()?;
        let final_alpha_cumprod = boundary_alpha_cumprod(config, &alphas_cumprod);
        let mut s = Self {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            eta,
            steps: 0,
            timesteps: vec![],
        };
        s.set_timesteps(steps)?;
        Ok(s)
    }

    /// The noise weight.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// Cumulative alphas of the training schedule.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }
}

/// Descending DDIM timesteps.
fn ddim_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<usize>> {
    check_steps(config, steps)?;
    // Rounds the linspace positions (the other spacings give whole numbers).
    let values: Vec<f64> = spaced_timesteps(config, steps)
        .into_iter()
        .map(f64::round_ties_even)
        .collect();
    to_train_timesteps(&values, config)
}

/// `sqrt(a) * x + sqrt(1 - a) * noise`.
fn ddpm_add_noise(
    config: &SchedulerConfig,
    alphas_cumprod: &[f64],
    original: &Tensor,
    noise: Tensor,
    timestep: usize,
) -> Result<Tensor> {
    check_train_timestep(config, timestep)?;
    let dtype = original.dtype();
    let (x, n) = prepare_add_noise(original, noise)?;
    let a = alphas_cumprod[timestep];
    lin2(a.sqrt(), &x, (1.0 - a).sqrt(), &n)?.to_dtype(dtype)
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.timesteps = ddim_timesteps(&self.config, steps)?;
        self.steps = steps;
        Ok(())
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _timestep: usize) -> Result<Tensor> {
        Ok(sample)
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        index_of(&self.timesteps, timestep, "DDIM step")?;
        let dtype = sample.dtype();
        let (model_output, x, wd) = prepare("DDIM step", model_output, sample)?;
        let prev = timestep as i64 - (self.config.num_train_timesteps / self.steps) as i64;
        let alpha_prod_t = self.alphas_cumprod[timestep];
        let alpha_prod_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (x0, eps) = predict_x0_eps(&self.config, &model_output, &x, alpha_prod_t)?;
        // sigma_t^2 of the paper, eq. (16).
        let variance =
            (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = (1.0 - alpha_prod_prev - std_dev * std_dev).max(0.0).sqrt();
        let mut prev_sample = lin2(alpha_prod_prev.sqrt(), &x0, direction, &eps)?;
        if self.eta > 0.0 {
            let noise = prepare_noise("DDIM step (eta > 0)", noise, sample, wd)?;
            prev_sample = (prev_sample + noise.affine(std_dev, 0.0)?)?;
        }
        prev_sample.to_dtype(dtype)
    }

    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor> {
        ddpm_add_noise(
            &self.config,
            &self.alphas_cumprod,
            original,
            noise,
            timestep,
        )
    }
}

/// DDIM inversion (diffusers `DDIMInverseScheduler`): runs the deterministic
/// DDIM update backwards, from a clean latent to a noise latent, over
/// ascending timesteps. Feeding the result to [`Ddim`] (eta 0) with the same
/// model and step count approximately reconstructs the input.
///
/// With `set_alpha_to_one = false` (SD 1.5, as diffusers pipelines build it
/// with `from_config`), the first step starts from the noise level of
/// training timestep 0, mirroring where [`Ddim`] ends.
/// Only `Leading` and `Trailing` spacings are supported (as in diffusers).
#[derive(Debug, Clone)]
pub struct DdimInverse {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
    initial_alpha_cumprod: f64,
    steps: usize,
    timesteps: Vec<usize>,
}

impl DdimInverse {
    /// An inversion scheduler for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod()?;
        let initial_alpha_cumprod = boundary_alpha_cumprod(config, &alphas_cumprod);
        let mut s = Self {
            config: config.clone(),
            alphas_cumprod,
            initial_alpha_cumprod,
            steps: 0,
            timesteps: vec![],
        };
        s.set_timesteps(steps)?;
        Ok(s)
    }
}

impl Scheduler for DdimInverse {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(&self.config, steps)?;
        if self.config.timestep_spacing == TimestepSpacing::Linspace {
            bail!(
                "DDIM inversion supports the leading and trailing timestep spacings, not linspace"
            )
        }
        // The DDIM timesteps, ascending.
        let values: Vec<f64> = spaced_timesteps(&self.config, steps)
            .into_iter()
            .rev()
            .collect();
        self.timesteps = to_train_timesteps(&values, &self.config)?;
        self.steps = steps;
        Ok(())
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _timestep: usize) -> Result<Tensor> {
        Ok(sample)
    }

    /// Moves `sample` from the previous noise level up to that of `timestep`,
    /// using the model output predicted at `timestep`. `noise` is ignored.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        index_of(&self.timesteps, timestep, "DDIM inverse step")?;
        let dtype = sample.dtype();
        let (model_output, x, _) = prepare("DDIM inverse step", model_output, sample)?;
        let t = self.config.num_train_timesteps;
        let from = (timestep as i64 - (t / self.steps) as i64).min(t as i64 - 1);
        let alpha_prod_from = if from >= 0 {
            self.alphas_cumprod[from as usize]
        } else {
            self.initial_alpha_cumprod
        };
        let alpha_prod_to = self.alphas_cumprod[timestep];
        let (x0, eps) = predict_x0_eps(&self.config, &model_output, &x, alpha_prod_from)?;
        lin2(
            alpha_prod_to.sqrt(),
            &x0,
            (1.0 - alpha_prod_to).sqrt(),
            &eps,
        )?
        .to_dtype(dtype)
    }

    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor> {
        ddpm_add_noise(
            &self.config,
            &self.alphas_cumprod,
            original,
            noise,
            timestep,
        )
    }
}
