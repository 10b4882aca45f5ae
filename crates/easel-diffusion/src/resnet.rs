//! The residual block shared by the UNet, the ControlNet and the VAE: diffusers'
//! `ResnetBlock2D` (group norm → SiLU → 3×3 conv, optional timestep-embedding shift, group norm
//! → SiLU → 3×3 conv, plus a skip connection), as in "Deep Residual Learning for Image
//! Recognition" <https://arxiv.org/abs/1512.03385> and the DDPM UNet
//! <https://arxiv.org/abs/2006.11239>.
//!
//! Only diffusers' `time_embedding_norm="default"` is supported (what Stable Diffusion 1.x
//! uses): the projected timestep embedding is added to the hidden states before `norm2`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{conv2d, group_norm, linear, Conv2d, GroupNorm, Linear};

use crate::ops::conv3x3;

/// Configuration of a [`ResnetBlock2D`] (diffusers' constructor arguments of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetBlock2DConfig {
    /// Output channels; `None` keeps the input channel count.
    pub out_channels: Option<usize>,
    /// Width of the timestep embedding, or `None` for a block without `time_emb_proj` (the VAE).
    pub temb_channels: Option<usize>,
    /// Groups of the first group norm (`norm1`).
    pub groups: usize,
    /// Groups of the second group norm (`norm2`); `None` uses `groups`.
    pub groups_out: Option<usize>,
    /// Epsilon of both group norms.
    pub eps: f64,
    /// Whether a 1×1 `conv_shortcut` projects the skip connection; `None` adds one exactly when
    /// the input and output channel counts differ.
    pub use_in_shortcut: Option<bool>,
    /// The block's output is divided by this.
    pub output_scale_factor: f64,
}

impl Default for ResnetBlock2DConfig {
    /// diffusers' defaults: same channels, 512-wide timestep embedding, 32 groups, eps 1e-6.
    fn default() -> Self {
        Self {
            out_channels: None,
            temb_channels: Some(512),
            groups: 32,
            groups_out: None,
            eps: 1e-6,
            use_in_shortcut: None,
            output_scale_factor: 1.0,
        }
    }
}

/// diffusers' `ResnetBlock2D` with `time_embedding_norm="default"`; the `vb.pp()` names are the
/// diffusers state-dict keys (`norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
/// `conv_shortcut`).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads a block taking `in_channels` input channels from `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, config: ResnetBlock2DConfig) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let groups_out = config.groups_out.unwrap_or(config.groups);
        if config.groups == 0 || groups_out == 0 {
            candle_core::bail!(
                "ResnetBlock2D: groups ({}) and groups_out ({groups_out}) must be positive",
                config.groups
            )
        }
        if in_channels == 0 || out_channels == 0 {
            candle_core::bail!(
                "ResnetBlock2D: channels must be positive (in {in_channels}, out {out_channels})"
            )
        }
        if config.output_scale_factor == 0.0 || !config.output_scale_factor.is_finite() {
            candle_core::bail!(
                "ResnetBlock2D: output_scale_factor must be finite and non-zero, got {}",
                config.output_scale_factor
            )
        }
        let norm1 = group_norm(config.groups, in_channels, config.eps, vb.pp("norm1"))?;
        let conv1 = conv3x3(vb.pp("conv1"), in_channels, out_channels)?;
        let time_emb_proj = match config.temb_channels {
            Some(temb_channels) => {
                Some(linear(temb_channels, out_channels, vb.pp("time_emb_proj"))?)
            }
            None => None,
        };
        let norm2 = group_norm(groups_out, out_channels, config.eps, vb.pp("norm2"))?;
        let conv2 = conv3x3(vb.pp("conv2"), out_channels, out_channels)?;
        let use_in_shortcut = config
            .use_in_shortcut
            .unwrap_or(in_channels != out_channels);
        let conv_shortcut = if use_in_shortcut {
            Some(conv2d(
                in_channels,
                out_channels,
                1,
                Conv2dConfig::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            output_scale_factor: config.output_scale_factor,
        })
    }

    /// Applies the block to `xs` `[B, C_in, H, W]`, shifting by the timestep embedding `temb`
    /// `[B, temb_channels]` when given, and returns `[B, C_out, H, W]`.
    ///
    /// A block built with `temb_channels: None` refuses a `temb` (diffusers would add the raw
    /// embedding, which is never what a caller means).
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let hs = self.norm1.forward_silu(xs)?;
        let mut hs = self.conv1.forward(&hs)?;
        match (temb, &self.time_emb_proj) {
            (Some(temb), Some(proj)) => {
                let temb = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
                hs = crate::frozen::add(&hs, &temb)?;
            }
            (Some(temb), None) => candle_core::bail!(
                "ResnetBlock2D: got a timestep embedding of shape {:?} but the block has no \
                 time_emb_proj (temb_channels: None)",
                temb.shape()
            ),
            (None, _) => {}
        }
        let hs = self.norm2.forward_silu(&hs)?;
        let hs = self.conv2.forward(&hs)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let out = (skip + hs)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
