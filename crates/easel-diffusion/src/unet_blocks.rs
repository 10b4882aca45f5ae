//! The UNet's blocks, as in diffusers' `unet_2d_blocks.py` (the UNet of "High-Resolution Image
//! Synthesis with Latent Diffusion Models", <https://arxiv.org/abs/2112.10752>): down blocks
//! (`DownBlock2D`, `CrossAttnDownBlock2D`), the mid block (`UNetMidBlock2DCrossAttn`), up blocks
//! (`UpBlock2D`, `CrossAttnUpBlock2D`), with the resamplers of [`crate::sampling`].
//!
//! [`DownBlock2D`] and [`UpBlock2D`] cover both diffusers variants: built with a
//! [`Transformer2DModelConfig`] they are the cross-attention blocks (a `Transformer2DModel`
//! after every resnet, state-dict keys `attentions.<i>`), without one the plain blocks. Each
//! cross-attention transformer takes its own context, so callers can route a different prompt
//! embedding to every layer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::{Transformer2DModel, Transformer2DModelConfig};
use crate::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::sampling::{Downsample2D, Upsample2D};

fn attentions(
    vb: &VarBuilder,
    count: usize,
    channels: usize,
    cfg: Option<Transformer2DModelConfig>,
) -> Result<Vec<Transformer2DModel>> {
    match cfg {
        None => Ok(Vec::new()),
        Some(cfg) => (0..count)
            .map(|i| Transformer2DModel::new(vb.pp("attentions").pp(i.to_string()), channels, cfg))
            .collect(),
    }
}

fn check_contexts(block: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        candle_core::bail!("{block}: has {expected} cross-attention layers but got {got} contexts")
    }
    Ok(())
}

/// Settings shared by the resnets of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetSettings {
    /// Width of the timestep embedding.
    pub temb_channels: usize,
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
    /// The resnets' outputs are divided by this (`output_scale_factor`).
    pub output_scale_factor: f64,
}

impl ResnetSettings {
    /// The `count` resnets `resnets.<i>` of a block, resnet `i` taking `in_channels(i)`
    /// channels to `out_channels`.
    fn blocks(
        &self,
        vb: &VarBuilder,
        count: usize,
        in_channels: impl Fn(usize) -> usize,
        out_channels: usize,
    ) -> Result<Vec<ResnetBlock2D>> {
        (0..count)
            .map(|i| {
                ResnetBlock2D::new(
                    vb.pp("resnets").pp(i.to_string()),
                    in_channels(i),
                    ResnetBlock2DConfig {
                        out_channels: Some(out_channels),
                        temb_channels: Some(self.temb_channels),
                        groups: self.groups,
                        groups_out: None,
                        eps: self.eps,
                        use_in_shortcut: None,
                        output_scale_factor: self.output_scale_factor,
                    },
                )
            })
            .collect()
    }
}

/// Configuration of a [`DownBlock2D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Number of resnets (and transformers): `layers_per_block`.
    pub num_layers: usize,
    /// Resnet settings.
    pub resnet: ResnetSettings,
    /// Whether a `Downsample2D` ends the block (all but the last down block).
    pub add_downsample: bool,
    /// Padding of the downsampling convolution (`downsample_padding`; 1 in SD).
    pub downsample_padding: usize,
    /// `Some`: a `CrossAttnDownBlock2D` with a transformer after every resnet.
    pub cross_attention: Option<Transformer2DModelConfig>,
}

/// diffusers' `DownBlock2D` / `CrossAttnDownBlock2D`.
#[derive(Debug, Clone)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// Loads the block from `vb` (keys `resnets.<i>`, `attentions.<i>`, `downsamplers.0`).
    pub fn new(vb: VarBuilder, cfg: DownBlock2DConfig) -> Result<Self> {
        let resnets = cfg.resnet.blocks(
            &vb,
            cfg.num_layers,
            |i| {
                if i == 0 {
                    cfg.in_channels
                } else {
                    cfg.out_channels
                }
            },
            cfg.out_channels,
        )?;
        let attentions = attentions(&vb, cfg.num_layers, cfg.out_channels, cfg.cross_attention)?;
        let downsampler = cfg
            .add_downsample
            .then(|| {
                Downsample2D::new(
                    vb.pp("downsamplers").pp("0"),
                    cfg.out_channels,
                    cfg.out_channels,
                    cfg.downsample_padding,
                )
            })
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Number of cross-attention transformers (0 for a plain `DownBlock2D`).
    pub fn num_cross_attention_layers(&self) -> usize {
        self.attentions.len()
    }

    /// Number of skip connections the block emits (resnets plus the downsampler).
    pub fn num_skips(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }

    /// Applies the block with timestep embedding `temb`; `contexts` holds one context per
    /// cross-attention layer, in order. Returns the output and the skip connections (each
    /// resnet/transformer output, then the downsampler's).
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        contexts: &[&Tensor],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        check_contexts("DownBlock2D", self.attentions.len(), contexts.len())?;
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.num_skips());
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, contexts[i])?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: resnet, then `num_layers` × (transformer, resnet).
#[derive(Debug, Clone)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// Loads the block over `channels` channels with `num_layers` transformers (1 in SD).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        num_layers: usize,
        resnet: ResnetSettings,
        cross_attention: Transformer2DModelConfig,
    ) -> Result<Self> {
        let resnets = resnet.blocks(&vb, num_layers + 1, |_| channels, channels)?;
        let attentions = attentions(&vb, num_layers, channels, Some(cross_attention))?;
        Ok(Self {
            resnets,
            attentions,
        })
    }

    /// Number of cross-attention transformers.
    pub fn num_cross_attention_layers(&self) -> usize {
        self.attentions.len()
    }

    /// Applies the block; `contexts` holds one context per cross-attention layer.
    pub fn forward(&self, xs: &Tensor, temb: &Tensor, contexts: &[&Tensor]) -> Result<Tensor> {
        check_contexts(
            "UNetMidBlock2DCrossAttn",
            self.attentions.len(),
            contexts.len(),
        )?;
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            if i > 0 {
                xs = self.attentions[i - 1].forward(&xs, contexts[i - 1])?;
            }
            xs = resnet.forward(&xs, Some(temb))?;
        }
        Ok(xs)
    }
}

/// Configuration of an [`UpBlock2D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpBlock2DConfig {
    /// Channels of the matching down block's input (the last skip's channels).
    pub in_channels: usize,
    /// Channels coming from the previous up block (or the mid block).
    pub prev_output_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Number of resnets (and transformers): `layers_per_block + 1`.
    pub num_layers: usize,
    /// Resnet settings.
    pub resnet: ResnetSettings,
    /// Whether an `Upsample2D` ends the block (all but the last up block).
    pub add_upsample: bool,
    /// `Some`: a `CrossAttnUpBlock2D` with a transformer after every resnet.
    pub cross_attention: Option<Transformer2DModelConfig>,
}

/// diffusers' `UpBlock2D` / `CrossAttnUpBlock2D`.
#[derive(Debug, Clone)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// Loads the block from `vb` (keys `resnets.<i>`, `attentions.<i>`, `upsamplers.0`).
    pub fn new(vb: VarBuilder, cfg: UpBlock2DConfig) -> Result<Self> {
        // Resnet `i` takes the hidden states and the skip it meets, concatenated.
        let resnets = cfg.resnet.blocks(
            &vb,
            cfg.num_layers,
            |i| {
                let skip = if i + 1 == cfg.num_layers {
                    cfg.in_channels
                } else {
                    cfg.out_channels
                };
                let input = if i == 0 {
                    cfg.prev_output_channels
                } else {
                    cfg.out_channels
                };
                input + skip
            },
            cfg.out_channels,
        )?;
        let attentions = attentions(&vb, cfg.num_layers, cfg.out_channels, cfg.cross_attention)?;
        let upsampler = cfg
            .add_upsample
            .then(|| {
                Upsample2D::new(
                    vb.pp("upsamplers").pp("0"),
                    cfg.out_channels,
                    cfg.out_channels,
                )
            })
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of cross-attention transformers (0 for a plain `UpBlock2D`).
    pub fn num_cross_attention_layers(&self) -> usize {
        self.attentions.len()
    }

    /// Number of skip connections the block consumes (one per resnet).
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// Applies the block: each resnet takes the channel concatenation of the hidden states and
    /// the last remaining skip of `skips` (consumed from the end). `upsample_size` forces the
    /// upsampler's output size; `contexts` holds one context per cross-attention layer.
    pub fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        contexts: &[&Tensor],
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        check_contexts("UpBlock2D", self.attentions.len(), contexts.len())?;
        if skips.len() != self.resnets.len() {
            candle_core::bail!(
                "UpBlock2D: needs {} skip connections, got {}",
                self.resnets.len(),
                skips.len()
            )
        }
        let mut xs = xs.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            xs = crate::frozen::cat2(&xs, skip, 1)?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, contexts[i])?;
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }
}
