//! Frozen layers: linear, convolution and group-norm layers (and constant operands) whose
//! backward pass computes the gradient of their input only.
//!
//! candle's backward rules compute the gradient of *every* operand of a matmul, a convolution or
//! a binary op, whether or not it leads to a variable: when a prompt embedding is learned
//! through a frozen UNet ("An Image is Worth One Word", <https://arxiv.org/abs/2208.01618>),
//! every weight of every layer gets a full gradient (one matmul or convolution as large as the
//! forward one, plus a weight-sized tensor) that nobody reads. Here a layer whose input is
//! tracked by autograd (it depends on a [`candle_core::Var`]) but whose weights are not runs its
//! forward pass exactly as candle's own layer on a detached input, then *grafts* the result
//! onto the input with a [`CustomOp1`] whose backward is the input gradient alone
//! (`g·W` for a linear layer, the transposed convolution for a convolution, `g ⊙ w` for a
//! scale). The forward values are bit for bit those of the plain layers; gradients go to the
//! input only. When the input is not tracked (inference) the plain layer runs, unchanged.
//!
//! The graft copies the result once (an output-sized device copy: a custom op must return its
//! own storage), which is small next to the weight gradient it saves.

use std::sync::Mutex;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, DType, Layout, MetalStorage, Module, Result, Shape,
    Storage, Tensor,
};
use candle_nn::{Conv2dConfig, VarBuilder};

/// The input gradient of a grafted op, from the gradient of its output.
#[derive(Debug, Clone)]
enum Backward {
    /// `g` (adding or subtracting a constant).
    Identity,
    /// `g ⊙ c` (multiplying by a constant broadcast to the input's shape).
    Scale(Tensor),
    /// `g · W` for `x · Wᵀ (+ b)` with `W` `[out, in]`.
    Linear(Tensor),
    /// `Aᵀ · g` for `A · x` with a constant `A` (batched matmul).
    LeftMatmul(Tensor),
    /// `g · Bᵀ` for `x · B` with a constant `B` (batched matmul).
    RightMatmul(Tensor),
    /// `g` where the mask is `on` (1 for `on = true`), 0 elsewhere: selecting between the
    /// input and a constant.
    Select { mask: Tensor, on: bool },
    /// The transposed convolution with the kernel (candle's own input-gradient rule).
    Conv2d {
        kernel: Tensor,
        padding: usize,
        stride: usize,
        dilation: usize,
    },
    /// The slice `[start, start + len)` of dimension `dim` (concatenating constants).
    Narrow {
        dim: usize,
        start: usize,
        len: usize,
    },
}

/// The custom op: its forward returns the precomputed result, its backward the input gradient.
struct Graft {
    /// The result, taken by the (single) forward call so that it is not kept twice.
    result: Mutex<Option<Tensor>>,
    backward: Backward,
}

impl Graft {
    fn take(&self) -> Result<Tensor> {
        let mut slot = match self.result.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        match slot.take() {
            Some(t) => Ok(t),
            None => bail!("frozen graft: the forward pass ran twice"),
        }
    }

    /// A fresh contiguous copy of `t`'s storage for the backend `S`.
    fn copy<S>(t: &Tensor, pick: impl Fn(&Storage) -> Option<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let (storage, layout) = t.storage_and_layout();
        let Some(src) = pick(&storage) else {
            bail!("frozen graft: the result is on another device than the input")
        };
        let mut dst = src.device().zeros_impl(layout.shape(), src.dtype())?;
        src.copy_strided_src(&mut dst, 0, layout)?;
        Ok((dst, layout.shape().clone()))
    }
}

impl CustomOp1 for Graft {
    fn name(&self) -> &'static str {
        "frozen-graft"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Self::copy(&self.take()?, |s| match s {
            Storage::Cpu(s) => Some(s),
            _ => None,
        })
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Self::copy(&self.take()?, |s| match s {
            Storage::Cuda(s) => Some(s),
            _ => None,
        })
    }

    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        Self::copy(&self.take()?, |s| match s {
            Storage::Metal(s) => Some(s),
            _ => None,
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = match &self.backward {
            Backward::Identity => grad.clone(),
            Backward::Scale(c) => grad.mul(c)?,
            Backward::Linear(w) => {
                let dims = grad.dims();
                let out = dims[dims.len() - 1];
                let rows = grad.elem_count() / out.max(1);
                grad.reshape((rows, out))?.matmul(w)?.reshape(arg.shape())?
            }
            Backward::Conv2d {
                kernel,
                padding,
                stride,
                dilation,
            } => {
                // candle's rule for Op::Conv2D, input half.
                let k_h = kernel.dim(2)?;
                let out_size = (grad.dim(2)? - 1) * stride + dilation * (k_h - 1) + 1 - 2 * padding;
                let out_padding = arg.dim(2)? - out_size;
                grad.conv_transpose2d(kernel, *padding, out_padding, *stride, *dilation)?
            }
            Backward::Narrow { dim, start, len } => grad.narrow(*dim, *start, *len)?,
            Backward::LeftMatmul(a) => a.t()?.matmul(grad)?,
            Backward::RightMatmul(b) => grad.matmul(&b.t()?)?,
            Backward::Select { mask, on } => {
                let zeros = grad.zeros_like()?;
                if *on {
                    mask.where_cond(grad, &zeros)?
                } else {
                    mask.where_cond(&zeros, grad)?
                }
            }
        };
        Ok(Some(g))
    }
}

/// `plain(x)`, with the gradient `backward` for `x` only when `x` is tracked by autograd.
fn frozen(
    x: &Tensor,
    plain: impl FnOnce(&Tensor) -> Result<Tensor>,
    backward: Backward,
) -> Result<Tensor> {
    if !x.track_op() {
        return plain(x);
    }
    let result = plain(&x.detach())?;
    x.apply_op1(Graft {
        result: Mutex::new(Some(result)),
        backward,
    })
}

/// Which side of a binary op is a constant (not tracked) while the other one is tracked and
/// already has the result's shape.
fn tracked_side(a: &Tensor, b: &Tensor) -> Result<Option<bool>> {
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), "frozen")?;
    Ok(match (a.track_op(), b.track_op()) {
        (true, false) if a.shape() == &shape => Some(true),
        (false, true) if b.shape() == &shape => Some(false),
        _ => None,
    })
}

/// `a + b` (broadcasting); when one side is a constant, only the other gets a gradient.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match tracked_side(a, b)? {
        Some(true) => frozen(a, |a| a.broadcast_add(b), Backward::Identity),
        Some(false) => frozen(b, |b| a.broadcast_add(b), Backward::Identity),
        None => a.broadcast_add(b),
    }
}

/// `a − c` (broadcasting) for a constant `c`; only `a` gets a gradient.
pub fn sub(a: &Tensor, c: &Tensor) -> Result<Tensor> {
    match tracked_side(a, c)? {
        Some(true) => frozen(a, |a| a.broadcast_sub(c), Backward::Identity),
        _ => a.broadcast_sub(c),
    }
}

/// `a ⊙ c` (broadcasting) for a constant `c`; only `a` gets a gradient.
pub fn mul(a: &Tensor, c: &Tensor) -> Result<Tensor> {
    match tracked_side(a, c)? {
        Some(true) => {
            let scale = c.broadcast_as(a.shape())?;
            frozen(a, |a| a.broadcast_mul(c), Backward::Scale(scale))
        }
        _ => a.broadcast_mul(c),
    }
}

/// `a · b` (batched matmul); when one side is a constant, only the other gets a gradient.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, false) => frozen(a, |a| a.matmul(b), Backward::RightMatmul(b.clone())),
        (false, true) => frozen(b, |b| a.matmul(b), Backward::LeftMatmul(a.clone())),
        _ => a.matmul(b),
    }
}

/// `mask.where_cond(on_true, on_false)`; when one of the two is a constant, only the other
/// gets a gradient.
pub fn where_cond(mask: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
    let plain = |t: &Tensor, f: &Tensor| mask.where_cond(t, f);
    let select = |on| Backward::Select {
        mask: mask.clone(),
        on,
    };
    match (on_true.track_op(), on_false.track_op()) {
        (true, false) => frozen(on_true, |t| plain(t, on_false), select(true)),
        (false, true) => frozen(on_false, |f| plain(on_true, f), select(false)),
        _ => plain(on_true, on_false),
    }
}

/// `Tensor::cat(&[a, b], dim)`; when one side is a constant, only the other gets a gradient.
pub fn cat2(a: &Tensor, b: &Tensor, dim: usize) -> Result<Tensor> {
    let plain = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], dim);
    let (len_a, len_b) = (a.dim(dim)?, b.dim(dim)?);
    match (a.track_op(), b.track_op()) {
        (true, false) => frozen(
            a,
            |a| plain(a, b),
            Backward::Narrow {
                dim,
                start: 0,
                len: len_a,
            },
        ),
        (false, true) => frozen(
            b,
            |b| plain(a, b),
            Backward::Narrow {
                dim,
                start: len_a,
                len: len_b,
            },
        ),
        _ => plain(a, b),
    }
}

/// A linear layer `x·Wᵀ + b` (PyTorch's `nn.Linear`; keys `weight`, `bias`) with frozen
/// weights: as [`candle_nn::Linear`], gradients to the input only.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// The layer's weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.inner.weight();
        if w.track_op() {
            return self.inner.forward(xs);
        }
        frozen(xs, |xs| self.inner.forward(xs), Backward::Linear(w.clone()))
    }
}

/// Loads a [`Linear`] with bias from `vb` (`weight` `[out, in]`, `bias` `[out]`).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(in_dim, out_dim, vb)?,
    })
}

/// Loads a [`Linear`] without bias from `vb` (`weight` `[out, in]`).
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear_no_bias(in_dim, out_dim, vb)?,
    })
}

/// A 2-D convolution with bias (PyTorch's `nn.Conv2d`, one group; keys `weight`, `bias`) with
/// frozen weights: as [`candle_nn::Conv2d`], gradients to the input only. Its forward takes
/// easel-cpu's direct kernel for f32 CPU pictures of at least [`DIRECT_MIN_PIXELS`] pixels when it
/// has at most [`DIRECT_MAX_CHANNELS`] input channels: the VAE decoder's and encoder's full-size
/// layers, where it beats candle's im2col + gemm (1.1–1.6× on 2 cores; at 320 channels and more,
/// or on small maps, gemm wins).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// The packed direct kernel (CPU f32 weights, few input channels, dilation 1).
    direct: Option<easel_cpu::ConvLayer>,
}

/// Input channels up to which the direct kernel is used.
pub const DIRECT_MAX_CHANNELS: usize = 256;
/// Input pixels (H·W) from which the direct kernel is used.
pub const DIRECT_MIN_PIXELS: usize = 128 * 128;

impl Conv2d {
    /// The forward values: the direct kernel where it applies (see the type's doc), else
    /// candle's layer.
    fn values(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(direct) = &self.direct {
            let large = xs.rank() == 4 && xs.dims()[2] * xs.dims()[3] >= DIRECT_MIN_PIXELS;
            if large && xs.device().is_cpu() && xs.dtype() == DType::F32 && !xs.track_op() {
                return direct.forward(xs, easel_cpu::Activation::None);
            }
        }
        self.inner.forward(xs)
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let kernel = self.inner.weight();
        if kernel.track_op() {
            return self.inner.forward(xs);
        }
        let cfg = self.inner.config();
        frozen(
            xs,
            |xs| self.values(xs),
            Backward::Conv2d {
                kernel: kernel.clone(),
                padding: cfg.padding,
                stride: cfg.stride,
                dilation: cfg.dilation,
            },
        )
    }
}

/// Loads a [`Conv2d`] from `vb` (`weight` `[out, in, k, k]`, `bias` `[out]`); `cfg.groups`
/// must be 1.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    if cfg.groups != 1 {
        bail!("frozen conv2d: {} groups (only 1 is supported)", cfg.groups)
    }
    let inner = candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?;
    let weight = inner.weight();
    let direct = (in_channels <= DIRECT_MAX_CHANNELS
        && cfg.dilation == 1
        && weight.device().is_cpu()
        && weight.dtype() == DType::F32)
        .then(|| {
            easel_cpu::ConvLayer::new(
                weight.clone(),
                inner.bias().cloned(),
                easel_cpu::Padding::Zeros(cfg.padding),
                cfg.stride,
            )
        })
        .transpose()?
        .filter(easel_cpu::ConvLayer::is_packed);
    Ok(Conv2d { inner, direct })
}

/// Group normalisation with an affine weight and bias (PyTorch's `nn.GroupNorm`; keys
/// `weight`, `bias`): candle_nn's computation, with the affine part frozen. For f32 inference on
/// the CPU (an input autograd does not track) it runs easel-cpu's fused kernel instead, SiLU
/// included with [`GroupNorm::forward_silu`].
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    num_channels: usize,
    num_groups: usize,
    /// The fused CPU kernel without and with SiLU (weights on the CPU only).
    cpu: Option<(easel_cpu::GroupNormOp, easel_cpu::GroupNormOp)>,
}

impl GroupNorm {
    /// `silu(self.forward(xs))`, the pair of every ResNet block, fused on the CPU.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        match self.fused(xs, true)? {
            Some(ys) => Ok(ys),
            None => self.forward(xs)?.silu(),
        }
    }

    /// The fused kernel's result, where it applies: CPU weights, an f32 CPU input of this many
    /// channels that autograd does not track.
    fn fused(&self, xs: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let Some((plain, with_silu)) = &self.cpu else {
            return Ok(None);
        };
        let applies = xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && !xs.track_op()
            && xs.rank() >= 3
            && xs.dims()[1] == self.num_channels;
        if !applies {
            return Ok(None);
        }
        let op = if silu { with_silu } else { plain };
        Ok(Some(xs.contiguous()?.apply_op1_no_bwd(op)?))
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(ys) = self.fused(xs, false)? {
            return Ok(ys);
        }
        let x_shape = xs.dims();
        if x_shape.len() <= 2 {
            bail!("GroupNorm: input rank must be at least 3, got {x_shape:?}")
        }
        let (b_sz, n_channels) = (x_shape[0], x_shape[1]);
        if n_channels != self.num_channels {
            bail!(
                "GroupNorm: {n_channels} input channels, the layer has {}",
                self.num_channels
            )
        }
        let hidden_size = x_shape[2..].iter().product::<usize>() * n_channels / self.num_groups;
        let x_dtype = xs.dtype();
        let internal = match x_dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = xs.reshape((b_sz, self.num_groups, hidden_size))?;
        let x = x.to_dtype(internal)?;
        let mean_x = (x.sum_keepdim(2)? / hidden_size as f64)?;
        let x = x.broadcast_sub(&mean_x)?;
        let norm_x = (x.sqr()?.sum_keepdim(2)? / hidden_size as f64)?;
        let x_normed = x.broadcast_div(&(norm_x + self.eps)?.sqrt()?)?;
        let mut w_dims = vec![1; x_shape.len()];
        w_dims[1] = n_channels;
        let weight = self.weight.reshape(w_dims.clone())?;
        let bias = self.bias.reshape(w_dims)?;
        let normed = x_normed.to_dtype(x_dtype)?.reshape(x_shape)?;
        add(&mul(&normed, &weight)?, &bias)
    }
}

/// Loads a [`GroupNorm`] over `num_channels` channels in `num_groups` groups from `vb`.
pub fn group_norm(
    num_groups: usize,
    num_channels: usize,
    eps: f64,
    vb: VarBuilder,
) -> Result<GroupNorm> {
    if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
        bail!("GroupNorm: {num_groups} groups do not divide {num_channels} channels")
    }
    let weight = vb.get(num_channels, "weight")?;
    let bias = vb.get(num_channels, "bias")?;
    let cpu = if weight.device().is_cpu() {
        let op = easel_cpu::GroupNormOp {
            weight: weight.to_dtype(DType::F32)?.to_vec1()?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            groups: num_groups,
            eps,
            activation: easel_cpu::NormActivation::None,
        };
        let with_silu = easel_cpu::GroupNormOp {
            activation: easel_cpu::NormActivation::Silu,
            ..op.clone()
        };
        Some((op, with_silu))
    } else {
        None
    };
    Ok(GroupNorm {
        weight,
        bias,
        eps,
        num_channels,
        num_groups,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Device, Var};

    fn pattern(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 + seed * 11) % 23) as f32 / 11.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Output and input gradient of each frozen layer equal candle's plain layer; the frozen
    /// version leaves no other gradient in the store.
    #[test]
    fn frozen_layers_match_plain_layers_and_leave_only_the_input_gradient() {
        let x = Var::from_tensor(&pattern(&[2, 4, 5, 5], 1)).unwrap();
        let kernel = pattern(&[6, 4, 3, 3], 2);
        let bias = pattern(&[6], 3);
        let cfg = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let conv = Conv2d {
            inner: candle_nn::Conv2d::new(kernel.clone(), Some(bias.clone()), cfg),
            direct: None,
        };
        let gn_w = pattern(&[6], 4);
        let gn_b = pattern(&[6], 5);
        let gn = GroupNorm {
            weight: gn_w.clone(),
            bias: gn_b.clone(),
            eps: 1e-5,
            num_channels: 6,
            num_groups: 2,
            cpu: None,
        };
        let plain_gn = candle_nn::GroupNorm::new(gn_w, gn_b, 6, 2, 1e-5).unwrap();
        let lin_w = pattern(&[3, 3], 6);
        let lin = Linear {
            inner: candle_nn::Linear::new(lin_w.clone(), Some(pattern(&[3], 7))),
        };
        let skip = pattern(&[2, 2, 3, 3], 8);
        let run = |frozen_path: bool| {
            let xs = x.as_tensor();
            let out = if frozen_path {
                let h = gn.forward(&conv.forward(xs).unwrap()).unwrap();
                lin.forward(&cat2(&h, &skip, 1).unwrap()).unwrap()
            } else {
                let h = plain_gn.forward(&conv.inner.forward(xs).unwrap()).unwrap();
                lin.inner
                    .forward(&Tensor::cat(&[&h, &skip], 1).unwrap())
                    .unwrap()
            };
            let loss = sub(&out, &pattern(&[2, 8, 3, 3], 9))
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let ids = grads.get_ids().count();
            (out, grads.get(xs).unwrap().clone(), ids)
        };
        let (out_f, grad_f, ids_f) = run(true);
        let (out_p, grad_p, ids_p) = run(false);
        assert_eq!(max_abs_diff(&out_f, &out_p), 0.0);
        assert!(max_abs_diff(&grad_f, &grad_p) < 1e-5);
        assert_eq!(ids_f, 1, "only the input variable has a gradient");
        assert!(ids_p > 1, "candle's plain layers leave weight gradients");
    }

    /// Large CPU pictures take easel-cpu's direct kernel (padding 1, strides 1 and 2): the same
    /// values as candle's conv within f32 rounding, and through the graft the same input
    /// gradient; small pictures take candle's.
    #[test]
    fn large_pictures_take_the_direct_kernel() -> Result<()> {
        let dev = Device::Cpu;
        let (c_in, c_out) = (4, 6);
        let kernel = pattern(&[c_out, c_in, 3, 3], 2);
        let bias = pattern(&[c_out], 3);
        let side = 129;
        assert!(side * side >= DIRECT_MIN_PIXELS);
        let x = (pattern(&[1, c_in, side, side], 1) * 0.5)?;
        for stride in [1, 2] {
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            let vb = VarBuilder::from_tensors(
                [
                    ("weight".to_string(), kernel.clone()),
                    ("bias".to_string(), bias.clone()),
                ]
                .into_iter()
                .collect(),
                DType::F32,
                &dev,
            );
            let conv = conv2d(c_in, c_out, 3, cfg, vb)?;
            assert!(conv.direct.is_some());
            let plain = candle_nn::Conv2d::new(kernel.clone(), Some(bias.clone()), cfg);
            let want = plain.forward(&x)?;
            assert!(
                max_abs_diff(&conv.forward(&x)?, &want) < 1e-4,
                "stride {stride}"
            );
            // Tracked: the direct values, candle's input gradient.
            let xv = Var::from_tensor(&x)?;
            let g = conv.forward(xv.as_tensor())?.sqr()?.sum_all()?.backward()?;
            let xp = Var::from_tensor(&x)?;
            let gp = plain
                .forward(xp.as_tensor())?
                .sqr()?
                .sum_all()?
                .backward()?;
            let (Some(g), Some(gp)) = (g.get(xv.as_tensor()), gp.get(xp.as_tensor())) else {
                panic!("no input gradient")
            };
            let scale = gp.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                max_abs_diff(g, gp) < 1e-4 * scale,
                "stride {stride} gradient"
            );
        }
        Ok(())
    }
}
