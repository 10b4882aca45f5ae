//! The key map of original ControlNet checkpoints (lllyasviel's `cldm` code, keys
//! `control_model.*`) to diffusers' `ControlNetModel`: the UNet-encoder body is keyed like the
//! UNet's (`time_embed`, `input_blocks`, `middle_block`), plus
//!
//! - `input_hint_block.{0, 2, 4, ..}`: the conditioning-image embedding, a `Sequential` of
//!   convolutions with a SiLU between each two (`controlnet_cond_embedding.conv_in`,
//!   `.blocks.{k}`, `.conv_out`);
//! - `zero_convs.{k}.0`: the residual convolutions (`controlnet_down_blocks.{k}`);
//! - `middle_block_out.0`: the mid-block residual convolution (`controlnet_mid_block`).

use super::ldm_keys::{encoder_pairs, num_skips, KeyMap, Pairs};
use crate::controlnet::ControlNetConfig;

impl KeyMap {
    /// A ControlNet checkpoint (`control_model.*`; standalone files without the prefix are
    /// read too).
    pub fn controlnet(cfg: &ControlNetConfig) -> Self {
        let mut pairs = Pairs::default();
        encoder_pairs(&mut pairs, &cfg.down_block_types, cfg.layers_per_block);
        // input_hint_block: conv_in at 0, then each conv at the next even index (a SiLU sits
        // between), conv_out last.
        let stages = cfg.conditioning_embedding_out_channels.len();
        let embedding = "controlnet_cond_embedding";
        pairs.add(format!("{embedding}.conv_in"), "input_hint_block.0");
        let blocks = 2 * stages.saturating_sub(1);
        for k in 0..blocks {
            pairs.add(
                format!("{embedding}.blocks.{k}"),
                format!("input_hint_block.{}", 2 * (k + 1)),
            );
        }
        pairs.add(
            format!("{embedding}.conv_out"),
            format!("input_hint_block.{}", 2 * (blocks + 1)),
        );
        let skips = num_skips(cfg.down_block_types.len(), cfg.layers_per_block);
        for k in 0..skips {
            pairs.add(
                format!("controlnet_down_blocks.{k}"),
                format!("zero_convs.{k}.0"),
            );
        }
        pairs.add("controlnet_mid_block", "middle_block_out.0");
        Self::new("ControlNet", &["control_model."], true, None, pairs)
    }
}
