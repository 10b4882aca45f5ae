//! Differentiable building blocks.
//!
//! candle's fused `softmax_last_dim` and `layer_norm` kernels have no backward pass: gradients
//! through them silently come out as nothing, which would leave learned prompt embeddings
//! untrained. These versions are composed of elementary ops that all have a backward, and keep
//! their statistics in f32 when the input is f16/bf16 (numerically safe in half precision). Their
//! affine weights and the detached softmax maximum are constants for autograd
//! ([`crate::frozen`]): only the input gets a gradient.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{add, conv2d, mul, sub, Conv2d};

fn stats_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// Softmax over the last dimension, max-subtracted for stability; differentiable.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(stats_dtype(dtype))?;
    // Subtracting the (detached) max changes nothing mathematically; it prevents exp overflow.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = sub(&xs, &max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)?.to_dtype(dtype)
}

/// Layer normalisation over the last dimension with an affine weight and bias (PyTorch's
/// `nn.LayerNorm`; state-dict keys `weight`, `bias`); differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of shape `[dim]` from `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    /// Normalises `xs` over its last dimension.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let dim = xs.dim(D::Minus1)? as f64;
        let xs = xs.to_dtype(stats_dtype(dtype))?;
        let mean = (xs.sum_keepdim(D::Minus1)? / dim)?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = (centered.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        add(&mul(&normed.to_dtype(dtype)?, &self.weight)?, &self.bias)
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, xs)
    }
}

/// A 3×3 convolution with padding 1 (it keeps the spatial size): the `conv_in`, `conv_out`,
/// resnet and upsampler convolutions of the UNet and the VAE.
pub(crate) fn conv3x3(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_channels, out_channels, 3, cfg, vb)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `max |a − b|` of two f32 tensors (also used by the other modules' unit tests).
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn input() -> Tensor {
        let values: Vec<f32> = (0..24)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.37)
            .collect();
        Tensor::from_vec(values, (2, 3, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn softmax_matches_candle_and_sums_to_one() {
        let xs = input();
        let ours = softmax_last_dim(&xs).unwrap();
        let fused = candle_nn::ops::softmax_last_dim(&xs).unwrap();
        assert!(max_abs_diff(&ours, &fused) < 1e-6);
        let sums = ours.sum(D::Minus1).unwrap().flatten_all().unwrap();
        for s in sums.to_vec1::<f32>().unwrap() {
            assert!((s - 1.0).abs() < 1e-6, "{s}");
        }
    }

    /// d/dx of sum(softmax(x) * c) against central finite differences.
    #[test]
    fn softmax_gradient_matches_finite_differences() {
        let x = Var::from_tensor(&input()).unwrap();
        let c = (input().sin().unwrap() + 2.0).unwrap();
        let loss = |x: &Tensor| {
            (softmax_last_dim(x).unwrap() * &c)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(x.as_tensor()).backward().unwrap();
        let grad = grads.get(x.as_tensor()).expect("softmax passes gradients");
        let numeric = finite_difference(x.as_tensor(), loss);
        assert!(max_abs_diff(grad, &numeric) < 1e-3);
    }

    #[test]
    fn layer_norm_matches_candle_and_passes_gradients() {
        let dev = Device::Cpu;
        let weight = Tensor::new(&[1.5f32, -0.5, 2.0, 0.25], &dev).unwrap();
        let bias = Tensor::new(&[0.1f32, 0.2, -0.3, 0.0], &dev).unwrap();
        let ours = LayerNorm {
            weight: weight.clone(),
            bias: bias.clone(),
            eps: 1e-5,
        };
        let fused = candle_nn::LayerNorm::new(weight, bias, 1e-5);
        let xs = input();
        let expected = candle_core::Module::forward(&fused, &xs).unwrap();
        assert!(max_abs_diff(&ours.forward(&xs).unwrap(), &expected) < 1e-5);

        let x = Var::from_tensor(&xs).unwrap();
        let c = xs.cos().unwrap();
        let loss = |x: &Tensor| (ours.forward(x).unwrap() * &c).unwrap().sum_all().unwrap();
        let grads = loss(x.as_tensor()).backward().unwrap();
        let grad = grads
            .get(x.as_tensor())
            .expect("layer norm passes gradients");
        let numeric = finite_difference(x.as_tensor(), loss);
        assert!(max_abs_diff(grad, &numeric) < 2e-3);
    }

    /// Central differences of a scalar function, computed in f64 around f32 inputs.
    fn finite_difference(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let h = 1e-2f64;
        let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let grad: Vec<f32> = (0..base.len())
            .map(|i| {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta as f32;
                    let t = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
                    f64::from(f(&t).to_scalar::<f32>().unwrap())
                };
                ((eval(h) - eval(-h)) / (2.0 * h)) as f32
            })
            .collect();
        Tensor::from_vec(grad, x.shape(), x.device()).unwrap()
    }
}
