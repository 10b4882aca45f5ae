//! ControlNet ("Adding Conditional Control to Text-to-Image Diffusion Models",
//! <https://arxiv.org/abs/2302.05543>), as diffusers' `ControlNetModel`: a trainable copy of the
//! UNet's encoder (input conv, timestep embedding, down blocks, mid block) fed with the latents
//! plus an embedding of a conditioning image (edges, depth, ...), whose features leave through
//! zero-initialised 1×1 convolutions as residuals for the UNet ([`ControlResiduals`]).
//!
//! The down and mid blocks are the UNet's own block types. Cross-attention contexts are routed
//! like the UNet's: the ControlNet's layers take the contexts of the UNet layers with the same
//! index ([`ControlNetModel::cross_attention_layout`]).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{conv2d, Conv2d};

use crate::attention::AttentionSlicing;
use crate::contexts::{CrossAttentionLayout, UNetContexts};
use crate::embeddings::Timesteps;
use crate::unet::{
    route_contexts, with_encoder_fields, ControlResiduals, DownBlockType, Encoder, EncoderConfig,
};

/// Configuration of a [`ControlNetModel`] (diffusers' config keys of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels of the conditioning image (3: RGB).
    pub conditioning_channels: usize,
    /// Cosines before sines in the timestep features.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features.
    pub freq_shift: f64,
    /// Down block types, from the highest resolution down.
    pub down_block_types: Vec<DownBlockType>,
    /// Output channels of each down block.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block.
    pub layers_per_block: usize,
    /// Transformer blocks in every cross-attention transformer.
    pub transformer_layers_per_block: usize,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// `output_scale_factor` of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Group-norm epsilon of the resnets.
    pub norm_eps: f64,
    /// Width of the text context (768 for SD 1.x).
    pub cross_attention_dim: usize,
    /// Number of heads per block (diffusers' `attention_head_dim` naming quirk, as in
    /// [`crate::unet::UNet2DConditionModelConfig::attention_head_dim`]).
    pub attention_head_dim: Vec<usize>,
    /// Linear `proj_in` / `proj_out` in the transformers instead of 1×1 convolutions.
    pub use_linear_projection: bool,
    /// Channels of the conditioning-image embedding's stages; each stage after the first halves
    /// the resolution (SD: 8× in total).
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// Residuals are averaged over space to `[B, C, 1, 1]` (shuffle-style ControlNets).
    pub global_pool_conditions: bool,
    /// How attention scores are evaluated (not part of diffusers' config).
    pub attention_slicing: AttentionSlicing,
}

impl ControlNetConfig {
    /// The SD 1.5 ControlNets (lllyasviel's `control_v11*_sd15_*`).
    pub fn sd15() -> Self {
        Self {
            in_channels: 4,
            conditioning_channels: 3,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
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
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            global_pool_conditions: false,
            attention_slicing: AttentionSlicing::Full,
        }
    }

    /// A tiny random-weight configuration for tests, matching
    /// [`crate::unet::UNet2DConditionModelConfig::tiny`] (built by `tools/ref/unet_ref.py`).
    pub fn tiny() -> Self {
        Self {
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            block_out_channels: vec![16, 32],
            norm_num_groups: 8,
            cross_attention_dim: 16,
            attention_head_dim: vec![4],
            conditioning_embedding_out_channels: vec![4, 8, 8, 16],
            ..Self::sd15()
        }
    }

    /// The settings shared with the UNet.
    fn encoder(&self) -> EncoderConfig {
        with_encoder_fields!(EncoderConfig, self)
    }
}

/// diffusers' `ControlNetConditioningEmbedding`: `conv_in`, pairs of 3×3 convs (the second of
/// stride 2) in `blocks`, and `conv_out`, with SiLU between.
#[derive(Debug, Clone)]
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, in_channels: usize, channels: &[usize], out: usize) -> Result<Self> {
        let (Some(&first), Some(&last)) = (channels.first(), channels.last()) else {
            candle_core::bail!("ControlNet: conditioning_embedding_out_channels is empty")
        };
        let conv = |i: usize, o: usize, stride: usize, vb: VarBuilder| {
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            conv2d(i, o, 3, cfg, vb)
        };
        let mut blocks = Vec::with_capacity(2 * (channels.len() - 1));
        for (i, pair) in channels.windows(2).enumerate() {
            let vb = vb.pp("blocks");
            blocks.push(conv(pair[0], pair[0], 1, vb.pp((2 * i).to_string()))?);
            blocks.push(conv(pair[0], pair[1], 2, vb.pp((2 * i + 1).to_string()))?);
        }
        Ok(Self {
            conv_in: conv(in_channels, first, 1, vb.pp("conv_in"))?,
            blocks,
            conv_out: conv(last, out, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?.silu()?;
        for block in &self.blocks {
            xs = block.forward(&xs)?.silu()?;
        }
        self.conv_out.forward(&xs)
    }
}

/// diffusers' `ControlNetModel` (SD 1.x/2.x layout).
#[derive(Debug, Clone)]
pub struct ControlNetModel {
    encoder: Encoder,
    controlnet_cond_embedding: ConditioningEmbedding,
    controlnet_down_blocks: Vec<Conv2d>,
    controlnet_mid_block: Conv2d,
    layers_per_block: usize,
    global_pool_conditions: bool,
}

impl ControlNetModel {
    /// Loads the model from `vb` (diffusers' `controlnet` state-dict keys).
    pub fn new(vb: VarBuilder, cfg: &ControlNetConfig) -> Result<Self> {
        let enc_cfg = cfg.encoder();
        let encoder = Encoder::new(&vb, &enc_cfg)?;
        let c0 = cfg.block_out_channels[0];
        let controlnet_cond_embedding = ConditioningEmbedding::new(
            vb.pp("controlnet_cond_embedding"),
            cfg.conditioning_channels,
            &cfg.conditioning_embedding_out_channels,
            c0,
        )?;
        let zero_conv = |channels: usize, vb: VarBuilder| {
            conv2d(channels, channels, 1, Conv2dConfig::default(), vb)
        };
        // One zero conv per skip connection: conv_in, each resnet, each downsampler.
        let blocks = cfg.block_out_channels.len();
        let mut skip_channels = vec![c0];
        for (i, &c) in cfg.block_out_channels.iter().enumerate() {
            let per_block = cfg.layers_per_block + usize::from(i + 1 < blocks);
            skip_channels.extend(std::iter::repeat_n(c, per_block));
        }
        let controlnet_down_blocks = skip_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| zero_conv(c, vb.pp("controlnet_down_blocks").pp(i.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let mid_channels = cfg.block_out_channels[blocks - 1];
        let controlnet_mid_block = zero_conv(mid_channels, vb.pp("controlnet_mid_block"))?;
        Ok(Self {
            encoder,
            controlnet_cond_embedding,
            controlnet_down_blocks,
            controlnet_mid_block,
            layers_per_block: cfg.layers_per_block,
            global_pool_conditions: cfg.global_pool_conditions,
        })
    }

    /// The cross-attention layout of the UNet this ControlNet controls: the ControlNet's own
    /// down and mid layers, plus the up layers of the mirrored UNet (one per resnet of each up
    /// block facing a cross-attention down block), which the ControlNet does not have. Layer
    /// `i` of the ControlNet takes the context of the UNet's layer `i`, so the same
    /// [`UNetContexts`] serve both models.
    pub fn cross_attention_layout(&self) -> CrossAttentionLayout {
        let (down, mid) = self.encoder.down_mid_layers();
        let up = self
            .encoder
            .down_blocks
            .iter()
            .filter(|b| b.num_cross_attention_layers() > 0)
            .count()
            * (self.layers_per_block + 1);
        CrossAttentionLayout { down, mid, up }
    }

    /// Computes the residuals for latents `sample` `[B, C, H, W]` at `timestep`, with the
    /// routed `contexts` and the conditioning image `cond` `[B, 3, 8H, 8W]` in `[0, 1]`.
    ///
    /// Residuals are multiplied by `conditioning_scale`; in `guess_mode` (unless
    /// `global_pool_conditions`) the down residuals and the mid residual are multiplied
    /// instead by `conditioning_scale · 10^(−1 + k/n)`, `k = 0..=n` over the `n + 1`
    /// residuals (0.1 for the first, 1 for the mid residual), as diffusers does. With
    /// `global_pool_conditions` the residuals are averaged over space. Nothing is modified in
    /// place.
    pub fn forward<'t>(
        &self,
        sample: &Tensor,
        timestep: impl Into<Timesteps<'t>>,
        contexts: &UNetContexts,
        cond: &Tensor,
        conditioning_scale: f64,
        guess_mode: bool,
    ) -> Result<ControlResiduals> {
        let (batch, _, _, _) = sample.dims4()?;
        let layout = self.cross_attention_layout();
        let per_layer = route_contexts(contexts, &layout, batch)?;
        let enc = &self.encoder;
        let temb = enc.time_embedding(sample, timestep.into())?;

        let xs = enc.conv_in.forward(sample)?;
        let cond = self.controlnet_cond_embedding.forward(cond)?;
        if cond.dims() != xs.dims() {
            candle_core::bail!(
                "ControlNet: the conditioning image embeds to {:?} but the latents give {:?} \
                 (the image must be 8× the latent size for SD)",
                cond.shape(),
                xs.shape()
            )
        }
        let xs = (xs + cond)?;
        let (xs, skips) = enc.down(xs, &temb, &per_layer[..layout.down])?;
        let xs = enc.mid_block.forward(
            &xs,
            &temb,
            &per_layer[layout.down..layout.down + layout.mid],
        )?;

        let down = skips
            .iter()
            .zip(&self.controlnet_down_blocks)
            .map(|(skip, conv)| conv.forward(skip))
            .collect::<Result<Vec<_>>>()?;
        let mid = self.controlnet_mid_block.forward(&xs)?;

        let n = down.len();
        let scale_of = |k: usize| {
            if guess_mode && !self.global_pool_conditions {
                conditioning_scale * 10f64.powf(-1.0 + k as f64 / n as f64)
            } else {
                conditioning_scale
            }
        };
        let finish = |xs: Tensor, k: usize| -> Result<Tensor> {
            let xs = (xs * scale_of(k))?;
            if self.global_pool_conditions {
                xs.mean_keepdim(3)?.mean_keepdim(2)
            } else {
                Ok(xs)
            }
        };
        let down = down
            .into_iter()
            .enumerate()
            .map(|(k, xs)| finish(xs, k))
            .collect::<Result<Vec<_>>>()?;
        let mid = finish(mid, n)?;
        Ok(ControlResiduals { down, mid })
    }
}
