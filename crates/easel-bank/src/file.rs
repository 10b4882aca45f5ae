//! The bank file: one `.safetensors` file holding a bank's parameters and what it was learned
//! on.
//!
//! Tensors (f32): the parameterisation's tensors under their names ([`BankParams::tensors`]:
//! `bank.vectors`, `generator.*`, `implicit.*`). `__metadata__` (all strings):
//!
//! | key | value |
//! |-----|-------|
//! | `format` | `easel-bank` |
//! | `format_version` | `1` |
//! | `layout` | the [`Layout`] as JSON |
//! | `parameterisation` | the [`ParamsSpec`] as JSON, e.g. `{"kind":"direct"}` |
//! | `base_model` | id of the model the bank was learned on (`runwayml/stable-diffusion-v1-5`) |
//! | `base_model_hash` | [`base_model_hash`] of that model |
//! | `embedding_dim` | the text encoder's width `D` (decimal) |
//! | `init_word` | the word the bank started from |
//! | `placeholder` | the placeholder token |
//! | `template` | the prompt template (`{}` where the placeholder goes) |
//! | `training` | the training settings as JSON; its `inference` member (when present) holds the bank's inference defaults ([`BankMetadata::inference_defaults`]) |
//! | `collection_hash` | hash of the artworks it was learned from (opaque here) |
//! | `created` | creation time, RFC 3339 UTC (`2024-05-01T12:00:00Z`) |
//!
//! Readers ignore metadata keys they do not know.

use std::collections::{BTreeMap, HashMap};

use candle_core::{bail, DType, Device, Result, Tensor};
use easel_core::safetensors_writer::{safetensors_bytes, TensorBytes};
use easel_core::training::f32_bytes;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bank::Bank;
use crate::layout::Layout;
use crate::params::{BankParams, ParamsSpec};
use crate::preset::PromptSpec;

/// The `format` value of bank files.
pub const FORMAT: &str = "easel-bank";
/// The `format_version` this library writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// What a bank file records besides the bank itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BankMetadata {
    /// Id of the base model (e.g. `runwayml/stable-diffusion-v1-5`).
    pub base_model: String,
    /// [`base_model_hash`] of the base model.
    pub base_model_hash: String,
    /// Training settings (any JSON; written by the trainer).
    pub training: Value,
    /// Hash of the artwork collection (written by the trainer).
    pub collection_hash: String,
    /// Creation time, RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS[.frac]Z`), given by the caller.
    pub created: String,
}

impl BankMetadata {
    /// How the bank paints by default: its preset's inference defaults, recorded by the
    /// trainer as `training.inference` (none for banks made otherwise).
    pub fn inference_defaults(&self) -> Result<crate::preset::InferenceDefaults> {
        let Some(value) = self.training.get("inference") else {
            return Ok(Default::default());
        };
        let defaults: crate::preset::InferenceDefaults = serde_json::from_value(value.clone())
            .map_err(|e| candle_core::Error::Msg(format!("bank file: training.inference: {e}")))?;
        defaults.validate()?;
        Ok(defaults)
    }
}

/// The model a bank is about to be used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModelInfo {
    /// Model id, for messages.
    pub id: String,
    /// [`base_model_hash`] of the model.
    pub hash: String,
    /// Width of its text encoder.
    pub embedding_dim: usize,
}

/// Why a bank file cannot be used with a model ([`load_bank`]).
#[derive(Debug, thiserror::Error)]
pub enum BankFitError {
    /// The file is not a readable bank.
    #[error("bank {name}: {source}")]
    Unreadable {
        /// The file's name.
        name: String,
        /// What is wrong with it.
        source: candle_core::Error,
    },
    /// The bank's vectors have another width than the model's text encoder: never usable.
    #[error("{learned_on} but {loaded}: its embeddings cannot be used with this model")]
    EmbeddingWidth {
        /// What the bank was learned on (model, hash, width).
        learned_on: String,
        /// The model it is loaded with.
        loaded: String,
    },
    /// Same width, another base-model hash: usable only when forced.
    #[error("{learned_on} but {loaded}; the embeddings may not transfer")]
    BaseModel {
        /// What the bank was learned on (model, hash, width).
        learned_on: String,
        /// The model it is loaded with.
        loaded: String,
    },
}

/// A bank read from a file, checked against a base model.
#[derive(Debug, Clone)]
pub struct LoadedBank {
    /// The bank.
    pub bank: Bank,
    /// Its metadata.
    pub metadata: BankMetadata,
    /// Set when the base-model hash differed and `force` loaded the bank anyway, or when the
    /// bank records no base model: the message to show the user.
    pub warning: Option<String>,
}

/// Serialises `bank` and `metadata` to bank-file bytes (the caller writes them, atomically).
pub fn save_bank(bank: &Bank, metadata: &BankMetadata) -> Result<Vec<u8>> {
    check_created(&metadata.created)?;
    let meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("layout".to_string(), to_json(bank.layout())?),
        (
            "parameterisation".to_string(),
            to_json(&bank.params().spec())?,
        ),
        ("base_model".to_string(), metadata.base_model.clone()),
        (
            "base_model_hash".to_string(),
            metadata.base_model_hash.clone(),
        ),
        ("embedding_dim".to_string(), bank.dim().to_string()),
        ("init_word".to_string(), bank.init_word().to_string()),
        ("placeholder".to_string(), bank.prompt().placeholder.clone()),
        ("template".to_string(), bank.prompt().template.clone()),
        ("training".to_string(), metadata.training.to_string()),
        (
            "collection_hash".to_string(),
            metadata.collection_hash.clone(),
        ),
        ("created".to_string(), metadata.created.clone()),
    ]);
    serialize(&bank.params().tensors(), meta)
}

/// Reads bank-file bytes without checking the base model; parameters go to `device`.
pub fn read_bank(bytes: &[u8], device: &Device) -> Result<(Bank, BankMetadata)> {
    let (meta, tensors) = read_safetensors(bytes, "bank file")?;
    if meta.is_empty() {
        bail!(
            "not an easel bank file: it has no metadata (a textual-inversion embedding? import \
             it instead)"
        )
    }
    let m = Meta(&meta);
    let format = m.get("format")?;
    if format != FORMAT {
        bail!("not an easel bank file: metadata format is {format:?}, expected {FORMAT:?}")
    }
    let version = m.get("format_version")?;
    if version != FORMAT_VERSION {
        bail!(
            "bank file format version {version:?} is not supported (this easel reads version \
             {FORMAT_VERSION})"
        )
    }
    let layout: Layout = m.json("layout")?;
    let spec: ParamsSpec = m.json("parameterisation")?;
    let dim: usize = match m.get("embedding_dim")?.parse() {
        Ok(d) if d > 0 => d,
        _ => bail!(
            "bank file: metadata \"embedding_dim\" is {:?}, not a positive integer",
            m.get("embedding_dim")?
        ),
    };
    let prompt = PromptSpec {
        template: m.get("template")?.to_string(),
        placeholder: m.get("placeholder")?.to_string(),
    };
    let training: Value = m.json("training")?;
    let metadata = BankMetadata {
        base_model: m.get("base_model")?.to_string(),
        base_model_hash: m.get("base_model_hash")?.to_string(),
        training,
        collection_hash: m.get("collection_hash")?.to_string(),
        created: m.get("created")?.to_string(),
    };
    check_created(&metadata.created)?;
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let params = BankParams::from_tensors(&spec, &layout, dim, tensors)?;
    let bank = Bank::new(layout, params, prompt, m.get("init_word")?.to_string())?;
    Ok((bank, metadata))
}

/// Reads bank-file bytes, or a textual-inversion embedding's (diffusers, A1111, kohya: the
/// one-slot bank [`crate::interop::import_embedding`] makes of it), and checks them against
/// the model they are about to be used with. `name` (the file name) appears in messages. A
/// different embedding width always fails; a different base-model hash fails unless `force`,
/// which loads the bank with a warning. A bank that records no base model (hash
/// [`crate::conditioning::UNKNOWN_HASH`]: every imported embedding) loads on any model of its
/// width, with a warning, since nothing can be compared.
pub fn load_bank(
    bytes: &[u8],
    name: &str,
    expected: &BaseModelInfo,
    force: bool,
    device: &Device,
) -> std::result::Result<LoadedBank, BankFitError> {
    let (bank, metadata) = match read_bank(bytes, device) {
        Ok(read) => read,
        Err(source) => match crate::interop::import_embedding(bytes, None, device) {
            Ok(imported) => {
                let metadata = crate::interop::imported_metadata(name, &imported);
                (imported.bank, metadata)
            }
            // A torch.save file is read only as an official checkpoint: say why it is not one.
            Err(import) => {
                return Err(BankFitError::Unreadable {
                    name: name.to_string(),
                    source: if easel_core::torch_checkpoint::is_torch_save(bytes) {
                        import
                    } else {
                        source
                    },
                })
            }
        },
    };
    let learned_on = format!(
        "bank {name} was learned on {} (text encoder+UNet hash {}, {}-d embeddings)",
        metadata.base_model,
        short(&metadata.base_model_hash),
        bank.dim()
    );
    let loaded = format!(
        "the loaded model is {} (hash {}, {}-d)",
        expected.id,
        short(&expected.hash),
        expected.embedding_dim
    );
    if bank.dim() != expected.embedding_dim {
        return Err(BankFitError::EmbeddingWidth { learned_on, loaded });
    }
    let mut warning = None;
    if metadata.base_model_hash == crate::conditioning::UNKNOWN_HASH {
        warning = Some(format!(
            "{name} records no base model to check (an imported embedding or a bank learned on \
             a single-file checkpoint); {loaded}"
        ));
    } else if metadata.base_model_hash != expected.hash {
        if !force {
            return Err(BankFitError::BaseModel { learned_on, loaded });
        }
        warning = Some(format!(
            "{learned_on} but {loaded}; loading it anyway (forced)"
        ));
    }
    Ok(LoadedBank {
        bank,
        metadata,
        warning,
    })
}

/// The first 12 hex digits of a hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// sha256 (hex) identifying a base model by the weights a bank depends on: the text encoder's
/// token embedding table and, of the UNet (diffusers keys), `conv_in.weight`,
/// `conv_out.weight` and every cross-attention key/value projection (`*.attn2.to_k.weight`,
/// `*.attn2.to_v.weight`), the layers that read the bank's contexts. Other UNet tensors are
/// ignored (pass all of them or just these).
///
/// Hashed, for each tensor in order of name (`text_encoder.token_embedding`, `unet.<key>`):
/// the name's UTF-8 bytes, a 0 byte, the rank and dims as u64 little-endian, the values
/// rounded to f16 then written as f32 little-endian. Rounding to f16 makes f32 and f16 copies of a checkpoint
/// hash alike (a bf16 copy hashes differently). Fails if `conv_in.weight` is missing (the
/// UNet keys are not diffusers').
pub fn base_model_hash<'a>(
    token_embedding: &Tensor,
    unet: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<String> {
    let mut entries: Vec<(String, &Tensor)> =
        vec![("text_encoder.token_embedding".to_string(), token_embedding)];
    for (key, t) in unet {
        let hashed = key == "conv_in.weight"
            || key == "conv_out.weight"
            || key.ends_with("attn2.to_k.weight")
            || key.ends_with("attn2.to_v.weight");
        if hashed {
            entries.push((format!("unet.{key}"), t));
        }
    }
    if !entries.iter().any(|(n, _)| n == "unet.conv_in.weight") {
        bail!("base model hash: the UNet tensors have no conv_in.weight (diffusers keys expected)")
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (name, t) in entries {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update((t.rank() as u64).to_le_bytes());
        for &d in t.dims() {
            hasher.update((d as u64).to_le_bytes());
        }
        let rounded = t.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        hasher.update(f32_bytes(&rounded)?);
    }
    Ok(easel_core::hash::hex(&hasher.finalize()))
}

/// safetensors bytes of `tensors` (stored as f32) with `meta`, by easel's one reproducible
/// writer.
pub(crate) fn serialize(
    tensors: &[(String, Tensor)],
    meta: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            Ok(TensorBytes {
                name,
                dtype: safetensors::Dtype::F32,
                shape: t.dims(),
                data: f32_bytes(t)?.into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors_bytes(&views, &meta).map_err(|e| candle_core::Error::Msg(format!("bank file: {e}")))
}

/// The metadata and tensors (on the CPU) of safetensors bytes; `what` names the file kind in
/// errors. PyTorch pickles (`.bin`, `.pt`, `.ckpt`) are refused with a message.
pub(crate) fn read_safetensors(
    bytes: &[u8],
    what: &str,
) -> Result<(HashMap<String, String>, HashMap<String, Tensor>)> {
    refuse_pickle(bytes, what)?;
    let (_, header) = match SafeTensors::read_metadata(bytes) {
        Ok(h) => h,
        Err(e) => bail!("{what} is not a valid safetensors file: {e}"),
    };
    let meta = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    Ok((meta, tensors))
}

/// Fails with a clear message when `bytes` are a PyTorch pickle (a zip archive written by
/// `torch.save`, or a legacy pickle stream) rather than safetensors.
pub(crate) fn refuse_pickle(bytes: &[u8], what: &str) -> Result<()> {
    let zip = bytes.starts_with(b"PK\x03\x04");
    // A safetensors header of 0x0280 to 0x05ff bytes starts with the same two bytes as a
    // pickle's PROTO opcode, but its JSON begins at byte 8.
    let safetensors = bytes.get(8) == Some(&b'{');
    let pickle =
        !safetensors && bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]);
    if zip || pickle {
        bail!(
            "{what} is a PyTorch pickle (.bin/.pt/.ckpt); easel does not load pickles, which can \
             run code: convert it to safetensors first (e.g. with safetensors.torch.save_file)"
        )
    }
    Ok(())
}

/// Checks an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
fn check_created(created: &str) -> Result<()> {
    let b = created.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && matches!(b[b.len() - 1], b'Z' | b'z')
        && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && digits(20..b.len() - 1)));
    if !ok {
        bail!("creation time {created:?} is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ)")
    }
    Ok(())
}

/// Metadata lookups with messages naming the key.
struct Meta<'a>(&'a HashMap<String, String>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&str> {
        match self.0.get(key) {
            Some(v) => Ok(v),
            None => bail!("bank file: metadata key {key:?} is missing"),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        let text = self.get(key)?;
        match serde_json::from_str(text) {
            Ok(v) => Ok(v),
            Err(e) => bail!("bank file: metadata {key:?} is not valid: {e} (value {text:?})"),
        }
    }
}

/// JSON text of a metadata value.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(candle_core::Error::wrap)
}
