//! A bank file as the pipeline's conditioning: checked against the loaded Stable Diffusion
//! ([`BaseModelInfo`]: its id, the text encoder's width and [`base_model_hash`] of the text
//! encoder's token table and the UNet's hashed tensors), its vectors put into the prompt
//! template (the bank's own, or the caller's with [`BANK_MARK`] where the style goes) and
//! encoded per stage × layer group by a [`BankConditioner`].
//!
//! `stylize --bank`, `learn`'s validation images and the style host all condition through
//! [`prepare`] / [`BankConditioning`].

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use easel_pipeline::conditioning::{Conditioning, GuidedContexts};
use easel_pipeline::models::StableDiffusion;

use crate::bank::Bank;
use crate::file::{base_model_hash, load_bank, BankFitError, BaseModelInfo};
use crate::inject::{BankConditioner, ConditionerOptions};

/// What a caller's prompt writes where the bank's placeholder goes.
pub const BANK_MARK: &str = "{bank}";

/// The hash recorded when the base model cannot be hashed (a single-file checkpoint, whose
/// UNet keys are not diffusers', or a sharded UNet).
pub const UNKNOWN_HASH: &str = "unknown";

/// Why a bank cannot condition a model.
#[derive(Debug, thiserror::Error)]
pub enum ConditioningError {
    /// The prompt has no [`BANK_MARK`], has it more than once, or has a bare `{}`.
    #[error("prompt {prompt:?} {problem}")]
    Template {
        /// The prompt as given.
        prompt: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The bank file cannot be read.
    #[error("cannot read bank {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bank does not fit the model (or is not a bank).
    #[error(transparent)]
    Fit(#[from] BankFitError),
    /// Hashing the base model or encoding the prompt failed.
    #[error("bank {name}: {source}")]
    Model {
        /// The bank file's name, or the model's file.
        name: String,
        /// The underlying failure.
        source: candle_core::Error,
    },
}

/// A loaded bank ready to condition the denoiser.
pub struct BankRun {
    /// The conditioning of every step.
    pub conditioning: BankConditioning,
    /// The prompt as recorded in the parameters: the template with [`BANK_MARK`] where the
    /// bank's vectors go.
    pub prompt: String,
    /// The bank's name, as the parameters record it: a plugin's title (`modelspec.title`),
    /// else the file's name without its extension.
    pub name: String,
    /// sha256 (hex) of the file's tensor data (every byte after the safetensors header): the
    /// same for a bank file and the plugin made of it, whatever their metadata.
    pub sha256: String,
    /// Set when the base-model hash differed and the bank was forced: the message to show.
    pub warning: Option<String>,
}

/// [`Conditioning`] from a [`BankConditioner`]: the contexts of the bank's stage of each
/// timestep (by the bank's own stage map), built once per stage.
pub struct BankConditioning {
    conditioner: BankConditioner,
}

impl BankConditioning {
    /// The conditioning of `bank` with its own prompt template and no negative prompt (the
    /// validation images of `easel learn`).
    pub fn from_bank(bank: Bank, sd: &StableDiffusion) -> candle_core::Result<Self> {
        let options = ConditionerOptions {
            num_train_timesteps: sd.scheduler_config.num_train_timesteps,
            ..ConditionerOptions::default()
        };
        let conditioner = BankConditioner::for_model(sd, bank, &options)?;
        Ok(Self { conditioner })
    }
}

impl Conditioning for BankConditioning {
    fn contexts(
        &mut self,
        timestep: usize,
        _num_train_timesteps: usize,
    ) -> candle_core::Result<GuidedContexts> {
        Ok(GuidedContexts {
            cond: self.conditioner.contexts_for_timestep(timestep)?,
            uncond: self.conditioner.uncond().clone(),
        })
    }
}

/// The bank template of a caller's prompt: [`BANK_MARK`] becomes the `{}` of a bank template.
pub fn prompt_template(prompt: &str) -> Result<String, ConditioningError> {
    let problem = match prompt.matches(BANK_MARK).count() {
        1 if prompt.contains("{}") => Some(format!(
            "contains {{}}; with a bank, only {BANK_MARK} may be in braces"
        )),
        1 => None,
        0 => Some(format!(
            "has no {BANK_MARK}: write {BANK_MARK} where the bank's style goes (e.g. \"a city at \
             dusk in the style of {BANK_MARK}\"), or give no prompt to use the bank's own template"
        )),
        n => Some(format!("has {BANK_MARK} {n} times; use it once")),
    };
    match problem {
        Some(problem) => Err(ConditioningError::Template {
            prompt: prompt.to_string(),
            problem,
        }),
        None => Ok(prompt.replacen(BANK_MARK, "{}", 1)),
    }
}

/// The UNet tensors [`base_model_hash`] reads (diffusers keys).
fn hashed_key(key: &str) -> bool {
    key == "conv_in.weight"
        || key == "conv_out.weight"
        || key.ends_with("attn2.to_k.weight")
        || key.ends_with("attn2.to_v.weight")
}

/// The base model `sd` as a bank sees it: `id`, the text encoder's width, and the hash of its
/// token table and of the UNet tensors in `unet_file` (a diffusers UNet safetensors file;
/// `None` when there is none to read, which gives the hash [`UNKNOWN_HASH`]).
pub fn base_model_info(
    sd: &StableDiffusion,
    id: &str,
    unet_file: Option<&Path>,
) -> Result<BaseModelInfo, ConditioningError> {
    let config = sd.text_encoder.config();
    let model_error = |source| ConditioningError::Model {
        name: unet_file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| id.to_string()),
        source,
    };
    let hash = match unet_file {
        None => UNKNOWN_HASH.to_string(),
        Some(file) => {
            // SAFETY: the mapping is only read, and only while this call runs. Another process
            // may still change the file meanwhile; then the hash is of mixed bytes and the bank
            // check reports a mismatch, which is the safe outcome.
            let st = unsafe { MmapedSafetensors::new(file) }.map_err(model_error)?;
            let mut unet = Vec::new();
            for (name, _) in st.tensors() {
                if hashed_key(&name) {
                    let t = st.load(&name, &Device::Cpu).map_err(model_error)?;
                    unet.push((name, t));
                }
            }
            let vocab = u32::try_from(config.vocab_size).map_err(|_| {
                model_error(candle_core::Error::Msg(format!(
                    "vocabulary of {} tokens is too large",
                    config.vocab_size
                )))
            })?;
            let table = Tensor::arange(0u32, vocab, &sd.device)
                .and_then(|ids| ids.unsqueeze(0))
                .and_then(|ids| sd.text_encoder.token_embeddings(&ids))
                .and_then(|t| t.squeeze(0))
                .map_err(model_error)?;
            base_model_hash(&table, unet.iter().map(|(k, v)| (k.as_str(), v)))
                .map_err(model_error)?
        }
    };
    Ok(BaseModelInfo {
        id: id.to_string(),
        hash,
        embedding_dim: config.hidden_size,
    })
}

/// Loads the bank at `path` for `sd` (described by `model`) and prepares its conditioning.
/// `prompt` is a template with [`BANK_MARK`] (else the bank's own is used); `force` loads a
/// bank learned on another base model of the same width, with a warning.
pub fn prepare(
    path: &Path,
    prompt: Option<&str>,
    negative_prompt: &str,
    force: bool,
    sd: &StableDiffusion,
    model: &BaseModelInfo,
) -> Result<BankRun, ConditioningError> {
    let template = prompt.map(prompt_template).transpose()?;
    let bytes = std::fs::read(path).map_err(|e| ConditioningError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let loaded = load_bank(&bytes, &file_name, model, force, &sd.device)?;
    let bank = loaded.bank;
    let recorded = template
        .clone()
        .unwrap_or_else(|| bank.prompt().template.clone())
        .replacen("{}", BANK_MARK, 1);
    let options = ConditionerOptions {
        negative_prompt: negative_prompt.to_string(),
        num_train_timesteps: sd.scheduler_config.num_train_timesteps,
        template,
    };
    let conditioner = BankConditioner::for_model(sd, bank, &options).map_err(|source| {
        ConditioningError::Model {
            name: file_name.clone(),
            source,
        }
    })?;
    let (title, data) = title_and_data(&bytes);
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(file_name);
    Ok(BankRun {
        conditioning: BankConditioning { conditioner },
        prompt: recorded,
        name: title.unwrap_or(stem),
        sha256: easel_core::hash::sha256_hex(data),
        warning: loaded.warning,
    })
}

/// A plugin's `modelspec.title`, if the safetensors `bytes` have one, and their tensor data
/// (the bytes after the header; all of them where the header cannot be read, which
/// [`load_bank`] has already refused).
fn title_and_data(bytes: &[u8]) -> (Option<String>, &[u8]) {
    match safetensors::SafeTensors::read_metadata(bytes) {
        Ok((header_len, metadata)) => (
            metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("modelspec.title").cloned()),
            bytes.get(header_len.saturating_add(8)..).unwrap_or(bytes),
        ),
        Err(_) => (None, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_templates_take_one_bank_mark() {
        assert_eq!(
            prompt_template("a city at dusk in the style of {bank}").unwrap(),
            "a city at dusk in the style of {}"
        );
        let cases = [
            ("a city", "has no {bank}"),
            ("{bank} {bank}", "2 times"),
            ("{} {bank}", "only {bank} may be in braces"),
        ];
        for (prompt, expected) in cases {
            let err = prompt_template(prompt).unwrap_err().to_string();
            assert!(err.contains(expected), "{prompt}: {err}");
        }
    }
}
