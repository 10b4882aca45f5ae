//! Native CPU path of AdaIN's networks: the VGG-19 encoder to relu4_1 and the decoder, on
//! [`easel_cpu::conv`]'s direct convolution instead of candle ops.
//!
//! Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
//! Normalization", ICCV 2017, <https://arxiv.org/abs/1703.06868>; the networks are those of
//! [`crate::vgg`] and [`crate::adain`] (naoto0804/pytorch-AdaIN `net.py`), computed the same way:
//!
//! - each `ReflectionPad2d(1)` (after the decoder's nearest ×2 upsampling, when there is one) is
//!   one gather ([`pad::pad`] with [`pad::reflect_map`]), so the upsampled picture is never
//!   built;
//! - each 3×3 conv has its bias and ReLU fused into the store ([`Epilogue`]);
//! - `MaxPool2d(2, 2, ceil_mode=True)` keeps an odd last row/column as its own window;
//! - buffers are recycled through one [`Scratch`] per pass; no candle op runs in the loop.
//!
//! The weights are kept as the candle tensors the [`VarBuilder`] gave (so a network built on a
//! `VarMap` sees in-place updates) and packed for the kernel at each pass (a few ms).

use crate::adain::Config;
use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_cpu::{pad, Conv2d, Epilogue, Scratch};

/// One step of a network.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Conv `i` of the weight list: reflection pad `pad` (after nearest ×2 upsampling when `up`),
    /// `k`×`k` conv, ReLU when `relu`.
    Conv {
        i: usize,
        pad: usize,
        up: bool,
        relu: bool,
    },
    /// `MaxPool2d(2, 2, ceil_mode=True)`.
    Pool,
}

/// A network of reflection-padded convs, ReLUs, pools and upsamplings on plain CPU buffers.
#[derive(Debug, Clone)]
pub(crate) struct NativeNet {
    /// `(weight [out, in, k, k], bias [out])` per conv.
    weights: Vec<(Tensor, Tensor)>,
    ops: Vec<Op>,
}

/// `(module index, in, out, k)` of the encoder's convs to relu4_1, `None` for a pool.
fn encoder_plan(cfg: &Config) -> Vec<Option<(usize, usize, usize, usize)>> {
    let [a, b, c, d] = cfg.widths;
    vec![
        Some((0, 3, 3, 1)),
        Some((2, 3, a, 3)),
        Some((5, a, a, 3)),
        None,
        Some((9, a, b, 3)),
        Some((12, b, b, 3)),
        None,
        Some((16, b, c, 3)),
        Some((19, c, c, 3)),
        Some((22, c, c, 3)),
        Some((25, c, c, 3)),
        None,
        Some((29, c, d, 3)),
    ]
}

/// `(module index, in, out, upsample before)` of the decoder's convs.
fn decoder_plan(cfg: &Config) -> [(usize, usize, usize, bool); 9] {
    let [a, b, c, d] = cfg.widths;
    [
        (1, d, c, false),
        (5, c, c, true),
        (8, c, c, false),
        (11, c, c, false),
        (14, c, b, false),
        (18, b, b, true),
        (21, b, a, false),
        (25, a, a, true),
        (28, a, 3, false),
    ]
}

fn conv_weights(
    vb: &VarBuilder,
    index: usize,
    cin: usize,
    cout: usize,
    k: usize,
) -> Result<(Tensor, Tensor)> {
    let vb = vb.pp(index.to_string());
    Ok((vb.get((cout, cin, k, k), "weight")?, vb.get(cout, "bias")?))
}

impl NativeNet {
    /// The encoder to relu4_1 (`vb`: the `vgg_normalised` state dict).
    pub(crate) fn encoder(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let mut weights = Vec::new();
        let mut ops = Vec::new();
        for step in encoder_plan(cfg) {
            match step {
                Some((index, cin, cout, k)) => {
                    ops.push(Op::Conv {
                        i: weights.len(),
                        pad: k / 2,
                        up: false,
                        relu: index != 0,
                    });
                    weights.push(conv_weights(vb, index, cin, cout, k)?);
                }
                None => ops.push(Op::Pool),
            }
        }
        Ok(Self { weights, ops })
    }

    /// The decoder (`vb`: the `decoder` state dict).
    pub(crate) fn decoder(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let plan = decoder_plan(cfg);
        let mut weights = Vec::with_capacity(plan.len());
        let mut ops = Vec::with_capacity(plan.len());
        for (n, (index, cin, cout, up)) in plan.into_iter().enumerate() {
            ops.push(Op::Conv {
                i: n,
                pad: 1,
                up,
                relu: n + 1 < plan.len(),
            });
            weights.push(conv_weights(vb, index, cin, cout, 3)?);
        }
        Ok(Self { weights, ops })
    }

    /// Whether any weight is a trainable variable (then the candle-op path, which records
    /// gradients, must be used).
    pub(crate) fn has_variables(&self) -> bool {
        self.weights
            .iter()
            .any(|(w, b)| w.is_variable() || b.is_variable())
    }

    /// Runs the network on `x` (`[1, C, H, W]`, CPU); returns `[1, C', H', W']` (CPU, f32).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if n != 1 {
            bail!("the native AdaIN path runs one picture at a time, got a batch of {n}")
        }
        let convs = self
            .weights
            .iter()
            .map(|(wt, b)| {
                let (cout, cin, k, _) = wt.dims4()?;
                Conv2d::new(
                    &wt.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    Some(&b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    (cin, cout, k),
                    1,
                    false,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let scratch = &mut Scratch::default();
        let mut cur = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (mut c, mut h, mut w) = (c, h, w);
        for op in &self.ops {
            match *op {
                Op::Conv { i, pad, up, relu } => {
                    let conv = &convs[i];
                    let s = if up { 2 } else { 1 };
                    let (ho, wo) = (h * s, w * s);
                    let input = if pad == 0 && !up {
                        cur
                    } else {
                        let rows = pad::reflect_map(h, s, pad, pad)?;
                        let cols = pad::reflect_map(w, s, pad, pad)?;
                        let padded = pad::pad(&cur, (c, h, w), &rows, &cols, scratch)?;
                        scratch.give(cur);
                        padded
                    };
                    let mut out = scratch.take(conv.c_out() * ho * wo);
                    let ep = Epilogue {
                        clamp: relu.then_some((0.0, f32::INFINITY)),
                        quant: None,
                    };
                    let dims = (1, c, ho + 2 * pad, wo + 2 * pad);
                    conv.forward_into(&input, dims, &ep, &mut out, scratch)?;
                    scratch.give(input);
                    (c, h, w) = (conv.c_out(), ho, wo);
                    cur = out;
                }
                Op::Pool => {
                    let out = max_pool_ceil(&cur, (c, h, w), scratch);
                    scratch.give(cur);
                    (h, w) = (h.div_ceil(2), w.div_ceil(2));
                    cur = out;
                }
            }
        }
        Tensor::from_vec(cur, (1, c, h, w), &Device::Cpu)
    }
}

/// `MaxPool2d(2, 2, ceil_mode=True)` of `[c, h, w]`: an odd last row/column is its own window.
fn max_pool_ceil(x: &[f32], (c, h, w): (usize, usize, usize), scratch: &mut Scratch) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = scratch.take(c * ho * wo);
    easel_cpu::par_chunks_mut(&mut out, ho * wo, |p, dst| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for (y, drow) in dst.chunks_exact_mut(wo).enumerate() {
            let r0 = &plane[2 * y * w..(2 * y + 1) * w];
            let r1 = if 2 * y + 1 < h {
                &plane[(2 * y + 1) * w..(2 * y + 2) * w]
            } else {
                r0
            };
            pool_row(r0, r1, drow);
        }
    });
    out
}

easel_cpu::simd_fn! {
    /// One output row of the 2×2 ceil-mode pool from input rows `r0`, `r1`.
    fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
        let w = r0.len();
        for (x, o) in out.iter_mut().enumerate().take(w / 2) {
            let (a, b) = (r0[2 * x].max(r0[2 * x + 1]), r1[2 * x].max(r1[2 * x + 1]));
            *o = a.max(b);
        }
        if w % 2 == 1 {
            out[w / 2] = r0[w - 1].max(r1[w - 1]);
        }
    }
}
