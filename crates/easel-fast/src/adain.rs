//! AdaIN: arbitrary style transfer with adaptive instance normalization.
//!
//! Xun Huang, Serge Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
//! Normalization", ICCV 2017, <https://arxiv.org/abs/1703.06868>. A fixed VGG-19 encoder
//! ([`crate::vgg`], to relu4_1) maps the photo and the painting to features; AdaIN gives the
//! photo's features the painting's per-channel mean and standard deviation; a decoder trained for
//! that renders the result. Port of naoto0804/pytorch-AdaIN (`net.py`, `function.py`,
//! `test.py`): the checkpoints `vgg_normalised.pth` and `decoder.pth` load as they are through
//! [`easel_core::torch_checkpoint::read_torch_checkpoint`] (state-dict keys are the
//! `nn.Sequential` indices: `1.weight`, `5.weight`, … `28.bias` for the decoder).
//!
//! [`AdaIN::stylize`] offers the paper's user controls:
//!
//! - content/style trade-off `alpha`: `decoder(alpha · t + (1 − alpha) · f(content))`;
//! - style interpolation: several styles with weights, normalised to sum 1 as in the repo's
//!   `--style_interpolation_weights`; `t = Σ wᵢ · adain(f(c), f(sᵢ))`;
//! - spatial control with a mask and two styles, as the authors' Lua `test.lua -mask` (the
//!   PyTorch repo lists it as not implemented): the mask is brought to feature resolution (8×8
//!   block mean of the padded mask, ≥ 0.5 → foreground) and the content statistics are taken over
//!   the foreground (background) feature pixels only, each style's over its whole picture; the
//!   foreground gets the first style, the background the second.
//!
//! Preserving the photo's colours is left to the caller (`easel_core::keep_colors`).
//!
//! Sizes: any `H×W` from 9×9. The photo is reflection-padded at the bottom/right to a multiple
//! of 8 (the decoder upsamples relu4_1 three times by 2), stylized, and cropped back; paintings
//! are encoded at their own size (no padding, so their statistics see only real pixels).
//! Tensors are NCHW f32 RGB in [0, 1]; the output is the decoder's, not clamped.
//!
//! The encoder and decoder are one forward in tensor ops over [`easel_cpu::ConvLayer`]: for f32
//! CPU tensors without gradients each reflection pad (after the decoder's nearest ×2
//! upsampling, where there is one) is one gather and each conv easel-cpu's direct kernel with
//! bias and ReLU fused into the store; on CUDA, in other dtypes, or when gradients are wanted,
//! candle's ops.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use easel_fast::adain::{AdaIN, Config};
//! use easel_core::torch_checkpoint::read_torch_checkpoint;
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let load = |path: &str| -> candle_core::Result<VarBuilder<'static>> {
//!     let tensors = read_torch_checkpoint(&std::fs::read(path)?, path)?;
//!     Ok(VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &dev))
//! };
//! let net = AdaIN::new(load("vgg_normalised.pth")?, load("decoder.pth")?, &Config::original())?;
//! # let (photo, painting) = (Tensor::zeros((1, 3, 480, 640), DType::F32, &dev)?, Tensor::zeros((1, 3, 512, 512), DType::F32, &dev)?);
//! let out = net.stylize(&photo, &[(painting, 1.0)], 0.8, None)?; // [1, 3, 480, 640]
//! # Ok(()) }
//! ```

use crate::vgg::{self, conv_layer, Layer, VggEncoder};
use candle_core::{bail, DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use easel_cpu::{reflect_pad, Activation, ConvLayer, Padding};

/// The epsilon `calc_mean_std` adds to the variance.
pub const EPS: f64 = 1e-5;

/// Network options.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Channels of VGG blocks 1–4 (`[64, 128, 256, 512]` for the public checkpoints); the decoder
    /// mirrors them (512 → 256 → 128 → 64 → 3).
    pub widths: [usize; 4],
}

impl Config {
    /// The published networks (`vgg_normalised.pth`, `decoder.pth`).
    pub fn original() -> Self {
        Self {
            widths: vgg::Config::original().widths,
        }
    }

    /// Every channel count divided by 8: the test checkpoints of `tools/ref/adain_ref.py`.
    pub fn tiny() -> Self {
        Self {
            widths: vgg::Config::tiny().widths,
        }
    }
}

/// Per-channel mean and standard deviation over the spatial dims of `[N, C, H, W]` features, as
/// the repo's `calc_mean_std`: unbiased variance (divided by `H·W − 1`) plus [`EPS`], then the
/// square root. Both are `[N, C, 1, 1]` in `feat`'s dtype. Needs `H·W ≥ 2`.
///
/// Sums run in f32 whatever `feat`'s dtype: at relu4_1 a channel's squared deviations summed
/// over a 64×64 map overflow f16 (largest value 65504).
pub fn calc_mean_std(feat: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = feat.dims4()?;
    if h * w < 2 {
        bail!("calc_mean_std needs at least 2 feature pixels, got {h}x{w}")
    }
    let flat = feat.reshape((n, c, h * w))?.to_dtype(DType::F32)?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / (h * w - 1) as f64)?;
    let std = (var + EPS)?.sqrt()?;
    let out = |t: Tensor| t.reshape((n, c, 1, 1))?.to_dtype(feat.dtype());
    Ok((out(mean)?, out(std)?))
}

/// AdaIN: `content_feat` normalised per channel, then given the mean and standard deviation of
/// `style_feat` (both `[N, C, ·, ·]` with the same `N` and `C`; spatial sizes may differ).
pub fn adaptive_instance_normalization(
    content_feat: &Tensor,
    style_feat: &Tensor,
) -> Result<Tensor> {
    let (cd, sd) = (content_feat.dims(), style_feat.dims());
    if cd.len() != 4 || sd.len() != 4 || cd[..2] != sd[..2] {
        bail!("AdaIN needs content and style features with the same [N, C, ·, ·], got {cd:?} and {sd:?}")
    }
    let (s_mean, s_std) = calc_mean_std(style_feat)?;
    let (c_mean, c_std) = calc_mean_std(content_feat)?;
    content_feat
        .broadcast_sub(&c_mean)?
        .broadcast_div(&c_std)?
        .broadcast_mul(&s_std)?
        .broadcast_add(&s_mean)
}

/// The decoder of naoto0804/pytorch-AdaIN `net.py`: relu4_1 features → RGB, nine
/// reflection-padded 3×3 convs with ReLUs (none after the last) and three nearest ×2
/// upsamplings.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `(conv with its upsampling and reflection pad, ReLU after it)`.
    layers: Vec<(ConvLayer, bool)>,
}

impl Decoder {
    /// Builds the decoder; `vb` holds its `nn.Sequential` state dict (`1.weight`, `1.bias`,
    /// `5.weight`, … `28.bias`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        if let Some(w) = cfg.widths.iter().find(|&&w| w == 0) {
            bail!("AdaIN widths must be positive, got {w} in {:?}", cfg.widths)
        }
        let [a, b, c, d] = cfg.widths;
        // (in, out, upsample before)
        let plan = [
            (d, c, false),
            (c, c, true),
            (c, c, false),
            (c, c, false),
            (c, b, false),
            (b, b, true),
            (b, a, false),
            (a, a, true),
            (a, 3, false),
        ];
        let mut layers = Vec::with_capacity(plan.len());
        let mut index = 0; // next module index
        for (i, (cin, cout, up)) in plan.into_iter().enumerate() {
            if up {
                index += 1;
            }
            // pad at `index`, conv at `index + 1`, ReLU at `index + 2` (not after the last conv).
            let padding = Padding::Reflect {
                pad: 1,
                upsample: if up { 2 } else { 1 },
            };
            let conv = conv_layer(&vb.pp((index + 1).to_string()), (cin, cout, 3), padding)?;
            layers.push((conv, i + 1 < plan.len()));
            index += 3;
        }
        Ok(Self { layers })
    }

    /// Decodes `[N, widths[3], h, w]` features into `[N, 3, 8h, 8w]` (`h, w ≥ 2`).
    pub fn forward(&self, feat: &Tensor) -> Result<Tensor> {
        let mut x = feat.clone();
        for (conv, relu) in &self.layers {
            let act = if *relu {
                Activation::Relu
            } else {
                Activation::None
            };
            x = conv.forward(&x, act)?;
        }
        Ok(x)
    }
}

/// The AdaIN style transfer network: VGG-19 encoder to relu4_1 and decoder.
#[derive(Debug, Clone)]
pub struct AdaIN {
    encoder: VggEncoder,
    decoder: Decoder,
}

impl AdaIN {
    /// Builds the network from the encoder's (`vgg_normalised.pth`) and the decoder's
    /// (`decoder.pth`) state dicts. Encoder weights past relu4_1 are not loaded.
    pub fn new(vgg: VarBuilder, decoder: VarBuilder, cfg: &Config) -> Result<Self> {
        let vgg_cfg = vgg::Config {
            widths: cfg.widths,
            depth: Layer::Relu4_1,
        };
        Ok(Self {
            encoder: VggEncoder::new(vgg, &vgg_cfg)?,
            decoder: Decoder::new(decoder, cfg)?,
        })
    }

    /// The encoder (built to relu4_1).
    pub fn encoder(&self) -> &VggEncoder {
        &self.encoder
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Stylizes `content` (`[1, 3, H, W]`, both sides ≥ 9).
    ///
    /// - `styles`: paintings (`[1, 3, h, w]`, sides ≥ 9, sizes may differ) with weights (finite,
    ///   ≥ 0, positive sum), normalised to sum 1; one style is plain AdaIN.
    /// - `alpha` in [0, 1]: 1 = full style, 0 = reconstruct the photo.
    /// - `mask`: spatial control, `[H, W]` or `[1, 1, H, W]` in [0, 1] at the photo's size, with
    ///   exactly two styles: the first where the mask is ≥ 0.5 (after 8×8 block averaging at
    ///   feature resolution), the second elsewhere; the weights are not used.
    ///
    /// Runs in the weights' dtype (f32 on the CPU; f16/bf16 on CUDA) with the
    /// feature statistics in f32. Returns `[1, 3, H, W]` in the weights' dtype, not clamped.
    pub fn stylize(
        &self,
        content: &Tensor,
        styles: &[(Tensor, f64)],
        alpha: f64,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&alpha) {
            bail!("alpha must be in [0, 1], got {alpha}")
        }
        if styles.is_empty() {
            bail!("stylize needs at least one style")
        }
        let (n, c, h, w) = content.dims4()?;
        if n != 1 || c != 3 {
            bail!(
                "stylize expects one RGB picture [1, 3, H, W], got {:?}",
                content.dims()
            )
        }
        let min = Layer::Relu4_1.min_side();
        if h < min || w < min {
            bail!("the photo is {w}x{h}; AdaIN needs both sides to be at least {min} pixels")
        }
        for (i, (s, _)) in styles.iter().enumerate() {
            let d = s.dims();
            if d.len() != 4 || d[0] != 1 || d[1] != 3 {
                bail!("style {i} must be one RGB picture [1, 3, h, w], got {d:?}")
            }
            if d[2] < min || d[3] < min {
                bail!(
                    "style {i} is {}x{}; AdaIN needs both sides to be at least {min} pixels",
                    d[3],
                    d[2]
                )
            }
        }
        let (ph, pw) = ((8 - h % 8) % 8, (8 - w % 8) % 8);
        let padded = reflect_pad(&content.to_dtype(self.encoder.dtype())?, 0, ph, 0, pw)?;
        let content_f = self.encoder.forward_to(&padded, Layer::Relu4_1)?;
        let style_fs = styles
            .iter()
            .map(|(s, _)| self.encoder.forward_to(s, Layer::Relu4_1))
            .collect::<Result<Vec<_>>>()?;
        let target = match mask {
            Some(mask) => {
                let [fg, bg] = style_fs.as_slice() else {
                    bail!(
                        "spatial control needs exactly two styles (foreground, background), got {}",
                        styles.len()
                    )
                };
                let m = feature_mask(mask, (h, w), (ph, pw))?;
                spatial_adain(&content_f, fg, bg, &m)?
            }
            None => {
                let weights = normalized_weights(styles)?;
                let mut t = content_f.zeros_like()?;
                for (sf, wt) in style_fs.iter().zip(weights) {
                    t = (t + (adaptive_instance_normalization(&content_f, sf)? * wt)?)?;
                }
                t
            }
        };
        let feat = ((target * alpha)? + (&content_f * (1.0 - alpha))?)?;
        self.decoder
            .forward(&feat)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)
    }
}

/// Style weights divided by their sum.
fn normalized_weights(styles: &[(Tensor, f64)]) -> Result<Vec<f64>> {
    if let Some((i, (_, w))) = styles
        .iter()
        .enumerate()
        .find(|(_, (_, w))| !w.is_finite() || *w < 0.0)
    {
        bail!("style weights must be finite and ≥ 0, style {i} has {w}")
    }
    let sum: f64 = styles.iter().map(|(_, w)| w).sum();
    if sum <= 0.0 {
        bail!("style weights must not all be 0")
    }
    Ok(styles.iter().map(|(_, w)| w / sum).collect())
}

/// The spatial-control mask at relu4_1 resolution: padded like the photo, 8×8 block means,
/// ≥ 0.5 → 1, else 0. Returns `[1, 1, ⌈H/8⌉, ⌈W/8⌉]` f32.
fn feature_mask(mask: &Tensor, (h, w): (usize, usize), (ph, pw): (usize, usize)) -> Result<Tensor> {
    let m = match mask.dims() {
        [mh, mw] if (*mh, *mw) == (h, w) => mask.reshape((1, 1, h, w))?,
        [1, 1, mh, mw] if (*mh, *mw) == (h, w) => mask.clone(),
        d => bail!("the mask must be [{h}, {w}] or [1, 1, {h}, {w}] like the photo, got {d:?}"),
    };
    let m = reflect_pad(&m.to_dtype(DType::F32)?, 0, ph, 0, pw)?.avg_pool2d(8)?;
    m.ge(0.5)?.to_dtype(DType::F32)
}

/// Lua `test.lua -mask`: AdaIN of the foreground feature pixels (content statistics over those
/// pixels only) to `fg`'s statistics, and of the background pixels to `bg`'s. A region of one
/// pixel has variance 0; an empty region contributes nothing.
fn spatial_adain(content_f: &Tensor, fg: &Tensor, bg: &Tensor, mask: &Tensor) -> Result<Tensor> {
    // Region statistics in f32 (f16 sums overflow, see `calc_mean_std`).
    let dtype = content_f.dtype();
    let content_f = &content_f.to_dtype(DType::F32)?;
    let mut out = content_f.zeros_like()?;
    for (region, style_f) in [(mask.clone(), fg), ((1.0 - mask)?, bg)] {
        let count = region.sum_all()?.to_scalar::<f32>()? as f64;
        if count == 0.0 {
            continue;
        }
        let sum = |t: &Tensor| t.broadcast_mul(&region)?.sum_keepdim((2, 3));
        let mean = (sum(content_f)? / count)?;
        let centered = content_f.broadcast_sub(&mean)?;
        let var = (sum(&centered.sqr()?)? / (count - 1.0).max(1.0))?;
        let std = (var + EPS)?.sqrt()?;
        let (s_mean, s_std) = calc_mean_std(&style_f.to_dtype(DType::F32)?)?;
        let y = centered
            .broadcast_div(&std)?
            .broadcast_mul(&s_std)?
            .broadcast_add(&s_mean)?;
        out = (out + y.broadcast_mul(&region)?)?;
    }
    out.to_dtype(dtype)
}
