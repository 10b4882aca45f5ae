//! VGG-19 encoder "vgg_normalised", as used by AdaIN.
//!
//! Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
//! 2014, <https://arxiv.org/abs/1409.1556>, in the normalised form (weights rescaled so every
//! layer's mean activation is 1) that Huang & Belongie ship with AdaIN,
//! <https://arxiv.org/abs/1703.06868>, ported to PyTorch as `vgg` in naoto0804/pytorch-AdaIN
//! `net.py`. It is one `nn.Sequential` of 53 modules whose indices are the state-dict keys of
//! `vgg_normalised.pth` (`0.weight`, `2.weight`, `5.weight`, … `51.bias`):
//!
//! - `0`: a 1×1 conv 3 → 3 that does the Caffe preprocessing (RGB in [0, 1] → mean-subtracted
//!   BGR in [0, 255]), so the input is a plain RGB picture in [0, 1];
//! - five blocks of `ReflectionPad2d(1)`, 3×3 conv, ReLU (2, 2, 4, 4, 4 convs), separated by
//!   2×2 max pools with `ceil_mode=True` (odd sides keep their last row/column).
//!
//! [`VggEncoder`] runs it up to [`Config::depth`] (relu5_1 at most, module 43) and exposes
//! relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (modules 3, 10, 17, 30, 43). Weights of deeper
//! modules in the checkpoint are not loaded. Tensors are NCHW f32.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use easel_core::torch_checkpoint::read_torch_checkpoint;
//! use easel_fast::vgg::{Config, Layer, VggEncoder};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let bytes = std::fs::read("vgg_normalised.pth")?;
//! let weights = read_torch_checkpoint(&bytes, "vgg_normalised.pth")?;
//! let vb = VarBuilder::from_tensors(weights.into_iter().collect(), DType::F32, &dev);
//! let vgg = VggEncoder::new(vb, &Config::original())?;
//! # let picture = Tensor::zeros((1, 3, 256, 256), DType::F32, &dev)?;
//! let relu4_1 = vgg.forward_to(&picture, Layer::Relu4_1)?; // [1, 512, 32, 32]
//! # Ok(()) }
//! ```

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::VarBuilder;
use easel_cpu::{max_pool2_ceil, Activation, ConvLayer, Padding};

/// A layer whose activations the encoder exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// After the first conv of block 1 (module 3), full resolution.
    Relu1_1,
    /// After the first conv of block 2 (module 10), ½ resolution.
    Relu2_1,
    /// After the first conv of block 3 (module 17), ¼ resolution.
    Relu3_1,
    /// After the first conv of block 4 (module 30), ⅛ resolution: AdaIN's feature layer.
    Relu4_1,
    /// After the first conv of block 5 (module 43), 1/16 resolution.
    Relu5_1,
}

impl Layer {
    /// All exposed layers, shallowest first.
    pub const ALL: [Layer; 5] = [
        Layer::Relu1_1,
        Layer::Relu2_1,
        Layer::Relu3_1,
        Layer::Relu4_1,
        Layer::Relu5_1,
    ];

    /// Index of the layer's ReLU in the `nn.Sequential`.
    pub fn module_index(self) -> usize {
        match self {
            Layer::Relu1_1 => 3,
            Layer::Relu2_1 => 10,
            Layer::Relu3_1 => 17,
            Layer::Relu4_1 => 30,
            Layer::Relu5_1 => 43,
        }
    }

    /// Number of 2×2 pools before the layer (its resolution is 1/2^pools).
    fn pools(self) -> usize {
        self as usize
    }

    /// The PyTorch-style name, e.g. `relu4_1`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Relu1_1 => "relu1_1",
            Layer::Relu2_1 => "relu2_1",
            Layer::Relu3_1 => "relu3_1",
            Layer::Relu4_1 => "relu4_1",
            Layer::Relu5_1 => "relu5_1",
        }
    }

    /// Smallest picture side the encoder accepts to reach this layer: every reflection pad needs
    /// at least 2 pixels, and the ceil-mode pools halve rounding up.
    pub fn min_side(self) -> usize {
        (1usize << self.pools()) + 1
    }
}

/// Encoder options.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Channels of blocks 1–4 (block 5 has block 4's): `[64, 128, 256, 512]` for the public
    /// `vgg_normalised.pth`.
    pub widths: [usize; 4],
    /// Deepest layer built; weights of later modules are neither needed nor loaded.
    pub depth: Layer,
}

impl Config {
    /// VGG-19 as published, up to relu5_1.
    pub fn original() -> Self {
        Self {
            widths: [64, 128, 256, 512],
            depth: Layer::Relu5_1,
        }
    }

    /// Every channel count divided by 8 (`[8, 16, 32, 64]`), up to relu5_1: the random-weight
    /// test checkpoints of `tools/ref/adain_ref.py`.
    pub fn tiny() -> Self {
        Self {
            widths: [8, 16, 32, 64],
            depth: Layer::Relu5_1,
        }
    }
}

/// The five exposed activations of one forward pass.
#[derive(Debug, Clone)]
pub struct VggFeatures {
    /// `[N, widths[0], H, W]`.
    pub relu1_1: Tensor,
    /// `[N, widths[1], ⌈H/2⌉, ⌈W/2⌉]`.
    pub relu2_1: Tensor,
    /// `[N, widths[2], ⌈H/4⌉, ⌈W/4⌉]` (each halving rounds up).
    pub relu3_1: Tensor,
    /// `[N, widths[3], ⌈H/8⌉, ⌈W/8⌉]`.
    pub relu4_1: Tensor,
    /// `[N, widths[3], ⌈H/16⌉, ⌈W/16⌉]`.
    pub relu5_1: Tensor,
}

impl VggFeatures {
    /// The activation of `layer`.
    pub fn get(&self, layer: Layer) -> &Tensor {
        match layer {
            Layer::Relu1_1 => &self.relu1_1,
            Layer::Relu2_1 => &self.relu2_1,
            Layer::Relu3_1 => &self.relu3_1,
            Layer::Relu4_1 => &self.relu4_1,
            Layer::Relu5_1 => &self.relu5_1,
        }
    }
}

/// One module of the `nn.Sequential` (pads and ReLUs are folded into their conv).
#[derive(Debug, Clone)]
enum Step {
    /// Module 0, the 1×1 preprocessing conv.
    Preprocess(ConvLayer),
    /// `ReflectionPad2d(1)`, 3×3 conv, ReLU; `relu` is the ReLU's module index.
    Conv { conv: ConvLayer, relu: usize },
    /// `MaxPool2d(2, 2, ceil_mode=True)`.
    Pool,
}

/// The "vgg_normalised" VGG-19 encoder.
#[derive(Debug, Clone)]
pub struct VggEncoder {
    steps: Vec<Step>,
    depth: Layer,
    /// The weights' dtype, which inputs are converted to.
    dtype: DType,
}

impl VggEncoder {
    /// Builds the encoder up to `cfg.depth`; `vb` holds the `nn.Sequential`'s state dict
    /// (`0.weight`, `0.bias`, `2.weight`, …).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        if let Some(w) = cfg.widths.iter().find(|&&w| w == 0) {
            bail!("VGG widths must be positive, got {w} in {:?}", cfg.widths)
        }
        let [a, b, c, d] = cfg.widths;
        // `ReflectionPad2d(1)` before each 3×3 conv; none before the 1×1.
        let conv = |cin, cout, k, index: usize| {
            conv_layer(
                &vb.pp(index.to_string()),
                (cin, cout, k),
                Padding::reflect(k / 2),
            )
        };
        let mut steps = vec![Step::Preprocess(conv(3, 3, 1, 0)?)];
        let mut index = 1; // next module index
        let mut cin = 3;
        for (block, (cout, convs)) in [(a, 2), (b, 2), (c, 4), (d, 4), (d, 4)]
            .into_iter()
            .enumerate()
        {
            if block > 0 {
                steps.push(Step::Pool);
                index += 1;
            }
            for _ in 0..convs {
                // pad at `index`, conv at `index + 1`, ReLU at `index + 2`.
                let relu = index + 2;
                if relu > cfg.depth.module_index() {
                    return Ok(Self {
                        steps,
                        depth: cfg.depth,
                        dtype: vb.dtype(),
                    });
                }
                steps.push(Step::Conv {
                    conv: conv(cin, cout, 3, index + 1)?,
                    relu,
                });
                cin = cout;
                index += 3;
            }
        }
        Ok(Self {
            steps,
            depth: cfg.depth,
            dtype: vb.dtype(),
        })
    }

    /// The deepest layer this encoder was built to.
    pub fn depth(&self) -> Layer {
        self.depth
    }

    /// The weights' dtype (inputs are converted to it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `x` (`[N, 3, H, W]` RGB in [0, 1]) up to `layer` and returns its activation.
    pub fn forward_to(&self, x: &Tensor, layer: Layer) -> Result<Tensor> {
        let mut out = None;
        self.run(x, layer, |l, t| {
            if l == layer {
                out = Some(t.clone());
            }
        })?;
        match out {
            Some(t) => Ok(t),
            None => bail!("VGG encoder: {} was not reached", layer.name()),
        }
    }

    /// Runs `x` (`[N, 3, H, W]` RGB in [0, 1], both sides ≥ 17) to relu5_1 and returns the five
    /// exposed activations. Needs an encoder built to relu5_1.
    pub fn forward_features(&self, x: &Tensor) -> Result<VggFeatures> {
        let mut feats: Vec<Tensor> = Vec::with_capacity(5);
        self.run(x, Layer::Relu5_1, |_, t| feats.push(t.clone()))?;
        match <[Tensor; 5]>::try_from(feats) {
            Ok([relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]) => Ok(VggFeatures {
                relu1_1,
                relu2_1,
                relu3_1,
                relu4_1,
                relu5_1,
            }),
            Err(f) => bail!("VGG encoder: {} of 5 layers computed", f.len()),
        }
    }

    /// Runs `x` (`[N, 3, H, W]` RGB in [0, 1]) up to `last` and returns the exposed activations
    /// relu1_1 … `last`, shallowest first (the training losses' feature lists).
    pub fn forward_layers(&self, x: &Tensor, last: Layer) -> Result<Vec<Tensor>> {
        let mut feats = Vec::with_capacity(last as usize + 1);
        self.run(x, last, |_, t| feats.push(t.clone()))?;
        Ok(feats)
    }

    /// Runs up to `last`, calling `tap` with each exposed layer's activation.
    fn run(&self, x: &Tensor, last: Layer, mut tap: impl FnMut(Layer, &Tensor)) -> Result<()> {
        if last > self.depth {
            bail!(
                "VGG encoder built to {} cannot compute {}",
                self.depth.name(),
                last.name()
            )
        }
        let (_, c, h, w) = x.dims4()?;
        if c != 3 {
            bail!("VGG encoder expects an RGB [N, 3, H, W] tensor, got {c} channels")
        }
        let min = last.min_side();
        if h < min || w < min {
            bail!(
                "VGG encoder: a {w}x{h} picture is too small to reach {} (both sides must be at \
                 least {min} pixels)",
                last.name()
            )
        }
        let mut x = x.to_dtype(self.dtype)?;
        let mut next = Layer::ALL.iter().copied();
        let mut want = next.next();
        for step in &self.steps {
            x = match step {
                Step::Preprocess(conv) => conv.forward(&x, Activation::None)?,
                Step::Pool => max_pool2_ceil(&x)?,
                Step::Conv { conv, relu } => {
                    let y = conv.forward(&x, Activation::Relu)?;
                    if let Some(layer) = want.filter(|l| l.module_index() == *relu) {
                        tap(layer, &y);
                        if layer == last {
                            return Ok(());
                        }
                        want = next.next();
                    }
                    y
                }
            };
        }
        bail!("VGG encoder: {} was not reached", last.name())
    }
}

/// The conv of one `(in, out, k)` module of a VGG-style `nn.Sequential` (`vb` at its index:
/// `weight`, `bias`) with the `padding` of the modules before it.
pub(crate) fn conv_layer(
    vb: &VarBuilder,
    (cin, cout, k): (usize, usize, usize),
    padding: Padding,
) -> Result<ConvLayer> {
    ConvLayer::new(
        vb.get((cout, cin, k, k), "weight")?,
        Some(vb.get(cout, "bias")?),
        padding,
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_sides() {
        let sides: Vec<usize> = Layer::ALL.iter().map(|l| l.min_side()).collect();
        assert_eq!(sides, [2, 3, 5, 9, 17]);
    }
}
