//! VGG-19 as a perceptual network for optimisation-based style transfer ([`crate::gatys`]): the
//! network of Gatys et al. 2016, for users who have its ImageNet weights (none are embedded).
//!
//! Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
//! 2014, <https://arxiv.org/abs/1409.1556>: five blocks of 3×3 convs with ReLU (2, 2, 4, 4, 4
//! convs), 2×2 max pools between them. Two checkpoint layouts ([`Layout`]) are read:
//!
//! - **normalised**: `vgg_normalised.pth` of AdaIN (the [`crate::vgg`] encoder's file), one
//!   53-module `nn.Sequential`: module 0 a 1×1 conv 3 → 3 doing the Caffe preprocessing (RGB in
//!   [0, 1] → mean-subtracted BGR in [0, 255]), each conv preceded by `ReflectionPad2d(1)`, pools
//!   with `ceil_mode=True`. Keys `0.weight`, `2.weight`, `5.weight`, … `51.bias`;
//! - **torchvision**: `vgg19-dcbb9e9d.pth` (`torchvision.models.vgg19`): `features.N` convs with
//!   zero padding 1, floor-mode pools, on ImageNet-normalised input (`(x − mean) / std`); the
//!   `classifier.*` weights are not used.
//!
//! The layers are the ReLU outputs `reluB_I` ([`VggLayer`], block B, conv I); Gatys et al. take
//! the style at relu1_1 … relu5_1 and the content at relu4_2. Channel widths are read from the
//! checkpoint (the test checkpoints are eight times narrower). [`Vgg19::forward`] runs candle ops
//! on any device, stopping after the deepest requested layer. [`Vgg19::features_with_backward`]
//! on the CPU runs easel's direct convolutions forwards and their transposes backwards by hand
//! (ReLU masks, reflection-pad folds, max-pool routing to each window's first maximum, as
//! PyTorch); elsewhere the picture's gradient comes from candle's autograd
//! ([`crate::tape::AutogradTape`]).

use crate::efficientnet::{imagenet_normalise, imagenet_normalise_backward};
use crate::efficientnet::{IMAGENET_MEAN, IMAGENET_STD};
use crate::tape::{summed_gradient, AutogradTape};
use candle_core::{bail, DType, Device, Result, Tensor};
use easel_cpu::conv::transposed_kernel;
use easel_cpu::{elementwise, pad, Conv2d, Epilogue, Scratch, ScratchCache};
use easel_cpu::{max_pool2_ceil, reflect_pad};
use std::collections::HashMap;
use std::path::Path;

/// Convs per block.
const CONVS_PER_BLOCK: [usize; 5] = [2, 2, 4, 4, 4];
/// Convs in the network.
const CONVS: usize = 16;

/// The ReLU after conv `conv` of block `block` (both from 1): `reluB_I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VggLayer {
    /// 0-based index of the conv among the 16.
    index: u8,
}

impl VggLayer {
    /// `relu{block}_{conv}`; fails unless block is 1 to 5 and conv exists in it.
    pub fn new(block: usize, conv: usize) -> Result<Self> {
        let Some(&n) = block.checked_sub(1).and_then(|b| CONVS_PER_BLOCK.get(b)) else {
            bail!("VGG-19 has blocks 1 to 5, not {block}")
        };
        if conv == 0 || conv > n {
            bail!("VGG-19 block {block} has convs 1 to {n}, not {conv}")
        }
        let before: usize = CONVS_PER_BLOCK[..block - 1].iter().sum();
        Ok(Self {
            // At most 15.
            index: (before + conv - 1) as u8,
        })
    }

    /// Parses `reluB_I` (e.g. `relu4_2`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            candle_core::Error::msg(format!(
                "{s:?} is not a VGG-19 layer: expected reluB_I, block B 1 to 5, conv I 1 to 2 \
                 (blocks 1, 2) or 1 to 4 (blocks 3 to 5), e.g. relu4_2"
            ))
        };
        let rest = s.trim().strip_prefix("relu").ok_or_else(bad)?;
        let (b, i) = rest.split_once('_').ok_or_else(bad)?;
        let b: usize = b.parse().map_err(|_| bad())?;
        let i: usize = i.parse().map_err(|_| bad())?;
        Self::new(b, i).map_err(|_| bad())
    }

    /// The block (1 to 5) and the conv in it (from 1).
    pub fn block_and_conv(self) -> (usize, usize) {
        let mut i = self.index as usize;
        for (b, &n) in CONVS_PER_BLOCK.iter().enumerate() {
            if i < n {
                return (b + 1, i + 1);
            }
            i -= n;
        }
        // `index` < 16 by construction.
        (5, 4)
    }

    /// The name, e.g. `relu4_2`.
    pub fn name(self) -> String {
        let (b, i) = self.block_and_conv();
        format!("relu{b}_{i}")
    }

    /// Pools before the layer: its resolution is about 1/2^pools.
    fn pools(self) -> usize {
        self.block_and_conv().0 - 1
    }
}

/// Which published checkpoint the weights come from (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// AdaIN's `vgg_normalised.pth`.
    Normalised,
    /// torchvision's `vgg19-dcbb9e9d.pth`.
    Torchvision,
}

impl Layout {
    /// Module index of each conv in the `nn.Sequential`.
    fn conv_modules(self) -> [usize; CONVS] {
        match self {
            Layout::Normalised => [2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51],
            Layout::Torchvision => [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
        }
    }

    /// The state-dict prefix of conv `i`.
    fn conv_key(self, i: usize) -> String {
        let m = self.conv_modules()[i];
        match self {
            Layout::Normalised => m.to_string(),
            Layout::Torchvision => format!("features.{m}"),
        }
    }

    /// The layout of a state dict: torchvision's `features.0.weight`, or the normalised file's
    /// `0.weight` of shape `[3, 3, 1, 1]`.
    pub fn detect(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        if tensors.contains_key("features.0.weight") {
            return Ok(Layout::Torchvision);
        }
        match tensors.get("0.weight") {
            Some(w) if w.dims() == [3, 3, 1, 1] => Ok(Layout::Normalised),
            Some(w) => bail!(
                "not a VGG-19 checkpoint: 0.weight has shape {:?}, vgg_normalised's is [3, 3, 1, 1]",
                w.dims()
            ),
            None => bail!(
                "not a VGG-19 checkpoint: it has neither features.0.weight (torchvision's \
                 vgg19-dcbb9e9d.pth) nor 0.weight (AdaIN's vgg_normalised.pth)"
            ),
        }
    }

    /// The smallest picture side that reaches `layer`: a reflection pad needs 2 pixels and
    /// ceil-mode pools round up; a floor-mode pool needs 2 pixels and rounds down.
    fn min_side(self, layer: VggLayer) -> usize {
        let p = layer.pools();
        match self {
            Layout::Normalised => (1usize << p) + 1,
            Layout::Torchvision => 1usize << p,
        }
    }
}

/// VGG-19 with frozen weights.
#[derive(Debug)]
pub struct Vgg19 {
    layout: Layout,
    /// The normalised layout's 1×1 preprocessing conv (weight, bias).
    preprocess: Option<(Tensor, Tensor)>,
    /// The 16 convs: weight `[c_out, c_in, 3, 3]`, bias `[1, c_out, 1, 1]`.
    convs: Vec<(Tensor, Tensor)>,
    /// The CPU path's kernels, built when the weights are on the CPU.
    cpu: Option<CpuKernels>,
    device: Device,
    /// The CPU path's buffers, kept from one pass (and its tape) to the next.
    scratch: ScratchCache,
}

/// A conv forwards (bias and ReLU fused) and its transpose (flipped kernel, channels swapped,
/// no bias) for the gradient of its input.
#[derive(Debug)]
struct ConvPair {
    fwd: Conv2d,
    bwd: Conv2d,
    c_in: usize,
    c_out: usize,
}

impl ConvPair {
    fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (c_out, c_in, k, _) = weight.dims4()?;
        let wv = weight.flatten_all()?.to_vec1::<f32>()?;
        let bv = bias.flatten_all()?.to_vec1::<f32>()?;
        let wt = transposed_kernel(&wv, (c_in, c_out, k), false);
        Ok(Self {
            fwd: Conv2d::new(&wv, Some(&bv), (c_in, c_out, k), 1, false)?,
            bwd: Conv2d::new(&wt, None, (c_out, c_in, k), 1, false)?,
            c_in,
            c_out,
        })
    }
}

#[derive(Debug)]
struct CpuKernels {
    preprocess: Option<ConvPair>,
    convs: Vec<ConvPair>,
}

/// A CPU activation `[c, h, w]` of one picture.
#[derive(Debug)]
struct Act {
    v: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

/// What the CPU backward needs: each conv's ReLU output, and the picture's size.
#[derive(Debug)]
struct Saved {
    input_hw: (usize, usize),
    relus: Vec<Act>,
}

/// What [`Vgg19::features_with_backward`] recorded.
#[derive(Debug)]
enum TapeInner {
    Cpu(Saved),
    Autograd(AutogradTape),
}

/// What [`Vgg19::features_with_backward`] recorded to compute the picture's gradient.
#[derive(Debug)]
pub struct Vgg19Tape<'a> {
    net: &'a Vgg19,
    layers: Vec<VggLayer>,
    inner: TapeInner,
}

/// A tensor of the state dict, checked against `want` (`None`: any size on that axis).
fn get(tensors: &HashMap<String, Tensor>, key: &str, want: &[Option<usize>]) -> Result<Tensor> {
    let Some(t) = tensors.get(key) else {
        bail!("VGG-19 checkpoint: {key} is missing")
    };
    let fits = t.rank() == want.len()
        && t.dims()
            .iter()
            .zip(want)
            .all(|(&d, w)| w.is_none_or(|w| w == d))
        && t.dims().iter().all(|&d| d > 0);
    if !fits {
        let want: Vec<String> = want
            .iter()
            .map(|w| w.map_or("_".to_string(), |w| w.to_string()))
            .collect();
        bail!(
            "VGG-19 checkpoint: {key} has shape {:?}, expected [{}]",
            t.dims(),
            want.join(", ")
        )
    }
    t.to_dtype(DType::F32)
}

impl Vgg19 {
    /// Builds the network from a state dict in either layout ([`Layout::detect`]), on `device`.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let layout = Layout::detect(tensors)?;
        let preprocess = match layout {
            Layout::Normalised => Some((
                get(tensors, "0.weight", &[Some(3), Some(3), Some(1), Some(1)])?
                    .to_device(device)?,
                get(tensors, "0.bias", &[Some(3)])?
                    .reshape((1, 3, 1, 1))?
                    .to_device(device)?,
            )),
            Layout::Torchvision => None,
        };
        let mut convs = Vec::with_capacity(CONVS);
        let mut c_in = 3;
        for i in 0..CONVS {
            let key = layout.conv_key(i);
            let w = get(
                tensors,
                &format!("{key}.weight"),
                &[None, Some(c_in), Some(3), Some(3)],
            )?;
            let c_out = w.dim(0)?;
            let b = get(tensors, &format!("{key}.bias"), &[Some(c_out)])?;
            convs.push((
                w.to_device(device)?,
                b.reshape((1, c_out, 1, 1))?.to_device(device)?,
            ));
            c_in = c_out;
        }
        let cpu = if device.is_cpu() {
            Some(CpuKernels {
                preprocess: preprocess
                    .as_ref()
                    .map(|(w, b)| ConvPair::new(w, b))
                    .transpose()?,
                convs: convs
                    .iter()
                    .map(|(w, b)| ConvPair::new(w, b))
                    .collect::<Result<_>>()?,
            })
        } else {
            None
        };
        Ok(Self {
            layout,
            preprocess,
            convs,
            cpu,
            device: device.clone(),
            // Every conv's activation and the backward's gradients and pads.
            scratch: ScratchCache::keeping(2 * CONVS + 8),
        })
    }

    /// Loads a checkpoint file: a PyTorch `.pth` (read without executing anything) or
    /// safetensors, in either layout.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            candle_core::Error::msg(format!("reading VGG-19 weights {}: {e}", path.display()))
        })?;
        let name = path.display().to_string();
        let tensors: HashMap<String, Tensor> =
            if easel_core::torch_checkpoint::is_torch_save(&bytes) {
                easel_core::torch_checkpoint::read_torch_checkpoint(&bytes, &name)?
                    .into_iter()
                    .collect()
            } else {
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                    .map_err(|e| candle_core::Error::msg(format!("{name}: {e}")))?
            };
        Self::from_tensors(&tensors, device)
            .map_err(|e| candle_core::Error::msg(format!("{name}: {e}")))
    }

    /// The checkpoint layout it was built from.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Channels of a layer's activations.
    pub fn channels(&self, layer: VggLayer) -> usize {
        self.convs[layer.index as usize].0.dims()[0]
    }

    /// Fails naming `layer` when `(h, w)` pictures are too small to reach it.
    pub fn check_size(&self, (h, w): (usize, usize), layer: VggLayer) -> Result<()> {
        let min = self.layout.min_side(layer);
        if h.min(w) < min {
            bail!(
                "VGG-19 needs pictures of at least {min}x{min} to reach {}, got {w}x{h}",
                layer.name()
            )
        }
        Ok(())
    }

    /// The activations at `layers` (in the order asked) of RGB pictures `x` (`[N, 3, H, W]` in
    /// `[0, 1]`), with candle ops: any device, differentiable with candle's autograd. Stops after
    /// the deepest layer.
    pub fn forward(&self, x: &Tensor, layers: &[VggLayer]) -> Result<Vec<Tensor>> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 {
            bail!(
                "VGG-19: input {:?} is not an RGB picture [N, 3, H, W]",
                x.dims()
            )
        }
        let Some(&deepest) = layers.iter().max() else {
            return Ok(Vec::new());
        };
        self.check_size((h, w), deepest)?;
        let x = x.to_dtype(DType::F32)?;
        let mut act = match &self.preprocess {
            Some((w, b)) => x.conv2d(w, 0, 1, 1, 1)?.broadcast_add(b)?,
            None => {
                let mean = Tensor::new(&IMAGENET_MEAN, x.device())?.reshape((1, 3, 1, 1))?;
                let std = Tensor::new(&IMAGENET_STD, x.device())?.reshape((1, 3, 1, 1))?;
                x.broadcast_sub(&mean)?.broadcast_div(&std)?
            }
        };
        let mut found: Vec<Option<Tensor>> = vec![None; layers.len()];
        let mut i = 0;
        'blocks: for (block, &n) in CONVS_PER_BLOCK.iter().enumerate() {
            if block > 0 {
                act = self.pool(&act)?;
            }
            for _ in 0..n {
                if i > deepest.index as usize {
                    break 'blocks;
                }
                let (w, b) = &self.convs[i];
                let padded = match self.layout {
                    Layout::Normalised => reflect_pad(&act, 1, 1, 1, 1)?,
                    Layout::Torchvision => act.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?,
                };
                act = padded.conv2d(w, 0, 1, 1, 1)?.broadcast_add(b)?.relu()?;
                for (slot, want) in found.iter_mut().zip(layers) {
                    if want.index as usize == i {
                        *slot = Some(act.clone());
                    }
                }
                i += 1;
            }
        }
        // Every layer is at most `deepest`, and the loop ran through it.
        Ok(found.into_iter().flatten().collect())
    }

    /// The 2×2 max pool of the layout: ceil mode (an odd edge row or column pooled alone) or
    /// floor mode (dropped).
    fn pool(&self, x: &Tensor) -> Result<Tensor> {
        match self.layout {
            Layout::Normalised => max_pool2_ceil(x),
            Layout::Torchvision => {
                let (_, _, h, w) = x.dims4()?;
                max_pool2_ceil(&x.narrow(2, 0, h / 2 * 2)?.narrow(3, 0, w / 2 * 2)?)
            }
        }
    }

    /// The activations at `layers` of one picture or a batch (as [`Self::forward`]) and a tape
    /// that turns their gradients into the gradient of `x`: by hand on the CPU for one picture,
    /// by candle's autograd otherwise.
    pub fn features_with_backward(
        &self,
        x: &Tensor,
        layers: &[VggLayer],
    ) -> Result<(Vec<Tensor>, Vgg19Tape<'_>)> {
        let (n, _, h, w) = x.dims4()?;
        let tape = |inner| Vgg19Tape {
            net: self,
            layers: layers.to_vec(),
            inner,
        };
        let cpu = self.cpu.as_ref().filter(|_| n == 1 && x.device().is_cpu());
        let (Some(cpu), Some(&deepest)) = (cpu, layers.iter().max()) else {
            let (feats, t) = AutogradTape::record(x, |x| self.forward(x, layers))?;
            return Ok((feats, tape(TapeInner::Autograd(t))));
        };
        self.check_size((h, w), deepest)?;
        let saved = self
            .scratch
            .with(|scratch| self.cpu_features(cpu, x, deepest, scratch))?;
        let feats = layers
            .iter()
            .map(|l| {
                let a = &saved.relus[l.index as usize];
                Tensor::from_slice(&a.v, (1, a.c, a.h, a.w), &Device::Cpu)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((feats, tape(TapeInner::Cpu(saved))))
    }

    /// The ReLU padding of a conv input `[c, h, w]`: reflection or zeros, 1 pixel.
    fn pad_maps(&self, h: usize, w: usize) -> Result<(pad::AxisMap, pad::AxisMap)> {
        Ok(match self.layout {
            Layout::Normalised => (pad::reflect_map(h, 1, 1, 1)?, pad::reflect_map(w, 1, 1, 1)?),
            Layout::Torchvision => (pad::zero_map(h, 1, 1), pad::zero_map(w, 1, 1)),
        })
    }

    /// The CPU forward of one picture through conv `deepest`, keeping every ReLU output.
    fn cpu_features(
        &self,
        cpu: &CpuKernels,
        x: &Tensor,
        deepest: VggLayer,
        scratch: &mut Scratch,
    ) -> Result<Saved> {
        let (_, _, h, w) = x.dims4()?;
        let mut v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let input = match &cpu.preprocess {
            Some(pre) => {
                let mut out = scratch.take(3 * h * w);
                pre.fwd
                    .forward_into(&v, (1, 3, h, w), &Epilogue::default(), &mut out, scratch)?;
                out
            }
            None => {
                imagenet_normalise(&mut v, h * w);
                std::mem::take(&mut v)
            }
        };
        scratch.give(v);
        let relu = Epilogue {
            clamp: Some((0.0, f32::INFINITY)),
            quant: None,
        };
        let mut relus: Vec<Act> = Vec::with_capacity(CONVS);
        // The next layer's input when it is a buffer of its own (the preprocessed picture, a
        // pool's output); else it is the last ReLU output.
        let mut own = Some(input);
        fn current<'a>(own: &'a Option<Vec<f32>>, relus: &'a [Act]) -> &'a [f32] {
            own.as_deref()
                .or_else(|| relus.last().map(|a| a.v.as_slice()))
                .unwrap_or(&[])
        }
        let (mut c, mut hh, mut ww) = (3, h, w);
        let mut i = 0;
        'blocks: for (block, &n) in CONVS_PER_BLOCK.iter().enumerate() {
            for conv_in_block in 0..n {
                if i > deepest.index as usize {
                    break 'blocks;
                }
                if block > 0 && conv_in_block == 0 {
                    let (pooled, ho, wo) =
                        self.cpu_pool(current(&own, &relus), (c, hh, ww), scratch)?;
                    if let Some(v) = own.replace(pooled) {
                        scratch.give(v);
                    }
                    (hh, ww) = (ho, wo);
                }
                let conv = &cpu.convs[i];
                let (rows, cols) = self.pad_maps(hh, ww)?;
                let padded = pad::pad(current(&own, &relus), (c, hh, ww), &rows, &cols, scratch)?;
                if let Some(v) = own.take() {
                    scratch.give(v);
                }
                // The conv writes every output.
                let mut out = scratch.take(conv.c_out * hh * ww);
                conv.fwd
                    .forward_into(&padded, (1, c, hh + 2, ww + 2), &relu, &mut out, scratch)?;
                scratch.give(padded);
                c = conv.c_out;
                relus.push(Act {
                    v: out,
                    c,
                    h: hh,
                    w: ww,
                });
                i += 1;
            }
        }
        if let Some(v) = own {
            scratch.give(v);
        }
        Ok(Saved {
            input_hw: (h, w),
            relus,
        })
    }

    /// The activations at `layers` without gradients: the CPU path for one picture on the CPU,
    /// candle ops otherwise (the same values within f32 rounding).
    pub fn features(&self, x: &Tensor, layers: &[VggLayer]) -> Result<Vec<Tensor>> {
        Ok(self.features_with_backward(x, layers)?.0)
    }

    /// The layout's 2×2 max pool of `x` (`[c, h, w]`): ceil mode, or floor mode (the odd last
    /// row and column dropped). Returns the output and its size.
    fn cpu_pool(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        scratch: &mut Scratch,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let (ho, wo) = self.pooled_size(h, w);
        let out = match self.layout {
            Layout::Torchvision if h % 2 == 1 || w % 2 == 1 => {
                let rows = pad::zero_map(h / 2 * 2, 0, 0);
                let cols = pad::zero_map(w / 2 * 2, 0, 0);
                let even = pad::pad(x, (c, h, w), &rows, &cols, scratch)?;
                let out =
                    easel_cpu::pool2d::max_pool2_ceil_planes(&even, (c, h / 2 * 2, w / 2 * 2))?;
                scratch.give(even);
                out
            }
            _ => easel_cpu::pool2d::max_pool2_ceil_planes(x, (c, h, w))?,
        };
        Ok((out, ho, wo))
    }

    fn pooled_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self.layout {
            Layout::Normalised => (h.div_ceil(2), w.div_ceil(2)),
            Layout::Torchvision => (h / 2, w / 2),
        }
    }
}

/// The gradient of a 2×2 max pool's input `y` (`[c, h, w]`) from its output's gradient `g`
/// (`[c, ho, wo]`): each window's gradient goes to its first maximum in row-major order (as
/// PyTorch's CPU kernel); rows and columns no window covers get 0.
fn pool_backward(g: &[f32], y: &Act, (ho, wo): (usize, usize), scratch: &mut Scratch) -> Vec<f32> {
    let (h, w) = (y.h, y.w);
    let mut out = scratch.take(y.c * h * w);
    out.fill(0.0);
    easel_cpu::par_chunks_mut(&mut out, h * w, |p, dst| {
        let src = &y.v[p * h * w..(p + 1) * h * w];
        let gp = &g[p * ho * wo..(p + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best = (2 * oy) * w + 2 * ox;
                for r in 2 * oy..(2 * oy + 2).min(h) {
                    for col in 2 * ox..(2 * ox + 2).min(w) {
                        if src[r * w + col] > src[best] {
                            best = r * w + col;
                        }
                    }
                }
                dst[best] += gp[oy * wo + ox];
            }
        }
    });
    out
}

/// Folds the gradient of a reflection-padded input (`[c, h + 2, w + 2]`, 1 pixel each side)
/// onto the input (`[c, h, w]`): each padded row and column adds to the one it mirrors.
fn reflect_fold(gp: &[f32], (c, h, w): (usize, usize, usize), scratch: &mut Scratch) -> Vec<f32> {
    let (hp, wp) = (h + 2, w + 2);
    let mut out = scratch.take(c * h * w);
    easel_cpu::par_chunks_mut(&mut out, h * w, |p, dst| {
        let src = &gp[p * hp * wp..(p + 1) * hp * wp];
        // Padded row r of the input's rows: 0 mirrors 1, h + 1 mirrors h − 2.
        let target = |r: usize| match r {
            0 => 1,
            r if r == h + 1 => h - 2,
            r => r - 1,
        };
        dst.fill(0.0);
        for r in 0..hp {
            let row = &src[r * wp..(r + 1) * wp];
            let d = &mut dst[target(r) * w..(target(r) + 1) * w];
            for (o, v) in d.iter_mut().zip(&row[1..w + 1]) {
                *o += v;
            }
            d[1] += row[0];
            d[w - 2] += row[w + 1];
        }
    });
    out
}

impl Vgg19Tape<'_> {
    /// The gradient of a scalar loss with respect to the picture, given its gradients with
    /// respect to each requested layer's activation (same order and shapes; `None` for one the
    /// loss does not use).
    pub fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        if grads.len() != self.layers.len() {
            bail!(
                "VGG-19 backward: {} gradients for {} features",
                grads.len(),
                self.layers.len()
            )
        }
        match &self.inner {
            TapeInner::Autograd(tape) => tape.backward(grads),
            TapeInner::Cpu(saved) => self
                .net
                .scratch
                .with(|scratch| self.cpu_backward(saved, grads, scratch)),
        }
    }

    fn cpu_backward(
        &self,
        saved: &Saved,
        grads: &[Option<Tensor>],
        scratch: &mut Scratch,
    ) -> Result<Tensor> {
        let net = self.net;
        let Some(cpu) = &net.cpu else {
            bail!("VGG-19: internal error: a CPU tape without CPU kernels")
        };
        // The sum of the gradients given for conv `i`'s ReLU output.
        let grad_of = |i: usize| {
            let a = &saved.relus[i];
            // `i` < 16: one of the network's convs.
            let layer = VggLayer { index: i as u8 };
            summed_gradient(
                &self.layers,
                grads,
                &layer,
                &[1, a.c, a.h, a.w],
                &layer.name(),
            )
        };
        let (h0, w0) = saved.input_hw;
        // Gradient of the current activation, walking back from the deepest ReLU.
        let mut g: Option<Vec<f32>> = None;
        let first_of_block: Vec<usize> = CONVS_PER_BLOCK
            .iter()
            .scan(0, |start, &n| {
                let s = *start;
                *start += n;
                Some(s)
            })
            .collect();
        for i in (0..saved.relus.len()).rev() {
            if let Some(extra) = grad_of(i)? {
                match &mut g {
                    Some(acc) => elementwise::add_assign(acc, &extra),
                    None => g = Some(extra),
                }
            }
            let Some(mut gi) = g.take() else { continue };
            let y = &saved.relus[i];
            elementwise::clamp_backward(&mut gi, &y.v, 0.0, f32::INFINITY);
            let conv = &cpu.convs[i];
            let (h, w) = (y.h, y.w);
            // The gradient of the conv's (unpadded) input.
            let g_in = match net.layout {
                Layout::Torchvision => {
                    let (rows, cols) = (pad::zero_map(h, 1, 1), pad::zero_map(w, 1, 1));
                    let gp = pad::pad(&gi, (conv.c_out, h, w), &rows, &cols, scratch)?;
                    let mut out = scratch.take(conv.c_in * h * w);
                    conv.bwd.forward_into(
                        &gp,
                        (1, conv.c_out, h + 2, w + 2),
                        &Epilogue::default(),
                        &mut out,
                        scratch,
                    )?;
                    scratch.give(gp);
                    out
                }
                Layout::Normalised => {
                    let (rows, cols) = (pad::zero_map(h, 2, 2), pad::zero_map(w, 2, 2));
                    let gp = pad::pad(&gi, (conv.c_out, h, w), &rows, &cols, scratch)?;
                    let mut padded = scratch.take(conv.c_in * (h + 2) * (w + 2));
                    conv.bwd.forward_into(
                        &gp,
                        (1, conv.c_out, h + 4, w + 4),
                        &Epilogue::default(),
                        &mut padded,
                        scratch,
                    )?;
                    scratch.give(gp);
                    let out = reflect_fold(&padded, (conv.c_in, h, w), scratch);
                    scratch.give(padded);
                    out
                }
            };
            scratch.give(gi);
            g = Some(if i > 0 && first_of_block.contains(&i) {
                // Through the pool to the previous block's last ReLU output.
                let prev = &saved.relus[i - 1];
                let out = pool_backward(&g_in, prev, (h, w), scratch);
                scratch.give(g_in);
                out
            } else {
                g_in
            });
        }
        let Some(mut gx) = g else {
            return Tensor::zeros((1, 3, h0, w0), DType::F32, &Device::Cpu);
        };
        match &cpu.preprocess {
            Some(pre) => {
                let mut out = vec![0f32; 3 * h0 * w0];
                pre.bwd.forward_into(
                    &gx,
                    (1, 3, h0, w0),
                    &Epilogue::default(),
                    &mut out,
                    scratch,
                )?;
                scratch.give(gx);
                Tensor::from_vec(out, (1, 3, h0, w0), &Device::Cpu)
            }
            None => {
                imagenet_normalise_backward(&mut gx, h0 * w0);
                Tensor::from_vec(gx, (1, 3, h0, w0), &Device::Cpu)
            }
        }
    }
}

impl Drop for Vgg19Tape<'_> {
    /// Gives the saved activations back to the network's buffers for its next pass.
    fn drop(&mut self) {
        if let TapeInner::Cpu(saved) = &mut self.inner {
            self.net.scratch.with(|scratch| {
                for act in &mut saved.relus {
                    scratch.give(std::mem::take(&mut act.v));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names round-trip through the parser for all 16 layers, in network order; bad names fail
    /// naming the text.
    #[test]
    fn layer_names_round_trip() -> Result<()> {
        let mut names = Vec::new();
        for (b, &n) in CONVS_PER_BLOCK.iter().enumerate() {
            for i in 1..=n {
                let l = VggLayer::new(b + 1, i)?;
                assert_eq!(VggLayer::parse(&l.name())?, l);
                names.push(l.name());
            }
        }
        assert_eq!(names.len(), CONVS);
        assert_eq!(names[9], "relu4_2");
        assert!(VggLayer::parse("relu4_2")? > VggLayer::parse("relu4_1")?);
        for bad in [
            "relu1_3", "relu6_1", "relu0_1", "relu3_0", "conv1_1", "relu4", "relu4_x",
        ] {
            let e = VggLayer::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        Ok(())
    }

    /// A state dict with a wrong shape fails naming the key and the expected shape; an unknown
    /// one names both layouts' first key.
    #[test]
    fn bad_checkpoints_name_the_key() -> Result<()> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert(
            "features.0.weight".to_string(),
            Tensor::zeros((8, 4, 3, 3), DType::F32, &dev)?,
        );
        let e = Vgg19::from_tensors(&t, &dev).unwrap_err().to_string();
        assert!(
            e.contains("features.0.weight") && e.contains("[_, 3, 3, 3]"),
            "{e}"
        );
        t.insert(
            "features.0.weight".to_string(),
            Tensor::zeros((8, 3, 3, 3), DType::F32, &dev)?,
        );
        let e = Vgg19::from_tensors(&t, &dev).unwrap_err().to_string();
        assert!(e.contains("features.0.bias is missing"), "{e}");
        let e = Vgg19::from_tensors(&HashMap::new(), &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("features.0.weight") && e.contains("0.weight"),
            "{e}"
        );
        Ok(())
    }
}
