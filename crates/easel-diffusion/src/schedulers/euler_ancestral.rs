//! Euler ancestral sampling (Karras et al. 2022, k-diffusion's
//! `sample_euler_ancestral`), following diffusers' `EulerAncestralDiscreteScheduler`.

use candle_core::{Result, Tensor};

use super::{
    arange, check_steps, check_train_timestep, index_of, linspace, prepare, prepare_add_noise,
    prepare_noise, to_train_timesteps, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};

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

/// Euler ancestral sampling in the sigma parameterisation (diffusers
/// `EulerAncestralDiscreteScheduler`). Each step needs a noise tensor.
///
/// With the `Linspace` spacing, diffusers' timesteps may be fractional; the
/// sigmas use the exact positions and [`Scheduler::timesteps`] reports them
/// rounded to the nearest integer (for the model's time embedding).
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    config: SchedulerConfig,
    train_sigmas: Vec<f64>,
    timesteps: Vec<usize>,
    /// One per timestep, plus a final 0.
    sigmas: Vec<f64>,
}

impl EulerAncestral {
    /// An Euler ancestral scheduler for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let train_sigmas = train_sigmas(&config.alphas_cumprod()?);
        let mut s = Self {
            config: config.clone(),
            train_sigmas,
            timesteps: vec![],
            sigmas: vec![],
        };
        s.set_timesteps(steps)?;
        Ok(s)
    }

    /// The noise levels of the schedule: one per timestep, then 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn sigma_at(&self, timestep: usize) -> Result<f64> {
        check_train_timestep(&self.config, timestep)?;
        Ok(match self.timesteps.iter().position(|&t| t == timestep) {
            Some(i) => self.sigmas[i],
            None => self.train_sigmas[timestep],
        })
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(&self.config, steps)?;
        let t = self.config.num_train_timesteps;
        let positions: Vec<f64> = match self.config.timestep_spacing {
            // diffusers keeps these as float32 and does not round them.
            TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v as f32 as f64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = t / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio) as f64 + self.config.steps_offset as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => arange(t as f64, 0.0, -(t as f64 / steps as f64))
                .into_iter()
                .map(|v| v.round_ties_even() - 1.0)
                .collect(),
        };
        let rounded: Vec<f64> = positions.iter().map(|v| v.round_ties_even()).collect();
        let timesteps = to_train_timesteps(&rounded, &self.config)?;
        let mut sigmas: Vec<f64> = positions
            .iter()
            .map(|&p| interp(&self.train_sigmas, p))
            .collect();
        sigmas.push(0.0);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().cloned().fold(0.0, f64::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&self, sample: Tensor, timestep: usize) -> Result<Tensor> {
        let i = index_of(
            &self.timesteps,
            timestep,
            "Euler ancestral scale_model_input",
        )?;
        let sigma = self.sigmas[i];
        sample.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    /// `noise` may be `None` only on the last step, whose noise weight is 0.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let who = "Euler ancestral step";
        let i = index_of(&self.timesteps, timestep, who)?;
        let dtype = sample.dtype();
        let (model_output, x, wd) = prepare(who, model_output, sample)?;
        let sigma = self.sigmas[i];
        let sigma_to = self.sigmas[i + 1];
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => (&x - model_output.affine(sigma, 0.0)?)?,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (model_output.affine(-sigma / s2.sqrt(), 0.0)? + x.affine(1.0 / s2, 0.0)?)?
            }
        };
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();
        let derivative = (&x - x0)?.affine(1.0 / sigma, 0.0)?;
        let dt = sigma_down - sigma;
        let mut prev = (&x + derivative.affine(dt, 0.0)?)?;
        if sigma_up > 0.0 || noise.is_some() {
            let noise = prepare_noise(who, noise, sample, wd)?;
            prev = (prev + noise.affine(sigma_up, 0.0)?)?;
        }
        prev.to_dtype(dtype)
    }

    /// `original + sigma(timestep) * noise`, with the schedule's sigma when
    /// `timestep` is in the schedule and the training sigma otherwise.
    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor> {
        let sigma = self.sigma_at(timestep)?;
        let dtype = original.dtype();
        let (x, n) = prepare_add_noise(original, noise)?;
        (x + n.affine(sigma, 0.0)?)?.to_dtype(dtype)
    }
}
