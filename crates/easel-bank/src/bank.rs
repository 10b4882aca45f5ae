//! A prompt bank: layout, parameters, prompt template and the word it started from.

use candle_core::{bail, Device, Result, Tensor, Var};
use easel_diffusion::contexts::CrossAttentionLayout;

use crate::layout::{Layout, Slot};
use crate::params::{slot_rows, BankParams, InitEmbedding};
use crate::preset::{Preset, PromptSpec};

/// A style as prompt vectors per denoising stage × layer group (see [`crate::layout`]).
#[derive(Debug, Clone)]
pub struct Bank {
    layout: Layout,
    params: BankParams,
    prompt: PromptSpec,
    init_word: String,
}

impl Bank {
    /// A bank from its parts; checks that `params` has the layout's `S·G·T` vectors and that
    /// the prompt spec is valid.
    pub fn new(
        layout: Layout,
        params: BankParams,
        prompt: PromptSpec,
        init_word: String,
    ) -> Result<Self> {
        prompt.validate()?;
        let (s, g, t, _) = params.dims();
        if (s, g, t)
            != (
                layout.stages(),
                layout.num_groups(),
                layout.tokens_per_slot(),
            )
        {
            bail!(
                "bank parameters hold {s} stages x {g} groups x {t} tokens but the layout is \
                 {} x {} x {}",
                layout.stages(),
                layout.num_groups(),
                layout.tokens_per_slot()
            )
        }
        Ok(Self {
            layout,
            params,
            prompt,
            init_word,
        })
    }

    /// A fresh bank from `preset` for a model with the cross-attention `model` layout,
    /// starting from `init` (the token embeddings of `init_word`, see
    /// [`crate::inject::init_embedding`]); random parts are drawn from `seed`; parameters live
    /// on `device` (the text encoder's).
    pub fn from_preset(
        preset: &Preset,
        model: &CrossAttentionLayout,
        init_word: &str,
        init: &InitEmbedding,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let layout = preset.layout.resolve(model)?;
        let params = BankParams::init(&preset.params, &layout, init, seed, device)?;
        Self::new(layout, params, preset.prompt.clone(), init_word.to_string())
    }

    /// The arrangement of the vectors.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The parameters.
    pub fn params(&self) -> &BankParams {
        &self.params
    }

    /// The prompt template and placeholder.
    pub fn prompt(&self) -> &PromptSpec {
        &self.prompt
    }

    /// The word the bank was initialised from.
    pub fn init_word(&self) -> &str {
        &self.init_word
    }

    /// Embedding width `D`.
    pub fn dim(&self) -> usize {
        self.params.dim()
    }

    /// All vectors `[S, G, T, D]` (f32), differentiable in [`Self::vars`].
    pub fn vectors(&self) -> Result<Tensor> {
        self.params.vectors()
    }

    /// The `[T, D]` vectors of `slot`.
    pub fn slot_vectors(&self, slot: Slot) -> Result<Tensor> {
        let stored = self.layout.storage_slot(slot)?;
        slot_rows(&self.vectors()?, stored.stage, stored.group)
    }

    /// The trainable variables, sorted by name (for an optimizer).
    pub fn vars(&self) -> Vec<Var> {
        self.params.vars().into_iter().map(|(_, v)| v).collect()
    }
}
