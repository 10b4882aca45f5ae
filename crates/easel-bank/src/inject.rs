//! From a bank to the UNet's contexts: the slot's vectors replace the placeholder in the prompt
//! template, CLIP encodes the result, and each layer group of a stage gets its own context.
//!
//! For stage `k`, group `j`: the template (`"a painting in the style of {}"`) with `{}` replaced
//! by the placeholder repeated `T` times is tokenized (padded to the encoder's positions, 77),
//! the placeholder's `T` ids take the slot's `T` vectors, and the encoder's last hidden state
//! `[1, 77, D]` is context `j` of the stage's [`UNetContexts`] (one CLIP run per slot). The
//! unconditional context for classifier-free guidance is the plain encoding of the negative
//! prompt (empty by default), computed once.

use candle_core::{bail, Device, Result, Tensor};
use easel_diffusion::clip::{ClipTextModel, Placeholder};
use easel_diffusion::contexts::{CrossAttentionLayout, UNetContexts};
use easel_diffusion::tokenizer::ClipTokenizer;
use easel_pipeline::models::StableDiffusion;

use crate::bank::Bank;
use crate::layout::Slot;
use crate::params::{slot_rows, InitEmbedding};
use crate::preset::PromptSpec;

/// The token embeddings `[m, D]` of `word` (its tokens without start/end), to initialise a
/// bank from; fails for a word with no tokens.
pub fn init_embedding(
    clip: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    word: &str,
) -> Result<InitEmbedding> {
    let ids = tokenizer.encode(word)?;
    let body = &ids[1..ids.len() - 1];
    if body.is_empty() {
        bail!("init word {word:?} has no tokens")
    }
    let ids = Tensor::new(body, &model_device(clip)?)?.unsqueeze(0)?;
    InitEmbedding::new(clip.token_embeddings(&ids)?.squeeze(0)?)
}

/// The device of the text encoder's weights.
fn model_device(clip: &ClipTextModel) -> Result<Device> {
    // Ids are read on the host and looked up on the weights' device: the result tells it.
    let probe = Tensor::new(&[[0u32]], &Device::Cpu)?;
    Ok(clip.token_embeddings(&probe)?.device().clone())
}

/// Settings of a [`BankConditioner`].
#[derive(Debug, Clone)]
pub struct ConditionerOptions {
    /// The negative prompt of the unconditional context (empty: plain unconditional).
    pub negative_prompt: String,
    /// Training timesteps of the scheduler (1000 for SD), for the timestep → stage map.
    pub num_train_timesteps: usize,
    /// A prompt template replacing the bank's own (must contain `{}` once).
    pub template: Option<String>,
}

impl Default for ConditionerOptions {
    fn default() -> Self {
        Self {
            negative_prompt: String::new(),
            num_train_timesteps: 1000,
            template: None,
        }
    }
}

/// A bank with the text encoder that turns it into UNet contexts, per stage, with a cache for
/// inference and an uncached, differentiable path for training.
#[derive(Debug)]
pub struct BankConditioner {
    clip: ClipTextModel,
    bank: Bank,
    placeholder_id: u32,
    /// `[1, positions]` ids of the rendered template.
    ids: Tensor,
    uncond: UNetContexts,
    num_train_timesteps: usize,
    vectors: Option<Tensor>,
    cache: Vec<Option<UNetContexts>>,
}

impl BankConditioner {
    /// Prepares `bank` for a model whose UNet has the cross-attention `model` layout: adds the
    /// bank's placeholder to (a copy of) `tokenizer`, tokenizes the template and encodes the
    /// negative prompt. Fails if the bank's groups do not fit the model, if the template is
    /// too long to hold the `T` placeholders, or if the bank's width differs from the
    /// encoder's.
    pub fn new(
        clip: ClipTextModel,
        tokenizer: &ClipTokenizer,
        bank: Bank,
        model: &CrossAttentionLayout,
        options: &ConditionerOptions,
    ) -> Result<Self> {
        bank.layout().check_model(model)?;
        let width = clip.config().hidden_size;
        if bank.dim() != width {
            bail!(
                "the bank has {}-d vectors but the text encoder is {width}-d",
                bank.dim()
            )
        }
        if options.num_train_timesteps == 0 {
            bail!("num_train_timesteps must be at least 1")
        }
        let mut prompt = bank.prompt().clone();
        if let Some(t) = &options.template {
            prompt = PromptSpec {
                template: t.clone(),
                placeholder: prompt.placeholder,
            };
            prompt.validate()?;
        }
        let mut tokenizer = tokenizer.clone();
        let placeholder_id = tokenizer.add_token(&prompt.placeholder)?;
        let positions = clip.config().max_position_embeddings;
        let tokens = bank.layout().tokens_per_slot();
        let ids = tokenizer.encode_padded(&prompt.render(tokens), positions)?;
        let found = ids.iter().filter(|&&id| id == placeholder_id).count();
        if found != tokens {
            bail!(
                "the prompt {:?} keeps {found} of its {tokens} placeholder tokens within the \
                 text encoder's {positions} positions: shorten the template",
                prompt.template
            )
        }
        let device = model_device(&clip)?;
        let negative = tokenizer.encode_padded(&options.negative_prompt, positions)?;
        let negative = Tensor::new(negative.as_slice(), &device)?.unsqueeze(0)?;
        let uncond = UNetContexts::single(clip.forward(&negative)?)?;
        let ids = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
        Ok(Self {
            clip,
            placeholder_id,
            ids,
            uncond,
            num_train_timesteps: options.num_train_timesteps,
            vectors: None,
            cache: vec![None; bank.layout().stages()],
            bank,
        })
    }

    /// [`BankConditioner::new`] with `sd`'s text encoder, tokenizer and UNet layout.
    pub fn for_model(
        sd: &StableDiffusion,
        bank: Bank,
        options: &ConditionerOptions,
    ) -> Result<Self> {
        Self::new(
            sd.text_encoder.clone(),
            &sd.tokenizer,
            bank,
            &sd.unet.cross_attention_layout(),
            options,
        )
    }

    /// The bank.
    pub fn bank(&self) -> &Bank {
        &self.bank
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.clip
    }

    /// The placeholder's token id.
    pub fn placeholder_id(&self) -> u32 {
        self.placeholder_id
    }

    /// The unconditional (negative prompt) context, one for all layers and stages.
    pub fn uncond(&self) -> &UNetContexts {
        &self.uncond
    }

    /// The stage of training timestep `timestep`.
    pub fn stage_of(&self, timestep: usize) -> Result<usize> {
        self.bank
            .layout()
            .stage_of(timestep, self.num_train_timesteps)
    }

    /// The contexts (batch 1, the encoder's dtype) of `stage`, computed from the bank's
    /// current values on first use and cached; not differentiable. Call [`Self::clear_cache`]
    /// after changing the bank's variables.
    pub fn contexts_for_stage(&mut self, stage: usize) -> Result<UNetContexts> {
        if let Some(Some(c)) = self.cache.get(stage) {
            return Ok(c.clone());
        }
        self.check_stage(stage)?;
        let vectors = match &self.vectors {
            Some(v) => v.clone(),
            None => {
                let v = self.bank.vectors()?.detach();
                self.vectors = Some(v.clone());
                v
            }
        };
        let contexts = self.stage_contexts(&vectors, stage)?;
        self.cache[stage] = Some(contexts.clone());
        Ok(contexts)
    }

    /// [`Self::contexts_for_stage`] of the stage of `timestep`.
    pub fn contexts_for_timestep(&mut self, timestep: usize) -> Result<UNetContexts> {
        let stage = self.stage_of(timestep)?;
        self.contexts_for_stage(stage)
    }

    /// Forgets the cached vectors and contexts.
    pub fn clear_cache(&mut self) {
        self.vectors = None;
        self.cache.iter_mut().for_each(|c| *c = None);
    }

    /// The contexts of `stage`, recomputed from the bank's variables without cache, so that
    /// gradients flow from them back to [`Bank::vars`] (training).
    pub fn train_contexts_for_stage(&self, stage: usize) -> Result<UNetContexts> {
        self.check_stage(stage)?;
        self.stage_contexts(&self.bank.vectors()?, stage)
    }

    /// [`Self::train_contexts_for_stage`] of the stage of `timestep`.
    pub fn train_contexts_for_timestep(&self, timestep: usize) -> Result<UNetContexts> {
        self.train_contexts_for_stage(self.stage_of(timestep)?)
    }

    /// The context `[1, positions, D]` for one slot's vectors `[T, D]`.
    pub fn encode_slot(&self, vectors: &Tensor) -> Result<Tensor> {
        let vectors = vectors.to_device(self.ids.device())?;
        let placeholder = Placeholder {
            id: self.placeholder_id,
            vectors,
        };
        let embeds = self
            .clip
            .embed_with_placeholders(&self.ids, &[placeholder])?;
        Ok(self
            .clip
            .forward_embeds(&embeds, &self.ids)?
            .last_hidden_state)
    }

    fn check_stage(&self, stage: usize) -> Result<()> {
        if stage >= self.bank.layout().stages() {
            bail!(
                "stage {stage} is outside the bank's {} stages",
                self.bank.layout().stages()
            )
        }
        Ok(())
    }

    fn stage_contexts(&self, vectors: &Tensor, stage: usize) -> Result<UNetContexts> {
        let layout = self.bank.layout();
        let contexts = (0..layout.num_groups())
            .map(|group| {
                let stored = layout.storage_slot(Slot { stage, group })?;
                self.encode_slot(&slot_rows(vectors, stored.stage, stored.group)?)
            })
            .collect::<Result<Vec<_>>>()?;
        UNetContexts::new(layout.groups(), contexts)
    }
}
