//! Estimates of the activation memory one inference pass needs, so that a caller can compare
//! them with what the device has available before it starts (see `easel_core::memory`).
//!
//! The figures are counts of the tensors alive at the peak, in bytes, from the configuration
//! and the input size alone; weights are not included (they are loaded already when a run is
//! checked). Each model is modelled as its widest working set:
//!
//! - **UNet / ControlNet** (inference, no autograd): the skip connections the down path keeps
//!   for the up path, plus the working set of the widest level (a transformer block holds
//!   about 16 tensors of the level's width: the residual stream, the attention projections
//!   and the GEGLU feed-forward's 8·C projection; a resnet level about 8), plus the largest
//!   self-attention score chunk twice (the scores and their softmax), whose size the
//!   [`AttentionSlicing`] bounds.
//! - **VAE**: the widest resnet level (input, two norms and a convolution: 4 tensors of the
//!   level's width; the decoder's levels also hold their upsampled output), plus the mid
//!   block's single-head attention scores twice, always in f32 and never sliced: `(h·w)²`
//!   at latent resolution, which is what makes untiled large images expensive. Tiled passes
//!   count one tile and the whole output.
//!
//! Arithmetic saturates: an estimate that does not fit a `u64` is `u64::MAX`, which nothing
//! fits in.

use crate::attention::AttentionSlicing;
use crate::controlnet::ControlNetConfig;
use crate::unet::{
    with_encoder_fields, DownBlockType, EncoderConfig, UNet2DConditionModelConfig, UpBlockType,
};
use crate::vae::{AutoencoderKLConfig, TileConfig};

/// Tensors of a level's width alive in a transformer block (see the module doc).
const TRANSFORMER_WORKING_TENSORS: u64 = 16;
/// Tensors of a level's width alive in a resnet level, a concatenated skip included.
const RESNET_WORKING_TENSORS: u64 = 8;
/// Tensors of a level's width alive in a VAE resnet.
const VAE_WORKING_TENSORS: u64 = 4;

/// `values.iter().product()`, saturating at `u64::MAX` (which nothing fits in).
pub fn product(values: &[u64]) -> u64 {
    values.iter().fold(1u64, |acc, &v| acc.saturating_mul(v))
}

/// Pixels of a `h × w` map after `level` stride-2 downsamplings (each `ceil(n / 2)`).
fn level_pixels(h: usize, w: usize, level: usize) -> u64 {
    let halve = |mut n: usize| {
        for _ in 0..level {
            n = n.div_ceil(2);
        }
        n as u64
    };
    halve(h).saturating_mul(halve(w))
}

/// Bytes of the largest self-attention score chunk, twice (scores and softmax), at `tokens`
/// tokens over `rows` = batch · heads matrices.
fn score_bytes(slicing: AttentionSlicing, rows: u64, tokens: u64, elem_bytes: u64) -> u64 {
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let chunk = slicing.chunk_len(
        as_usize(rows),
        as_usize(tokens),
        as_usize(tokens),
        as_usize(elem_bytes),
    ) as u64;
    product(&[2, rows, chunk, tokens, elem_bytes])
}

/// The down path's kept outputs (`conv_in`, every resnet, every downsampler: the skips, or a
/// ControlNet's residuals) in elements, for batch 1.
fn skip_elements(cfg: &EncoderConfig, h: usize, w: usize) -> u64 {
    let levels = cfg.block_out_channels.len();
    let mut total = product(&[
        cfg.block_out_channels.first().copied().unwrap_or(0) as u64,
        level_pixels(h, w, 0),
    ]);
    for (level, &channels) in cfg.block_out_channels.iter().enumerate() {
        let c = channels as u64;
        total = total.saturating_add(product(&[
            cfg.layers_per_block as u64,
            c,
            level_pixels(h, w, level),
        ]));
        if level + 1 < levels {
            total = total.saturating_add(c.saturating_mul(level_pixels(h, w, level + 1)));
        }
    }
    total
}

/// The peak of one pass of the UNet-shaped network described by `cfg`, in bytes, with skips.
/// `attention[l]` says whether level `l` has transformers.
fn encoder_network_bytes(
    cfg: &EncoderConfig,
    attention: &[bool],
    batch: u64,
    h: usize,
    w: usize,
    elem_bytes: u64,
) -> u64 {
    let mut working = 0u64;
    let mut scores = 0u64;
    for (level, &channels) in cfg.block_out_channels.iter().enumerate() {
        let pixels = level_pixels(h, w, level);
        let has_attention = attention.get(level).copied().unwrap_or(false);
        let tensors = if has_attention {
            TRANSFORMER_WORKING_TENSORS
        } else {
            RESNET_WORKING_TENSORS
        };
        working = working.max(product(&[tensors, channels as u64, pixels]));
        if has_attention {
            let heads = cfg.heads(level).unwrap_or(1) as u64;
            let rows = batch.saturating_mul(heads);
            scores = scores.max(score_bytes(cfg.attention_slicing, rows, pixels, elem_bytes));
        }
    }
    product(&[
        batch,
        elem_bytes,
        skip_elements(cfg, h, w).saturating_add(working),
    ])
    .saturating_add(scores)
}

impl UNet2DConditionModelConfig {
    /// The estimated activation peak of one forward pass on latents `[batch, C, h, w]` with
    /// `elem_bytes`-byte elements, in bytes (see the [module doc](self)).
    pub fn inference_bytes(&self, batch: usize, h: usize, w: usize, elem_bytes: usize) -> u64 {
        let cfg = with_encoder_fields!(EncoderConfig, self);
        let levels = self.block_out_channels.len();
        let attention: Vec<bool> = (0..levels)
            .map(|level| {
                let down =
                    self.down_block_types.get(level) == Some(&DownBlockType::CrossAttnDownBlock2D);
                let up = levels
                    .checked_sub(level + 1)
                    .and_then(|i| self.up_block_types.get(i))
                    == Some(&UpBlockType::CrossAttnUpBlock2D);
                down || up
            })
            .collect();
        encoder_network_bytes(&cfg, &attention, batch as u64, h, w, elem_bytes as u64)
    }
}

impl ControlNetConfig {
    /// The estimated activation peak of one forward pass on latents `[batch, C, h, w]`, in
    /// bytes (see the [module doc](self)).
    pub fn inference_bytes(&self, batch: usize, h: usize, w: usize, elem_bytes: usize) -> u64 {
        let cfg = with_encoder_fields!(EncoderConfig, self);
        let attention: Vec<bool> = self
            .down_block_types
            .iter()
            .map(|&t| t == DownBlockType::CrossAttnDownBlock2D)
            .collect();
        encoder_network_bytes(&cfg, &attention, batch as u64, h, w, elem_bytes as u64)
    }

    /// The bytes of the residuals one pass hands to the UNet (kept while the UNet runs).
    pub fn residual_bytes(&self, batch: usize, h: usize, w: usize, elem_bytes: usize) -> u64 {
        let cfg = with_encoder_fields!(EncoderConfig, self);
        let mid = product(&[
            self.block_out_channels.last().copied().unwrap_or(0) as u64,
            level_pixels(h, w, self.block_out_channels.len().saturating_sub(1)),
        ]);
        product(&[
            batch as u64,
            elem_bytes as u64,
            skip_elements(&cfg, h, w).saturating_add(mid),
        ])
    }
}

impl AutoencoderKLConfig {
    /// The estimated activation peak of encoding images `[batch, C, h, w]` (`h`, `w` in
    /// pixels), whole or with `tiles`, in bytes (see the [module doc](self)).
    pub fn encode_bytes(
        &self,
        batch: usize,
        h: usize,
        w: usize,
        elem_bytes: usize,
        tiles: Option<&TileConfig>,
    ) -> u64 {
        let (tile_h, tile_w) = tile_dims(h, w, tiles.map(|t| t.tile_sample_min_size));
        let mut working = 0u64;
        for (level, &channels) in self.block_out_channels.iter().enumerate() {
            let pixels = level_pixels(tile_h, tile_w, level);
            working = working.max(product(&[VAE_WORKING_TENSORS, channels as u64, pixels]));
        }
        let latent_level = self.block_out_channels.len().saturating_sub(1);
        let latent_pixels = level_pixels(tile_h, tile_w, latent_level);
        let image = product(&[self.in_channels as u64, h as u64, w as u64]);
        let moments = product(&[
            2 * self.latent_channels as u64,
            level_pixels(h, w, latent_level),
        ]);
        product(&[
            batch as u64,
            elem_bytes as u64,
            working.saturating_add(image).saturating_add(moments),
        ])
        .saturating_add(self.mid_attention_bytes(batch, latent_pixels))
    }

    /// The estimated activation peak of decoding latents `[batch, C, h, w]` (latent size),
    /// whole or with `tiles`, in bytes (see the [module doc](self)).
    pub fn decode_bytes(
        &self,
        batch: usize,
        h: usize,
        w: usize,
        elem_bytes: usize,
        tiles: Option<&TileConfig>,
    ) -> u64 {
        let (tile_h, tile_w) = tile_dims(h, w, tiles.map(|t| t.tile_latent_min_size));
        let levels = self.block_out_channels.len();
        let scale = |level_from_latent: usize| -> u64 {
            // Level `i` of the decoder runs at latent size · 2^i.
            1u64.checked_shl(u32::try_from(level_from_latent).unwrap_or(u32::MAX))
                .unwrap_or(u64::MAX)
        };
        let tile_latent = (tile_h as u64).saturating_mul(tile_w as u64);
        let reversed: Vec<u64> = self
            .block_out_channels
            .iter()
            .rev()
            .map(|&c| c as u64)
            .collect();
        let mut working = 0u64;
        for (i, &out) in reversed.iter().enumerate() {
            let input = if i == 0 { out } else { reversed[i - 1] };
            let side = scale(i);
            let pixels = product(&[tile_latent, side, side]);
            let mut level = product(&[input.saturating_add(3 * out), pixels]);
            if i + 1 < levels {
                // The upsampler's nearest ×2 copy and its convolution, at the next size.
                level = level.saturating_add(product(&[2, out, pixels, 4]));
            }
            working = working.max(level);
        }
        let factor = scale(levels.saturating_sub(1));
        let image = product(&[self.out_channels as u64, h as u64, w as u64, factor, factor]);
        product(&[
            batch as u64,
            elem_bytes as u64,
            working.saturating_add(image),
        ])
        .saturating_add(self.mid_attention_bytes(batch, tile_latent))
    }

    /// The mid block's attention scores and softmax, in f32, over `tokens` latent pixels.
    fn mid_attention_bytes(&self, batch: usize, tokens: u64) -> u64 {
        if !self.mid_block_add_attention {
            return 0;
        }
        product(&[2, batch as u64, tokens, tokens, 4])
    }
}

/// The size one pass sees: the whole `h × w`, or at most a `tile × tile` tile.
fn tile_dims(h: usize, w: usize, tile: Option<usize>) -> (usize, usize) {
    match tile {
        Some(tile) if tile > 0 => (h.min(tile), w.min(tile)),
        _ => (h, w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn level_pixels_round_up_like_stride_two_convolutions() {
        assert_eq!(level_pixels(64, 64, 0), 4096);
        assert_eq!(level_pixels(64, 64, 3), 64);
        // 9 → 5 → 3 → 2: padding-1 stride-2 convolutions round up.
        assert_eq!(level_pixels(9, 1, 3), 2);
    }

    /// The SD 1.5 UNet at 512² with guidance in f32: the skips (6.9 M values a sample), the
    /// 320-wide transformer working set and the 4096² scores of 8 heads.
    #[test]
    fn sd15_unet_estimate_adds_skips_working_set_and_scores() {
        let mut cfg = UNet2DConditionModelConfig::sd15();
        // conv_in and two resnets at 64², a downsampler to 32², and so on: the 12 skips.
        let skips: u64 = 320 * 4096 * 3
            + (320 + 640 * 2) * 1024
            + (640 + 1280 * 2) * 256
            + (1280 + 1280 * 2) * 64;
        let working: u64 = 16 * 320 * 4096;
        let scores: u64 = 2 * 16 * 4096 * 4096 * 4;
        let expected = 2 * 4 * (skips + working) + scores;
        assert_eq!(cfg.inference_bytes(2, 64, 64, 4), expected);
        assert!((2 * GIB..3 * GIB).contains(&expected));
        // Sliced scores bound the 1024² canvas's 16 GiB of scores to two 1 GiB chunks.
        cfg.attention_slicing = AttentionSlicing::PAINTING;
        let sliced = cfg.inference_bytes(2, 128, 128, 4);
        cfg.attention_slicing = AttentionSlicing::Full;
        let full = cfg.inference_bytes(2, 128, 128, 4);
        assert_eq!(full - sliced, 2 * 16 * 16384 * 16384 * 4 - 2 * GIB);
    }

    #[test]
    fn vae_estimates_grow_with_the_square_of_the_latent_unless_tiled() {
        let cfg = AutoencoderKLConfig::sd15();
        let tiles = cfg.tiling();
        // 512²: 4096 latent tokens, 128 MiB of f32 scores; the decoder's widest level is the
        // 512 → 256 one at 256², whose upsampler writes two 256-wide maps at 512².
        let decode = cfg.decode_bytes(1, 64, 64, 4, None);
        let working = (512 + 3 * 256) * 256 * 256 + 2 * 256 * 512 * 512;
        assert_eq!(decode, 4 * (working + 3 * 512 * 512) + 2 * 4096 * 4096 * 4);
        // 2048²: 65536 tokens, 32 GiB of scores untiled; tiles of 512² keep one tile's.
        let large = cfg.decode_bytes(1, 256, 256, 4, None);
        assert!(large > 32 * GIB, "{large}");
        let tiled = cfg.decode_bytes(1, 256, 256, 4, Some(&tiles));
        assert!(tiled < 2 * GIB, "{tiled}");
        assert!(cfg.encode_bytes(1, 2048, 2048, 4, None) > 32 * GIB);
        assert!(cfg.encode_bytes(1, 2048, 2048, 4, Some(&tiles)) < 2 * GIB);
        // Without mid attention the quadratic term goes.
        let flat = AutoencoderKLConfig {
            mid_block_add_attention: false,
            ..AutoencoderKLConfig::sd15()
        };
        let linear = flat.decode_bytes(1, 256, 256, 4, None);
        assert_eq!(large - linear, 2 * 65536 * 65536 * 4);
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_wrapping() {
        let cfg = UNet2DConditionModelConfig::sd15();
        assert_eq!(
            cfg.inference_bytes(usize::MAX, 1 << 20, 1 << 20, 4),
            u64::MAX
        );
        let vae = AutoencoderKLConfig::sd15();
        assert_eq!(vae.decode_bytes(1, 1 << 20, 1 << 20, 4, None), u64::MAX);
    }

    #[test]
    fn controlnet_residuals_are_the_skips_and_the_mid_output() {
        let cfg = ControlNetConfig::sd15();
        // conv_in and two resnets at 64², a downsampler to 32², and so on: the 12 skips.
        let skips: u64 = 320 * 4096 * 3
            + (320 + 640 * 2) * 1024
            + (640 + 1280 * 2) * 256
            + (1280 + 1280 * 2) * 64;
        assert_eq!(
            cfg.residual_bytes(2, 64, 64, 2),
            2 * 2 * (skips + 1280 * 64)
        );
        assert!(cfg.inference_bytes(2, 64, 64, 2) > cfg.residual_bytes(2, 64, 64, 2));
    }
}
