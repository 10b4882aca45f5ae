//! A convolution layer that takes the direct kernel for CPU f32 inference and candle's
//! `conv2d` everywhere else (CUDA, other dtypes, inputs or weights that track gradients), so a
//! network has one forward written in tensor ops.

use crate::conv::{Conv2d, Conv2dOp, Epilogue};
use crate::pad::{reflect_pad, same_padding, zero_map, PadOp};
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
    /// TensorFlow's `SAME` zero padding: each side padded so that the output has
    /// `⌈n / stride⌉` pixels, the odd pixel at the end.
    Same,
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

/// A 2-D convolution (groups 1, or depthwise) with bias, [`Padding`] and stride `stride`; on the
/// CPU in f32 its weights are packed once for [`Conv2d`].
#[derive(Debug, Clone)]
pub struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: Padding,
    /// 1, or the channel count (depthwise).
    groups: usize,
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
        Self::with_groups(weight, bias, padding, stride, 1)
    }

    /// A depthwise convolution: `weight` `[c, 1, k, k]`, `bias` `[c]`, groups `c`.
    pub fn depthwise(
        weight: Tensor,
        bias: Option<Tensor>,
        padding: Padding,
        stride: usize,
    ) -> Result<Self> {
        let groups = weight.dim(0)?;
        Self::with_groups(weight, bias, padding, stride, groups)
    }

    fn with_groups(
        weight: Tensor,
        bias: Option<Tensor>,
        padding: Padding,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let (c_out, c_in_per_group, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv layer: only square kernels, got {k}x{k2}")
        }
        let depthwise = groups > 1;
        if depthwise && (groups != c_out || c_in_per_group != 1) {
            candle_core::bail!(
                "conv layer: a depthwise weight is [c, 1, k, k], got {:?}",
                weight.dims()
            )
        }
        let c_in = c_in_per_group * groups;
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
                depthwise,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            padding,
            groups,
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
        let ep = Epilogue {
            clamp: (act == Activation::Relu).then_some((0.0, f32::INFINITY)),
            quant: None,
        };
        self.forward_with(x, &ep)
    }

    /// `ep(conv(pad(x)) + bias)` for `x` `[N, c_in, H, W]`: on the packed path the epilogue is
    /// fused into the kernel's store, elsewhere [`Epilogue::apply_tensor`] follows candle's conv.
    pub fn forward_with(&self, x: &Tensor, ep: &Epilogue) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        // `SAME`'s ((top, bottom), (left, right)) zeros.
        let same = || -> Result<_> {
            let k = self.weight.dim(3)?;
            Ok((
                same_padding(h, k, self.stride),
                same_padding(w, k, self.stride),
            ))
        };
        match &self.packed {
            Some(conv) if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() => {
                let x = x.contiguous()?;
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
                    Padding::Same => {
                        let ((top, bottom), (left, right)) = same()?;
                        if top + bottom + left + right == 0 {
                            x
                        } else {
                            x.apply_op1_no_bwd(&PadOp {
                                rows: zero_map(h, top, bottom),
                                cols: zero_map(w, left, right),
                            })?
                        }
                    }
                };
                x.apply_op1_no_bwd(&Conv2dOp { conv, ep: *ep })
            }
            _ => {
                let (x, zeros) = match self.padding {
                    Padding::Zeros(p) => (x.clone(), p),
                    Padding::Reflect { pad, upsample } => {
                        let x = if upsample > 1 {
                            x.upsample_nearest2d(h * upsample, w * upsample)?
                        } else {
                            x.clone()
                        };
                        (reflect_pad(&x, pad, pad, pad, pad)?, 0)
                    }
                    Padding::Same => {
                        let ((top, bottom), (left, right)) = same()?;
                        let x = x.pad_with_zeros(2, top, bottom)?;
                        (x.pad_with_zeros(3, left, right)?, 0)
                    }
                };
                let y = x.conv2d(&self.weight, zeros, self.stride, 1, self.groups)?;
                let y = match &self.bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
                    None => y,
                };
                ep.apply_tensor(&y)
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
                    Padding::Same => candle_core::bail!("SAME padding has its own test"),
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

    /// TensorFlow `SAME` padding (the odd pixel at the end), a depthwise weight and a ReLU6 +
    /// int8 epilogue: the packed path and candle's agree with a plain reference, up to a rare
    /// one-level rounding flip of the quantizer (the two paths sum in different orders).
    #[test]
    fn same_padding_depthwise_and_quantized_epilogue() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 12), &dev)?;
        let w = Tensor::randn(0f32, 0.5, (4, 1, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.3, 4, &dev)?;
        let quant = crate::conv::Quantize {
            scale: 0.05,
            lo: -128.0,
            hi: 127.0,
        };
        let ep = Epilogue {
            clamp: Some((0.0, 6.0)),
            quant: Some(quant),
        };
        // (stride, (top, bottom), (left, right)) of SAME padding for 9×12.
        for (stride, rows, cols) in [(1, (1, 1), (1, 1)), (2, (1, 1), (0, 1))] {
            let layer = ConvLayer::depthwise(w.clone(), Some(b.clone()), Padding::Same, stride)?;
            assert!(layer.is_packed());
            let padded = x
                .pad_with_zeros(2, rows.0, rows.1)?
                .pad_with_zeros(3, cols.0, cols.1)?;
            let want = padded
                .conv2d(&w, 0, stride, 1, 4)?
                .broadcast_add(&b.reshape((1, 4, 1, 1))?)?
                .clamp(0f32, 6f32)?;
            let want = ((want / 0.05)?.round()? * 0.05)?;
            let tracked = Var::from_tensor(&x)?;
            for (path, got) in [
                ("packed", layer.forward_with(&x, &ep)?),
                ("candle", layer.forward_with(tracked.as_tensor(), &ep)?),
            ] {
                assert_eq!(got.dims(), want.dims(), "{path} s{stride}");
                let diff = (got - &want)?.abs()?.flatten_all()?.to_vec1::<f32>()?;
                let flips = diff.iter().filter(|&&d| d > 1e-5).count();
                let worst = diff.iter().fold(0f32, |m, &d| m.max(d));
                assert!(
                    flips * 100 <= diff.len() && worst <= 0.05 + 1e-5,
                    "{path} s{stride}: {flips} flips, worst {worst}"
                );
            }
        }
        let not_depthwise = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?;
        assert!(ConvLayer::depthwise(not_depthwise, None, Padding::Same, 1).is_err());
        Ok(())
    }
}
