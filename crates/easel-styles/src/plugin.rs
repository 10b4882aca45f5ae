//! The plugin file: one `.safetensors` file per style (docs/formats.md, "Style plugins").
//!
//! `__metadata__` carries the SAI ModelSpec keys (`modelspec.*`, spec 1.0.0) and easel's own
//! (`easel.*`); the tensors are the style's. `modelspec.hash_sha256` is `0x` + the sha256 of
//! the bytes after the header (the tensor data), so metadata edits keep it and any flipped
//! tensor byte breaks it.

use std::collections::BTreeMap;
use std::path::Path;

use easel_core::safetensors_writer::{safetensors_bytes, TensorBytes};
use sha2::{Digest, Sha256};

use crate::error::{PluginError, Result};

/// `modelspec.sai_model_spec`.
pub const MODELSPEC_VERSION: &str = "1.0.0";
/// `modelspec.implementation`.
pub const IMPLEMENTATION: &str = "https://example.invalid/easel";
/// `easel.plugin_version` this library writes and reads.
pub const PLUGIN_VERSION: &str = "1";
/// The largest header a plugin may have (thumbnails are the big part: ~256 px PNGs).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The metadata keys (see docs/formats.md).
pub mod keys {
    /// SAI ModelSpec version.
    pub const SPEC: &str = "modelspec.sai_model_spec";
    /// What the weights are for (see [`super::Kind::architecture`]).
    pub const ARCHITECTURE: &str = "modelspec.architecture";
    /// Who reads them.
    pub const IMPLEMENTATION: &str = "modelspec.implementation";
    /// Display title.
    pub const TITLE: &str = "modelspec.title";
    /// Longer description.
    pub const DESCRIPTION: &str = "modelspec.description";
    /// Author.
    pub const AUTHOR: &str = "modelspec.author";
    /// Creation date, RFC 3339.
    pub const DATE: &str = "modelspec.date";
    /// Licence.
    pub const LICENSE: &str = "modelspec.license";
    /// A ~256 px preview as a `data:image/png;base64,` URI.
    pub const THUMBNAIL: &str = "modelspec.thumbnail";
    /// The words that call the style up (a bank's placeholder).
    pub const TRIGGER: &str = "modelspec.trigger_phrase";
    /// `0x` + sha256 of the tensor bytes.
    pub const HASH: &str = "modelspec.hash_sha256";
    /// How to use it.
    pub const USAGE: &str = "modelspec.usage_hint";
    /// The plugin kind ([`super::Kind::name`]).
    pub const KIND: &str = "easel.kind";
    /// [`super::PLUGIN_VERSION`].
    pub const VERSION: &str = "easel.plugin_version";
    /// Preset mix as `stylize --preset` takes it (`3:0.5,12:0.5`).
    pub const PRESET_MIX: &str = "easel.preset_mix";
    /// What a style code or fast model's paintings were (file name and sha256).
    pub const SOURCE: &str = "easel.source";
    /// AdaIN: the encoder the decoder was trained with.
    pub const ENCODER: &str = "easel.encoder";
    /// StyTr²: attention heads.
    pub const STYTR_HEADS: &str = "easel.stytr.heads";
    /// StyTr²: CAPE grid side.
    pub const STYTR_CAPE_GRID: &str = "easel.stytr.cape_grid";
    /// StyTr²: pyramid windows, comma separated.
    pub const STYTR_WINDOWS: &str = "easel.stytr.pyramid_windows";
}

/// What a plugin holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A prompt bank for Stable Diffusion (the bank file's own keys beside the plugin's).
    Bank,
    /// An AdaIN encoder + decoder (`encoder.*`, `decoder.*`).
    Adain,
    /// StyTr² (`transformer.*`, `embedding.*`, `decoder.*`).
    Stytr,
    /// A mix of the embedded presets (`preset.weights`).
    PresetMix,
    /// A painting's style code for the embedded arbitrary network (`style.code`).
    StyleCode,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Bank,
        Kind::Adain,
        Kind::Stytr,
        Kind::PresetMix,
        Kind::StyleCode,
    ];

    /// The `easel.kind` value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bank => "bank",
            Kind::Adain => "adain",
            Kind::Stytr => "stytr",
            Kind::PresetMix => "preset-mix",
            Kind::StyleCode => "style-code",
        }
    }

    /// Parses an `easel.kind` value.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `modelspec.architecture` value.
    pub fn architecture(self) -> &'static str {
        match self {
            Kind::Bank => "stable-diffusion-v1/prompt-bank",
            Kind::Adain => "easel-fast/adain",
            Kind::Stytr => "easel-fast/stytr2",
            Kind::PresetMix => "easel-fast/cin26-preset-mix",
            Kind::StyleCode => "easel-fast/arbitrary-style-code",
        }
    }

    /// Whether painting with it needs a painting (`--style`).
    pub fn needs_painting(self) -> bool {
        matches!(self, Kind::Adain | Kind::Stytr)
    }
}

/// One tensor as stored: dtype name (`F32`, `F16`, ...), shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data, little-endian.
    pub data: Vec<u8>,
}

/// A plugin's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginFile {
    /// What it holds.
    pub kind: Kind,
    /// All metadata, `modelspec.*` and `easel.*` included.
    pub metadata: BTreeMap<String, String>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, RawTensor>,
}

/// A plugin's header, read without its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginHeader {
    /// What it holds.
    pub kind: Kind,
    /// All metadata.
    pub metadata: BTreeMap<String, String>,
    /// Tensor names and shapes.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl PluginHeader {
    /// A metadata value, or "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.metadata.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Every tensor of a safetensors file as stored.
pub(crate) fn raw_tensors(st: &safetensors::SafeTensors) -> BTreeMap<String, RawTensor> {
    st.tensors()
        .into_iter()
        .map(|(key, view)| {
            let raw = RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (key, raw)
        })
        .collect()
}

/// `0x` + sha256 of `data`.
pub fn hash_of(data: &[u8]) -> String {
    format!("0x{}", easel_core::hash::hex(&Sha256::digest(data)))
}

/// The header length and the JSON header of safetensors `bytes`, checked against the size.
fn split_header<'a>(bytes: &'a [u8], name: &str) -> Result<(&'a [u8], &'a [u8])> {
    let bad = |problem: String| PluginError::Malformed {
        name: name.to_string(),
        problem,
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors file",
            bytes.len()
        )));
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header of {len} bytes is over the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    // len <= MAX_HEADER_BYTES, which fits usize on every supported target.
    let end = 8usize.saturating_add(len as usize);
    if end > bytes.len() {
        return Err(bad(format!(
            "header of {len} bytes runs past the end of the {}-byte file",
            bytes.len()
        )));
    }
    Ok((&bytes[8..end], &bytes[end..]))
}

fn kind_of(metadata: &BTreeMap<String, String>, name: &str) -> Result<Kind> {
    let Some(kind) = metadata.get(keys::KIND) else {
        return Err(PluginError::NotAPlugin {
            name: name.to_string(),
            problem: format!("its metadata has no {}", keys::KIND),
        });
    };
    let kind = Kind::parse(kind).ok_or_else(|| PluginError::UnknownKind {
        name: name.to_string(),
        kind: kind.clone(),
    })?;
    match metadata.get(keys::VERSION).map(String::as_str) {
        Some(PLUGIN_VERSION) => Ok(kind),
        other => Err(PluginError::NotAPlugin {
            name: name.to_string(),
            problem: format!(
                "{} is {other:?}; this easel reads version {PLUGIN_VERSION}",
                keys::VERSION
            ),
        }),
    }
}

/// Reads the metadata and tensor shapes of plugin `bytes` (`name` is for messages).
pub fn read_header(bytes: &[u8], name: &str) -> Result<PluginHeader> {
    let (header, _) = split_header(bytes, name)?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| PluginError::Malformed {
            name: name.to_string(),
            problem: format!("header is not JSON: {e}"),
        })?;
    let mut metadata = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for (key, value) in json {
        if key == "__metadata__" {
            let Some(map) = value.as_object() else {
                return Err(PluginError::Malformed {
                    name: name.to_string(),
                    problem: "__metadata__ is not an object".into(),
                });
            };
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return Err(PluginError::Malformed {
                        name: name.to_string(),
                        problem: format!("metadata {k} is not a string"),
                    });
                };
                metadata.insert(k.clone(), v.to_string());
            }
        } else {
            let shape = value
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .unwrap_or(None)
                .ok_or_else(|| PluginError::Malformed {
                    name: name.to_string(),
                    problem: format!("tensor {key} has no shape"),
                })?;
            shapes.insert(key, shape);
        }
    }
    let kind = kind_of(&metadata, name)?;
    Ok(PluginHeader {
        kind,
        metadata,
        shapes,
    })
}

/// Whether the tensor bytes of plugin `bytes` hash to the recorded `modelspec.hash_sha256`.
pub fn verify(bytes: &[u8], name: &str) -> Result<()> {
    let header = read_header(bytes, name)?;
    let (_, data) = split_header(bytes, name)?;
    let actual = hash_of(data);
    let recorded = header.get(keys::HASH);
    if recorded != actual {
        return Err(PluginError::HashMismatch {
            name: name.to_string(),
            recorded: recorded.to_string(),
            actual,
        });
    }
    Ok(())
}

impl PluginFile {
    /// Reads plugin `bytes` whole; the hash is checked.
    pub fn read(bytes: &[u8], name: &str) -> Result<Self> {
        verify(bytes, name)?;
        let st =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| PluginError::Malformed {
                name: name.to_string(),
                problem: e.to_string(),
            })?;
        let header = read_header(bytes, name)?;
        Ok(Self {
            kind: header.kind,
            metadata: header.metadata,
            tensors: raw_tensors(&st),
        })
    }

    /// Serialises the plugin, writing its kind, version, ModelSpec version, architecture,
    /// implementation and hash into the metadata. Equal contents give equal bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        // The writer lays the data out by name, the order of this BTreeMap, so the hash of the
        // data section is the hash of the tensors' bytes concatenated in this order.
        let mut hasher = Sha256::new();
        for tensor in self.tensors.values() {
            hasher.update(&tensor.data);
        }
        let mut metadata = self.metadata.clone();
        metadata.insert(keys::SPEC.into(), MODELSPEC_VERSION.into());
        metadata.insert(keys::ARCHITECTURE.into(), self.kind.architecture().into());
        metadata.insert(keys::IMPLEMENTATION.into(), IMPLEMENTATION.into());
        metadata.insert(keys::KIND.into(), self.kind.name().into());
        metadata.insert(keys::VERSION.into(), PLUGIN_VERSION.into());
        metadata.insert(
            keys::HASH.into(),
            format!("0x{}", easel_core::hash::hex(&hasher.finalize())),
        );
        let views: Vec<TensorBytes<'_>> = self
            .tensors
            .iter()
            .map(|(name, t)| TensorBytes {
                name,
                dtype: t.dtype,
                shape: &t.shape,
                data: std::borrow::Cow::Borrowed(&t.data),
            })
            .collect();
        safetensors_bytes(&views, &metadata).map_err(|source| PluginError::Unwritable {
            title: self.metadata.get(keys::TITLE).cloned().unwrap_or_default(),
            source,
        })
    }

    /// An f32 tensor's values.
    pub fn f32_values(&self, key: &str, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| PluginError::Malformed {
                name: name.to_string(),
                problem: format!("a {} plugin needs the tensor {key}", self.kind.name()),
            })?;
        if tensor.dtype != safetensors::Dtype::F32 || !tensor.data.len().is_multiple_of(4) {
            return Err(PluginError::Malformed {
                name: name.to_string(),
                problem: format!("tensor {key} is {:?}, expected F32", tensor.dtype),
            });
        }
        let values = tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((values, tensor.shape.clone()))
    }
}

/// Reads the file at `path` (bounded by `max_bytes`).
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > max_bytes {
        return Err(PluginError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: max_bytes,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Reads only the header of the plugin at `path` (not its tensors, which may be 100s of MB).
pub fn read_header_file(path: &Path) -> Result<PluginHeader> {
    use std::io::Read;
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = file_name(path);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| PluginError::Malformed {
            name: name.clone(),
            problem: format!("{size} bytes is too short for a safetensors file"),
        })?;
    let len = u64::from_le_bytes(prefix);
    if len > MAX_HEADER_BYTES || len.saturating_add(8) > size {
        return Err(PluginError::Malformed {
            name,
            problem: format!(
                "header of {len} bytes does not fit the {size}-byte file (limit \
                 {MAX_HEADER_BYTES})"
            ),
        });
    }
    let mut bytes = prefix.to_vec();
    // len <= MAX_HEADER_BYTES (checked above).
    bytes.resize(8 + len as usize, 0);
    file.read_exact(&mut bytes[8..]).map_err(io)?;
    read_header(&bytes, &name)
}

/// The display name of `path` for messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
