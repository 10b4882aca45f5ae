//! Weight files of a diffusers model folder: which file names a component's weights have
//! (variants, shards), what a shard index lists, and refusing anything that is not
//! safetensors. Pickle checkpoints (`.bin`, `.ckpt`, `.pt`, `.pth`) can run arbitrary code
//! when loaded and are never read; users convert them to safetensors first.
//!
//! File discovery itself (paths, existence) belongs to the caller; this module only names
//! files and checks bytes.

use candle_core::Result;
use serde_json::Value;

/// A component folder of a diffusers pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `unet/`: `UNet2DConditionModel`.
    Unet,
    /// `vae/`: `AutoencoderKL`.
    Vae,
    /// `text_encoder/`: transformers' `CLIPTextModel`.
    TextEncoder,
    /// A ControlNet model (its own repository, or `controlnet/` in a pipeline folder).
    ControlNet,
}

impl Component {
    /// The component's folder name in a diffusers pipeline.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::Vae => "vae",
            Self::TextEncoder => "text_encoder",
            Self::ControlNet => "controlnet",
        }
    }

    /// The weights file stem: `diffusion_pytorch_model` (diffusers models) or `model`
    /// (transformers models).
    pub fn weights_stem(self) -> &'static str {
        match self {
            Self::TextEncoder => "model",
            _ => "diffusion_pytorch_model",
        }
    }
}

/// The weight file names to look for in a component's folder, in order of preference: the
/// single file, then the shard index (read it with [`shard_files`]). `variant` (`"fp16"`) is
/// inserted as diffusers and transformers do: `diffusion_pytorch_model.fp16.safetensors`,
/// `model.safetensors.index.fp16.json`. Fails on a variant that is not a plain word.
pub fn component_files(component: Component, variant: Option<&str>) -> Result<Vec<String>> {
    let stem = component.weights_stem();
    match variant {
        None => Ok(vec![
            format!("{stem}.safetensors"),
            format!("{stem}.safetensors.index.json"),
        ]),
        Some(v) => {
            let plain = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !plain {
                candle_core::bail!(
                    "weights variant '{v}' must be a plain word such as fp16 (letters, digits, \
                     '_' or '-')"
                )
            }
            Ok(vec![
                format!("{stem}.{v}.safetensors"),
                format!("{stem}.safetensors.index.{v}.json"),
            ])
        }
    }
}

/// The shard file names listed in a `*.safetensors.index.json` (its `weight_map` values),
/// sorted and without duplicates. Names must be plain `.safetensors` file names in the index's
/// folder (no path separators).
pub fn shard_files(index_json: &str) -> Result<Vec<String>> {
    let index: Value = serde_json::from_str(index_json)
        .map_err(|e| candle_core::Error::Msg(format!("shard index: invalid JSON: {e}")))?;
    let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
        candle_core::bail!("shard index: no \"weight_map\" object")
    };
    let mut files = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            candle_core::bail!("shard index: the file of tensor '{tensor}' is not a string")
        };
        let plain = !file.contains(['/', '\\']) && !file.starts_with('.');
        if !plain || !file.ends_with(".safetensors") {
            candle_core::bail!(
                "shard index: tensor '{tensor}' is in '{file}', not a .safetensors file next to \
                 the index"
            )
        }
        files.push(file.to_string());
    }
    if files.is_empty() {
        candle_core::bail!("shard index: \"weight_map\" is empty")
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// File extensions of PyTorch pickle checkpoints.
const PICKLE_EXTENSIONS: [&str; 6] = ["bin", "ckpt", "pt", "pth", "pkl", "pickle"];

fn pickle_refusal(name: &str, why: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "'{name}' {why}: a PyTorch pickle checkpoint, which can run arbitrary code when loaded; \
         easel only reads safetensors. Convert it first, e.g. in Python: \
         safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\") \
         (or save_pretrained(..., safe_serialization=True) in diffusers)"
    ))
}

/// Refuses a weights file name that is not `*.safetensors` (pickle checkpoints by name:
/// `.bin`, `.ckpt`, `.pt`, `.pth`, `.pkl`, `.pickle`).
pub fn check_weights_file_name(name: &str) -> Result<()> {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(pickle_refusal(name, &format!("has extension .{ext}")));
    }
    if ext != "safetensors" {
        candle_core::bail!("'{name}' is not a .safetensors file")
    }
    Ok(())
}

/// Checks that `bytes` (a whole file, or at least its first 9 bytes) of the file `name` are
/// safetensors: refuses pickle data by extension and by content (a zip archive, as
/// `torch.save` writes, or a pickle stream) and anything without a safetensors header.
pub fn check_safetensors_bytes(name: &str, bytes: &[u8]) -> Result<()> {
    check_weights_file_name(name)?;
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(pickle_refusal(name, "is a zip archive (torch.save format)"));
    }
    if let [0x80, protocol, ..] = bytes {
        if (1..=5).contains(protocol) {
            return Err(pickle_refusal(name, "holds pickle data"));
        }
    }
    let header_ok = bytes.len() >= 9 && bytes[8] == b'{' && {
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        u64::from_le_bytes(len) >= 2
    };
    if !header_ok {
        candle_core::bail!("'{name}' is not a safetensors file (no safetensors header)")
    }
    Ok(())
}

/// One component entry of a pipeline's `model_index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIndexEntry {
    /// The component (and folder) name: `unet`, `vae`, `text_encoder`, ...
    pub name: String,
    /// The library that defines its class (`diffusers`, `transformers`).
    pub library: String,
    /// Its class (`UNet2DConditionModel`, `CLIPTextModel`, ...).
    pub class: String,
}

/// The pipeline class and components of a diffusers `model_index.json` (entries whose value
/// is `[library, class]`; `null` entries such as a missing safety checker are skipped),
/// sorted by name.
pub fn model_index(json: &str) -> Result<(String, Vec<ModelIndexEntry>)> {
    let index: Value = serde_json::from_str(json)
        .map_err(|e| candle_core::Error::Msg(format!("model_index.json: invalid JSON: {e}")))?;
    let Some(obj) = index.as_object() else {
        candle_core::bail!("model_index.json: not a JSON object")
    };
    let Some(class) = obj.get("_class_name").and_then(Value::as_str) else {
        candle_core::bail!("model_index.json: no \"_class_name\"")
    };
    let mut entries = Vec::new();
    for (name, value) in obj {
        if name.starts_with('_') {
            continue;
        }
        if let Some([Value::String(library), Value::String(class)]) =
            value.as_array().map(Vec::as_slice)
        {
            entries.push(ModelIndexEntry {
                name: name.clone(),
                library: library.clone(),
                class: class.clone(),
            });
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((class.to_string(), entries))
}
