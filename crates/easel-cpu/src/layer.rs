//! A convolution layer that takes the direct kernel for CPU f32 inference and candle's
//! `conv2d` everywhere else (CUDA, other dtypes, inputs or weights that track gradients), so a
//! network has one forward written in tensor ops.

use crate::conv::{Conv2d, Conv2dOp, Epilogue};
use crate::pad::PadOp;
use candle_core::{DType, Result, Tensor};

/// What follows the convolution's bias add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// `max(x, 0)`.
    Relu,
}

/// A 2-D convolution (groups 1) with bias, zero padding `padding` and stride `stride`; on the
/// CPU in f32 its weights are packed once for [`Conv2d`].
#[derive(Debug, Clone)]
pub struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    /// The packed kernel: weights on the CPU, f32, not trainable.
    packed: Option<Conv2d>,
}

impl ConvLayer {
    /// `weight` `[c_out, c_in, k, k]`, `bias` `[c_out]`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv layer: only square kernels, got {k}x{k2}")
        }
        let constant = !weight.is_variable() && !bias.as_ref().is_some_and(|b| b.is_variable());
        let packed = if constant && weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let b = bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
            Some(Conv2d::new(
                &weight.flatten_all()?.to_vec1::<f32>()?,
                b.as_deref(),
                (c_in, c_out, k),
                stride,
                false,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
            packed,
        })
    }

    /// The weight `[c_out, c_in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[c_out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Whether a CPU f32 input without gradients takes the direct kernel.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// `act(conv(x) + bias)` for `x` `[N, c_in, H, W]`.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match &self.packed {
            Some(conv) if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() => {
                let x = x.contiguous()?;
                let x = if self.padding > 0 {
                    let (_, _, h, w) = x.dims4()?;
                    x.apply_op1_no_bwd(&PadOp::zeros(h, w, self.padding))?
                } else {
                    x
                };
                let ep = Epilogue {
                    clamp: (act == Activation::Relu).then_some((0.0, f32::INFINITY)),
                    quant: None,
                };
                x.apply_op1_no_bwd(&Conv2dOp { conv, ep })
            }
            _ => {
                let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
                let y = match &self.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
                    None => y,
                };
                match act {
                    Activation::None => Ok(y),
                    Activation::Relu => y.relu(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The packed path and candle's conv agree (zero padding, stride, ReLU); a trainable weight
    /// or an input that tracks gradients takes candle's path, whose gradient reaches the input.
    #[test]
    fn packed_and_candle_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.3, 5, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 11, 14), &dev)?;
        for (padding, stride) in [(1, 1), (0, 1), (1, 2)] {
            let layer = ConvLayer::new(w.clone(), Some(b.clone()), padding, stride)?;
            assert!(layer.is_packed());
            for act in [Activation::None, Activation::Relu] {
                let fast = layer.forward(&x, act)?;
                let want = x
                    .conv2d(&w, padding, stride, 1, 1)?
                    .broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
                let want = if act == Activation::Relu {
                    want.relu()?
                } else {
                    want
                };
                let err = (fast - &want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(err < 1e-5, "p{padding} s{stride} {act:?}: {err}");
            }
        }
        let trainable = ConvLayer::new(Var::from_tensor(&w)?.as_tensor().clone(), None, 1, 1)?;
        assert!(!trainable.is_packed());
        let xv = Var::from_tensor(&x)?;
        let layer = ConvLayer::new(w.clone(), None, 1, 1)?;
        let y = layer.forward(xv.as_tensor(), Activation::Relu)?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(xv.as_tensor()).is_some());
        Ok(())
    }
}
