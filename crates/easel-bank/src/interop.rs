//! Exchange with other tools' textual-inversion embeddings (safetensors only).
//!
//! **diffusers** (`load_textual_inversion`): `learned_embeds.safetensors` maps a token to its
//! vectors `[n, D]` (or `[D]`). A one-slot bank (`S = G = 1`) exports as one token
//! `<name>` `[T, D]`. A bank with more slots exports one token per slot, `<name-s{k}>`
//! (`G = 1`) or `<name-s{k}-g{j}>`, each `[T, D]`, plus a sidecar JSON describing which
//! denoising stage and layer group each token belongs to ([`DiffusersSidecar`]); diffusers
//! itself has no per-stage or per-layer prompts, so using them there takes custom code, and
//! [`import_embedding`] reads them back with the sidecar.
//!
//! **AUTOMATIC1111**: a safetensors file with one tensor `string_to_param.*` `[n, D]` (the
//! flattened form of A1111's `.pt` dictionary; A1111 reads a one-tensor safetensors file) and
//! `name`, `step`, `sd_checkpoint`, `sd_checkpoint_name` in its metadata. A1111 embeddings
//! have one slot, so a bank with more slots is refused unless one slot is chosen.
//!
//! Imports (diffusers, A1111 `string_to_param.*`, kohya's `emb_params`) give a one-slot
//! direct bank, or with a sidecar the multi-slot bank it describes.
//!
//! **The official LSAST and ArtBank checkpoints** (`embeddings_gs-*.pt`, pickled prompt
//! generators) import as the banks their generators compute ([`crate::official`]), and A1111's
//! own `.pt` embeddings (`string_to_param`) as the safetensors form does, both read as data
//! (the pickle may name tensors, dicts and the official module classes, nothing else). Other
//! PyTorch pickles are refused.

use std::collections::{BTreeMap, HashMap};

use candle_core::{bail, DType, Device, Result, Tensor};
use easel_diffusion::contexts::LayerGroups;
use serde::{Deserialize, Serialize};

use crate::bank::Bank;
use crate::file::{read_safetensors, serialize};
use crate::layout::{Layout, Slot, SlotMap, StageMap};
use crate::params::{slot_rows, BankParams, ParamsSpec};
use crate::preset::{InferenceDefaults, PromptSpec, DEFAULT_PLACEHOLDER};

/// The `format` of the diffusers sidecar.
pub const SIDECAR_FORMAT: &str = "easel-bank-diffusers";

/// The template of imported banks (the embedding files carry none).
pub const IMPORT_TEMPLATE: &str = "a painting in the style of {}";

/// A diffusers export: the `learned_embeds.safetensors` bytes and, for a bank with more than
/// one slot, the sidecar JSON to write beside it.
#[derive(Debug, Clone)]
pub struct DiffusersExport {
    /// `learned_embeds.safetensors`.
    pub embeddings: Vec<u8>,
    /// The sidecar JSON (`learned_embeds.easel.json`), for multi-slot banks.
    pub sidecar: Option<String>,
}

/// The sidecar of a multi-slot diffusers export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffusersSidecar {
    /// [`SIDECAR_FORMAT`].
    pub format: String,
    /// `1`.
    pub format_version: String,
    /// The export's name.
    pub name: String,
    /// The bank's layout.
    pub layout: Layout,
    /// The bank's prompt template.
    pub template: String,
    /// How a stage maps to timesteps, in words.
    pub stage_rule: String,
    /// One entry per slot.
    pub slots: Vec<SidecarSlot>,
}

/// A token of a multi-slot diffusers export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarSlot {
    /// The token, a key of `learned_embeds.safetensors`.
    pub token: String,
    /// Denoising stage (0: least noisy timesteps).
    pub stage: usize,
    /// Layer group.
    pub group: usize,
    /// The layers of the group: `all`, `down`, `mid`, `up` or `layer <i>` (cross-attention
    /// layers in forward order).
    pub layers: String,
}

/// Which format an imported embedding was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFormat {
    /// diffusers `learned_embeds.safetensors` (one token).
    Diffusers,
    /// diffusers tokens plus an easel sidecar (a multi-slot bank).
    DiffusersWithSidecar,
    /// AUTOMATIC1111 (`string_to_param.*`) or kohya (`emb_params`).
    A1111,
    /// An official LSAST or ArtBank checkpoint.
    Official(crate::official::OfficialKind),
}

/// An imported embedding.
#[derive(Debug, Clone)]
pub struct ImportedEmbedding {
    /// The bank: direct parameters, prompt template [`IMPORT_TEMPLATE`], placeholder
    /// [`DEFAULT_PLACEHOLDER`], empty init word.
    pub bank: Bank,
    /// The embedding's name (its token, A1111's `name`, or the sidecar's name), if any.
    pub name: Option<String>,
    /// The format it was read from.
    pub format: EmbeddingFormat,
    /// How it paints by default: an official checkpoint's preset defaults, else none.
    pub inference: InferenceDefaults,
}

/// What an A1111 export records in its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct A1111Info {
    /// Training steps (`step`).
    pub step: u64,
    /// Base model name (`sd_checkpoint_name`).
    pub base_model: String,
    /// Base model hash (`sd_checkpoint`).
    pub base_model_hash: String,
}

fn bare_name(name: &str) -> Result<&str> {
    let bare = name.trim_start_matches('<').trim_end_matches('>');
    if bare.is_empty() || bare.chars().any(char::is_whitespace) {
        bail!("embedding name {name:?} must be one word without whitespace")
    }
    Ok(bare)
}

/// Exports `bank` (its current vectors, whatever its parameterisation) for diffusers under
/// token name `name` (angle brackets optional): see the module docs.
pub fn export_diffusers(bank: &Bank, name: &str) -> Result<DiffusersExport> {
    let bare = bare_name(name)?;
    let layout = bank.layout();
    if layout.slot_map() == SlotMap::Windows {
        bail!(
            "a bank whose stages read overlapping windows of vectors (the official LSAST \
             layout) has no one-token-per-slot export; export one slot in the a1111 format"
        )
    }
    let vectors = bank.vectors()?.detach();
    if layout.num_slots() == 1 {
        let tensors = [(format!("<{bare}>"), slot_rows(&vectors, 0, 0)?)];
        return Ok(DiffusersExport {
            embeddings: serialize(&tensors, BTreeMap::new())?,
            sidecar: None,
        });
    }
    let mut tensors = Vec::with_capacity(layout.num_slots());
    let mut slots = Vec::with_capacity(layout.num_slots());
    for slot in layout.slots() {
        let token = if layout.num_groups() == 1 {
            format!("<{bare}-s{}>", slot.stage)
        } else {
            format!("<{bare}-s{}-g{}>", slot.stage, slot.group)
        };
        tensors.push((token.clone(), slot_rows(&vectors, slot.stage, slot.group)?));
        slots.push(SidecarSlot {
            token,
            stage: slot.stage,
            group: slot.group,
            layers: layout.group_name(slot.group),
        });
    }
    let stage_rule = match layout.stage_map() {
        StageMap::Uniform => format!(
            "stage = min(floor(t * {} / num_train_timesteps), {}) for training timestep t",
            layout.stages(),
            layout.stages() - 1
        ),
        StageMap::Boundaries(b) => {
            format!("stage = number of boundaries {b:?} that are <= the training timestep t")
        }
    };
    let sidecar = DiffusersSidecar {
        format: SIDECAR_FORMAT.to_string(),
        format_version: "1".to_string(),
        name: bare.to_string(),
        layout: layout.clone(),
        template: bank.prompt().template.clone(),
        stage_rule,
        slots,
    };
    let sidecar = serde_json::to_string_pretty(&sidecar).map_err(candle_core::Error::wrap)?;
    Ok(DiffusersExport {
        embeddings: serialize(&tensors, BTreeMap::new())?,
        sidecar: Some(sidecar),
    })
}

/// Exports one slot of `bank` as an A1111 embedding named `name`: `slot` may be omitted for a
/// one-slot bank; a bank with more slots is refused without it.
pub fn export_a1111(
    bank: &Bank,
    name: &str,
    slot: Option<Slot>,
    info: &A1111Info,
) -> Result<Vec<u8>> {
    let layout = bank.layout();
    let slot = match slot {
        Some(s) => s,
        None if layout.num_slots() == 1 => Slot { stage: 0, group: 0 },
        None => bail!(
            "the bank has {} stages x {} layer groups = {} slots, but an A1111 embedding holds \
             one token for all steps and layers: choose a slot (stage, group) to export, or \
             export the diffusers format (one token per slot plus a sidecar)",
            layout.stages(),
            layout.num_groups(),
            layout.num_slots()
        ),
    };
    let rows = bank.slot_vectors(slot)?.detach();
    let mut meta = BTreeMap::from([
        ("name".to_string(), name.to_string()),
        ("step".to_string(), info.step.to_string()),
        ("sd_checkpoint".to_string(), info.base_model_hash.clone()),
        ("sd_checkpoint_name".to_string(), info.base_model.clone()),
    ]);
    if layout.num_slots() > 1 {
        meta.insert("easel_stage".to_string(), slot.stage.to_string());
        meta.insert("easel_group".to_string(), slot.group.to_string());
    }
    serialize(&[("string_to_param.*".to_string(), rows)], meta)
}

/// Imports a textual-inversion embedding (safetensors bytes, format detected from its
/// tensors) or an official LSAST / ArtBank checkpoint (a `torch.save` file, see
/// [`crate::official`]); `sidecar` is the JSON of a multi-slot diffusers export. The bank's
/// vectors go to `device`.
pub fn import_embedding(
    bytes: &[u8],
    sidecar: Option<&str>,
    device: &Device,
) -> Result<ImportedEmbedding> {
    let (meta, tensors) = if easel_core::torch_checkpoint::is_torch_save(bytes) {
        let what = "embedding file";
        let tensors = crate::official::read_torch_save(bytes, what)?;
        if crate::official::official_kind(&tensors).is_some() {
            let official = crate::official::import_official_tensors(tensors, what, device)?;
            return Ok(ImportedEmbedding {
                bank: official.bank,
                name: None,
                format: EmbeddingFormat::Official(official.kind),
                inference: official.preset.inference,
            });
        }
        if !tensors.contains_key("string_to_param.*") {
            let mut keys: Vec<_> = tensors.into_keys().collect();
            keys.sort();
            bail!(
                "{what} is a PyTorch file but neither an official LSAST / ArtBank checkpoint \
                 nor an AUTOMATIC1111 embedding (string_to_param); it holds {}",
                keys.join(", ")
            )
        }
        // An A1111 `.pt` embedding: its name and step are pickled strings, not kept.
        (HashMap::new(), tensors)
    } else {
        read_safetensors(bytes, "embedding file")?
    };
    if tensors.contains_key("clip_l") || tensors.contains_key("clip_g") {
        bail!("embedding file is an SDXL embedding (clip_l/clip_g), not for Stable Diffusion 1.x")
    }
    if let Some(json) = sidecar {
        return import_with_sidecar(json, tensors, device);
    }
    let a1111_key = ["string_to_param.*", "emb_params"]
        .into_iter()
        .find(|k| tensors.contains_key(*k));
    let (name, rows, format) = if let Some(key) = a1111_key {
        let extra: Vec<_> = tensors
            .keys()
            .filter(|k| k.as_str() != key && !k.starts_with("string_to_token"))
            .collect();
        if !extra.is_empty() {
            bail!("embedding file has {key} and other tensors {extra:?}: not a single embedding")
        }
        (
            meta.get("name").cloned(),
            &tensors[key],
            EmbeddingFormat::A1111,
        )
    } else {
        let mut keys: Vec<_> = tensors.keys().collect();
        keys.sort();
        match keys.as_slice() {
            [key] => (
                Some((*key).clone()),
                &tensors[key.as_str()],
                EmbeddingFormat::Diffusers,
            ),
            [] => bail!("embedding file has no tensors"),
            _ => {
                bail!(
                "embedding file has {} tokens ({}): a multi-slot export needs the sidecar JSON \
                 written beside it; otherwise it is not a single textual-inversion embedding",
                keys.len(),
                keys.iter().take(4).map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )
            }
        }
    };
    let rows = embedding_rows(rows, name.as_deref().unwrap_or("embedding"))?;
    let layout = Layout::new(1, LayerGroups::Single, 1, rows.dim(0)?, StageMap::Uniform)?;
    let bank = direct_bank(layout, rows, IMPORT_TEMPLATE, device)?;
    Ok(ImportedEmbedding {
        bank,
        name,
        format,
        inference: InferenceDefaults::default(),
    })
}

/// `[n, D]` f32 rows of an embedding tensor `[D]` or `[n, D]`.
fn embedding_rows(t: &Tensor, name: &str) -> Result<Tensor> {
    let t = match t.rank() {
        1 => t.unsqueeze(0)?,
        2 => t.clone(),
        _ => bail!(
            "embedding {name} has shape {:?}, expected [D] or [n, D]",
            t.dims()
        ),
    };
    if t.dims().contains(&0) {
        bail!("embedding {name} is empty ({:?})", t.dims())
    }
    t.to_dtype(DType::F32)
}

fn direct_bank(layout: Layout, flat: Tensor, template: &str, device: &Device) -> Result<Bank> {
    let dim = flat.dim(1)?;
    let tensors = HashMap::from([("bank.vectors".to_string(), flat.to_device(device)?)]);
    let params = BankParams::from_tensors(&ParamsSpec::Direct {}, &layout, dim, tensors)?;
    let prompt = PromptSpec {
        template: template.to_string(),
        placeholder: DEFAULT_PLACEHOLDER.to_string(),
    };
    Bank::new(layout, params, prompt, String::new())
}

fn import_with_sidecar(
    json: &str,
    mut tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<ImportedEmbedding> {
    let sidecar: DiffusersSidecar = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => bail!("embedding sidecar is not valid: {e}"),
    };
    if sidecar.format != SIDECAR_FORMAT || sidecar.format_version != "1" {
        bail!(
            "embedding sidecar has format {:?} version {:?}, expected {SIDECAR_FORMAT:?} \
             version \"1\"",
            sidecar.format,
            sidecar.format_version
        )
    }
    let layout = sidecar.layout.clone();
    let mut rows = vec![None; layout.num_slots()];
    for s in &sidecar.slots {
        let i = layout.slot_index(Slot {
            stage: s.stage,
            group: s.group,
        })?;
        let Some(t) = tensors.remove(&s.token) else {
            bail!(
                "embedding file has no token {} named by the sidecar",
                s.token
            )
        };
        if rows[i].is_some() {
            bail!(
                "embedding sidecar lists slot (stage {}, group {}) twice",
                s.stage,
                s.group
            )
        }
        rows[i] = Some(embedding_rows(&t, &s.token)?);
    }
    if !tensors.is_empty() {
        let mut left: Vec<_> = tensors.into_keys().collect();
        left.sort();
        bail!("embedding file has tokens {left:?} that the sidecar does not list")
    }
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) => Ok(r),
            None => bail!("embedding sidecar lists no token for slot {i}"),
        })
        .collect::<Result<Vec<_>>>()?;
    let d = rows[0].dim(1)?;
    if let Some(bad) = rows
        .iter()
        .find(|r| r.dims() != [layout.tokens_per_slot(), d])
    {
        bail!(
            "embedding tokens must all be [{}, {d}], found {:?}",
            layout.tokens_per_slot(),
            bad.dims()
        )
    }
    let flat = Tensor::cat(&rows, 0)?;
    let bank = direct_bank(layout, flat, &sidecar.template, device)?;
    Ok(ImportedEmbedding {
        bank,
        name: Some(sidecar.name),
        format: EmbeddingFormat::DiffusersWithSidecar,
        inference: InferenceDefaults::default(),
    })
}

/// The bank-file metadata of an embedding imported from the file `file_name`: no base model
/// is known (hash [`crate::conditioning::UNKNOWN_HASH`]), so it loads on any model of its
/// width, with a warning ([`crate::file::load_bank`]). An official checkpoint's preset
/// inference defaults are recorded as a learned bank's are (`training.inference`).
pub fn imported_metadata(
    file_name: &str,
    imported: &ImportedEmbedding,
) -> crate::file::BankMetadata {
    let mut training = serde_json::json!({
        "imported_from": file_name,
        "format": format!("{:?}", imported.format),
        "name": imported.name,
    });
    if !imported.inference.is_empty() {
        training["inference"] = serde_json::json!(imported.inference);
    }
    crate::file::BankMetadata {
        base_model: "unknown (imported embedding)".to_string(),
        base_model_hash: crate::conditioning::UNKNOWN_HASH.to_string(),
        training,
        collection_hash: String::new(),
        created: easel_core::time::now_rfc3339(),
    }
}
