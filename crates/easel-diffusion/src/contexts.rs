//! Routing of text contexts (encoder hidden states) to the UNet's cross-attention layers.
//!
//! Plain Stable Diffusion feeds one context `[B, 77, D]` to every cross-attention layer. easel
//! learns prompt embeddings per group of layers (as in "P+: Extended Textual Conditioning in
//! Text-to-Image Generation", <https://arxiv.org/abs/2303.09522>), so each layer may take its
//! own context.
//!
//! A *cross-attention layer* is one `Transformer2DModel` (all its transformer blocks share the
//! context). Layers are numbered in forward order: the down blocks', then the mid block's, then
//! the up blocks'. For SD 1.5 (16 layers):
//!
//! | layers | module                                  | latent resolution (512² image) |
//! |--------|-----------------------------------------|--------------------------------|
//! | 0–1    | `down_blocks.0.attentions.{0,1}`         | 64×64                          |
//! | 2–3    | `down_blocks.1.attentions.{0,1}`         | 32×32                          |
//! | 4–5    | `down_blocks.2.attentions.{0,1}`         | 16×16                          |
//! | 6      | `mid_block.attentions.0`                 | 8×8                            |
//! | 7–9    | `up_blocks.1.attentions.{0,1,2}`         | 16×16                          |
//! | 10–12  | `up_blocks.2.attentions.{0,1,2}`         | 32×32                          |
//! | 13–15  | `up_blocks.3.attentions.{0,1,2}`         | 64×64                          |
//!
//! A ControlNet has copies of the down and mid layers only; it routes them exactly like the
//! UNet's layers of the same index (see [`CrossAttentionLayout`]).

use candle_core::{Result, Tensor};

/// How contexts are grouped over the cross-attention layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerGroups {
    /// One context for every layer (plain Stable Diffusion).
    Single,
    /// Three contexts: one for the down-block layers, one for the mid block, one for the up
    /// blocks (in that order).
    DownMidUp,
    /// One context per cross-attention layer, in forward order (16 for SD 1.5).
    PerLayer,
}

impl LayerGroups {
    /// Number of contexts this grouping needs for a model with `layout`.
    pub fn num_groups(self, layout: &CrossAttentionLayout) -> usize {
        match self {
            LayerGroups::Single => 1,
            LayerGroups::DownMidUp => 3,
            LayerGroups::PerLayer => layout.total(),
        }
    }

    /// The group (index into the contexts) of cross-attention layer `layer`, or `None` when the
    /// layout has no such layer.
    pub fn group_of(self, layout: &CrossAttentionLayout, layer: usize) -> Option<usize> {
        if layer >= layout.total() {
            return None;
        }
        Some(match self {
            LayerGroups::Single => 0,
            LayerGroups::DownMidUp if layer < layout.down => 0,
            LayerGroups::DownMidUp if layer < layout.down + layout.mid => 1,
            LayerGroups::DownMidUp => 2,
            LayerGroups::PerLayer => layer,
        })
    }
}

/// Numbers of cross-attention layers in the down blocks, the mid block and the up blocks of a
/// UNet (16 = 6 + 1 + 9 for SD 1.5). A ControlNet reports the layout of the UNet it controls:
/// its own down and mid layers, plus the up layers it does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossAttentionLayout {
    /// Layers in the down blocks (numbered first).
    pub down: usize,
    /// Layers in the mid block.
    pub mid: usize,
    /// Layers in the up blocks (numbered last).
    pub up: usize,
}

impl CrossAttentionLayout {
    /// Total number of cross-attention layers.
    pub fn total(&self) -> usize {
        self.down + self.mid + self.up
    }
}

/// The contexts for a denoiser call: tensors `[B, tokens, D]` and how they map to the
/// cross-attention layers.
#[derive(Debug, Clone)]
pub struct UNetContexts {
    groups: LayerGroups,
    contexts: Vec<Tensor>,
}

impl UNetContexts {
    /// One context `[B, tokens, D]` for every layer (fails if `context` is not rank 3).
    pub fn single(context: Tensor) -> Result<Self> {
        Self::new(LayerGroups::Single, vec![context])
    }

    /// Contexts for `groups`, in group order. Checks that there is one context for `Single`,
    /// three for `DownMidUp` and at least one for `PerLayer` (whose count the model checks),
    /// and that all are `[B, tokens, D]` with the same `B`, `D`, dtype and device (token counts
    /// may differ).
    pub fn new(groups: LayerGroups, contexts: Vec<Tensor>) -> Result<Self> {
        let expected = match groups {
            LayerGroups::Single => Some(1),
            LayerGroups::DownMidUp => Some(3),
            LayerGroups::PerLayer => None,
        };
        if contexts.is_empty() || expected.is_some_and(|n| n != contexts.len()) {
            candle_core::bail!(
                "UNetContexts: {groups:?} needs {} contexts, got {}",
                expected.map_or("at least 1".to_string(), |n| n.to_string()),
                contexts.len()
            )
        }
        let (batch, _, dim) = contexts[0].dims3()?;
        for (i, c) in contexts.iter().enumerate() {
            let ok = matches!(c.dims(), [b, _, d] if *b == batch && *d == dim)
                && c.dtype() == contexts[0].dtype()
                && c.device().same_device(contexts[0].device());
            if !ok {
                candle_core::bail!(
                    "UNetContexts: context {i} is {:?} {:?}, context 0 is {:?} {:?}: all must be \
                     [{batch}, tokens, {dim}] with one dtype and device",
                    c.shape(),
                    c.dtype(),
                    contexts[0].shape(),
                    contexts[0].dtype()
                )
            }
        }
        Ok(Self { groups, contexts })
    }

    /// The grouping.
    pub fn groups(&self) -> LayerGroups {
        self.groups
    }

    /// The contexts, in group order.
    pub fn contexts(&self) -> &[Tensor] {
        &self.contexts
    }

    /// Batch size of the contexts.
    pub fn batch_size(&self) -> usize {
        // `new` checked that there is at least one context and that it has rank 3.
        self.contexts[0].dims()[0]
    }

    /// The context of cross-attention layer `layer` of a model with `layout`.
    pub fn context_for(&self, layout: &CrossAttentionLayout, layer: usize) -> Result<&Tensor> {
        self.check(layout)?;
        match self.groups.group_of(layout, layer) {
            Some(g) => Ok(&self.contexts[g]),
            None => candle_core::bail!(
                "UNetContexts: layer {layer} out of range for a model with {} cross-attention \
                 layers",
                layout.total()
            ),
        }
    }

    /// One context per layer of `layout`, in layer order.
    pub fn per_layer(&self, layout: &CrossAttentionLayout) -> Result<Vec<&Tensor>> {
        (0..layout.total())
            .map(|layer| self.context_for(layout, layer))
            .collect()
    }

    fn check(&self, layout: &CrossAttentionLayout) -> Result<()> {
        let needed = self.groups.num_groups(layout);
        if needed != self.contexts.len() {
            candle_core::bail!(
                "UNetContexts: {:?} for a model with {} cross-attention layers needs {needed} \
                 contexts, got {}",
                self.groups,
                layout.total(),
                self.contexts.len()
            )
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    const SD15: CrossAttentionLayout = CrossAttentionLayout {
        down: 6,
        mid: 1,
        up: 9,
    };

    fn ctx(batch: usize, dim: usize) -> Tensor {
        Tensor::zeros((batch, 77, dim), DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn groups_map_layers() {
        let groups: Vec<_> = (0..16)
            .map(|l| LayerGroups::DownMidUp.group_of(&SD15, l).unwrap())
            .collect();
        assert_eq!(groups, [0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(LayerGroups::PerLayer.group_of(&SD15, 15), Some(15));
        assert_eq!(LayerGroups::Single.group_of(&SD15, 16), None);
    }

    #[test]
    fn contexts_are_validated() {
        assert!(UNetContexts::new(LayerGroups::DownMidUp, vec![ctx(2, 8); 2]).is_err());
        assert!(UNetContexts::new(LayerGroups::Single, vec![]).is_err());
        assert!(UNetContexts::new(LayerGroups::PerLayer, vec![ctx(2, 8), ctx(1, 8)]).is_err());
        assert!(UNetContexts::new(LayerGroups::PerLayer, vec![ctx(2, 8), ctx(2, 4)]).is_err());
        let per_layer = UNetContexts::new(LayerGroups::PerLayer, vec![ctx(2, 8); 15]).unwrap();
        assert!(per_layer.per_layer(&SD15).is_err());
        let per_layer = UNetContexts::new(LayerGroups::PerLayer, vec![ctx(2, 8); 16]).unwrap();
        assert_eq!(per_layer.per_layer(&SD15).unwrap().len(), 16);
        let single = UNetContexts::single(ctx(2, 8)).unwrap();
        assert!(UNetContexts::single(Tensor::new(1f32, &Device::Cpu).unwrap()).is_err());
        assert!(single.context_for(&SD15, 16).is_err());
        assert_eq!(single.batch_size(), 2);
    }
}
