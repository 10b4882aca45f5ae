//! The Stable Diffusion denoiser: diffusers' `UNet2DConditionModel` ("High-Resolution Image
//! Synthesis with Latent Diffusion Models", <https://arxiv.org/abs/2112.10752>), with one
//! context per group of cross-attention layers ([`UNetContexts`]) and optional ControlNet
//! residuals ([`ControlResiduals`], "Adding Conditional Control to Text-to-Image Diffusion
//! Models", <https://arxiv.org/abs/2302.05543>).
//!
//! The `vb.pp()` names are diffusers' state-dict keys, so a diffusers `unet` checkpoint loads
//! as is.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::frozen::{group_norm, Conv2d, GroupNorm};

use crate::attention::{AttentionSlicing, Transformer2DModelConfig};
use crate::contexts::{CrossAttentionLayout, UNetContexts};
use crate::embeddings::{timestep_features, TimestepEmbedding, Timesteps};
use crate::ops::conv3x3;
use crate::unet_blocks::{
    DownBlock2D, DownBlock2DConfig, ResnetSettings, UNetMidBlock2DCrossAttn, UpBlock2D,
    UpBlock2DConfig,
};

/// A down block type (diffusers' `down_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    /// `CrossAttnDownBlock2D`: resnets each followed by a cross-attention transformer.
    CrossAttnDownBlock2D,
    /// `DownBlock2D`: resnets only.
    DownBlock2D,
}

/// An up block type (diffusers' `up_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    /// `UpBlock2D`: resnets only.
    UpBlock2D,
    /// `CrossAttnUpBlock2D`: resnets each followed by a cross-attention transformer.
    CrossAttnUpBlock2D,
}

/// Configuration of a [`UNet2DConditionModel`] (diffusers' config keys of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConditionModelConfig {
    /// Default latent height and width (64 for SD 1.x: 512-pixel images).
    pub sample_size: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (the predicted noise).
    pub out_channels: usize,
    /// Cosines before sines in the timestep features.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features.
    pub freq_shift: f64,
    /// Down block types, from the highest resolution down.
    pub down_block_types: Vec<DownBlockType>,
    /// Up block types, from the lowest resolution up.
    pub up_block_types: Vec<UpBlockType>,
    /// Output channels of each down block (the up blocks mirror them).
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Transformer blocks in every cross-attention transformer.
    pub transformer_layers_per_block: usize,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// `output_scale_factor` of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Group-norm epsilon of the resnets and the output norm.
    pub norm_eps: f64,
    /// Width of the text context (768 for SD 1.x).
    pub cross_attention_dim: usize,
    /// diffusers' `attention_head_dim`, which SD configs use as the **number of heads** per
    /// block (diffusers' historical naming quirk): one entry per down block, or a single entry
    /// for all. The up blocks use the reversed list, the mid block the last entry.
    pub attention_head_dim: Vec<usize>,
    /// Linear `proj_in` / `proj_out` in the transformers (SD 2.x) instead of 1×1 convolutions.
    pub use_linear_projection: bool,
    /// How attention scores are evaluated (not part of diffusers' config).
    pub attention_slicing: AttentionSlicing,
}

impl UNet2DConditionModelConfig {
    /// Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes).
    pub fn sd15() -> Self {
        Self {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            up_block_types: vec![
                UpBlockType::UpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
            ],
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            transformer_layers_per_block: 1,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 768,
            attention_head_dim: vec![8],
            use_linear_projection: false,
            attention_slicing: AttentionSlicing::Full,
        }
    }

    /// A tiny random-weight configuration for tests (the one `tools/ref/unet_ref.py` builds).
    pub fn tiny() -> Self {
        Self {
            sample_size: 8,
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            up_block_types: vec![UpBlockType::UpBlock2D, UpBlockType::CrossAttnUpBlock2D],
            block_out_channels: vec![16, 32],
            norm_num_groups: 8,
            cross_attention_dim: 16,
            attention_head_dim: vec![4],
            ..Self::sd15()
        }
    }
}

/// ControlNet residuals to add to the UNet's skip connections and mid-block output (diffusers'
/// `down_block_additional_residuals` / `mid_block_additional_residual`).
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One residual per skip connection, in diffusers' order: the `conv_in` output, then each
    /// down block's resnet (or transformer) outputs and downsampler output (12 for SD 1.5).
    /// Each is `[B, C, H, W]` like its skip, or `[B, C, 1, 1]` (globally pooled).
    pub down: Vec<Tensor>,
    /// Residual for the mid-block output.
    pub mid: Tensor,
}

/// Shared parts of the UNet and the ControlNet: the input convolution, the timestep embedding,
/// the down blocks and the mid block.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    pub(crate) conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    pub(crate) down_blocks: Vec<DownBlock2D>,
    pub(crate) mid_block: UNetMidBlock2DCrossAttn,
}

/// The settings of the UNet and ControlNet configurations that [`Encoder::new`] needs: fields
/// of the same names and meanings in [`UNet2DConditionModelConfig`] and
/// [`crate::controlnet::ControlNetConfig`], copied by [`with_encoder_fields`].
pub(crate) struct EncoderConfig {
    pub in_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub transformer_layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub attention_head_dim: Vec<usize>,
    pub use_linear_projection: bool,
    pub attention_slicing: AttentionSlicing,
}

/// `with_encoder_fields!(Type, src, field: value, ...)` builds `Type { field: value, ...,
/// <every field of [`EncoderConfig`]>: src.<same field> }`, so that the list of settings the
/// UNet and the ControlNet share is written once, here: from either configuration to an
/// [`EncoderConfig`], and from an [`EncoderConfig`] to either configuration (`config.json`
/// parsing). The explicit fields are evaluated first, in order; `src` must be a place (it is
/// read once per field) and its `Vec` fields are cloned.
macro_rules! with_encoder_fields {
    ($ty:ident, $src:expr $(, $field:ident: $value:expr)* $(,)?) => {
        $ty {
            $($field: $value,)*
            in_channels: $src.in_channels,
            flip_sin_to_cos: $src.flip_sin_to_cos,
            freq_shift: $src.freq_shift,
            down_block_types: $src.down_block_types.clone(),
            block_out_channels: $src.block_out_channels.clone(),
            layers_per_block: $src.layers_per_block,
            transformer_layers_per_block: $src.transformer_layers_per_block,
            downsample_padding: $src.downsample_padding,
            mid_block_scale_factor: $src.mid_block_scale_factor,
            norm_num_groups: $src.norm_num_groups,
            norm_eps: $src.norm_eps,
            cross_attention_dim: $src.cross_attention_dim,
            attention_head_dim: $src.attention_head_dim.clone(),
            use_linear_projection: $src.use_linear_projection,
            attention_slicing: $src.attention_slicing,
        }
    };
}
pub(crate) use with_encoder_fields;

impl EncoderConfig {
    /// Heads of down block `i` (also used by the up block of the same resolution):
    /// `attention_head_dim[i]`, or its single entry.
    pub(crate) fn heads(&self, i: usize) -> Result<usize> {
        let (list, blocks) = (&self.attention_head_dim, self.block_out_channels.len());
        match list.as_slice() {
            [h] => Ok(*h),
            _ if list.len() == blocks && i < blocks => Ok(list[i]),
            _ => candle_core::bail!(
                "attention_head_dim must have 1 or {blocks} entries, got {list:?}"
            ),
        }
    }

    pub(crate) fn transformer(&self, heads: usize) -> Transformer2DModelConfig {
        Transformer2DModelConfig {
            num_attention_heads: heads,
            num_layers: self.transformer_layers_per_block,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.norm_num_groups,
            use_linear_projection: self.use_linear_projection,
            slicing: self.attention_slicing,
        }
    }

    pub(crate) fn resnet(&self, output_scale_factor: f64) -> ResnetSettings {
        ResnetSettings {
            temb_channels: self.time_embed_dim(),
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            output_scale_factor,
        }
    }

    pub(crate) fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels.first().copied().unwrap_or(0)
    }
}

impl Encoder {
    pub(crate) fn new(vb: &VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let blocks = cfg.block_out_channels.len();
        if blocks == 0 || cfg.down_block_types.len() != blocks {
            candle_core::bail!(
                "{} down block types for {} block_out_channels (need one per block, at least one)",
                cfg.down_block_types.len(),
                blocks
            )
        }
        let c0 = cfg.block_out_channels[0];
        let conv_in = conv3x3(vb.pp("conv_in"), cfg.in_channels, c0)?;
        let time_embedding =
            TimestepEmbedding::new(vb.pp("time_embedding"), c0, cfg.time_embed_dim())?;
        let mut down_blocks = Vec::with_capacity(blocks);
        let mut in_channels = c0;
        for (i, (&kind, &out_channels)) in cfg
            .down_block_types
            .iter()
            .zip(&cfg.block_out_channels)
            .enumerate()
        {
            let heads = cfg.heads(i)?;
            let block = DownBlock2D::new(
                vb.pp("down_blocks").pp(i.to_string()),
                DownBlock2DConfig {
                    in_channels,
                    out_channels,
                    num_layers: cfg.layers_per_block,
                    resnet: cfg.resnet(1.0),
                    add_downsample: i + 1 < blocks,
                    downsample_padding: cfg.downsample_padding,
                    cross_attention: (kind == DownBlockType::CrossAttnDownBlock2D)
                        .then(|| cfg.transformer(heads)),
                },
            )?;
            down_blocks.push(block);
            in_channels = out_channels;
        }
        let mid_block = UNetMidBlock2DCrossAttn::new(
            vb.pp("mid_block"),
            in_channels,
            1,
            cfg.resnet(cfg.mid_block_scale_factor),
            cfg.transformer(cfg.heads(blocks - 1)?),
        )?;
        Ok(Self {
            conv_in,
            time_embedding,
            time_channels: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            down_blocks,
            mid_block,
        })
    }

    /// Cross-attention layers of the down blocks and the mid block.
    pub(crate) fn down_mid_layers(&self) -> (usize, usize) {
        let down = self
            .down_blocks
            .iter()
            .map(DownBlock2D::num_cross_attention_layers)
            .sum();
        (down, self.mid_block.num_cross_attention_layers())
    }

    /// Skip connections of the down path (`conv_in` output included).
    pub(crate) fn num_skips(&self) -> usize {
        1 + self
            .down_blocks
            .iter()
            .map(DownBlock2D::num_skips)
            .sum::<usize>()
    }

    /// The timestep embedding `[B, time_embed_dim]` in `sample`'s dtype.
    pub(crate) fn time_embedding(&self, sample: &Tensor, timesteps: Timesteps) -> Result<Tensor> {
        let batch = sample.dim(0)?;
        let t = timesteps.to_batch(batch, sample.device())?;
        let features = timestep_features(
            &t,
            self.time_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
        )?
        .to_dtype(sample.dtype())?;
        self.time_embedding.forward(&features)
    }

    /// Runs the down blocks on the `conv_in` output `xs`; returns the output and the skips.
    pub(crate) fn down(
        &self,
        xs: Tensor,
        temb: &Tensor,
        contexts: &[&Tensor],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = Vec::with_capacity(self.num_skips());
        skips.push(xs.clone());
        let mut xs = xs;
        let mut offset = 0;
        for block in &self.down_blocks {
            let n = block.num_cross_attention_layers();
            let (out, block_skips) = block.forward(&xs, temb, &contexts[offset..offset + n])?;
            offset += n;
            xs = out;
            skips.extend(block_skips);
        }
        Ok((xs, skips))
    }
}

/// Checks that the contexts fit a model with `layout` and a batch of `batch`; returns one
/// context per layer.
pub(crate) fn route_contexts<'a>(
    contexts: &'a UNetContexts,
    layout: &CrossAttentionLayout,
    batch: usize,
) -> Result<Vec<&'a Tensor>> {
    if contexts.batch_size() != batch {
        candle_core::bail!(
            "contexts have batch size {} but the sample has {batch}",
            contexts.batch_size()
        )
    }
    contexts.per_layer(layout)
}

/// diffusers' `UNet2DConditionModel` (SD 1.x/2.x layout: cross-attention down/mid/up blocks,
/// no class or additional embeddings).
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionModelConfig,
    encoder: Encoder,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Loads the model from `vb` (diffusers' `unet` state-dict keys).
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionModelConfig) -> Result<Self> {
        let enc_cfg = with_encoder_fields!(EncoderConfig, cfg);
        let encoder = Encoder::new(&vb, &enc_cfg)?;
        let blocks = cfg.block_out_channels.len();
        if cfg.up_block_types.len() != blocks {
            candle_core::bail!(
                "{} up block types for {blocks} block_out_channels",
                cfg.up_block_types.len()
            )
        }
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut prev_output_channels = reversed[0];
        let mut up_blocks = Vec::with_capacity(blocks);
        for (i, &kind) in cfg.up_block_types.iter().enumerate() {
            let out_channels = reversed[i];
            let in_channels = reversed[(i + 1).min(blocks - 1)];
            let heads = enc_cfg.heads(blocks - 1 - i)?;
            up_blocks.push(UpBlock2D::new(
                vb.pp("up_blocks").pp(i.to_string()),
                UpBlock2DConfig {
                    in_channels,
                    prev_output_channels,
                    out_channels,
                    num_layers: cfg.layers_per_block + 1,
                    resnet: enc_cfg.resnet(1.0),
                    add_upsample: i + 1 < blocks,
                    cross_attention: (kind == UpBlockType::CrossAttnUpBlock2D)
                        .then(|| enc_cfg.transformer(heads)),
                },
            )?);
            prev_output_channels = out_channels;
        }
        let c0 = cfg.block_out_channels[0];
        let conv_norm_out = group_norm(
            cfg.norm_num_groups,
            c0,
            cfg.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = conv3x3(vb.pp("conv_out"), c0, cfg.out_channels)?;
        Ok(Self {
            config: cfg.clone(),
            encoder,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConditionModelConfig {
        &self.config
    }

    /// Where the cross-attention layers are (see [`crate::contexts`] for the numbering).
    pub fn cross_attention_layout(&self) -> CrossAttentionLayout {
        let (down, mid) = self.encoder.down_mid_layers();
        let up = self
            .up_blocks
            .iter()
            .map(UpBlock2D::num_cross_attention_layers)
            .sum();
        CrossAttentionLayout { down, mid, up }
    }

    /// Number of cross-attention layers (16 for SD 1.5).
    pub fn num_cross_attention_layers(&self) -> usize {
        self.cross_attention_layout().total()
    }

    /// Number of down residuals a [`ControlResiduals`] must have (12 for SD 1.5).
    pub fn num_down_residuals(&self) -> usize {
        self.encoder.num_skips()
    }

    /// Predicts the noise for latents `sample` `[B, in_channels, H, W]` at `timestep`, with the
    /// routed `contexts` and optional ControlNet `residuals`; returns `[B, out_channels, H, W]`.
    /// Nothing is modified in place.
    pub fn forward<'t>(
        &self,
        sample: &Tensor,
        timestep: impl Into<Timesteps<'t>>,
        contexts: &UNetContexts,
        residuals: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = sample.dims4()?;
        let layout = self.cross_attention_layout();
        let per_layer = route_contexts(contexts, &layout, batch)?;
        let enc = &self.encoder;
        let temb = enc.time_embedding(sample, timestep.into())?;

        let xs = enc.conv_in.forward(sample)?;
        let (down_ctx, rest) = per_layer.split_at(layout.down);
        let (mid_ctx, up_ctx) = rest.split_at(layout.mid);
        let (xs, mut skips) = enc.down(xs, &temb, down_ctx)?;
        if let Some(res) = residuals {
            skips = add_residuals(&skips, &res.down)?;
        }
        let mut xs = enc.mid_block.forward(&xs, &temb, mid_ctx)?;
        if let Some(res) = residuals {
            xs = add_residual("mid", &xs, &res.mid)?;
        }

        // Sizes that are not multiples of the overall downsampling factor round up on the way
        // down; the upsamplers are then told the size of the skip they meet next.
        let factor = 1usize << self.up_blocks.len().saturating_sub(1);
        let forward_size = !height.is_multiple_of(factor) || !width.is_multiple_of(factor);
        let mut offset = 0;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n_skips = block.num_skips();
            let Some(split) = skips.len().checked_sub(n_skips) else {
                candle_core::bail!(
                    "UNet: up block {i} needs {n_skips} skips, {} left",
                    skips.len()
                )
            };
            let block_skips = skips.split_off(split);
            let upsample_size = match skips.last() {
                Some(next) if forward_size => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            let n = block.num_cross_attention_layers();
            xs = block.forward(
                &xs,
                &block_skips,
                &temb,
                &up_ctx[offset..offset + n],
                upsample_size,
            )?;
            offset += n;
        }
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}

/// `skips[i] + residuals[i]`, checking the count and shapes.
fn add_residuals(skips: &[Tensor], residuals: &[Tensor]) -> Result<Vec<Tensor>> {
    if skips.len() != residuals.len() {
        candle_core::bail!(
            "ControlResiduals: the UNet has {} skip connections but got {} down residuals",
            skips.len(),
            residuals.len()
        )
    }
    skips
        .iter()
        .zip(residuals)
        .enumerate()
        .map(|(i, (skip, res))| add_residual(&format!("down {i}"), skip, res))
        .collect()
}

/// `xs + residual`, where the residual is `xs`'s shape or `[B, C, 1, 1]`.
fn add_residual(name: &str, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    match residual.dims() {
        [rb, rc, rh, rw]
            if *rb == b && *rc == c && (*rh == h || *rh == 1) && (*rw == w || *rw == 1) =>
        {
            crate::frozen::add(xs, residual)
        }
        dims => candle_core::bail!(
            "ControlResiduals: residual {name} is {dims:?} but its skip is [{b}, {c}, {h}, {w}] \
             (a residual must match it or be [{b}, {c}, 1, 1])"
        ),
    }
}
