//! The Stable Diffusion 1.x variational autoencoder: diffusers' `AutoencoderKL`, the KL-regularised
//! autoencoder of "High-Resolution Image Synthesis with Latent Diffusion Models"
//! <https://arxiv.org/abs/2112.10752>.
//!
//! [`AutoencoderKL::encode`] maps an image `[B, 3, H, W]` in `[-1, 1]` to a
//! [`DiagonalGaussian`] over latents `[B, 4, H/8, W/8]` (for SD1.x); [`AutoencoderKL::decode`]
//! maps latents back to an image. The latent scaling ([`AutoencoderKLConfig::scaling_factor`],
//! 0.18215 for SD1.x) is **not** applied here: callers multiply sampled latents by it before the
//! UNet and divide by it before [`AutoencoderKL::decode`], as diffusers' pipelines do.
//!
//! Large images can be encoded / decoded tile by tile with diffusers' overlap blending
//! ([`AutoencoderKL::encode_tiled`], [`AutoencoderKL::decode_tiled`], [`TileConfig`]), which
//! bounds memory by the tile size.
//!
//! The mid-block attention reads diffusers' current keys (`to_q`, `to_k`, `to_v`, `to_out.0`,
//! `group_norm`); legacy single-file checkpoints (`query`, `key`, `value`, `proj_attn`) need
//! their keys remapped before loading.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{conv2d, group_norm, linear, Conv2d, GroupNorm, Linear};

use crate::ops::{conv3x3, softmax_last_dim};
use crate::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::sampling::{Downsample2D, Upsample2D};

/// Epsilon of every group norm in the VAE (fixed in diffusers).
const NORM_EPS: f64 = 1e-6;
/// diffusers clamps the posterior's log-variance to this range.
const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

/// Configuration of an [`AutoencoderKL`] (diffusers' config fields of the same names; the block
/// types are always `DownEncoderBlock2D` / `UpDecoderBlock2D` and the activation SiLU).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderKLConfig {
    /// Image channels read by the encoder.
    pub in_channels: usize,
    /// Image channels written by the decoder.
    pub out_channels: usize,
    /// Channels of each resolution level; every level but the last halves the resolution.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub layers_per_block: usize,
    /// Channels of the latent.
    pub latent_channels: usize,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Latents are multiplied by this before the UNet (applied by callers, see the module doc).
    pub scaling_factor: f64,
    /// Image size the model was trained at; the default tile size of [`TileConfig`].
    pub sample_size: usize,
    /// Whether a 1×1 `quant_conv` follows the encoder.
    pub use_quant_conv: bool,
    /// Whether a 1×1 `post_quant_conv` precedes the decoder.
    pub use_post_quant_conv: bool,
    /// Whether the encoder's and decoder's mid blocks have self-attention.
    pub mid_block_add_attention: bool,
}

impl AutoencoderKLConfig {
    /// Stable Diffusion 1.x's VAE (`stable-diffusion-v1-5/vae/config.json`).
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            sample_size: 512,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// The tiny random-weight configuration of diffusers' own `AutoencoderKL` tests (two levels,
    /// one residual block per level), for tests.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            sample_size: 32,
            ..Self::sd15()
        }
    }

    /// The factor between image and latent resolution (8 for SD1.x).
    pub fn downsampling_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// diffusers' default tiling for this model: `sample_size` image tiles, the matching latent
    /// tiles, a quarter of overlap.
    pub fn tiling(&self) -> TileConfig {
        TileConfig {
            tile_sample_min_size: self.sample_size,
            tile_latent_min_size: self.sample_size / self.downsampling_factor(),
            tile_overlap_factor: 0.25,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.block_out_channels.is_empty() {
            candle_core::bail!("AutoencoderKL: block_out_channels is empty")
        }
        if self.block_out_channels.len() > 16 {
            candle_core::bail!(
                "AutoencoderKL: {} levels in block_out_channels is unreasonable",
                self.block_out_channels.len()
            )
        }
        if self.norm_num_groups == 0 {
            candle_core::bail!("AutoencoderKL: norm_num_groups must be positive")
        }
        for &c in &self.block_out_channels {
            if c == 0 || c % self.norm_num_groups != 0 {
                candle_core::bail!(
                    "AutoencoderKL: block channels {c} must be a positive multiple of \
                     norm_num_groups {}",
                    self.norm_num_groups
                )
            }
        }
        if self.layers_per_block == 0 {
            candle_core::bail!("AutoencoderKL: layers_per_block must be positive")
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            candle_core::bail!(
                "AutoencoderKL: channels must be positive (in {}, out {}, latent {})",
                self.in_channels,
                self.out_channels,
                self.latent_channels
            )
        }
        Ok(())
    }
}

/// Tiling of [`AutoencoderKL::encode_tiled`] / [`AutoencoderKL::decode_tiled`] (diffusers'
/// attributes of the same names). Tiles overlap and are linearly blended, as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileConfig {
    /// Side of an image tile, in pixels.
    pub tile_sample_min_size: usize,
    /// Side of a latent tile (normally `tile_sample_min_size / 8`).
    pub tile_latent_min_size: usize,
    /// Fraction of a tile shared with its neighbour, in `[0, 1)`.
    pub tile_overlap_factor: f64,
}

impl TileConfig {
    /// (step between tile origins, blend width, kept rows/columns per tile), computed as
    /// diffusers does, from the input tile side and the output tile side.
    fn plan(&self, input_tile: usize, output_tile: usize) -> Result<(usize, usize, usize)> {
        let f = self.tile_overlap_factor;
        if !(0.0..1.0).contains(&f) {
            candle_core::bail!("TileConfig: tile_overlap_factor must be in [0, 1), got {f}")
        }
        let step = (input_tile as f64 * (1.0 - f)) as usize;
        if step == 0 || output_tile == 0 {
            candle_core::bail!(
                "TileConfig: tiles too small (sample {}, latent {}, overlap {f})",
                self.tile_sample_min_size,
                self.tile_latent_min_size
            )
        }
        let blend = (output_tile as f64 * f) as usize;
        Ok((step, blend, output_tile - blend))
    }
}

/// The posterior of the encoder: a diagonal Gaussian over latents (diffusers'
/// `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    mean: Tensor,
    logvar: Tensor,
    std: Tensor,
}

impl DiagonalGaussian {
    /// Splits encoder moments `[B, 2C, H, W]` into mean and log-variance (clamped to
    /// `[-30, 20]`, as diffusers does).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let (_, c2, _, _) = moments.dims4()?;
        if c2 % 2 != 0 {
            candle_core::bail!("DiagonalGaussian: moments need an even channel count, got {c2}")
        }
        let mean = moments.narrow(1, 0, c2 / 2)?;
        let logvar = moments
            .narrow(1, c2 / 2, c2 / 2)?
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// The mean `[B, C, H, W]`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The clamped log-variance `[B, C, H, W]`.
    pub fn logvar(&self) -> &Tensor {
        &self.logvar
    }

    /// The standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> &Tensor {
        &self.std
    }

    /// A sample `mean + std * noise`, for standard-normal `noise` of the mean's shape (passed
    /// in, so that sampling is reproducible).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            candle_core::bail!(
                "DiagonalGaussian::sample: noise shape {:?} differs from the mean's {:?}",
                noise.shape(),
                self.mean.shape()
            )
        }
        &self.mean + (&self.std * noise.to_dtype(self.mean.dtype())?)?
    }

    /// The most likely latent (the mean).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }
}

/// Single-head spatial self-attention with a group norm and a residual connection (diffusers'
/// `Attention` as built by `UNetMidBlock2D` for the VAE). Scores and softmax run in f32.
#[derive(Debug, Clone)]
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    scale: f64,
}

impl SpatialAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, NORM_EPS, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp("0"))?,
            scale: 1.0 / (channels as f64).sqrt(),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let dtype = xs.dtype();
        let hs = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            // candle 0.11.1's CPU matmul of a transposed batched lhs by the broadcast weight of
            // `Linear` gives wrong results for B > 1; a contiguous lhs avoids it.
            .contiguous()?;
        let stats = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            other => other,
        };
        let q = self.to_q.forward(&hs)?.to_dtype(stats)?;
        let k = self.to_k.forward(&hs)?.to_dtype(stats)?;
        let v = self.to_v.forward(&hs)?.to_dtype(stats)?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let attn = softmax_last_dim(&scores)?.matmul(&v)?.to_dtype(dtype)?;
        let out = self
            .to_out
            .forward(&attn)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + xs
    }
}

/// diffusers' `UNetMidBlock2D` without timestep embedding: resnet, (attention, resnet).
#[derive(Debug, Clone)]
struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let resnet_cfg = vae_resnet_config(channels, cfg.norm_num_groups);
        let attention = if cfg.mid_block_add_attention {
            Some(SpatialAttention::new(
                vb.pp("attentions").pp("0"),
                channels,
                cfg.norm_num_groups,
            )?)
        } else {
            None
        };
        let resnets = vb.pp("resnets");
        Ok(Self {
            first: ResnetBlock2D::new(resnets.pp("0"), channels, resnet_cfg)?,
            attention,
            second: ResnetBlock2D::new(resnets.pp("1"), channels, resnet_cfg)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, None)?;
        if let Some(attention) = &self.attention {
            xs = attention.forward(&xs)?;
        }
        self.second.forward(&xs, None)
    }
}

fn vae_resnet_config(out_channels: usize, groups: usize) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig {
        out_channels: Some(out_channels),
        temb_channels: None,
        groups,
        eps: NORM_EPS,
        ..Default::default()
    }
}

/// A stack of residual blocks (`resnets.{i}`) starting at `in_channels`.
fn resnet_stack(
    vb: VarBuilder,
    count: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    let cfg = vae_resnet_config(out_channels, groups);
    (0..count)
        .map(|i| {
            let cin = if i == 0 { in_channels } else { out_channels };
            ResnetBlock2D::new(vb.pp("resnets").pp(i.to_string()), cin, cfg)
        })
        .collect()
}

/// diffusers' `DownEncoderBlock2D`: residual blocks, then an optional downsampler.
#[derive(Debug, Clone)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

/// diffusers' `UpDecoderBlock2D`: residual blocks, then an optional upsampler.
#[derive(Debug, Clone)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

/// diffusers' VAE `Encoder`: image → moments `[B, 2 * latent_channels, H/f, W/f]`.
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        // `validate` guarantees at least one level.
        let channels = &cfg.block_out_channels;
        let levels = channels.len();
        let last = channels[levels - 1];
        let conv_in = conv3x3(vb.pp("conv_in"), cfg.in_channels, channels[0])?;
        let mut down_blocks = Vec::with_capacity(levels);
        let mut cin = channels[0];
        for (i, &cout) in channels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i.to_string());
            let resnets = resnet_stack(
                vb.clone(),
                cfg.layers_per_block,
                cin,
                cout,
                cfg.norm_num_groups,
            )?;
            let downsampler = if i + 1 < levels {
                Some(Downsample2D::new(
                    vb.pp("downsamplers").pp("0"),
                    cout,
                    cout,
                    0,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsampler,
            });
            cin = cout;
        }
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, cfg)?,
            conv_norm_out: group_norm(cfg.norm_num_groups, last, NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * cfg.latent_channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(down) = &block.downsampler {
                xs = down.forward(&xs)?;
            }
        }
        let xs = self.mid_block.forward(&xs)?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// diffusers' VAE `Decoder`: latents → image.
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        // `validate` guarantees at least one level.
        let channels = &cfg.block_out_channels;
        let levels = channels.len();
        let last = channels[levels - 1];
        let mut up_blocks = Vec::with_capacity(levels);
        let mut cin = last;
        for (i, &cout) in channels.iter().rev().enumerate() {
            let vb = vb.pp("up_blocks").pp(i.to_string());
            let resnets = resnet_stack(
                vb.clone(),
                cfg.layers_per_block + 1,
                cin,
                cout,
                cfg.norm_num_groups,
            )?;
            let upsampler = if i + 1 < levels {
                Some(Upsample2D::new(vb.pp("upsamplers").pp("0"), cout, cout)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
            cin = cout;
        }
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.latent_channels, last)?,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, cfg)?,
            up_blocks,
            conv_norm_out: group_norm(
                cfg.norm_num_groups,
                channels[0],
                NORM_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3x3(vb.pp("conv_out"), channels[0], cfg.out_channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.conv_in.forward(xs)?;
        let mut xs = self.mid_block.forward(&xs)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                xs = resnet.forward(&xs, None)?;
            }
            if let Some(up) = &block.upsampler {
                xs = up.forward(&xs, None)?;
            }
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// diffusers' `AutoencoderKL`; the `vb.pp()` names are its state-dict keys (`encoder.*`,
/// `decoder.*`, `quant_conv`, `post_quant_conv`), so a diffusers `vae/` checkpoint loads as is.
///
/// Latent scaling is the caller's job: `latents = vae.encode(x)?.sample(&noise)? *
/// scaling_factor` for the UNet, and `vae.decode(&(latents / scaling_factor)?)` back.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Loads the model from `vb` (the root of a diffusers `vae/` state dict).
    pub fn new(vb: VarBuilder, config: AutoencoderKLConfig) -> Result<Self> {
        config.validate()?;
        let latent2 = 2 * config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(conv2d(
                latent2,
                latent2,
                1,
                Conv2dConfig::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv2d(
                config.latent_channels,
                config.latent_channels,
                1,
                Conv2dConfig::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config)?,
            decoder: Decoder::new(vb.pp("decoder"), &config)?,
            quant_conv,
            post_quant_conv,
            config,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Encodes images `[B, in_channels, H, W]` in `[-1, 1]` to the latent posterior (unscaled).
    /// `H` and `W` should be multiples of [`AutoencoderKLConfig::downsampling_factor`]; other
    /// sizes are accepted and rounded up, as in diffusers.
    pub fn encode(&self, images: &Tensor) -> Result<DiagonalGaussian> {
        DiagonalGaussian::from_moments(&self.moments(images)?)
    }

    /// Decodes unscaled latents `[B, latent_channels, h, w]` to images
    /// `[B, out_channels, h·f, w·f]` (roughly in `[-1, 1]`, not clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.check_input(latents, self.config.latent_channels, "decode")?;
        let latents = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&latents)
    }

    /// [`Self::encode`] tile by tile, blending overlapping tiles as diffusers'
    /// `AutoencoderKL._tiled_encode` does; images no larger than one tile are encoded whole.
    /// The result differs slightly from [`Self::encode`] (each tile sees less context).
    pub fn encode_tiled(&self, images: &Tensor, tiles: &TileConfig) -> Result<DiagonalGaussian> {
        let (_, _, h, w) = self.check_input(images, self.config.in_channels, "encode_tiled")?;
        if h <= tiles.tile_sample_min_size && w <= tiles.tile_sample_min_size {
            return self.encode(images);
        }
        let plan = tiles.plan(tiles.tile_sample_min_size, tiles.tile_latent_min_size)?;
        let moments = tiled(images, tiles.tile_sample_min_size, plan, |t| {
            self.moments(t)
        })?;
        DiagonalGaussian::from_moments(&moments)
    }

    /// [`Self::decode`] tile by tile, blending overlapping tiles as diffusers'
    /// `AutoencoderKL.tiled_decode` does; latents no larger than one tile are decoded whole.
    /// Memory is bounded by the tile size instead of the image size.
    pub fn decode_tiled(&self, latents: &Tensor, tiles: &TileConfig) -> Result<Tensor> {
        let (_, _, h, w) =
            self.check_input(latents, self.config.latent_channels, "decode_tiled")?;
        if h <= tiles.tile_latent_min_size && w <= tiles.tile_latent_min_size {
            return self.decode(latents);
        }
        let plan = tiles.plan(tiles.tile_latent_min_size, tiles.tile_sample_min_size)?;
        tiled(latents, tiles.tile_latent_min_size, plan, |t| {
            self.decode(t)
        })
    }

    /// Encoder output after `quant_conv`: `[B, 2 * latent_channels, h, w]`.
    fn moments(&self, images: &Tensor) -> Result<Tensor> {
        self.check_input(images, self.config.in_channels, "encode")?;
        let moments = self.encoder.forward(images)?;
        match &self.quant_conv {
            Some(conv) => conv.forward(&moments),
            None => Ok(moments),
        }
    }

    fn check_input(
        &self,
        xs: &Tensor,
        channels: usize,
        what: &str,
    ) -> Result<(usize, usize, usize, usize)> {
        let dims = xs.dims4()?;
        let (b, c, h, w) = dims;
        if c != channels || b == 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "AutoencoderKL::{what}: expected a non-empty [B, {channels}, H, W] input, got \
                 {:?}",
                xs.shape()
            )
        }
        Ok(dims)
    }
}

/// Applies `f` to overlapping `tile`-sided tiles of `xs` whose origins are `step` apart, blends
/// each output tile into its upper and left neighbours over `blend` rows/columns and keeps its
/// first `keep` rows/columns, as diffusers' tiled encode/decode do (blended tiles replace the
/// originals before their own neighbours are blended, matching diffusers' in-place updates).
fn tiled(
    xs: &Tensor,
    tile: usize,
    (step, blend, keep): (usize, usize, usize),
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let mut rows = Vec::new();
    for i in (0..h).step_by(step) {
        let band = xs.narrow(2, i, tile.min(h - i))?;
        let row = (0..w)
            .step_by(step)
            .map(|j| f(&band.narrow(3, j, tile.min(w - j))?))
            .collect::<Result<Vec<_>>>()?;
        rows.push(row);
    }
    let mut out_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut out_row = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut t = rows[i][j].clone();
            if i > 0 {
                t = blend_into(&rows[i - 1][j], &t, blend, 2)?;
            }
            if j > 0 {
                t = blend_into(&rows[i][j - 1], &t, blend, 3)?;
            }
            let (_, _, th, tw) = t.dims4()?;
            out_row.push(t.narrow(2, 0, keep.min(th))?.narrow(3, 0, keep.min(tw))?);
            rows[i][j] = t;
        }
        out_rows.push(Tensor::cat(&out_row, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows/columns of
/// `b` fade linearly from the last ones of `a` into `b`'s own.
fn blend_into(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (a_len, b_len) = (a.dim(dim)?, b.dim(dim)?);
    let extent = extent.min(a_len).min(b_len);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    let ramp: Vec<f32> = (0..extent).map(|k| k as f32 / extent as f32).collect();
    let w_b = Tensor::from_vec(ramp, &shape[..], b.device())?.to_dtype(b.dtype())?;
    let w_a = w_b.affine(-1.0, 1.0)?;
    let head = (a.narrow(dim, a_len - extent, extent)?.broadcast_mul(&w_a)?
        + b.narrow(dim, 0, extent)?.broadcast_mul(&w_b)?)?;
    if extent == b_len {
        Ok(head)
    } else {
        Tensor::cat(&[head, b.narrow(dim, extent, b_len - extent)?], dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blend_matches_diffusers_formula() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let b = (Tensor::ones((1, 1, 3, 5), DType::F32, &dev).unwrap() * 100.0).unwrap();
        let out = blend_into(&a, &b, 3, 3).unwrap();
        let rows = out.squeeze(0).unwrap().squeeze(0).unwrap();
        let rows = rows.to_vec2::<f32>().unwrap();
        for (r, row) in rows.iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                let expected = if x < 3 {
                    let a_v = (r * 4 + 1 + x) as f32;
                    a_v * (1.0 - x as f32 / 3.0) + 100.0 * (x as f32 / 3.0)
                } else {
                    100.0
                };
                assert!((v - expected).abs() < 1e-4, "({r}, {x}): {v} vs {expected}");
            }
        }
    }

    #[test]
    fn tile_plan_rejects_degenerate_tiles() {
        let tiles = TileConfig {
            tile_sample_min_size: 1,
            tile_latent_min_size: 0,
            tile_overlap_factor: 0.25,
        };
        assert!(tiles.plan(1, 0).is_err());
        let bad_overlap = TileConfig {
            tile_overlap_factor: 1.0,
            ..AutoencoderKLConfig::sd15().tiling()
        };
        assert!(bad_overlap.plan(64, 512).is_err());
        let sd = AutoencoderKLConfig::sd15().tiling();
        assert_eq!(sd.tile_latent_min_size, 64);
        assert_eq!(sd.plan(64, 512).unwrap(), (48, 128, 384));
    }
}
