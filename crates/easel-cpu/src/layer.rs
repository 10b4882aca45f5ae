//! A convolution layer that takes the direct kernel for CPU f32 inference and candle's
//! `conv2d` everywhere else (CUDA, other dtypes, inputs or weights that track gradients), so a
//! network has one forward written in tensor ops.

use crate::conv::{Conv2d, Conv2dOp, Epilogue};
use crate::pad::{reflect_pad, PadOp};
use candle_core::{DType, Result, Tensor};

/// How a convolution's input is padded (and upsampled) before the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `p` zeros on every side (`nn.Conv2d(padding=p)`).
    Zeros(usize),
    /// `nn.ReflectionPad2d(pad)` after nearest-neighbour upsampling by `upsample` (1: none), as
    /// in AdaIN's decoder; on the CPU one gather, so the upsampled picture is never built.
    Reflect {
        /// Mirrored rows/columns on every side (the edge is not repeated).
        pad: usize,
        /// Nearest-neighbour upsampling factor applied first (≥ 1).
        upsample: usize,
    },
}

impl Padding {
    /// `ReflectionPad2d(pad)` without upsampling.
    pub fn reflect(pad: usize) -> Self {
        Self::Reflect { pad, upsample: 1 }
    }
}

/// What follows the convolution's bias add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// `max(x, 0)`.
    Relu,
}

/// A 2-D convolution (groups 1) with bias, [`Padding`] and stride `stride`; on the CPU in f32
/// its weights are packed once for [`Conv2d`].
#[derive(Debug, Clone)]
pub struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: Padding,
    stride: usize,
    /// The packed kernel: weights on the CPU, f32, not trainable.
    packed: Option<Conv2d>,
}

impl ConvLayer {
    /// `weight` `[c_out, c_in, k, k]`, `bias` `[c_out]`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        padding: Padding,
        stride: usize,
    ) -> Result<Self> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv layer: only square kernels, got {k}x{k2}")
        }
        if let Padding::Reflect { upsample: 0, .. } = padding {
            candle_core::bail!("conv layer: upsampling factor 0")
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

    /// `act(conv(pad(x)) + bias)` for `x` `[N, c_in, H, W]`.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match &self.packed {
            Some(conv) if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() => {
                let x = x.contiguous()?;
                let (_, _, h, w) = x.dims4()?;
                let x = match self.padding {
                    Padding::Zeros(0)
                    | Padding::Reflect {
                        pad: 0,
                        upsample: 1,
                    } => x,
                    Padding::Zeros(p) => x.apply_op1_no_bwd(&PadOp::zeros(h, w, p))?,
                    Padding::Reflect { pad, upsample } => {
                        x.apply_op1_no_bwd(&PadOp::reflect(h, w, pad, upsample)?)?
                    }
                };
                let ep = Epilogue {
                    clamp: (act == Activation::Relu).then_some((0.0, f32::INFINITY)),
                    quant: None,
                };
                x.apply_op1_no_bwd(&Conv2dOp { conv, ep })
            }
            _ => {
                let (x, zeros) = match self.padding {
                    Padding::Zeros(p) => (x.clone(), p),
                    Padding::Reflect { pad, upsample } => {
                        let x = if upsample > 1 {
                            let (_, _, h, w) = x.dims4()?;
                            x.upsample_nearest2d(h * upsample, w * upsample)?
                        } else {
                            x.clone()
                        };
                        (reflect_pad(&x, pad, pad, pad, pad)?, 0)
                    }
                };
                let y = x.conv2d(&self.weight, zeros, self.stride, 1, 1)?;
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

    /// Reflection padding by `pad` after nearest upsampling by `up`, written out plainly.
    fn reflect_reference(x: &Tensor, pad: usize, up: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let x = x.upsample_nearest2d(h * up, w * up)?;
        let (h, w) = (h * up, w * up);
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let mirror = |i: usize, len: usize| {
            let p = i as i64 - pad as i64;
            let last = len as i64 - 1;
            (if p < 0 {
                -p
            } else if p > last {
                2 * last - p
            } else {
                p
            }) as usize
        };
        let (ho, wo) = (h + 2 * pad, w + 2 * pad);
        let mut out = Vec::with_capacity(n * c * ho * wo);
        for plane in v.chunks_exact(h * w) {
            for y in 0..ho {
                for xx in 0..wo {
                    out.push(plane[mirror(y, h) * w + mirror(xx, w)]);
                }
            }
        }
        Tensor::from_vec(out, (n, c, ho, wo), x.device())
    }

    /// The packed path and candle's path agree with a plain reference (zero and reflection
    /// padding, upsampling, stride, ReLU); a trainable weight or an input that tracks gradients
    /// takes candle's path, whose gradient reaches the input.
    #[test]
    fn packed_and_candle_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.3, 5, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 11, 14), &dev)?;
        let cases = [
            (Padding::Zeros(1), 1),
            (Padding::Zeros(0), 1),
            (Padding::Zeros(1), 2),
            (Padding::reflect(1), 1),
            (Padding::reflect(2), 2),
            (
                Padding::Reflect {
                    pad: 1,
                    upsample: 2,
                },
                1,
            ),
            (
                Padding::Reflect {
                    pad: 0,
                    upsample: 3,
                },
                1,
            ),
        ];
        for (padding, stride) in cases {
            let layer = ConvLayer::new(w.clone(), Some(b.clone()), padding, stride)?;
            assert!(layer.is_packed());
            // The same layer on candle's path: the input tracks gradients.
            let tracked = Var::from_tensor(&x)?;
            for act in [Activation::None, Activation::Relu] {
                let (input, zeros) = match padding {
                    Padding::Zeros(p) => (x.clone(), p),
                    Padding::Reflect { pad, upsample } => {
                        (reflect_reference(&x, pad, upsample)?, 0)
                    }
                };
                let want = input
                    .conv2d(&w, zeros, stride, 1, 1)?
                    .broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
                let want = if act == Activation::Relu {
                    want.relu()?
                } else {
                    want
                };
                for (path, got) in [
                    ("packed", layer.forward(&x, act)?),
                    ("candle", layer.forward(tracked.as_tensor(), act)?),
                ] {
                    let err = (got - &want)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    assert!(err < 1e-5, "{path} {padding:?} s{stride} {act:?}: {err}");
                }
            }
        }
        let trainable = ConvLayer::new(
            Var::from_tensor(&w)?.as_tensor().clone(),
            None,
            Padding::Zeros(1),
            1,
        )?;
        assert!(!trainable.is_packed());
        let xv = Var::from_tensor(&x)?;
        let layer = ConvLayer::new(w.clone(), None, Padding::reflect(1), 1)?;
        let y = layer.forward(xv.as_tensor(), Activation::Relu)?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(xv.as_tensor()).is_some());
        assert!(ConvLayer::new(
            w,
            None,
            Padding::Reflect {
                pad: 1,
                upsample: 0
            },
            1
        )
        .is_err());
        Ok(())
    }
}
