//! DPM-Solver++(2M) (Lu et al. 2022), following diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`,
//! `solver_order=2`, `solver_type="midpoint"`, `lower_order_final=True`,
//! `final_sigmas_type="zero"` and no Karras sigmas.

use candle_core::{Result, Tensor};

use super::{
    add_noise_sigma, alpha_sigma, check_steps, index_of, lin2, prepare, prepare_add_noise,
    spaced_timesteps, to_train_timesteps, train_sigmas, PredictionType, Scheduler, SchedulerConfig,
    TimestepSpacing,
};

/// Half log-SNR `ln(alpha_t / sigma_t)` (+inf at sigma 0).
fn lambda(alpha: f64, sigma: f64) -> f64 {
    alpha.ln() - sigma.ln()
}

/// DPM-Solver++ 2M, a deterministic second-order multistep sampler.
///
/// The previous step's data prediction is kept inside. A step whose timestep
/// does not follow the previous step's in the schedule starts a new trajectory
/// (first order), as img2img starting mid-schedule does.
#[derive(Debug, Clone)]
pub struct DpmPlusPlus2M {
    config: SchedulerConfig,
    train_sigmas: Vec<f64>,
    timesteps: Vec<usize>,
    /// One per timestep, plus a final 0.
    sigmas: Vec<f64>,
    /// Index and predicted clean sample of the previous step.
    previous: Option<(usize, Tensor)>,
}

impl DpmPlusPlus2M {
    /// A DPM-Solver++(2M) scheduler for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let train_sigmas = train_sigmas(&config.alphas_cumprod()?);
        let mut s = Self {
            config: config.clone(),
            train_sigmas,
            timesteps: vec![],
            sigmas: vec![],
            previous: None,
        };
        s.set_timesteps(steps)?;
        Ok(s)
    }

    /// The noise levels of the schedule: one per timestep, then 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Forgets the multistep history, so the next step is first order.
    pub fn reset(&mut self) {
        self.previous = None;
    }
}

impl Scheduler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(&self.config, steps)?;
        // diffusers spaces linspace and leading timesteps over `steps + 1` points and drops the
        // last; it rounds the linspace positions (the other spacings give whole numbers).
        let values = match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Leading => {
                let mut values = spaced_timesteps(&self.config, steps + 1);
                values.pop();
                values
            }
            TimestepSpacing::Trailing => spaced_timesteps(&self.config, steps),
        };
        let values: Vec<f64> = values.into_iter().map(f64::round_ties_even).collect();
        let timesteps = to_train_timesteps(&values, &self.config)?;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| self.train_sigmas[t]).collect();
        sigmas.push(0.0);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.previous = None;
        Ok(())
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _timestep: usize) -> Result<Tensor> {
        Ok(sample)
    }

    /// Deterministic: `noise` is ignored.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let who = "DPM++ 2M step";
        let i = index_of(&self.timesteps, timestep, who)?;
        let dtype = sample.dtype();
        let (model_output, x, _) = prepare(who, model_output, sample)?;

        // Data prediction x0 at this noise level.
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => {
                lin2(1.0 / alpha_s0, &x, -sigma_s0 / alpha_s0, &model_output)?
            }
            PredictionType::VPrediction => lin2(alpha_s0, &x, -sigma_s0, &model_output)?,
        };

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        // alpha_t * (exp(-h) - 1); exp(-inf) = 0 at the final sigma 0.
        let c = alpha_t * ((-h).exp() - 1.0);
        let ratio = sigma_t / sigma_s0;

        let previous = match self.previous.take() {
            Some((j, m1)) if i > 0 && j == i - 1 => Some(m1),
            _ => None,
        };
        let last = i + 1 == self.timesteps.len();
        let prev_sample = match previous {
            Some(m1) if !last => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                // x_t = ratio * x - c * D0 - c / 2 * D1, D1 = (m0 - m1) / r0
                let d1 = (&x0 - m1)?.affine(1.0 / r0, 0.0)?;
                (lin2(ratio, &x, -c, &x0)? - d1.affine(0.5 * c, 0.0)?)?
            }
            _ => lin2(ratio, &x, -c, &x0)?,
        };
        self.previous = Some((i, x0));
        prev_sample.to_dtype(dtype)
    }

    /// `alpha * original + sigma * noise` at the noise level of `timestep`.
    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor> {
        let sigma = add_noise_sigma(
            &self.config,
            &self.timesteps,
            &self.sigmas,
            &self.train_sigmas,
            timestep,
        )?;
        let (alpha, sigma) = alpha_sigma(sigma);
        let dtype = original.dtype();
        let (x, n) = prepare_add_noise(original, noise)?;
        lin2(alpha, &x, sigma, &n)?.to_dtype(dtype)
    }
}
