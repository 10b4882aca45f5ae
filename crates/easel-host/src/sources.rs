//! Where the diffusion models come from: which files make a Stable Diffusion 1.x model and its
//! ControlNet, the fp16 preference, the tokenizer fallback, and one hub resolution for all of
//! them ([`ModelSources::resolve`]); then loading them ([`ResolvedModels::load`]).
//!
//! Hub ids resolve through [`HubResolver::resolve_many`] in ONE call (cache first, downloads
//! otherwise; offline, one error lists every missing file); local folders and single
//! `.safetensors` files are used where they are. The result names every file it chose.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use easel_core::{HubResolver, ProgressHook, RepoFiles, WeightSource};
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::controlnet::ControlNetConfig;
use easel_diffusion::weights::{component_files, Component};
use easel_pipeline::models::{
    self, load_controlnet_dir, load_controlnet_single_file, load_tokenizer_dir, ModelConfigs,
    StableDiffusion,
};

use crate::controlnet_registry::ControlNetEntry;
use crate::error::{HostError, ModelRole, Result};

/// The Stable Diffusion weights used when none are named.
pub const DEFAULT_SD: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// Where the tokenizer of a single-file checkpoint comes from (such files carry none).
pub const DEFAULT_TOKENIZER_REPO: &str = "openai/clip-vit-large-patch14";

/// The files of a CLIP tokenizer folder in the vocab + merges form.
const TOKENIZER_FILES: [&str; 4] = [
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// What the caller asked for: the sources as given, before anything is resolved.
#[derive(Debug, Clone, Default)]
pub struct ModelSources {
    /// Stable Diffusion: a hub id `org/name[@rev]`, a diffusers folder or a single
    /// `.safetensors` checkpoint (`None`: [`DEFAULT_SD`]).
    pub sd: Option<String>,
    /// For a single-file checkpoint: a diffusers folder with its configurations (and
    /// tokenizer).
    pub sd_config: Option<PathBuf>,
    /// The ControlNet, when one is used (`None`: no ControlNet, plain img2img).
    pub controlnet: Option<ControlNetSource>,
    /// Never download.
    pub offline: bool,
    /// What the missing-files error suggests instead of the hub, per model.
    pub hints: SourceHints,
}

/// The alternatives a missing-files error offers, in the front end's words.
#[derive(Debug, Clone)]
pub struct SourceHints {
    /// Instead of the Stable Diffusion hub repository.
    pub sd: String,
    /// Instead of the hub tokenizer of a checkpoint without one.
    pub tokenizer: String,
    /// Instead of the ControlNet hub repository.
    pub controlnet: String,
}

impl Default for SourceHints {
    fn default() -> Self {
        Self {
            sd: "use a local diffusers folder or a single .safetensors checkpoint".to_string(),
            tokenizer: "use a diffusers folder that has tokenizer/, or give the checkpoint a \
                        configuration folder with one"
                .to_string(),
            controlnet: "use a local ControlNet folder".to_string(),
        }
    }
}

/// The ControlNet to use: a registry entry's default weights, or other weights for it.
#[derive(Debug, Clone)]
pub struct ControlNetSource {
    /// The registry entry (repository, files, preprocessor defaults).
    pub entry: ControlNetEntry,
    /// Other weights than the entry's repository: hub id, folder or single file.
    pub weights: Option<String>,
}

/// Where a resolved Stable Diffusion lives.
#[derive(Debug, Clone, PartialEq)]
pub enum SdLocation {
    /// A diffusers folder (a hub snapshot or a local folder).
    Dir {
        /// The folder.
        dir: PathBuf,
        /// The weight variant to load (`fp16`), if any.
        variant: Option<String>,
        /// A tokenizer folder to use instead of `dir/tokenizer`.
        tokenizer: Option<PathBuf>,
    },
    /// A single `.safetensors` checkpoint.
    SingleFile {
        /// The checkpoint.
        file: PathBuf,
        /// Its tokenizer folder.
        tokenizer: PathBuf,
        /// The diffusers folder with its configurations (`None`: SD 1.5's).
        configs: Option<PathBuf>,
    },
}

/// Where a resolved ControlNet lives.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlNetLocation {
    /// A folder with `config.json` and the weights.
    Dir {
        /// The folder.
        dir: PathBuf,
        /// The weight variant to load (`fp16`), if any.
        variant: Option<String>,
    },
    /// A single `.safetensors` file (SD 1.5's ControlNet configuration).
    SingleFile(PathBuf),
}

/// The models found for [`ModelSources`], with their ids for the records.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModels {
    /// Stable Diffusion.
    pub sd: SdLocation,
    /// The ControlNet, when one was asked for.
    pub controlnet: Option<ControlNetLocation>,
    /// The source of Stable Diffusion as given (the base-model id a bank records).
    pub base_model_id: String,
    /// Every model's id (`repo@commit` or path), in load order, for output parameters.
    pub ids: Vec<String>,
}

/// `repo@<snapshot commit>` when `dir` is a hub snapshot folder, else `repo@revision`.
fn snapshot_id(repo_id: &str, revision: &str, dir: &Path) -> String {
    match dir.file_name().map(|n| n.to_string_lossy().into_owned()) {
        Some(hash) if hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("{repo_id}@{hash}")
        }
        _ => format!("{repo_id}@{revision}"),
    }
}

/// The variant of a local component folder: `fp16` when only fp16 files are there, or when
/// both are and fp16 is preferred.
fn dir_variant(component_dir: &Path, component: Component, prefer_fp16: bool) -> Option<String> {
    let has = |variant: Option<&str>| {
        component_files(component, variant)
            .map(|names| names.iter().any(|n| component_dir.join(n).is_file()))
            .unwrap_or(false)
    };
    let (fp16, plain) = (has(Some("fp16")), has(None));
    (fp16 && (prefer_fp16 || !plain)).then(|| "fp16".to_string())
}

/// `fp16` for a `*.fp16.safetensors` file.
fn path_variant(path: &Path) -> Option<String> {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".fp16.safetensors"))
        .then(|| "fp16".to_string())
}

/// A component's weight file in its folder, the preferred variant first.
fn weight_alternatives(component: Component, prefer_fp16: bool) -> Result<[String; 2]> {
    let first = |variant| {
        component_files(component, variant)
            .ok()
            .and_then(|names| names.first().cloned())
            .ok_or_else(|| {
                HostError::source(
                    ModelRole::StableDiffusion,
                    format!("no weight file name for {}", component.folder()),
                )
            })
    };
    let (plain, fp16) = (first(None)?, first(Some("fp16"))?);
    let (a, b) = if prefer_fp16 {
        (fp16, plain)
    } else {
        (plain, fp16)
    };
    Ok([
        format!("{}/{a}", component.folder()),
        format!("{}/{b}", component.folder()),
    ])
}

/// The diffusers UNet weights file of a pipeline folder, if it is a single file (what the
/// base-model hash of a bank reads).
pub fn unet_file(dir: &Path, variant: Option<&str>) -> Option<PathBuf> {
    let names = component_files(Component::Unet, variant).ok()?;
    let file = dir.join(Component::Unet.folder()).join(names.first()?);
    file.is_file().then_some(file)
}

/// One hub request's answer: the path of each requested file, then of each chosen
/// alternative, read by name or group instead of by position.
struct Answer<'a> {
    request: &'a RepoFiles,
    paths: Vec<PathBuf>,
}

impl Answer<'_> {
    /// The path of the requested file `name`.
    fn file(&self, name: &str) -> Result<&Path> {
        let k = self.request.files.iter().position(|f| f == name);
        k.and_then(|k| self.paths.get(k))
            .map(PathBuf::as_path)
            .ok_or_else(|| self.missing(name))
    }

    /// The path chosen for the `k`-th group of alternatives.
    fn chosen(&self, k: usize) -> Result<&Path> {
        self.paths
            .get(self.request.files.len() + k)
            .map(PathBuf::as_path)
            .ok_or_else(|| self.missing(&format!("alternative group {k}")))
    }

    /// The snapshot folder: the folder of the requested file `name` at its top level.
    fn snapshot_dir(&self, name: &str) -> Result<PathBuf> {
        let path = self.file(name)?;
        Ok(path.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    fn missing(&self, what: &str) -> HostError {
        HostError::source(
            ModelRole::StableDiffusion,
            format!(
                "the hub resolver returned no path for {what} of {}",
                self.request.repo_id
            ),
        )
    }
}

impl ModelSources {
    /// Resolves every model: one hub call for all hub files (`progress` sees downloads), fp16
    /// files preferred when `prefer_fp16` (CUDA in half precision), full precision otherwise.
    pub fn resolve(
        &self,
        prefer_fp16: bool,
        progress: Option<ProgressHook>,
    ) -> Result<ResolvedModels> {
        let sd_text = self.sd.as_deref().unwrap_or(DEFAULT_SD);
        let sd_source = WeightSource::parse(sd_text)?;
        let cn_source = match &self.controlnet {
            None => None,
            Some(cn) => Some(match &cn.weights {
                Some(s) => WeightSource::parse(s)?,
                None => WeightSource::Hub {
                    repo_id: cn.entry.repo.clone(),
                    revision: cn.entry.revision.clone(),
                },
            }),
        };
        if let (Some(dir), false) = (
            &self.sd_config,
            matches!(sd_source, WeightSource::SingleFile(_)),
        ) {
            return Err(HostError::source(
                ModelRole::SdConfig,
                format!(
                    "the configuration folder {} describes a single-file checkpoint; {sd_text} \
                     is a folder or hub repository with its own configurations",
                    dir.display()
                ),
            ));
        }
        let mut resolver: Option<HubResolver> = None;
        let mut get_resolver = || -> Result<HubResolver> {
            if let Some(r) = &resolver {
                return Ok(r.clone());
            }
            let mut r = HubResolver::from_env()?;
            // Offline by request; otherwise as the environment (HF_HUB_OFFLINE) says.
            if self.offline {
                r = r.with_offline(true);
            }
            if let Some(hook) = &progress {
                r = r.with_progress(hook.clone());
            }
            resolver = Some(r.clone());
            Ok(r)
        };

        // A single file's tokenizer comes from its configuration folder's tokenizer/, else
        // the hub; a local folder without tokenizer/ gets the hub's too.
        let config_tokenizer = self
            .sd_config
            .as_ref()
            .map(|dir| dir.join("tokenizer"))
            .filter(|t| t.is_dir());
        let needs_hub_tokenizer = match &sd_source {
            WeightSource::SingleFile(_) => config_tokenizer.is_none(),
            WeightSource::LocalDir(dir) => !dir.join("tokenizer").is_dir(),
            WeightSource::Hub { .. } => false,
        };

        let sd_request = match &sd_source {
            WeightSource::Hub { repo_id, revision } => {
                let resolver = get_resolver()?;
                let request = sd_hub_request(&resolver, repo_id, revision, prefer_fp16)?;
                Some(request.with_hint(self.hints.sd.clone()))
            }
            _ => None,
        };
        let tokenizer_request = needs_hub_tokenizer.then(|| {
            RepoFiles::new(
                DEFAULT_TOKENIZER_REPO,
                easel_core::hub::DEFAULT_REVISION,
                &TOKENIZER_FILES,
            )
            .with_hint(self.hints.tokenizer.clone())
        });
        let cn_request = match (&cn_source, &self.controlnet) {
            (Some(WeightSource::Hub { repo_id, revision }), Some(cn)) => {
                let files: Vec<&str> = cn.entry.files.iter().map(String::as_str).collect();
                Some(
                    RepoFiles::new(repo_id.clone(), revision.clone(), &files)
                        .with_one_of(&cn.entry.weights_in_order(prefer_fp16))
                        .with_hint(self.hints.controlnet.clone()),
                )
            }
            _ => None,
        };
        let requests: Vec<&RepoFiles> = [&sd_request, &tokenizer_request, &cn_request]
            .into_iter()
            .flatten()
            .collect();
        let mut answers: Vec<Answer<'_>> = Vec::with_capacity(requests.len());
        if !requests.is_empty() {
            let owned: Vec<RepoFiles> = requests.iter().map(|r| (*r).clone()).collect();
            let paths = get_resolver()?.resolve_many(&owned)?;
            answers = requests
                .into_iter()
                .zip(paths)
                .map(|(request, paths)| Answer { request, paths })
                .collect();
        }
        let answer_of = |request: &Option<RepoFiles>| -> Option<&Answer<'_>> {
            let request = request.as_ref()?;
            answers.iter().find(|a| std::ptr::eq(a.request, request))
        };

        let mut ids = Vec::new();
        let hub_tokenizer = match answer_of(&tokenizer_request) {
            Some(answer) => {
                let dir = answer.snapshot_dir(TOKENIZER_FILES[0])?;
                ids.push(snapshot_id(
                    DEFAULT_TOKENIZER_REPO,
                    easel_core::hub::DEFAULT_REVISION,
                    &dir,
                ));
                Some(dir)
            }
            None => None,
        };
        let sd = match &sd_source {
            WeightSource::Hub { repo_id, revision } => {
                let answer = answer_of(&sd_request).ok_or_else(|| {
                    HostError::source(
                        ModelRole::StableDiffusion,
                        format!("no hub answer for {repo_id}"),
                    )
                })?;
                let dir = answer.snapshot_dir("model_index.json")?;
                let weights = [answer.chosen(0)?, answer.chosen(1)?, answer.chosen(2)?];
                let variants = weights.map(path_variant);
                if variants.iter().any(|v| v != &variants[0]) {
                    return Err(HostError::MixedVariants {
                        repo: repo_id.clone(),
                        files: weights.iter().map(|p| p.to_path_buf()).collect(),
                    });
                }
                ids.insert(0, snapshot_id(repo_id, revision, &dir));
                SdLocation::Dir {
                    dir,
                    variant: variants[0].clone(),
                    tokenizer: None,
                }
            }
            WeightSource::LocalDir(dir) => {
                ids.insert(0, dir.display().to_string());
                SdLocation::Dir {
                    dir: dir.clone(),
                    variant: dir_variant(&dir.join("unet"), Component::Unet, prefer_fp16),
                    tokenizer: hub_tokenizer,
                }
            }
            WeightSource::SingleFile(file) => {
                ids.insert(0, file.display().to_string());
                let tokenizer = hub_tokenizer.or(config_tokenizer).ok_or_else(|| {
                    HostError::source(
                        ModelRole::StableDiffusion,
                        format!("no tokenizer for {}", file.display()),
                    )
                })?;
                if let Some(dir) = &self.sd_config {
                    ids.push(format!("config {}", dir.display()));
                }
                SdLocation::SingleFile {
                    file: file.clone(),
                    tokenizer,
                    configs: self.sd_config.clone(),
                }
            }
        };
        let controlnet = match &cn_source {
            None => None,
            Some(WeightSource::Hub { repo_id, revision }) => {
                let answer = answer_of(&cn_request).ok_or_else(|| {
                    HostError::source(
                        ModelRole::ControlNet,
                        format!("no hub answer for {repo_id}"),
                    )
                })?;
                let weights = answer.chosen(0)?;
                let dir = weights.parent().map(Path::to_path_buf).unwrap_or_default();
                ids.push(snapshot_id(repo_id, revision, &dir));
                Some(ControlNetLocation::Dir {
                    variant: path_variant(weights),
                    dir,
                })
            }
            Some(WeightSource::LocalDir(dir)) => {
                ids.push(dir.display().to_string());
                Some(ControlNetLocation::Dir {
                    dir: dir.clone(),
                    variant: dir_variant(dir, Component::ControlNet, prefer_fp16),
                })
            }
            Some(WeightSource::SingleFile(file)) => {
                ids.push(file.display().to_string());
                Some(ControlNetLocation::SingleFile(file.clone()))
            }
        };
        Ok(ResolvedModels {
            sd,
            controlnet,
            base_model_id: sd_text.to_string(),
            ids,
        })
    }
}

/// The files of a Stable Diffusion hub repository: configurations, the tokenizer (its
/// `tokenizer.json` form when that is cached), and one weight file per component.
fn sd_hub_request(
    resolver: &HubResolver,
    repo_id: &str,
    revision: &str,
    prefer_fp16: bool,
) -> Result<RepoFiles> {
    let mut files = vec![
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
    ];
    // SD 1.5 repositories ship vocab.json + merges.txt; converted ones may have a
    // tokenizer.json instead: use it when it is already cached.
    let tokenizer_files: Vec<String> = TOKENIZER_FILES
        .iter()
        .map(|f| format!("tokenizer/{f}"))
        .collect();
    if resolver
        .cached_path(repo_id, revision, "tokenizer/tokenizer.json")?
        .is_some()
    {
        files.push("tokenizer/tokenizer.json");
    } else {
        files.extend(tokenizer_files.iter().map(String::as_str));
    }
    let mut request = RepoFiles::new(repo_id, revision, &files);
    for component in [Component::Unet, Component::Vae, Component::TextEncoder] {
        let alternatives = weight_alternatives(component, prefer_fp16)?;
        let alternatives: Vec<&str> = alternatives.iter().map(String::as_str).collect();
        request = request.with_one_of(&alternatives);
    }
    Ok(request)
}

impl ResolvedModels {
    /// The UNet weights file a bank's base-model hash reads (`None` for single files).
    pub fn unet_file(&self) -> Option<PathBuf> {
        match &self.sd {
            SdLocation::Dir { dir, variant, .. } => unet_file(dir, variant.as_deref()),
            SdLocation::SingleFile { .. } => None,
        }
    }

    /// Loads Stable Diffusion (and the ControlNet) on `device` in `dtype`.
    pub fn load(
        &self,
        device: &Device,
        dtype: DType,
        slicing: AttentionSlicing,
    ) -> Result<StableDiffusion> {
        let load_error = |what, path: &Path| {
            let path = path.to_path_buf();
            move |e: candle_core::Error| HostError::Load {
                what,
                path,
                source: Box::new(e),
            }
        };
        let base = models::LoadOptions::new(device.clone(), dtype)
            .map_err(HostError::compute("choosing the model dtype"))?
            .with_attention_slicing(slicing);
        let with_variant = |variant: &Option<String>| match variant {
            Some(v) => base.clone().with_variant(v.clone()),
            None => base.clone(),
        };
        let mut sd = match &self.sd {
            SdLocation::Dir {
                dir,
                variant,
                tokenizer,
            } => {
                let tokenizer = match tokenizer {
                    Some(t) => {
                        Some(load_tokenizer_dir(t).map_err(load_error("the CLIP tokenizer", t))?)
                    }
                    None => None,
                };
                StableDiffusion::from_diffusers_dir_with_tokenizer(
                    dir,
                    tokenizer,
                    &with_variant(variant),
                )
                .map_err(load_error("Stable Diffusion", dir))?
            }
            SdLocation::SingleFile {
                file,
                tokenizer,
                configs,
            } => {
                let tokenizer = load_tokenizer_dir(tokenizer)
                    .map_err(load_error("the CLIP tokenizer", tokenizer))?;
                let configs = match configs {
                    Some(dir) => ModelConfigs::from_diffusers_dir(dir)
                        .map_err(load_error("the model configurations", dir))?,
                    None => ModelConfigs::sd15(),
                };
                StableDiffusion::from_single_file(file, &configs, tokenizer, &base)
                    .map_err(load_error("Stable Diffusion", file))?
            }
        };
        sd.controlnet = match &self.controlnet {
            None => None,
            Some(ControlNetLocation::Dir { dir, variant }) => Some(
                load_controlnet_dir(dir, &with_variant(variant))
                    .map_err(load_error("the ControlNet", dir))?,
            ),
            Some(ControlNetLocation::SingleFile(file)) => Some(
                load_controlnet_single_file(file, &ControlNetConfig::sd15(), &base)
                    .map_err(load_error("the ControlNet", file))?,
            ),
        };
        Ok(sd)
    }
}

/// Stable Diffusion loaded with what it was loaded from.
pub struct LoadedModels {
    /// The models.
    pub sd: StableDiffusion,
    /// Where they came from.
    pub resolved: ResolvedModels,
}

impl ModelSources {
    /// The Stable Diffusion model as a bank sees it (id, text-encoder width, base-model
    /// hash), loaded on the CPU in f32 without its ControlNet: what a bank must fit.
    pub fn base_model(&self) -> Result<easel_bank::file::BaseModelInfo> {
        let mut sources = self.clone();
        sources.controlnet = None;
        let resolved = sources.resolve(false, None)?;
        let sd = resolved.load(&Device::Cpu, DType::F32, AttentionSlicing::Full)?;
        let unet = resolved.unet_file();
        Ok(easel_bank::conditioning::base_model_info(
            &sd,
            &resolved.base_model_id,
            unet.as_deref(),
        )?)
    }
}

impl ModelSources {
    /// Stable Diffusion `sd` with the registry's default ControlNet (its weights replaced by
    /// `controlnet` when given): the models `learn` trains through and `bench` times.
    pub fn with_default_controlnet(
        sd: Option<String>,
        controlnet: Option<String>,
        offline: bool,
    ) -> Result<Self> {
        let entry = crate::controlnet_registry::entry(crate::controlnet_registry::DEFAULT_ENTRY)?;
        Ok(Self {
            sd,
            sd_config: None,
            controlnet: Some(ControlNetSource {
                entry,
                weights: controlnet,
            }),
            offline,
            hints: SourceHints::default(),
        })
    }

    /// Resolves and loads the models on `device` in `dtype` (default: f16 on CUDA, f32 on the
    /// CPU; checked against the device).
    pub fn load(
        &self,
        device: &Device,
        dtype: Option<DType>,
        slicing: AttentionSlicing,
        progress: Option<ProgressHook>,
    ) -> Result<LoadedModels> {
        let dtype = dtype.unwrap_or(if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        });
        models::check_dtype(device, dtype).map_err(|e| {
            HostError::setting(
                crate::Setting::Dtype,
                dtype.as_str(),
                format!("cannot be used: {e}"),
            )
        })?;
        let prefer_fp16 = !device.is_cpu() && dtype != DType::F32;
        let resolved = self.resolve(prefer_fp16, progress)?;
        let sd = resolved.load(device, dtype, slicing)?;
        Ok(LoadedModels { sd, resolved })
    }
}
