//! `easel stylize --bank FILE.bank`: condition the diffusion method on a learned prompt bank
//! instead of a plain text prompt.
//!
//! The bank is checked against the loaded Stable Diffusion ([`BaseModelInfo`]: the `--sd`
//! source, the text encoder's width and [`base_model_hash`] of the text encoder's token table
//! and the UNet's hashed tensors, read from the UNet's safetensors file), then its vectors are
//! put into the prompt template (the bank's own, or `--prompt` with `{bank}` where the style
//! goes) and encoded per stage × layer group by a [`BankConditioner`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use easel_bank::file::{base_model_hash, load_bank, BaseModelInfo};
use easel_bank::inject::{BankConditioner, ConditionerOptions};
use easel_pipeline::conditioning::{Conditioning, GuidedContexts};
use easel_pipeline::models::StableDiffusion;
use sha2::{Digest, Sha256};

/// What `--prompt` writes where the bank's placeholder goes.
pub const BANK_MARK: &str = "{bank}";

/// The hash recorded when the base model cannot be hashed (a single-file checkpoint, whose
/// UNet keys are not diffusers', or a sharded UNet).
pub const UNKNOWN_HASH: &str = "unknown";

/// A loaded bank ready to condition the denoiser.
pub struct BankRun {
    /// The conditioning of every step.
    pub conditioning: BankConditioning,
    /// The prompt as recorded in the parameters: the template with `{bank}` where the bank's
    /// vectors go.
    pub prompt: String,
    /// The bank file's name.
    pub file_name: String,
    /// sha256 (hex) of the bank file's bytes.
    pub sha256: String,
}

/// [`Conditioning`] from a [`BankConditioner`]: the contexts of the bank's stage of each
/// timestep (by the bank's own stage map), built once per stage.
pub struct BankConditioning {
    conditioner: BankConditioner,
}

impl BankConditioning {
    /// The conditioning of `bank` with its own prompt template and no negative prompt (the
    /// validation images of `easel learn`).
    pub fn from_bank(bank: easel_bank::bank::Bank, sd: &StableDiffusion) -> Result<Self> {
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

/// The template of `--prompt` for a bank: `{bank}` becomes the `{}` of a bank template.
pub fn prompt_template(prompt: &str) -> Result<String> {
    match prompt.matches(BANK_MARK).count() {
        1 => {}
        0 => bail!(
            "--prompt {prompt:?} has no {BANK_MARK}: with --bank, write {BANK_MARK} where the \
             bank's style goes (e.g. \"a city at dusk in the style of {BANK_MARK}\"), or leave \
             out --prompt to use the bank's own template"
        ),
        n => bail!("--prompt {prompt:?} has {BANK_MARK} {n} times; use it once"),
    }
    if prompt.contains("{}") {
        bail!("--prompt {prompt:?} contains {{}}; with --bank, only {BANK_MARK} may be in braces");
    }
    Ok(prompt.replacen(BANK_MARK, "{}", 1))
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
) -> Result<BaseModelInfo> {
    let config = sd.text_encoder.config();
    let hash = match unet_file {
        None => UNKNOWN_HASH.to_string(),
        Some(file) => {
            // SAFETY: the model file is only read while mapped; easel never writes it.
            let st = unsafe { MmapedSafetensors::new(file) }
                .with_context(|| format!("reading {} to hash the base model", file.display()))?;
            let mut unet = Vec::new();
            for (name, _) in st.tensors() {
                if hashed_key(&name) {
                    let t = st.load(&name, &Device::Cpu)?;
                    unet.push((name, t));
                }
            }
            let ids = Tensor::arange(0u32, config.vocab_size as u32, &sd.device)?.unsqueeze(0)?;
            let table = sd.text_encoder.token_embeddings(&ids)?.squeeze(0)?;
            base_model_hash(&table, unet.iter().map(|(k, v)| (k.as_str(), v)))
                .with_context(|| format!("hashing the base model ({})", file.display()))?
        }
    };
    Ok(BaseModelInfo {
        id: id.to_string(),
        hash,
        embedding_dim: config.hidden_size,
    })
}

/// sha256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the bank at `path` for `sd` (described by `model`) and prepares its conditioning.
/// `prompt` is `--prompt` (with `{bank}`), `force` is `--force-bank` (a differing base-model
/// hash then prints a warning instead of failing).
pub fn prepare(
    path: &Path,
    prompt: Option<&str>,
    negative_prompt: &str,
    force: bool,
    sd: &StableDiffusion,
    model: &BaseModelInfo,
) -> Result<BankRun> {
    let template = prompt.map(prompt_template).transpose()?;
    let bytes =
        std::fs::read(path).with_context(|| format!("--bank: cannot read {}", path.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let loaded = load_bank(&bytes, &file_name, model, force, &sd.device).map_err(|e| {
        // The library names its own flag; the CLI's is --force-bank.
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("use --force to", "use --force-bank to")
        )
    })?;
    if let Some(warning) = &loaded.warning {
        eprintln!("warning: {warning}");
    }
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
    let conditioner = BankConditioner::for_model(sd, bank, &options)
        .map_err(|e| anyhow::anyhow!("bank {file_name}: {e}"))?;
    Ok(BankRun {
        conditioning: BankConditioning { conditioner },
        prompt: recorded,
        file_name,
        sha256: sha256_hex(&bytes),
    })
}

/// The diffusers UNet weights file of a pipeline folder, if it is a single file.
pub fn unet_file(dir: &Path, variant: Option<&str>) -> Option<PathBuf> {
    let names = easel_diffusion::weights::component_files(
        easel_diffusion::weights::Component::Unet,
        variant,
    )
    .ok()?;
    let file = dir
        .join(easel_diffusion::weights::Component::Unet.folder())
        .join(&names[0]);
    file.is_file().then_some(file)
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
        assert!(prompt_template("a city")
            .unwrap_err()
            .to_string()
            .contains("has no {bank}"));
        assert!(prompt_template("{bank} {bank}")
            .unwrap_err()
            .to_string()
            .contains("2 times"));
        assert!(prompt_template("{} {bank}").is_err());
    }

    #[test]
    fn sha256_is_hex_of_the_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
