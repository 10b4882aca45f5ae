//! Timestep embeddings of the UNet and the ControlNet: the sinusoidal projection of DDPM
//! ("Denoising Diffusion Probabilistic Models", <https://arxiv.org/abs/2006.11239>, after the
//! Transformer's positional encoding) and diffusers' `TimestepEmbedding` MLP.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::frozen::{linear, Linear};

/// The diffusion timestep(s) a denoiser is evaluated at.
#[derive(Debug, Clone, Copy)]
pub enum Timesteps<'a> {
    /// One timestep shared by every sample of the batch.
    Shared(f64),
    /// One timestep per sample: a tensor of shape `[B]` (or `[]`, shared), any numeric dtype.
    PerSample(&'a Tensor),
}

impl From<f64> for Timesteps<'_> {
    fn from(t: f64) -> Self {
        Timesteps::Shared(t)
    }
}

impl<'a> From<&'a Tensor> for Timesteps<'a> {
    fn from(t: &'a Tensor) -> Self {
        Timesteps::PerSample(t)
    }
}

impl Timesteps<'_> {
    /// The timesteps as an f32 tensor of shape `[batch]` on `device` (diffusers casts them to
    /// f32 before the sinusoidal projection).
    pub fn to_batch(&self, batch: usize, device: &Device) -> Result<Tensor> {
        match self {
            Timesteps::Shared(t) => Tensor::full(*t as f32, batch, device),
            Timesteps::PerSample(t) => {
                let t = t.to_dtype(DType::F32)?.to_device(device)?;
                match t.dims() {
                    [] => t.broadcast_as(batch)?.contiguous(),
                    [1] => t.broadcast_as(batch)?.contiguous(),
                    [n] if *n == batch => Ok(t),
                    dims => candle_core::bail!(
                        "timesteps: expected shape [] or [{batch}] for a batch of {batch}, got {dims:?}"
                    ),
                }
            }
        }
    }
}

/// Sinusoidal timestep features (diffusers' `get_timestep_embedding` / `Timesteps`): for
/// timesteps `[B]` returns `[B, dim]` f32 features `sin(t·f_k)`, `cos(t·f_k)` with frequencies
/// `f_k = exp(-ln(10000)·k / (dim/2 − freq_shift))`; `flip_sin_to_cos` puts the cosines first.
/// An odd `dim` is zero-padded by one column.
pub fn timestep_features(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    if half == 0 || (half as f64 - freq_shift) <= 0.0 {
        candle_core::bail!(
            "timestep_features: dim {dim} with freq_shift {freq_shift} leaves no frequencies"
        )
    }
    let timesteps = timesteps.to_dtype(DType::F32)?;
    let batch = timesteps.dims1()?;
    let log_period = 10000f64.ln();
    let freqs: Vec<f32> = (0..half)
        .map(|k| {
            // diffusers rounds the exponent to f32 before exp.
            let exponent = (-(log_period as f32) * k as f32) / (half as f32 - freq_shift as f32);
            f64::from(exponent).exp() as f32
        })
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps.reshape((batch, 1))?.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let features = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if !dim.is_multiple_of(2) {
        features.pad_with_zeros(1, 0, 1)
    } else {
        Ok(features)
    }
}

/// diffusers' `TimestepEmbedding` with SiLU: `linear_2(silu(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// Loads `linear_1` (`in_channels → time_embed_dim`) and `linear_2`
    /// (`time_embed_dim → time_embed_dim`) from `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_channels, time_embed_dim, vb.pp("linear_1"))?,
            linear_2: linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?,
        })
    }

    /// Embeds sinusoidal features `[B, in_channels]` into `[B, time_embed_dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_match_the_closed_form() {
        let t = Tensor::new(&[0f32, 37.0], &Device::Cpu).unwrap();
        let f = timestep_features(&t, 6, true, 0.0).unwrap();
        let rows = f.to_vec2::<f32>().unwrap();
        // dim 6: frequencies exp(-ln(1e4)·k/3) for k = 0, 1, 2; cosines first.
        for (row, t) in rows.iter().zip([0f64, 37.0]) {
            for k in 0..3 {
                let arg = t * (-(10000f64.ln()) * k as f64 / 3.0).exp();
                assert!((f64::from(row[k]) - arg.cos()).abs() < 1e-5);
                assert!((f64::from(row[k + 3]) - arg.sin()).abs() < 1e-5);
            }
        }
        let odd = timestep_features(&t, 7, false, 1.0).unwrap();
        assert_eq!(odd.dims(), &[2, 7]);
    }

    #[test]
    fn timesteps_broadcast_and_validate() {
        let dev = Device::Cpu;
        let shared = Timesteps::from(5.0).to_batch(3, &dev).unwrap();
        assert_eq!(shared.to_vec1::<f32>().unwrap(), vec![5.0; 3]);
        let scalar = Tensor::new(7i64, &dev).unwrap();
        let t = Timesteps::from(&scalar).to_batch(2, &dev).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![7.0; 2]);
        let wrong = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        assert!(Timesteps::from(&wrong).to_batch(2, &dev).is_err());
    }
}
