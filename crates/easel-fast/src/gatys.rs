//! Optimisation-based style transfer: the picture itself is optimised so that its deep features
//! match the photo's content and the paintings' Gram matrices.
//!
//! Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016,
//! <https://openaccess.thecvf.com/content_cvpr_2016/papers/Gatys_Image_Style_Transfer_CVPR_2016_paper.pdf>,
//! and its controls from Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer",
//! CVPR 2017, <https://arxiv.org/abs/1611.07865>: spatial (masked Gram matrices, one painting
//! per region), colour (luminance-only transfer, or the painting's colours matched to the
//! photo's before optimising) and scale (the painting's resolution relative to the photo, and
//! coarse-to-fine octaves).
//!
//! The perceptual network ([`Perceptual`]) is the embedded EfficientNet-Lite0
//! ([`crate::efficientnet`]), so no VGG weights are needed, or VGG-19 from a checkpoint the user
//! has ([`crate::vgg19`]). The loss, for the picture `x` (RGB in [0, 1], `[1, 3, H, W]`):
//!
//! - content: `mean((F_c(x) − F_c(photo))²)` at each content layer, summed;
//! - style: at each style layer, the Gram matrix `G = F Fᵀ / (C·H·W)` of the `[C, H·W]`
//!   activations, and `mean((G(x) − G(painting))²)`, summed over layers (and over regions with a
//!   mask: each region's Gram of the masked activations, normalised by `C · Σ m²`, against its
//!   own painting's whole Gram);
//! - total variation: `mean((x[i+1, j] − x[i, j])²) + mean((x[i, j+1] − x[i, j])²)`;
//! - total: `content_weight · content + style_weight · style + tv_weight · tv`.
//!
//! The optimiser is L-BFGS exactly as `torch.optim.LBFGS` with `lr = 1`, no line search and
//! history 100 ([`Lbfgs`]; one `step` whose `max_iter` is the iteration count), or Adam
//! (`torch.optim.Adam` defaults, learning rate [`Settings::adam_lr`]).

use crate::efficientnet::{EfficientNet, FeatureTape, Tap};
use crate::vgg19::{Vgg19, Vgg19Tape, VggLayer};
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use easel_cpu::GramOp;
use std::sync::atomic::{AtomicBool, Ordering};

/// A layer of one of the perceptual networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// An EfficientNet-Lite0 layer (`stem`, `dwN`, `blockN`, `head`).
    Lite0(Tap),
    /// A VGG-19 layer (`reluB_I`).
    Vgg19(VggLayer),
}

impl Layer {
    /// Parses either network's layer name: `stem`, `dwN`, `blockN`, `head` (EfficientNet-Lite0)
    /// or `reluB_I` (VGG-19).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with("relu") {
            VggLayer::parse(s).map(Layer::Vgg19)
        } else {
            Tap::parse(s).map(Layer::Lite0).map_err(|e| {
                candle_core::Error::msg(format!("{e}; VGG-19's layers are reluB_I, e.g. relu4_2"))
            })
        }
    }

    /// Parses a comma-separated list of layers (`stem,dw1,dw3` or `relu1_1,relu2_1`).
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',').map(Self::parse).collect()
    }

    /// The name [`Layer::parse`] reads.
    pub fn name(self) -> String {
        match self {
            Layer::Lite0(t) => t.name(),
            Layer::Vgg19(l) => l.name(),
        }
    }
}

/// Which layers carry the content and the style.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSet {
    /// Gram-matrix layers.
    pub style: Vec<Layer>,
    /// Content layers.
    pub content: Vec<Layer>,
}

impl LayerSet {
    /// EfficientNet-Lite0's defaults: style at the ReLU6 after the stem and after the depthwise
    /// convs of blocks 1, 3, 5 and 8 (the first block of stages 2 to 5: ½ to 1/16 resolution,
    /// the analogue of VGG's relu1_1 … relu5_1), content at block 5's output (1/16, 80
    /// channels).
    pub fn efficientnet_lite0() -> Self {
        let style = [
            Tap::Stem,
            Tap::Depthwise(1),
            Tap::Depthwise(3),
            Tap::Depthwise(5),
            Tap::Depthwise(8),
        ];
        Self {
            style: style.into_iter().map(Layer::Lite0).collect(),
            content: vec![Layer::Lite0(Tap::Block(5))],
        }
    }

    /// VGG-19's, as Gatys et al. 2016: style at relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1,
    /// content at relu4_2.
    pub fn vgg19() -> Self {
        let relu = |b, i| VggLayer::new(b, i).map(Layer::Vgg19);
        // Every (block, conv) here exists.
        let style = (1..=5).flat_map(|b| relu(b, 1)).collect();
        Self {
            style,
            content: relu(4, 2).into_iter().collect(),
        }
    }

    fn all(&self) -> Vec<Layer> {
        let mut layers: Vec<Layer> = self.style.iter().chain(&self.content).copied().collect();
        layers.sort();
        layers.dedup();
        layers
    }
}

/// A perceptual network for the loss: its activations at named layers, and their gradient to
/// the picture.
pub trait Perceptual {
    /// The network's name in messages.
    fn name(&self) -> &'static str;
    /// The device the weights are on.
    fn device(&self) -> &Device;
    /// The layers the loss uses unless the settings name others.
    fn default_layers(&self) -> LayerSet;
    /// Fails naming `layer` when the network has no such layer.
    fn check_layer(&self, layer: Layer) -> Result<()>;
    /// The activations at `layers` of RGB pictures `x` (`[N, 3, H, W]` in [0, 1]).
    fn features(&self, x: &Tensor, layers: &[Layer]) -> Result<Vec<Tensor>>;
    /// The activations at `layers` and what turns their gradients into the picture's.
    fn features_with_backward<'a>(
        &'a self,
        x: &Tensor,
        layers: &[Layer],
    ) -> Result<(Vec<Tensor>, Box<dyn FeatureBackward + 'a>)>;
}

/// The backward half of [`Perceptual::features_with_backward`].
pub trait FeatureBackward {
    /// The gradient of a scalar loss to the picture, given its gradients to each feature (same
    /// order and shapes; `None` for a feature the loss does not use).
    fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor>;
}

impl FeatureBackward for FeatureTape<'_> {
    fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        FeatureTape::backward(self, grads)
    }
}

impl FeatureBackward for Vgg19Tape<'_> {
    fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        Vgg19Tape::backward(self, grads)
    }
}

fn lite0_taps(layers: &[Layer]) -> Result<Vec<Tap>> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Lite0(t) => Ok(*t),
            Layer::Vgg19(v) => bail!(
                "{} is a VGG-19 layer; EfficientNet-Lite0's are stem, dwN, blockN and head",
                v.name()
            ),
        })
        .collect()
}

fn vgg19_layers(layers: &[Layer]) -> Result<Vec<VggLayer>> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Vgg19(v) => Ok(*v),
            Layer::Lite0(t) => bail!(
                "{} is an EfficientNet-Lite0 layer; VGG-19's are reluB_I, e.g. relu4_2",
                t.name()
            ),
        })
        .collect()
}

impl Perceptual for EfficientNet {
    fn name(&self) -> &'static str {
        "EfficientNet-Lite0"
    }

    fn device(&self) -> &Device {
        EfficientNet::device(self)
    }

    fn default_layers(&self) -> LayerSet {
        LayerSet::efficientnet_lite0()
    }

    fn check_layer(&self, layer: Layer) -> Result<()> {
        self.check_tap(lite0_taps(&[layer])?[0])
    }

    fn features(&self, x: &Tensor, layers: &[Layer]) -> Result<Vec<Tensor>> {
        EfficientNet::features(self, x, &lite0_taps(layers)?)
    }

    fn features_with_backward<'a>(
        &'a self,
        x: &Tensor,
        layers: &[Layer],
    ) -> Result<(Vec<Tensor>, Box<dyn FeatureBackward + 'a>)> {
        let (feats, tape) = EfficientNet::features_with_backward(self, x, &lite0_taps(layers)?)?;
        Ok((feats, Box::new(tape)))
    }
}

impl Perceptual for Vgg19 {
    fn name(&self) -> &'static str {
        "VGG-19"
    }

    fn device(&self) -> &Device {
        Vgg19::device(self)
    }

    fn default_layers(&self) -> LayerSet {
        LayerSet::vgg19()
    }

    fn check_layer(&self, layer: Layer) -> Result<()> {
        vgg19_layers(&[layer]).map(|_| ())
    }

    fn features(&self, x: &Tensor, layers: &[Layer]) -> Result<Vec<Tensor>> {
        Vgg19::features(self, x, &vgg19_layers(layers)?)
    }

    fn features_with_backward<'a>(
        &'a self,
        x: &Tensor,
        layers: &[Layer],
    ) -> Result<(Vec<Tensor>, Box<dyn FeatureBackward + 'a>)> {
        let (feats, tape) = Vgg19::features_with_backward(self, x, &vgg19_layers(layers)?)?;
        Ok((feats, Box::new(tape)))
    }
}

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// L-BFGS (history 100, step 1, no line search), as `torch.optim.LBFGS`.
    Lbfgs,
    /// Adam with PyTorch's defaults (β 0.9, 0.999, ε 1e-8) and [`Settings::adam_lr`].
    Adam,
}

/// Where the optimisation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// The photo itself.
    Photo,
    /// Uniform noise in [0, 1] from this seed.
    Noise(u64),
}

/// Colour control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorControl {
    /// The paintings' colours.
    None,
    /// Keep the photo's colours: the result's luminance with the photo's chroma (BT.601).
    KeepColors,
    /// Before optimising, give each painting the photo's colour mean and covariance (the linear
    /// colour-histogram matching of Gatys et al. 2017, Cholesky form).
    Histogram,
}

/// Everything that steers one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Optimiser iterations per octave.
    pub iterations: usize,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Adam's learning rate (on [0, 1] pixel values).
    pub adam_lr: f64,
    /// L-BFGS history size.
    pub lbfgs_history: usize,
    /// Weight of the content loss.
    pub content_weight: f64,
    /// Weight of the style loss.
    pub style_weight: f64,
    /// Weight of the total-variation loss.
    pub tv_weight: f64,
    /// Layers of the style (`None`: the network's [`Perceptual::default_layers`]).
    pub style_layers: Option<Vec<Layer>>,
    /// Layers of the content (`None`: the network's default).
    pub content_layers: Option<Vec<Layer>>,
    /// Starting picture.
    pub init: Init,
    /// Coarse-to-fine passes: octave `o` of `n` runs at 1/2^(n−1−o) of the photo's size, starting
    /// from the previous octave's result upscaled. 1: the photo's size only.
    pub octaves: usize,
    /// The painting's long side relative to the photo's (at each octave): larger paints larger
    /// brush strokes.
    pub style_scale: f64,
    /// Colour control.
    pub color: ColorControl,
    /// Report the current picture every this many iterations (0: never).
    pub preview_every: usize,
}

impl Settings {
    /// The defaults: 300 L-BFGS iterations, content 1, style 1e5, TV 1, the network's layer
    /// set, from the photo, one octave, style scale 1.
    pub fn new() -> Self {
        Self {
            iterations: 300,
            optimizer: OptimizerKind::Lbfgs,
            adam_lr: 0.02,
            lbfgs_history: 100,
            content_weight: 1.0,
            style_weight: 1e5,
            tv_weight: 1.0,
            style_layers: None,
            content_layers: None,
            init: Init::Photo,
            octaves: 1,
            style_scale: 1.0,
            color: ColorControl::None,
            preview_every: 0,
        }
    }

    /// Checks the values; the error names the wrong one.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("content weight", self.content_weight),
            ("style weight", self.style_weight),
            ("tv weight", self.tv_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                bail!("{name} must be finite and >= 0, got {w}")
            }
        }
        if !(self.adam_lr.is_finite() && self.adam_lr > 0.0) {
            bail!("Adam learning rate must be > 0, got {}", self.adam_lr)
        }
        if !(1..=100_000).contains(&self.iterations) {
            bail!("iterations must be 1 to 100000, got {}", self.iterations)
        }
        if !(1..=8).contains(&self.octaves) {
            bail!("octaves must be 1 to 8, got {}", self.octaves)
        }
        check_style_scale(self.style_scale)?;
        if self.lbfgs_history == 0 || self.lbfgs_history > 1000 {
            bail!(
                "L-BFGS history must be 1 to 1000, got {}",
                self.lbfgs_history
            )
        }
        if self.style_layers.as_ref().is_some_and(Vec::is_empty)
            && self.content_layers.as_ref().is_some_and(Vec::is_empty)
        {
            bail!("no content or style layers")
        }
        Ok(())
    }

    /// The layers of the loss on `net`: the settings' where given, else the network's.
    pub fn layers(&self, net: &dyn Perceptual) -> LayerSet {
        let defaults = net.default_layers();
        LayerSet {
            style: self.style_layers.clone().unwrap_or(defaults.style),
            content: self.content_layers.clone().unwrap_or(defaults.content),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::new()
    }
}

/// The loss of one evaluation: unweighted terms and the weighted total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// Content loss.
    pub content: f64,
    /// Style loss.
    pub style: f64,
    /// Total variation.
    pub tv: f64,
    /// Weighted sum.
    pub total: f64,
}

/// Where a run is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Current octave (0-based) and the number of octaves.
    pub octave: usize,
    /// Number of octaves.
    pub octaves: usize,
    /// Iterations done in this octave.
    pub iteration: usize,
    /// Iterations per octave.
    pub iterations: usize,
    /// The loss at the latest evaluation.
    pub losses: Losses,
}

/// What the callback of [`stylize`] is told.
pub enum Event<'a> {
    /// After each evaluation of the loss.
    Progress(Progress),
    /// Every [`Settings::preview_every`] iterations: the current picture `[1, 3, H, W]`.
    Preview(Progress, &'a Tensor),
}

/// The result of [`stylize`].
#[derive(Debug)]
pub struct Output {
    /// The picture with the lowest loss found (of the last octave run), `[1, 3, H, W]` in
    /// [0, 1], at the photo's size (colour control applied).
    pub image: Tensor,
    /// Its loss.
    pub losses: Losses,
    /// Iterations run, over all octaves.
    pub iterations: usize,
    /// Whether `cancel` stopped the run early.
    pub cancelled: bool,
}

/// A region's mask at a style layer's size (`[1, H·W]`) and its `Σ m²`.
type RegionMask = (Tensor, f64);

/// One loss evaluation set up for fixed targets: the photo's content features and the
/// paintings' Gram matrices (per region with a mask).
pub struct Objective<'a> {
    net: &'a dyn Perceptual,
    taps: Vec<Layer>,
    style_taps: Vec<Layer>,
    content_taps: Vec<Layer>,
    content_targets: Vec<Tensor>,
    /// `[style layer][region]`: the target Gram and the region's mask at that layer's size
    /// (`[1, H·W]`) with its `Σ m²` (none without a mask).
    style_targets: Vec<Vec<(Tensor, Option<RegionMask>)>>,
    weights: (f64, f64, f64),
}

/// The Gram matrix `F Fᵀ / (C·H·W)` of `[1, C, H, W]` activations, optionally masked
/// (`mask` `[1, H·W]`, normalised by `C · Σ m²` instead). Values only: on the CPU it is not
/// differentiable by candle's autograd (the loss writes its gradient out).
pub fn gram(feat: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = feat.dims4()?;
    if n != 1 {
        bail!("gram: one picture at a time, got a batch of {n}")
    }
    let f = feat.reshape((c, h * w))?;
    match mask {
        None => outer(&f)? / (c * h * w) as f64,
        Some(m) => {
            let fm = f.broadcast_mul(m)?;
            let norm = m.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            outer(&fm)? / (c as f64 * norm.max(1e-8))
        }
    }
}

/// `F Fᵀ` of `[C, N]` rows: easel-cpu's kernel on the CPU (candle's gemm runs this shape on one
/// thread), candle's matmul elsewhere.
fn outer(f: &Tensor) -> Result<Tensor> {
    if f.device().is_cpu() && f.dtype() == DType::F32 {
        f.contiguous()?.apply_op1_no_bwd(&GramOp)
    } else {
        f.matmul(&f.t()?)
    }
}

/// The mean squared total variation of `[1, 3, H, W]` pictures (see the module doc).
pub fn total_variation(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dy = (x.narrow(2, 1, h - 1)? - x.narrow(2, 0, h - 1)?)?;
    let dx = (x.narrow(3, 1, w - 1)? - x.narrow(3, 0, w - 1)?)?;
    dy.sqr()?.mean_all()? + dx.sqr()?.mean_all()?
}

/// Box-filters `mask` (`[H, W]` values) down to a feature map of `h × w`: each feature pixel is
/// the mean of the mask pixels it covers (`[1, h·w]`).
fn downsample_mask(mask: &[f32], (mh, mw): (usize, usize), (h, w): (usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for (i, row) in out.chunks_exact_mut(w).enumerate() {
        let (y0, y1) = (i * mh / h, ((i + 1) * mh).div_ceil(h).min(mh));
        for (j, o) in row.iter_mut().enumerate() {
            let (x0, x1) = (j * mw / w, ((j + 1) * mw).div_ceil(w).min(mw));
            let mut sum = 0f64;
            for y in y0..y1.max(y0 + 1) {
                for x in x0..x1.max(x0 + 1) {
                    sum += mask[y * mw + x] as f64;
                }
            }
            *o = (sum / ((y1.max(y0 + 1) - y0) * (x1.max(x0 + 1) - x0)) as f64) as f32;
        }
    }
    out
}

impl<'a> Objective<'a> {
    /// Targets from `photo` (`[1, 3, H, W]`) and `styles` (one painting, or one per region of
    /// `regions`: `[R, H, W]` soft masks at the photo's size, R = number of paintings).
    pub fn new(
        net: &'a dyn Perceptual,
        photo: &Tensor,
        styles: &[Tensor],
        regions: Option<&Tensor>,
        settings: &Settings,
    ) -> Result<Self> {
        let layers = &settings.layers(net);
        if layers.style.is_empty() && layers.content.is_empty() {
            bail!("no content or style layers")
        }
        let taps = layers.all();
        for &layer in &taps {
            net.check_layer(layer)?;
        }
        let (_, _, ph, pw) = photo.dims4()?;
        let region_masks: Option<Vec<Vec<f32>>> = match regions {
            None => {
                if styles.len() != 1 {
                    bail!(
                        "{} paintings need a mask with one region each",
                        styles.len()
                    )
                }
                None
            }
            Some(r) => {
                let (n, h, w) = r.dims3()?;
                if n != styles.len() {
                    bail!(
                        "the mask has {n} regions but there are {} paintings",
                        styles.len()
                    )
                }
                if (h, w) != (ph, pw) {
                    bail!("the mask is {w}x{h}, the photo {pw}x{ph}")
                }
                let v = r.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
                Some(
                    (0..n)
                        .map(|i| v.get(i)?.flatten_all()?.to_vec1::<f32>())
                        .collect::<Result<_>>()?,
                )
            }
        };
        let photo_feats = net.features(photo, &layers.content)?;
        let content_targets = photo_feats.into_iter().map(|t| t.detach()).collect();
        let mut style_targets: Vec<Vec<(Tensor, Option<RegionMask>)>> =
            vec![Vec::new(); layers.style.len()];
        // The output's feature sizes at each style layer (for the masks).
        let out_sizes: Vec<(usize, usize)> = if region_masks.is_some() {
            net.features(photo, &layers.style)?
                .iter()
                .map(|t| Ok((t.dim(2)?, t.dim(3)?)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        for (r, style) in styles.iter().enumerate() {
            let feats = net.features(style, &layers.style)?;
            for (l, f) in feats.iter().enumerate() {
                let mask = match &region_masks {
                    Some(m) => {
                        let (h, w) = out_sizes[l];
                        let small = downsample_mask(&m[r], (ph, pw), (h, w));
                        let sum_sq: f64 = small.iter().map(|&v| v as f64 * v as f64).sum();
                        Some((Tensor::from_vec(small, (1, h * w), net.device())?, sum_sq))
                    }
                    None => None,
                };
                style_targets[l].push((gram(f, None)?.detach(), mask));
            }
        }
        Ok(Self {
            net,
            taps,
            style_taps: layers.style.clone(),
            content_taps: layers.content.clone(),
            content_targets,
            style_targets,
            weights: (
                settings.content_weight,
                settings.style_weight,
                settings.tv_weight,
            ),
        })
    }

    /// The losses at `x` (`[1, 3, H, W]`) and the gradient of the total with respect to `x`.
    pub fn evaluate(&self, x: &Tensor) -> Result<(Losses, Tensor)> {
        let (feats, tape) = self.net.features_with_backward(x, &self.taps)?;
        // `taps` holds every style and content tap.
        let index = |tap: Layer| self.taps.iter().position(|t| *t == tap).unwrap_or(0);
        let (cw, sw, tw) = self.weights;
        // The losses' gradients with respect to each feature, written out (no autograd graph
        // over the features: it would copy each one and run twice the matrix products).
        let mut feat_grads: Vec<Option<Tensor>> = vec![None; feats.len()];
        let mut accumulate = |i: usize, g: Tensor| -> Result<()> {
            feat_grads[i] = Some(match feat_grads[i].take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
            Ok(())
        };
        let mut content = 0f64;
        for (tap, target) in self.content_taps.iter().zip(&self.content_targets) {
            let i = index(*tap);
            // mean(d²); its gradient 2d / numel.
            let d = (&feats[i] - target)?;
            let numel = d.elem_count() as f64;
            content += d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / numel;
            if cw > 0.0 {
                accumulate(i, (d * (2.0 * cw / numel))?)?;
            }
        }
        let mut style = 0f64;
        for (tap, targets) in self.style_taps.iter().zip(&self.style_targets) {
            let i = index(*tap);
            let (_, c, h, w) = feats[i].dims4()?;
            let f = feats[i].reshape((c, h * w))?;
            for (target, mask) in targets {
                // G = fm fmᵀ / norm (fm: the masked activations); mean((G − T)²) over C² and
                // its gradient to fm, (D + Dᵀ) fm · 2 / (C² · norm) with D = G − T.
                let (fm, norm) = match mask {
                    None => (f.clone(), (c * h * w) as f64),
                    Some((m, sum_sq)) => (f.broadcast_mul(m)?, c as f64 * sum_sq.max(1e-8)),
                };
                let d = ((outer(&fm)? / norm)? - target)?;
                let cc = (c * c) as f64;
                style += d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / cc;
                if sw > 0.0 {
                    let sym = (&d + d.t()?)?;
                    let mut g = (sym.matmul(&fm)? * (2.0 * sw / (cc * norm)))?;
                    if let Some((m, _)) = mask {
                        g = g.broadcast_mul(m)?;
                    }
                    accumulate(i, g.reshape((1, c, h, w))?)?;
                }
            }
        }
        let mut grad = tape.backward(&feat_grads)?;
        let xv = Var::from_tensor(&x.detach())?;
        let tv = total_variation(xv.as_tensor())?;
        let tv_value = tv.to_scalar::<f32>()? as f64;
        if tw > 0.0 {
            let tv_grads = (&tv * tw)?.backward()?;
            if let Some(g) = tv_grads.get(xv.as_tensor()) {
                grad = (grad + g)?;
            }
        }
        let losses = Losses {
            content,
            style,
            tv: tv_value,
            total: (cw * content + sw * style + tw * tv_value) as f32 as f64,
        };
        Ok((losses, grad))
    }
}

/// `torch.optim.LBFGS` with `lr`, no line search, `tolerance_grad` 1e-7, `tolerance_change`
/// 1e-9, over one `step` of `max_iter` iterations: the same directions, step sizes and stopping
/// rules, in f32 vectors with f64 dot products.
#[derive(Debug)]
pub struct Lbfgs {
    history: usize,
    lr: f64,
    n_iter: usize,
    d: Vec<f32>,
    t: f64,
    old_dirs: Vec<Vec<f32>>,
    old_stps: Vec<Vec<f32>>,
    ro: Vec<f64>,
    h_diag: f64,
    prev_grad: Option<Vec<f32>>,
}

/// `torch.optim.LBFGS` defaults.
const TOLERANCE_GRAD: f64 = 1e-7;
const TOLERANCE_CHANGE: f64 = 1e-9;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// What one L-BFGS iteration decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbfgsStep {
    /// `x` moved; evaluate it next.
    Moved,
    /// Converged (PyTorch's stopping rules); `x` is unchanged.
    Converged,
}

impl Lbfgs {
    /// A fresh optimiser (`torch.optim.LBFGS(params, lr, history_size=history)`).
    pub fn new(history: usize, lr: f64) -> Self {
        Self {
            history,
            lr,
            n_iter: 0,
            d: Vec::new(),
            t: lr,
            old_dirs: Vec::new(),
            old_stps: Vec::new(),
            ro: Vec::new(),
            h_diag: 1.0,
            prev_grad: None,
        }
    }

    /// One iteration from `x` with gradient `grad`: updates the curvature history, computes the
    /// direction and moves `x` by `t · d`.
    pub fn step(&mut self, x: &mut [f32], grad: &[f32]) -> LbfgsStep {
        if grad.iter().fold(0f32, |m, g| m.max(g.abs())) as f64 <= TOLERANCE_GRAD {
            return LbfgsStep::Converged;
        }
        self.n_iter += 1;
        if self.n_iter == 1 {
            self.d = grad.iter().map(|g| -g).collect();
            self.old_dirs.clear();
            self.old_stps.clear();
            self.ro.clear();
            self.h_diag = 1.0;
        } else if let Some(prev) = &self.prev_grad {
            let y: Vec<f32> = grad.iter().zip(prev).map(|(g, p)| g - p).collect();
            let t = self.t as f32;
            let s: Vec<f32> = self.d.iter().map(|d| d * t).collect();
            let ys = dot(&y, &s);
            if ys > 1e-10 {
                if self.old_dirs.len() == self.history {
                    self.old_dirs.remove(0);
                    self.old_stps.remove(0);
                    self.ro.remove(0);
                }
                self.h_diag = ys / dot(&y, &y);
                self.old_dirs.push(y);
                self.old_stps.push(s);
                self.ro.push(1.0 / ys);
            }
            let k = self.old_dirs.len();
            let mut al = vec![0f64; k];
            let mut q: Vec<f32> = grad.iter().map(|g| -g).collect();
            for i in (0..k).rev() {
                al[i] = dot(&self.old_stps[i], &q) * self.ro[i];
                let a = al[i] as f32;
                for (qv, yv) in q.iter_mut().zip(&self.old_dirs[i]) {
                    *qv -= a * yv;
                }
            }
            let hd = self.h_diag as f32;
            for v in q.iter_mut() {
                *v *= hd;
            }
            let pairs = self.old_dirs.iter().zip(&self.old_stps).zip(&self.ro);
            for (((y, s), ro), a) in pairs.zip(&al) {
                let be = dot(y, &q) * ro;
                let c = (a - be) as f32;
                for (rv, sv) in q.iter_mut().zip(s) {
                    *rv += c * sv;
                }
            }
            self.d = q;
        }
        self.prev_grad = Some(grad.to_vec());
        self.t = if self.n_iter == 1 {
            let l1: f64 = grad.iter().map(|g| g.abs() as f64).sum();
            (1.0f64).min(1.0 / l1) * self.lr
        } else {
            self.lr
        };
        let gtd = dot(grad, &self.d);
        if gtd > -TOLERANCE_CHANGE {
            return LbfgsStep::Converged;
        }
        let t = self.t as f32;
        for (xv, dv) in x.iter_mut().zip(&self.d) {
            *xv += t * dv;
        }
        LbfgsStep::Moved
    }

    /// PyTorch's stopping rules after an evaluation: the gradient is flat, the step was tiny,
    /// or the loss stopped changing.
    pub fn should_stop(&self, grad: &[f32], loss: f64, prev_loss: f64) -> bool {
        let max_g = grad.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
        let max_step = self.d.iter().fold(0f32, |m, d| m.max(d.abs())) as f64 * self.t;
        max_g <= TOLERANCE_GRAD
            || max_step <= TOLERANCE_CHANGE
            || (loss - prev_loss).abs() < TOLERANCE_CHANGE
    }
}

/// `torch.optim.Adam` (β 0.9, 0.999, ε 1e-8, no weight decay).
#[derive(Debug)]
pub struct Adam {
    lr: f64,
    step: i32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    /// A fresh optimiser for `n` values.
    pub fn new(n: usize, lr: f64) -> Self {
        Self {
            lr,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One update of `x` with gradient `grad`.
    pub fn step(&mut self, x: &mut [f32], grad: &[f32]) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.step += 1;
        let bc1 = 1.0 - B1.powi(self.step);
        let bc2 = 1.0 - B2.powi(self.step);
        let step_size = (self.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (((xv, g), m), v) in x.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            *m = B1 as f32 * *m + (1.0 - B1 as f32) * g;
            *v = B2 as f32 * *v + (1.0 - B2 as f32) * g * g;
            let denom = v.sqrt() / bc2_sqrt + 1e-8;
            *xv -= step_size * *m / denom;
        }
    }
}

/// Resizes `[1, 3, H, W]` (or `[R, H, W]`) planes to `h × w` with a triangle filter (antialiased
/// when shrinking).
pub fn resize(x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (planes, sh, sw) = match dims.as_slice() {
        [n, c, sh, sw] => (n * c, *sh, *sw),
        [c, sh, sw] => (*c, *sh, *sw),
        _ => bail!("resize: expected [N, C, H, W] or [C, H, W], got {dims:?}"),
    };
    if (sh, sw) == (h, w) {
        return Ok(x.clone());
    }
    if h == 0 || w == 0 || h > 16384 || w > 16384 {
        bail!("resize: target {w}x{h} out of range")
    }
    let v = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(planes * h * w);
    for plane in v.chunks_exact(sh * sw) {
        let img = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
            sw as u32,
            sh as u32,
            plane.to_vec(),
        )
        .ok_or_else(|| candle_core::Error::msg("resize: internal buffer size mismatch"))?;
        let r = image::imageops::resize(
            &img,
            w as u32,
            h as u32,
            image::imageops::FilterType::Triangle,
        );
        out.extend_from_slice(r.as_raw());
    }
    let mut new_dims = dims;
    let k = new_dims.len();
    new_dims[k - 2] = h;
    new_dims[k - 1] = w;
    Tensor::from_vec(out, new_dims, x.device())
}

/// Gives `style` (`[1, 3, H, W]`) the colour mean and covariance of `photo` (the linear
/// histogram matching of Gatys et al. 2017 §5.1, Cholesky form): `x' = L_p L_s⁻¹ (x − μ_s) +
/// μ_p`, clamped to [0, 1].
pub fn match_colors(style: &Tensor, photo: &Tensor) -> Result<Tensor> {
    let stats = |t: &Tensor| -> Result<([f64; 3], [[f64; 3]; 3])> {
        let (_, c, h, w) = t.dims4()?;
        if c != 3 {
            bail!("match_colors: expected RGB pictures")
        }
        let v = t
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let n = h * w;
        let mut mean = [0f64; 3];
        for (ch, m) in mean.iter_mut().enumerate() {
            *m = v[ch * n..(ch + 1) * n]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>()
                / n as f64;
        }
        let mut cov = [[0f64; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                let (a, b) = (&v[i * n..(i + 1) * n], &v[j * n..(j + 1) * n]);
                cov[i][j] = a
                    .iter()
                    .zip(b)
                    .map(|(&x, &y)| (x as f64 - mean[i]) * (y as f64 - mean[j]))
                    .sum::<f64>()
                    / n as f64
                    + if i == j { 1e-5 } else { 0.0 };
            }
        }
        Ok((mean, cov))
    };
    let (ms, cs) = stats(style)?;
    let (mp, cp) = stats(photo)?;
    let ls = cholesky(&cs)?;
    let lp = cholesky(&cp)?;
    let ls_inv = lower_inverse(&ls);
    let mut a = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            a[i][j] = (0..3).map(|k| lp[i][k] * ls_inv[k][j]).sum();
        }
    }
    let (_, _, h, w) = style.dims4()?;
    let n = h * w;
    let v = style
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0f32; 3 * n];
    for p in 0..n {
        let x = [
            v[p] as f64 - ms[0],
            v[n + p] as f64 - ms[1],
            v[2 * n + p] as f64 - ms[2],
        ];
        for i in 0..3 {
            let y = a[i][0] * x[0] + a[i][1] * x[1] + a[i][2] * x[2] + mp[i];
            out[i * n + p] = y.clamp(0.0, 1.0) as f32;
        }
    }
    Tensor::from_vec(out, (1, 3, h, w), style.device())
}

fn cholesky(a: &[[f64; 3]; 3]) -> Result<[[f64; 3]; 3]> {
    let mut l = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d <= 0.0 {
                    bail!("match_colors: colour covariance is not positive definite")
                }
                l[i][j] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Ok(l)
}

// Index loops read as the textbook formula.
#[allow(clippy::needless_range_loop)]
fn lower_inverse(l: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut inv = [[0f64; 3]; 3];
    for i in 0..3 {
        inv[i][i] = 1.0 / l[i][i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i][k] * inv[k][j]).sum();
            inv[i][j] = -s / l[i][i];
        }
    }
    inv
}

/// Region masks `[n, H, W]` from a grey mask `[H, W]` in [0, 1]: the grey range split into `n`
/// equal bands, lightest first (for two paintings: ≥ 0.5 is the first, as AdaIN's `--mask`).
pub fn regions_from_grey(grey: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        bail!("regions_from_grey: no regions")
    }
    let (h, w) = grey.dims2()?;
    let v = grey
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0f32; n * h * w];
    for (p, &g) in v.iter().enumerate() {
        // Band 0 is the lightest: g in [1 − 1/n, 1].
        let band = (((1.0 - g.clamp(0.0, 1.0)) * n as f32) as usize).min(n - 1);
        out[band * h * w + p] = 1.0;
    }
    Tensor::from_vec(out, (n, h, w), grey.device())
}

/// Uniform noise in [0, 1) from easel's seeded generator (24 bits a value).
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = easel_core::rng::SplitMix64::new(seed);
    (0..len).map(|_| rng.unit_f32()).collect()
}

/// The style scales accepted: the painting from 1/20 to 8 times the photo's size.
pub const STYLE_SCALE_RANGE: std::ops::RangeInclusive<f64> = 0.05..=8.0;

/// Fails naming `scale` unless it lies in [`STYLE_SCALE_RANGE`] (NaN does not).
pub fn check_style_scale(scale: f64) -> Result<()> {
    if !STYLE_SCALE_RANGE.contains(&scale) {
        bail!(
            "style scale must be {} to {}, got {scale}",
            STYLE_SCALE_RANGE.start(),
            STYLE_SCALE_RANGE.end()
        )
    }
    Ok(())
}

/// Size of a picture scaled so its long side is `scale ×` `long`, keeping the aspect of `(h, w)`;
/// at least 16 pixels a side.
pub fn scaled_size((h, w): (usize, usize), long: f64) -> (usize, usize) {
    let f = long / h.max(w) as f64;
    (
        ((h as f64 * f).round() as usize).max(16),
        ((w as f64 * f).round() as usize).max(16),
    )
}

/// Paints `photo` (`[1, 3, H, W]` in [0, 1]) in the style of `styles` (one painting, or one per
/// region of `regions`, `[R, H, W]` at the photo's size) by optimising the picture. `on_event`
/// hears every evaluation and preview (an error from it stops the run); `cancel` stops it early,
/// keeping the best picture so far.
pub fn stylize(
    net: &dyn Perceptual,
    photo: &Tensor,
    styles: &[Tensor],
    regions: Option<&Tensor>,
    settings: &Settings,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<Output> {
    settings.validate()?;
    let (n, c, ph, pw) = photo.dims4()?;
    if n != 1 || c != 3 {
        bail!(
            "stylize: the photo must be one RGB picture [1, 3, H, W], got {:?}",
            photo.dims()
        )
    }
    if styles.is_empty() {
        bail!("stylize: no painting")
    }
    let photo = photo.to_dtype(DType::F32)?.to_device(net.device())?;
    let styles: Vec<Tensor> = styles
        .iter()
        .map(|s| {
            let s = s.to_dtype(DType::F32)?.to_device(net.device())?;
            match settings.color {
                ColorControl::Histogram => match_colors(&s, &photo),
                _ => Ok(s),
            }
        })
        .collect::<Result<_>>()?;
    let mut current: Option<Tensor> = None;
    let mut total_iters = 0;
    let mut last = None;
    for octave in 0..settings.octaves {
        let div = 1usize << (settings.octaves - 1 - octave);
        let (h, w) = ((ph / div).max(32).min(ph), (pw / div).max(32).min(pw));
        let photo_o = resize(&photo, (h, w))?;
        let long = settings.style_scale * h.max(w) as f64;
        let styles_o = styles
            .iter()
            .map(|s| {
                let (_, _, sh, sw) = s.dims4()?;
                resize(s, scaled_size((sh, sw), long))
            })
            .collect::<Result<Vec<_>>>()?;
        let regions_o = regions.map(|r| resize(r, (h, w))).transpose()?;
        let objective = Objective::new(net, &photo_o, &styles_o, regions_o.as_ref(), settings)?;
        let start = match (&current, settings.init) {
            (Some(prev), _) => resize(prev, (h, w))?,
            (None, Init::Photo) => photo_o.clone(),
            (None, Init::Noise(seed)) => {
                Tensor::from_vec(noise(3 * h * w, seed), (1, 3, h, w), net.device())?
            }
        };
        let progress = |iteration, losses| Progress {
            octave,
            octaves: settings.octaves,
            iteration,
            iterations: settings.iterations,
            losses,
        };
        let run = optimise(&objective, &start, settings, cancel, &mut |i, losses, x| {
            on_event(Event::Progress(progress(i, losses)))?;
            if settings.preview_every > 0 && i > 0 && i % settings.preview_every == 0 {
                on_event(Event::Preview(progress(i, losses), x))?;
            }
            Ok(())
        })?;
        total_iters += run.iterations;
        current = Some(run.image.clone());
        let stop = run.cancelled;
        last = Some(run);
        if stop {
            break;
        }
    }
    // At least one octave ran (validate: octaves ≥ 1).
    let Some(run) = last else {
        bail!("stylize: no octave ran")
    };
    let mut image = resize(&run.image, (ph, pw))?.clamp(0f32, 1f32)?;
    if settings.color == ColorControl::KeepColors {
        image = easel_core::keep_colors(&photo, &image)
            .map_err(|e| candle_core::Error::msg(e.to_string()))?
            .clamp(0f32, 1f32)?;
    }
    Ok(Output {
        image,
        losses: run.losses,
        iterations: total_iters,
        cancelled: run.cancelled,
    })
}

/// One octave's optimisation from `start`; `report(iteration, losses, x)` after each
/// evaluation (iteration 0 is the start).
pub fn optimise(
    objective: &Objective,
    start: &Tensor,
    settings: &Settings,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(usize, Losses, &Tensor) -> Result<()>,
) -> Result<Output> {
    let dims = start.dims4()?;
    let device = start.device().clone();
    let mut x = start
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let to_tensor = |v: &[f32]| Tensor::from_slice(v, dims, &device);
    let eval = |v: &[f32]| -> Result<(Losses, Vec<f32>)> {
        let (l, g) = objective.evaluate(&to_tensor(v)?)?;
        if !l.total.is_finite() {
            bail!("the loss is not finite ({}): lower the weights", l.total)
        }
        Ok((l, g.flatten_all()?.to_vec1::<f32>()?))
    };
    let (mut losses, mut grad) = eval(&x)?;
    report(0, losses, &to_tensor(&x)?)?;
    let mut best = (losses, x.clone());
    let mut cancelled = false;
    let mut done = 0;
    let max_iter = settings.iterations;
    match settings.optimizer {
        OptimizerKind::Lbfgs => {
            let mut opt = Lbfgs::new(settings.lbfgs_history, 1.0);
            for n_iter in 1..=max_iter {
                if cancel.load(Ordering::Relaxed) {
                    cancelled = true;
                    break;
                }
                if opt.step(&mut x, &grad) == LbfgsStep::Converged {
                    break;
                }
                done = n_iter;
                let prev = losses.total;
                (losses, grad) = eval(&x)?;
                if losses.total < best.0.total {
                    best = (losses, x.clone());
                }
                report(n_iter, losses, &to_tensor(&x)?)?;
                if n_iter < max_iter && opt.should_stop(&grad, losses.total, prev) {
                    break;
                }
            }
        }
        OptimizerKind::Adam => {
            let mut opt = Adam::new(x.len(), settings.adam_lr);
            for n_iter in 1..=max_iter {
                if cancel.load(Ordering::Relaxed) {
                    cancelled = true;
                    break;
                }
                opt.step(&mut x, &grad);
                done = n_iter;
                (losses, grad) = eval(&x)?;
                if losses.total < best.0.total {
                    best = (losses, x.clone());
                }
                report(n_iter, losses, &to_tensor(&x)?)?;
            }
        }
    }
    Ok(Output {
        image: to_tensor(&best.1)?,
        losses: best.0,
        iterations: done,
        cancelled,
    })
}
