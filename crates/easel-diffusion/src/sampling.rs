//! Resolution changes shared by the UNet, the ControlNet and the VAE: diffusers'
//! `Downsample2D` (stride-2 3×3 conv) and `Upsample2D` (nearest-neighbour ×2, then a 3×3 conv),
//! both with `use_conv=True`, as in the DDPM UNet <https://arxiv.org/abs/2006.11239>.
//!
//! The conv is stored under the key `conv` in both (a UNet block holds them as
//! `downsamplers.0.conv` / `upsamplers.0.conv`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{conv2d, Conv2d};

use crate::ops::conv3x3;

/// diffusers' `Downsample2D` with `use_conv=True`: a 3×3 conv of stride 2.
///
/// With `padding = 1` (UNet, ControlNet) the conv pads one pixel on every side; with
/// `padding = 0` (VAE encoder) the input is first zero-padded by one pixel on the right and
/// bottom only, as diffusers does.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    /// Loads `conv` (`in_channels` → `out_channels`) from `vb`; `padding` is 0 or 1.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        padding: usize,
    ) -> Result<Self> {
        if padding > 1 {
            candle_core::bail!("Downsample2D: padding must be 0 or 1, got {padding}")
        }
        let cfg = Conv2dConfig {
            padding,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(in_channels, out_channels, 3, cfg, vb.pp("conv"))?,
            asymmetric_pad: padding == 0,
        })
    }

    /// Halves the spatial size of `xs` `[B, C, H, W]` (rounding up for odd sizes).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let xs = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// diffusers' `Upsample2D` with `use_conv=True`: nearest-neighbour upsampling, then a 3×3 conv
/// with padding 1.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `conv` (`in_channels` → `out_channels`) from `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), in_channels, out_channels)?,
        })
    }

    /// Upsamples `xs` `[B, C, H, W]` to `output_size` `(H', W')` when given (the UNet passes the
    /// skip connection's size when the input was not divisible by the total downsampling), else
    /// to `(2H, 2W)`, then applies the conv.
    ///
    /// Gradients flow only through integer, equal scale factors (candle's nearest-upsampling
    /// backward), which includes the default ×2.
    pub fn forward(&self, xs: &Tensor, output_size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (out_h, out_w) = output_size.unwrap_or((2 * h, 2 * w));
        let xs = xs.upsample_nearest2d(out_h, out_w)?;
        self.conv.forward(&xs)
    }
}
