//! Making plugins: from a bank file, an AdaIN or StyTr² weights folder, a preset mix or a
//! painting (its style code for the embedded arbitrary network); and what a plugin paints as.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use candle_core::{DType, Device, Tensor};
use easel_bank::file::BaseModelInfo;
use easel_core::{HubResolver, RepoFiles, WeightSource};
use easel_fast::arbitrary::{mix_style_codes, ArbitraryNet};
use easel_fast::cin26;
use easel_fast::import::adain::{load_adain, read_weights};
use easel_fast::import::stytr::{load_stytr, Settings as StytrSettings};
use easel_host::fast::{
    FastStyle, WeightFiles, WeightedPath, ADAIN_FILES, ADAIN_PLUGIN_PREFIXES, STYTR_FILES,
    STYTR_PLUGIN_PREFIXES,
};
use easel_host::host::Style;
use easel_host::sources::ModelSources;
use image::RgbImage;

use crate::error::{PluginError, Result};
use crate::plugin::{file_name, keys, Kind, PluginFile, PluginHeader, RawTensor};

/// The largest weights file read to make a plugin (StyTr²'s transformer is ~140 MB).
pub const MAX_SOURCE_BYTES: u64 = 2 << 30;
/// The long side of thumbnails.
pub const THUMBNAIL_SIDE: u32 = 256;

/// What a plugin is made from.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSource {
    /// A plugin file (installed as it is).
    Plugin(PathBuf),
    /// An easel bank file (`.bank`, `easel learn`'s output).
    BankFile(PathBuf),
    /// A textual-inversion embedding (diffusers or A1111 `.safetensors`), imported as a bank
    /// with no known base model.
    Embedding(PathBuf),
    /// A folder with `vgg_normalised` and `decoder` weights.
    AdainDir(PathBuf),
    /// AdaIN's two weight files where they lie (`easel train-fast`'s decoder and its VGG).
    AdainFiles {
        /// The VGG encoder (`vgg_normalised`).
        vgg: PathBuf,
        /// The decoder.
        decoder: PathBuf,
    },
    /// A folder with StyTr²'s three weight files.
    StytrDir(PathBuf),
    /// A preset mix (`3:0.5,12:0.5`).
    PresetMix(String),
    /// A painting, kept as its style code for the embedded arbitrary network.
    Painting(PathBuf),
}

/// The files a hub repository's style is looked for under, preferred first: an easel plugin
/// published under this name, then a diffusers textual-inversion embedding (the layout of the
/// `sd-concepts-library` repositories).
pub const HUB_STYLE_FILES: [&str; 2] = ["easel-style.safetensors", "learned_embeds.safetensors"];

/// Descriptive metadata given by the user; unset fields get defaults.
#[derive(Debug, Clone, Default)]
pub struct PluginInfo {
    /// `modelspec.title` (default: the source's file name).
    pub title: Option<String>,
    /// `modelspec.description`.
    pub description: Option<String>,
    /// `modelspec.author`.
    pub author: Option<String>,
    /// `modelspec.license`.
    pub license: Option<String>,
    /// A picture for `modelspec.thumbnail` (default: the painting, for style codes).
    pub thumbnail: Option<RgbImage>,
    /// StyTr²'s settings, which its weight files do not hold (default: the published ones).
    pub stytr: Option<StytrSettings>,
}

impl PluginSource {
    /// [`PluginSource::detect`], and where `text` is no local path but a hub repository id
    /// `org/name[@revision]`: the first of [`HUB_STYLE_FILES`] the repository has, through
    /// `hub` (its cache first; offline, the error lists what to download and where), detected
    /// like a local file. The second value is the title a hub style gets by default: the
    /// repository's name.
    pub fn resolve(text: &str, hub: &HubResolver) -> Result<(Self, Option<String>)> {
        // An existing path parses as local, not as a hub id.
        if !(text.starts_with("preset:") || text.starts_with("painting:")) {
            if let Ok(WeightSource::Hub { repo_id, revision }) = WeightSource::parse(text) {
                let request = RepoFiles::new(&repo_id, &revision, &[])
                    .with_one_of(&HUB_STYLE_FILES)
                    .with_hint(format!(
                        "download {} instead for a textual-inversion repository",
                        HUB_STYLE_FILES[1]
                    ));
                let file = hub
                    .resolve_many(std::slice::from_ref(&request))?
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| PluginError::Source {
                        source_name: text.to_string(),
                        problem: "the hub resolved no file".to_string(),
                    })?;
                let source = Self::detect(&file.to_string_lossy())?;
                let name = repo_id.rsplit('/').next().unwrap_or(&repo_id).to_string();
                return Ok((source, Some(name)));
            }
        }
        Ok((Self::detect(text)?, None))
    }

    /// Reads what `text` names: `preset:MIX`, `painting:IMAGE`, a weights folder (AdaIN or
    /// StyTr², told apart by their files), a plugin file or a bank file.
    pub fn detect(text: &str) -> Result<Self> {
        if let Some(mix) = text.strip_prefix("preset:") {
            return Ok(PluginSource::PresetMix(mix.to_string()));
        }
        if let Some(painting) = text.strip_prefix("painting:") {
            return Ok(PluginSource::Painting(PathBuf::from(painting)));
        }
        let path = PathBuf::from(text);
        let source_error = |problem: String| PluginError::Source {
            source_name: text.to_string(),
            problem,
        };
        if path.is_dir() {
            let has = |names: &[&[&str]]| {
                names
                    .iter()
                    .all(|alts| alts.iter().any(|n| path.join(n).is_file()))
            };
            if has(&STYTR_FILES) {
                return Ok(PluginSource::StytrDir(path));
            }
            if has(&ADAIN_FILES) {
                return Ok(PluginSource::AdainDir(path));
            }
            return Err(source_error(format!(
                "the folder holds neither AdaIN weights ({}) nor StyTr² weights ({})",
                first_names(&ADAIN_FILES),
                first_names(&STYTR_FILES)
            )));
        }
        let bytes = crate::plugin::read_file(&path, MAX_SOURCE_BYTES)?;
        match crate::plugin::read_header(&bytes, text) {
            Ok(_) => Ok(PluginSource::Plugin(path)),
            // A plugin of an unknown kind is refused as such, not read as something else.
            Err(e @ PluginError::UnknownKind { .. }) => Err(e),
            Err(_) => {
                let meta = safetensors::SafeTensors::read_metadata(&bytes)
                    .ok()
                    .and_then(|(_, m)| m.metadata().clone());
                match meta
                    .as_ref()
                    .and_then(|m| m.get("format"))
                    .map(String::as_str)
                {
                    Some(easel_bank::file::FORMAT) => Ok(PluginSource::BankFile(path)),
                    _ => match easel_bank::interop::import_embedding(&bytes, None, &Device::Cpu) {
                        Ok(_) => Ok(PluginSource::Embedding(path)),
                        // A torch.save file can only be an official checkpoint: say why not.
                        Err(e) if easel_core::torch_checkpoint::is_torch_save(&bytes) => {
                            Err(source_error(e.to_string()))
                        }
                        Err(_) => Err(source_error(
                            "is neither an easel plugin, a bank file nor a textual-inversion \
                             embedding"
                                .to_string(),
                        )),
                    },
                }
            }
        }
    }
}

fn first_names(names: &[&[&str]]) -> String {
    names.iter().map(|n| n[0]).collect::<Vec<_>>().join(", ")
}

fn compute(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> PluginError {
    let what = what.into();
    move |source| PluginError::Compute { what, source }
}

/// An f32 tensor's raw little-endian form.
fn raw_f32(t: &Tensor) -> candle_core::Result<RawTensor> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(RawTensor {
        dtype: safetensors::Dtype::F32,
        shape: t.dims().to_vec(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// `data:image/png;base64,...` of `img` fitted into [`THUMBNAIL_SIDE`].
pub fn thumbnail_uri(img: &RgbImage) -> Result<String> {
    let small = easel_core::image_io::downscale_to_fit(img.clone(), THUMBNAIL_SIDE);
    let png = easel_core::encode_png(&small, None)?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// Decodes a `data:image/png;base64,` thumbnail.
pub fn thumbnail_png(uri: &str) -> Option<Vec<u8>> {
    let encoded = uri.strip_prefix("data:image/png;base64,")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

fn weights_file(dir: &Path, alternatives: &[&str]) -> Result<PathBuf> {
    alternatives
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| PluginError::Source {
            source_name: dir.display().to_string(),
            problem: format!("has no {}", alternatives.join(" or ")),
        })
}

fn read_weights_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = crate::plugin::read_file(path, MAX_SOURCE_BYTES)?;
    read_weights(&bytes, &path.display().to_string()).map_err(|e| PluginError::Source {
        source_name: path.display().to_string(),
        problem: e.to_string(),
    })
}

fn put_prefixed(
    tensors: &mut BTreeMap<String, RawTensor>,
    prefix: &str,
    part: &HashMap<String, Tensor>,
) -> Result<()> {
    for (key, t) in part {
        let raw = raw_f32(t).map_err(compute(format!("reading tensor {key}")))?;
        tensors.insert(format!("{prefix}{key}"), raw);
    }
    Ok(())
}

/// Makes the plugin for `source`.
pub fn make_plugin(source: &PluginSource, info: &PluginInfo) -> Result<PluginFile> {
    let mut metadata = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    let mut thumbnail = info.thumbnail.clone();
    let (kind, default_title) = match source {
        PluginSource::Plugin(path) => {
            let bytes = crate::plugin::read_file(path, MAX_SOURCE_BYTES)?;
            let mut plugin = PluginFile::read(&bytes, &file_name(path))?;
            apply_info(&mut plugin.metadata, info, None)?;
            return Ok(plugin);
        }
        PluginSource::BankFile(path) | PluginSource::Embedding(path) => {
            let mut bytes = crate::plugin::read_file(path, MAX_SOURCE_BYTES)?;
            let name = file_name(path);
            if matches!(source, PluginSource::Embedding(_)) {
                let imported = easel_bank::interop::import_embedding(&bytes, None, &Device::Cpu)
                    .map_err(|e| PluginError::Source {
                        source_name: name.clone(),
                        problem: e.to_string(),
                    })?;
                let meta = easel_bank::interop::imported_metadata(&name, &imported);
                bytes = easel_bank::file::save_bank(&imported.bank, &meta)
                    .map_err(compute(format!("converting {name} to a bank")))?;
            }
            return bank_plugin(&bytes, &name, stem(path), info);
        }
        PluginSource::AdainDir(dir) => {
            let vgg = weights_file(dir, ADAIN_FILES[0])?;
            let decoder = weights_file(dir, ADAIN_FILES[1])?;
            put_adain(&vgg, &decoder, &mut tensors, &mut metadata)?;
            (Kind::Adain, stem(dir))
        }
        PluginSource::AdainFiles { vgg, decoder } => {
            put_adain(vgg, decoder, &mut tensors, &mut metadata)?;
            (Kind::Adain, stem(decoder))
        }
        PluginSource::StytrDir(dir) => {
            let mut parts = Vec::new();
            for alternatives in STYTR_FILES {
                let path = weights_file(dir, alternatives)?;
                parts.push((read_weights_file(&path)?, path.display().to_string()));
            }
            let settings = info.stytr.clone().unwrap_or_else(StytrSettings::published);
            load_stytr(
                (parts[0].0.clone(), &parts[0].1),
                (parts[1].0.clone(), &parts[1].1),
                (parts[2].0.clone(), &parts[2].1),
                &settings,
                &Device::Cpu,
            )
            .map_err(|e| PluginError::Source {
                source_name: dir.display().to_string(),
                problem: e.to_string(),
            })?;
            for ((part, _), prefix) in parts.iter().zip(STYTR_PLUGIN_PREFIXES) {
                put_prefixed(&mut tensors, prefix, part)?;
            }
            metadata.insert(keys::STYTR_HEADS.into(), settings.nhead.to_string());
            metadata.insert(keys::STYTR_CAPE_GRID.into(), settings.cape_grid.to_string());
            metadata.insert(keys::STYTR_WINDOWS.into(), join(&settings.pyramid_windows));
            metadata.insert(
                keys::USAGE.into(),
                "StyTr²: paints photos in the style of the painting given with it".into(),
            );
            (Kind::Stytr, stem(dir))
        }
        PluginSource::PresetMix(mix) => {
            let bad = |e: candle_core::Error| PluginError::Source {
                source_name: format!("preset:{mix}"),
                problem: format!("is not a preset mix: {e}"),
            };
            let weights = cin26::parse_preset_mix(mix)
                .and_then(|m| cin26::preset_weights(&m))
                .map_err(bad)?;
            tensors.insert(
                "preset.weights".into(),
                RawTensor {
                    dtype: safetensors::Dtype::F32,
                    shape: vec![weights.len()],
                    data: weights.iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            );
            metadata.insert(keys::PRESET_MIX.into(), mix.clone());
            metadata.insert(
                keys::USAGE.into(),
                "a mix of easel's 26 embedded presets".into(),
            );
            (Kind::PresetMix, format!("preset {mix}"))
        }
        PluginSource::Painting(path) => {
            let img = easel_core::load_rgb(path, &easel_core::LoadOptions::with_max_side(1024))?;
            let code = painting_code(path, &img)?;
            tensors.insert(
                "style.code".into(),
                raw_f32(&code).map_err(compute("reading the style code"))?,
            );
            // The painting as outputs name it, so that painting with the plugin records what
            // painting with the painting does.
            metadata.insert(keys::SOURCE.into(), easel_host::fast::painting_label(path)?);
            metadata.insert(
                keys::USAGE.into(),
                "a painting's style for easel's embedded arbitrary network".into(),
            );
            thumbnail.get_or_insert(img);
            (Kind::StyleCode, stem(path))
        }
    };
    finish(
        kind,
        default_title,
        metadata,
        tensors,
        info,
        thumbnail.as_ref(),
    )
}

/// The plugin of `kind` with the common keys: the title, the date and the user's `info`.
fn finish(
    kind: Kind,
    default_title: String,
    mut metadata: BTreeMap<String, String>,
    tensors: BTreeMap<String, RawTensor>,
    info: &PluginInfo,
    thumbnail: Option<&RgbImage>,
) -> Result<PluginFile> {
    metadata.insert(keys::TITLE.into(), default_title);
    metadata.insert(keys::DATE.into(), easel_core::time::now_rfc3339());
    apply_info(&mut metadata, info, thumbnail)?;
    Ok(PluginFile {
        kind,
        metadata,
        tensors,
    })
}

/// The bank plugin of bank-file `bytes` (`name`, the file's name, is for messages;
/// `default_title` is the title unless `info` gives one). The plugin keeps every key and tensor
/// of the bank file, so it is a bank file too.
pub fn bank_plugin(
    bytes: &[u8],
    name: &str,
    default_title: String,
    info: &PluginInfo,
) -> Result<PluginFile> {
    // Checks that it is a readable bank; the bytes are kept as they are.
    let (bank, _) =
        easel_bank::file::read_bank(bytes, &Device::Cpu).map_err(|e| PluginError::Source {
            source_name: name.to_string(),
            problem: e.to_string(),
        })?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| PluginError::Malformed {
        name: name.to_string(),
        problem: e.to_string(),
    })?;
    let mut metadata = BTreeMap::new();
    if let Ok((_, m)) = safetensors::SafeTensors::read_metadata(bytes) {
        metadata.extend(m.metadata().clone().unwrap_or_default());
    }
    metadata.insert(keys::TRIGGER.into(), bank.prompt().placeholder.clone());
    metadata.insert(
        keys::USAGE.into(),
        "a prompt bank for Stable Diffusion 1.x: paints photos through ControlNet".into(),
    );
    let tensors = crate::plugin::raw_tensors(&st);
    finish(Kind::Bank, default_title, metadata, tensors, info, None)
}

/// AdaIN's encoder and decoder tensors and keys, from the weight files `vgg_path` and
/// `decoder_path` (checked to load first).
fn put_adain(
    vgg_path: &Path,
    decoder_path: &Path,
    tensors: &mut BTreeMap<String, RawTensor>,
    metadata: &mut BTreeMap<String, String>,
) -> Result<()> {
    let vgg = read_weights_file(vgg_path)?;
    let decoder = read_weights_file(decoder_path)?;
    // Checks every key and shape now, so that a plugin that installs also loads.
    load_adain(
        vgg.clone(),
        &vgg_path.display().to_string(),
        decoder.clone(),
        &decoder_path.display().to_string(),
        &Device::Cpu,
    )
    .map_err(|e| PluginError::Source {
        source_name: decoder_path.display().to_string(),
        problem: e.to_string(),
    })?;
    put_prefixed(tensors, ADAIN_PLUGIN_PREFIXES[0], &vgg)?;
    put_prefixed(tensors, ADAIN_PLUGIN_PREFIXES[1], &decoder)?;
    metadata.insert(keys::ENCODER.into(), "vgg_normalised".into());
    metadata.insert(
        keys::USAGE.into(),
        "AdaIN: paints photos in the style of the paintings given with it".into(),
    );
    Ok(())
}

/// The painting's style code exactly as `stylize --style PAINTING` computes it (read at
/// most 1024 px, one style of weight 1 mixed).
fn painting_code(path: &Path, img: &RgbImage) -> Result<Tensor> {
    let what = format!("the style of {}", path.display());
    let device = Device::Cpu;
    let model =
        ArbitraryNet::embedded(&device).map_err(compute("loading the arbitrary network"))?;
    let painting = easel_core::rgb_to_tensor(img, &device)?;
    let code = model.style_code(&painting).map_err(compute(what.clone()))?;
    mix_style_codes(&[(&code, 1.0)]).map_err(compute(what))
}

fn apply_info(
    metadata: &mut BTreeMap<String, String>,
    info: &PluginInfo,
    thumbnail: Option<&RgbImage>,
) -> Result<()> {
    let fields = [
        (keys::TITLE, &info.title),
        (keys::DESCRIPTION, &info.description),
        (keys::AUTHOR, &info.author),
        (keys::LICENSE, &info.license),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            metadata.insert(key.into(), value.clone());
        }
    }
    if let Some(img) = info.thumbnail.as_ref().or(thumbnail) {
        metadata.insert(keys::THUMBNAIL.into(), thumbnail_uri(img)?);
    }
    Ok(())
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a bank plugin does not fit `base`: a different embedding width is an error (naming
/// both); a different base-model hash is a warning.
pub fn check_fit(
    header: &PluginHeader,
    name: &str,
    base: &BaseModelInfo,
) -> Result<Option<String>> {
    if header.kind != Kind::Bank {
        return Ok(None);
    }
    let width = header.get("embedding_dim");
    if width != base.embedding_dim.to_string() {
        return Err(PluginError::DoesNotFit {
            name: name.to_string(),
            problem: format!(
                "its embeddings are {width}-d (learned on {}) but {} has {}-d embeddings",
                header.get("base_model"),
                base.id,
                base.embedding_dim
            ),
        });
    }
    let hash = header.get("base_model_hash");
    Ok((hash != base.hash).then(|| {
        format!(
            "{name} was learned on {} (hash {}), not on {} (hash {}); its embeddings may not transfer",
            header.get("base_model"),
            hash.get(..12).unwrap_or(hash),
            base.id,
            base.hash.get(..12).unwrap_or(&base.hash)
        )
    }))
}

/// What painting with a plugin means.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginUse {
    /// Stable Diffusion conditioned on the bank in this file.
    Bank(PathBuf),
    /// The embedded presets with this mix.
    Preset(String),
    /// AdaIN with the weights in this plugin file.
    Adain(PathBuf),
    /// StyTr² with the weights in this plugin file and these settings.
    Stytr {
        /// The plugin file.
        path: PathBuf,
        /// Heads, CAPE grid and windows recorded in it.
        settings: StytrSettings,
    },
    /// The embedded arbitrary network with this style code.
    StyleCode {
        /// The code's values.
        code: Vec<f32>,
        /// Its shape.
        shape: Vec<usize>,
        /// Its name in outputs: the painting it was made from, else the plugin file.
        name: String,
    },
}

impl PluginUse {
    /// Reads what the plugin at `path` paints as (the hash is checked). A bank file or a
    /// textual-inversion embedding, uninstalled, paints as its bank.
    pub fn of(path: &Path) -> Result<Self> {
        let name = file_name(path);
        let bytes = crate::plugin::read_file(path, MAX_SOURCE_BYTES)?;
        let plugin = match PluginFile::read(&bytes, &name) {
            Ok(plugin) => plugin,
            Err(e @ PluginError::NotAPlugin { .. }) => {
                let is_bank = easel_bank::file::read_bank(&bytes, &Device::Cpu).is_ok()
                    || easel_bank::interop::import_embedding(&bytes, None, &Device::Cpu).is_ok();
                return if is_bank {
                    Ok(PluginUse::Bank(path.to_path_buf()))
                } else {
                    Err(e)
                };
            }
            Err(e) => return Err(e),
        };
        let number = |key: &str| -> Result<usize> {
            plugin
                .metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| PluginError::Malformed {
                    name: name.clone(),
                    problem: format!("metadata {key} is not a number"),
                })
        };
        Ok(match plugin.kind {
            Kind::Bank => PluginUse::Bank(path.to_path_buf()),
            Kind::Adain => PluginUse::Adain(path.to_path_buf()),
            Kind::PresetMix => {
                PluginUse::Preset(plugin.metadata.get(keys::PRESET_MIX).cloned().ok_or_else(
                    || PluginError::Malformed {
                        name: name.clone(),
                        problem: format!("a preset-mix plugin needs {}", keys::PRESET_MIX),
                    },
                )?)
            }
            Kind::Stytr => {
                let windows = plugin
                    .metadata
                    .get(keys::STYTR_WINDOWS)
                    .map(|w| {
                        w.split(',')
                            .map(str::parse)
                            .collect::<std::result::Result<Vec<usize>, _>>()
                    })
                    .and_then(|w| w.ok())
                    .ok_or_else(|| PluginError::Malformed {
                        name: name.clone(),
                        problem: format!(
                            "metadata {} is not a list of numbers",
                            keys::STYTR_WINDOWS
                        ),
                    })?;
                PluginUse::Stytr {
                    path: path.to_path_buf(),
                    settings: StytrSettings {
                        nhead: number(keys::STYTR_HEADS)?,
                        cape_grid: number(keys::STYTR_CAPE_GRID)?,
                        pyramid_windows: windows,
                    },
                }
            }
            Kind::StyleCode => {
                let (code, shape) = plugin.f32_values("style.code", &name)?;
                // Named by its painting where the plugin records one, as that painting is.
                let name = plugin.metadata.get(keys::SOURCE).cloned().unwrap_or(name);
                PluginUse::StyleCode { code, shape, name }
            }
        })
    }

    /// The host style: `paintings` for the kinds that paint with paintings, `sources` for banks.
    pub fn style(&self, paintings: &[WeightedPath], sources: &ModelSources) -> Result<Style> {
        let weights = |path: &Path| WeightFiles {
            source: Some(path.display().to_string()),
            files: Vec::new(),
            offline: true,
        };
        Ok(match self {
            PluginUse::Bank(path) => Style::Bank {
                path: path.clone(),
                prompt: None,
                force: false,
                sources: sources.clone(),
            },
            PluginUse::Preset(spec) => Style::Fast(FastStyle::Preset { spec: spec.clone() }),
            PluginUse::Adain(path) => Style::Fast(FastStyle::Adain {
                weights: weights(path),
                paintings: paintings.to_vec(),
                mask: None,
            }),
            PluginUse::Stytr { path, settings } => {
                let painting = match paintings {
                    [one] => one.path.clone(),
                    _ => {
                        return Err(PluginError::Source {
                            source_name: file_name(path),
                            problem: format!(
                                "StyTr² paints with one painting, {} given",
                                paintings.len()
                            ),
                        })
                    }
                };
                Style::Fast(FastStyle::Transformer {
                    weights: weights(path),
                    settings: settings.clone(),
                    painting,
                })
            }
            PluginUse::StyleCode { code, shape, name } => Style::Fast(FastStyle::StyleCode {
                code: code.clone(),
                shape: shape.clone(),
                name: name.clone(),
            }),
        })
    }
}
