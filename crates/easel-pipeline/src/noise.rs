//! Where the pipeline's random numbers come from.
//!
//! The pipeline draws standard normal noise three ways, always in this order: the VAE
//! posterior sample of the photo ([`NoiseUse::VaeSample`]), the img2img noise added at the
//! first timestep ([`NoiseUse::Img2Img`]), then one tensor per denoising step for the
//! schedulers that need it ([`NoiseUse::Step`]: Euler ancestral, DDIM with `eta > 0`). This is
//! the order of diffusers' `randn_tensor` calls in its img2img pipelines.
//!
//! **Determinism rule.** [`SeededNoise`] draws every number on the host from a ChaCha20 stream
//! seeded with the request's seed (`rand_distr`'s ziggurat `StandardNormal`, f32), then copies
//! the tensor to the device. A seed therefore gives the same noise on every machine and
//! device, and the same image on the CPU; candle's `Tensor::randn` (device generators) is never
//! used. Tests replay recorded noise with [`ReplayNoise`].

use std::collections::VecDeque;

use candle_core::{bail, Device, Result, Tensor};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a noise tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseUse {
    /// The sample of the VAE posterior of the photo (`[1, latent channels, h, w]`).
    VaeSample,
    /// The noise added to the photo's latents at the first timestep (`[batch, c, h, w]`).
    Img2Img,
    /// The scheduler's noise for denoising step `i` (0-based).
    Step(usize),
}

/// A source of standard normal noise, drawn in the pipeline's order (see the module docs).
pub trait NoiseSource {
    /// The next f32 tensor of `shape` on `device`, for `purpose`.
    fn next(&mut self, purpose: NoiseUse, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Noise from a seeded ChaCha20 stream, drawn on the host (identical on every device).
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha20Rng,
}

impl SeededNoise {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn next(&mut self, _purpose: NoiseUse, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)
    }
}

/// Replays given tensors in order (for parity tests against recorded diffusers runs). A
/// request whose shape differs from the next tensor's, or past the last tensor, fails.
#[derive(Debug, Clone)]
pub struct ReplayNoise {
    tensors: VecDeque<Tensor>,
    served: usize,
}

impl ReplayNoise {
    /// Replays `tensors`, first to last.
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Self {
            tensors: tensors.into(),
            served: 0,
        }
    }

    /// How many tensors were not asked for.
    pub fn remaining(&self) -> usize {
        self.tensors.len()
    }
}

impl NoiseSource for ReplayNoise {
    fn next(&mut self, purpose: NoiseUse, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(tensor) = self.tensors.pop_front() else {
            bail!(
                "replayed noise: {purpose:?} asked for tensor {} of shape {shape:?}, but only {} \
                 were given",
                self.served,
                self.served
            )
        };
        if tensor.dims() != shape {
            bail!(
                "replayed noise: tensor {} is {:?} but {purpose:?} asked for {shape:?}",
                self.served,
                tensor.dims()
            )
        }
        self.served += 1;
        tensor.to_dtype(candle_core::DType::F32)?.to_device(device)
    }
}
