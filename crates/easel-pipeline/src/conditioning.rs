//! What the denoiser is conditioned on: a text prompt, or a learned prompt bank whose
//! contexts change with the denoising stage and the UNet layer group.
//!
//! The pipeline asks a [`Conditioning`] for the contexts of every step. Contexts have batch 1
//! (`[1, tokens, D]`); the pipeline repeats them over the images of a batch and stacks the
//! unconditional and conditional halves for classifier-free guidance.
//!
//! - [`PromptConditioning`]: one prompt and one negative prompt, encoded once, the same
//!   context for every layer and step (plain Stable Diffusion).
//! - [`StagedConditioning`]: contexts per denoising stage, built on first use by a closure and
//!   cached; stage of timestep `t` = `floor(t · S / T)` for `S` stages and `T` training
//!   timesteps ([`stage_of`]). A prompt bank builds its per-layer-group contexts in that closure.

use candle_core::{bail, Result, Tensor};
use easel_diffusion::contexts::UNetContexts;

use crate::models::StableDiffusion;

/// The conditional and unconditional contexts of one denoising step.
#[derive(Debug, Clone)]
pub struct GuidedContexts {
    /// The contexts of the prompt (or bank) the image should follow.
    pub cond: UNetContexts,
    /// The contexts classifier-free guidance steers away from (the negative prompt); unused
    /// when the guidance scale is at most 1.
    pub uncond: UNetContexts,
}

/// Provides the denoiser's contexts at each timestep.
pub trait Conditioning {
    /// The contexts for the denoising step at `timestep` (of `num_train_timesteps`), each of
    /// batch 1 and in the models' dtype.
    fn contexts(&mut self, timestep: usize, num_train_timesteps: usize) -> Result<GuidedContexts>;
}

/// A prompt and a negative prompt, encoded once by the model's tokenizer and text encoder.
#[derive(Debug, Clone)]
pub struct PromptConditioning {
    contexts: GuidedContexts,
}

impl PromptConditioning {
    /// Encodes `prompt` and `negative_prompt` (empty for none) as diffusers does: padded or
    /// truncated to the text encoder's positions (77), last hidden state.
    pub fn new(sd: &StableDiffusion, prompt: &str, negative_prompt: &str) -> Result<Self> {
        Ok(Self {
            contexts: GuidedContexts {
                cond: UNetContexts::single(encode_prompt(sd, prompt)?)?,
                uncond: UNetContexts::single(encode_prompt(sd, negative_prompt)?)?,
            },
        })
    }

    /// Conditioning on given contexts (each of batch 1).
    pub fn from_contexts(contexts: GuidedContexts) -> Self {
        Self { contexts }
    }
}

impl Conditioning for PromptConditioning {
    fn contexts(
        &mut self,
        _timestep: usize,
        _num_train_timesteps: usize,
    ) -> Result<GuidedContexts> {
        Ok(self.contexts.clone())
    }
}

/// The text encoder's last hidden state `[1, positions, D]` for `text`.
pub fn encode_prompt(sd: &StableDiffusion, text: &str) -> Result<Tensor> {
    let positions = sd.text_encoder.config().max_position_embeddings;
    let ids = sd.tokenizer.encode_padded(text, positions)?;
    let ids = Tensor::from_vec(ids, (1, positions), &sd.device)?;
    sd.text_encoder.forward(&ids)
}

/// The stage of `timestep` when `num_train_timesteps` are split into `stages` equal stages:
/// `floor(timestep · stages / num_train_timesteps)`, at most `stages − 1`. Stage 0 holds the
/// least noisy timesteps.
pub fn stage_of(timestep: usize, num_train_timesteps: usize, stages: usize) -> usize {
    if stages == 0 || num_train_timesteps == 0 {
        return 0;
    }
    (timestep.saturating_mul(stages) / num_train_timesteps).min(stages - 1)
}

/// A closure building the contexts of one stage.
type BuildStage<'a> = Box<dyn FnMut(usize) -> Result<GuidedContexts> + 'a>;

/// Contexts per denoising stage, built on first use and cached (see the module docs).
pub struct StagedConditioning<'a> {
    stages: Vec<Option<GuidedContexts>>,
    build: BuildStage<'a>,
}

impl<'a> StagedConditioning<'a> {
    /// `stages` stages whose contexts `build(stage)` makes. Fails for 0 stages.
    pub fn new(
        stages: usize,
        build: impl FnMut(usize) -> Result<GuidedContexts> + 'a,
    ) -> Result<Self> {
        if stages == 0 {
            bail!("staged conditioning needs at least one stage")
        }
        Ok(Self {
            stages: vec![None; stages],
            build: Box::new(build),
        })
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }
}

impl std::fmt::Debug for StagedConditioning<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedConditioning")
            .field("stages", &self.stages.len())
            .field("built", &self.stages.iter().filter(|s| s.is_some()).count())
            .finish_non_exhaustive()
    }
}

impl Conditioning for StagedConditioning<'_> {
    fn contexts(&mut self, timestep: usize, num_train_timesteps: usize) -> Result<GuidedContexts> {
        let stage = stage_of(timestep, num_train_timesteps, self.stages.len());
        if let Some(Some(contexts)) = self.stages.get(stage) {
            return Ok(contexts.clone());
        }
        let contexts = (self.build)(stage)?;
        self.stages[stage] = Some(contexts.clone());
        Ok(contexts)
    }
}
