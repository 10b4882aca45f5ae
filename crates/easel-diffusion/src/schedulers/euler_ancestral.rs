//! Euler ancestral sampling (Karras et al. 2022, k-diffusion's
//! `sample_euler_ancestral`), following diffusers' `EulerAncestralDiscreteScheduler`.

use candle_core::{Result, Tensor};

use super::{
    add_noise_sigma, alpha_sigma, check_steps, index_of, interp, prepare, prepare_add_noise,
    prepare_noise, spaced_timesteps, to_train_timesteps, train_sigmas, PredictionType, Scheduler,
    SchedulerConfig, TimestepSpacing,
};

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
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(&self.config, steps)?;
        // diffusers keeps the linspace positions as float32 and does not round them.
        let linspace = self.config.timestep_spacing == TimestepSpacing::Linspace;
        let positions: Vec<f64> = spaced_timesteps(&self.config, steps)
            .into_iter()
            .map(|v| if linspace { v as f32 as f64 } else { v })
            .collect();
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
        let (alpha, _) = alpha_sigma(self.sigmas[i]);
        sample.affine(alpha, 0.0)
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
        let sigma = add_noise_sigma(
            &self.config,
            &self.timesteps,
            &self.sigmas,
            &self.train_sigmas,
            timestep,
        )?;
        let dtype = original.dtype();
        let (x, n) = prepare_add_noise(original, noise)?;
        (x + n.affine(sigma, 0.0)?)?.to_dtype(dtype)
    }
}
