//! Loading Stable Diffusion 1.x and ControlNet weights from disk.
//!
//! Two layouts are read:
//!
//! - a **diffusers folder** (as `save_pretrained` writes it, or a Hugging Face snapshot):
//!   `model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and optionally
//!   `scheduler/scheduler_config.json`; a ControlNet folder holds `config.json` and its weights.
//!   Weights are `*.safetensors` (one file or shards with an index), plain or of a variant
//!   (`diffusion_pytorch_model.fp16.safetensors`, [`LoadOptions::variant`]).
//! - a **single-file checkpoint** (the original `ldm` key layout: `model.diffusion_model.*`,
//!   `first_stage_model.*`, `cond_stage_model.transformer.*`; ControlNet `control_model.*`),
//!   whose keys are mapped to diffusers' with [`KeyMap`]. Such a file carries no configuration
//!   and no tokenizer: the caller gives both ([`ModelConfigs::sd15`] for SD 1.x).
//!
//! Every tensor goes through [`CheckedTensors`], so a missing or mis-shaped tensor fails naming
//! the key, the expected shape and the file. Pickle checkpoints (`.bin`, `.ckpt`, ...) are
//! refused, never read. Nothing is downloaded: paths come from the caller.
//!
//! **Dtypes.** On CPU only f32 is accepted (candle's CPU kernels are slow or missing in f16 /
//! bf16); on CUDA f32, f16 and bf16 are.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{bail, DType, Device, Result, Tensor};
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::clip::{ClipTextConfig, ClipTextModel};
use easel_diffusion::controlnet::{ControlNetConfig, ControlNetModel};
use easel_diffusion::schedulers::SchedulerConfig;
use easel_diffusion::tokenizer::ClipTokenizer;
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
use easel_diffusion::vae::{AutoencoderKL, AutoencoderKLConfig};
use easel_diffusion::weights::{
    check_safetensors_bytes, clip_config_from_transformers_json, component_files,
    controlnet_config_from_diffusers_json, model_index, shard_files,
    unet_config_from_diffusers_json, upgrade_legacy_attention_keys, vae_config_from_diffusers_json,
    CheckedTensors, Component, KeyMap,
};

use crate::scheduler_config::scheduler_config_from_diffusers_json;

/// Where and how to load weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the models run on.
    pub device: Device,
    /// The dtype of the models' weights and activations (f32 on CPU).
    pub dtype: DType,
    /// A weights variant of diffusers folders (`"fp16"` reads
    /// `diffusion_pytorch_model.fp16.safetensors`); `None` reads the plain files. Tensors are
    /// converted to [`LoadOptions::dtype`] whatever the variant stores.
    pub variant: Option<String>,
    /// How the UNet's and ControlNet's attention evaluates its scores (not stored in weight
    /// files; [`AttentionSlicing::Full`] unless large images need bounded memory).
    pub attention_slicing: AttentionSlicing,
}

impl LoadOptions {
    /// f32 on the CPU, plain weight files.
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            variant: None,
            attention_slicing: AttentionSlicing::Full,
        }
    }

    /// Loading onto `device` in `dtype`, plain weight files. Fails for a dtype other than f32
    /// on the CPU, and for dtypes that are not floating point.
    pub fn new(device: Device, dtype: DType) -> Result<Self> {
        check_dtype(&device, dtype)?;
        Ok(Self {
            device,
            dtype,
            variant: None,
            attention_slicing: AttentionSlicing::Full,
        })
    }

    /// The same options reading weights of `variant` (e.g. `"fp16"`).
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// The same options building the UNet and ControlNet with `slicing`.
    pub fn with_attention_slicing(mut self, slicing: AttentionSlicing) -> Self {
        self.attention_slicing = slicing;
        self
    }
}

/// Fails for dtypes the models cannot run in on `device`.
pub fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 => Ok(()),
        DType::F16 | DType::BF16 if device.is_cpu() => bail!(
            "{} on CPU is not supported: candle's CPU kernels are slow or incomplete in {}; \
             use --dtype f32",
            dtype.as_str(),
            dtype.as_str()
        ),
        DType::F16 | DType::BF16 => Ok(()),
        other => bail!(
            "dtype {} is not supported for the models (use f32, or f16 / bf16 on CUDA)",
            other.as_str()
        ),
    }
}

/// The configurations of a Stable Diffusion model whose files carry none (single-file
/// checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfigs {
    /// The denoiser.
    pub unet: UNet2DConditionModelConfig,
    /// The autoencoder.
    pub vae: AutoencoderKLConfig,
    /// The text encoder.
    pub text_encoder: ClipTextConfig,
    /// The training noise schedule.
    pub scheduler: SchedulerConfig,
}

impl ModelConfigs {
    /// The configurations of a diffusers pipeline folder: `unet/`, `vae/` and `text_encoder/`
    /// `config.json`, and `scheduler/scheduler_config.json` when present (else SD 1.5's
    /// schedule); the weights are not read. Describes a single-file checkpoint of another
    /// shape than SD 1.5 (diffusers' `from_single_file(..., config=DIR)`).
    pub fn from_diffusers_dir(dir: &Path) -> Result<Self> {
        let text = |sub: &str| -> Result<(PathBuf, String)> {
            let path = dir.join(sub);
            let text = read_text(&path)?;
            Ok((path, text))
        };
        let (path, json) = text("unet/config.json")?;
        let unet = unet_config_from_diffusers_json(&json).map_err(|e| in_file(&path, e))?;
        let (path, json) = text("vae/config.json")?;
        let vae = vae_config_from_diffusers_json(&json).map_err(|e| in_file(&path, e))?;
        let (path, json) = text("text_encoder/config.json")?;
        let text_encoder =
            clip_config_from_transformers_json(&json).map_err(|e| in_file(&path, e))?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler = if scheduler_path.is_file() {
            scheduler_config_from_diffusers_json(&read_text(&scheduler_path)?)
                .map_err(|e| in_file(&scheduler_path, e))?
        } else {
            SchedulerConfig::sd15()
        };
        Ok(Self {
            unet,
            vae,
            text_encoder,
            scheduler,
        })
    }

    /// Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes).
    pub fn sd15() -> Self {
        Self {
            unet: UNet2DConditionModelConfig::sd15(),
            vae: AutoencoderKLConfig::sd15(),
            text_encoder: ClipTextConfig::sd15(),
            scheduler: SchedulerConfig::sd15(),
        }
    }
}

/// A ControlNet and its configuration.
#[derive(Debug, Clone)]
pub struct ControlNet {
    /// The model.
    pub model: ControlNetModel,
    /// Its configuration (the pipeline reads `global_pool_conditions`).
    pub config: ControlNetConfig,
}

/// The models of a Stable Diffusion 1.x pipeline, loaded and ready to run.
#[derive(Debug, Clone)]
pub struct StableDiffusion {
    /// The CLIP tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextModel,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The VAE's weights, kept so that an f16 / bf16 decode that overflows can be redone in
    /// f32 (see [`StableDiffusion::vae_in`]); `None` when the VAE was built by hand.
    pub vae_weights: Option<CheckedTensors>,
    /// The ControlNet, if one was loaded.
    pub controlnet: Option<ControlNet>,
    /// The training noise schedule (from `scheduler/scheduler_config.json`, else SD 1.5's).
    pub scheduler_config: SchedulerConfig,
    /// The device the models run on.
    pub device: Device,
    /// The dtype of the models.
    pub dtype: DType,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, optionally `scheduler/scheduler_config.json`). A
    /// `controlnet/` folder inside it is loaded too. Fails naming the missing file or tensor.
    pub fn from_diffusers_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::from_diffusers_dir_with_tokenizer(dir, None, opts)
    }

    /// [`Self::from_diffusers_dir`] with `tokenizer` instead of the folder's own `tokenizer/`
    /// (for folders that ship none; `None` reads the folder's).
    pub fn from_diffusers_dir_with_tokenizer(
        dir: &Path,
        tokenizer: Option<ClipTokenizer>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        check_dtype(&opts.device, opts.dtype)?;
        let index_path = dir.join("model_index.json");
        let (class, entries) =
            model_index(&read_text(&index_path)?).map_err(|e| in_file(&index_path, e))?;
        let needed: &[&str] = match tokenizer {
            Some(_) => &["unet", "vae", "text_encoder"],
            None => &["unet", "vae", "text_encoder", "tokenizer"],
        };
        for needed in needed {
            if !entries.iter().any(|e| e.name == *needed) {
                bail!(
                    "{}: the {class} pipeline has no \"{needed}\" component (a Stable Diffusion \
                     1.x pipeline needs unet, vae, text_encoder and tokenizer)",
                    index_path.display()
                )
            }
        }
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => load_tokenizer_dir(&dir.join("tokenizer"))?,
        };
        let text_encoder = load_text_encoder_dir(&dir.join("text_encoder"), opts)?;
        let unet = load_unet_dir(&dir.join("unet"), opts)?;
        let (vae, vae_weights) = load_vae_dir(&dir.join("vae"), opts)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = if scheduler_path.is_file() {
            scheduler_config_from_diffusers_json(&read_text(&scheduler_path)?)
                .map_err(|e| in_file(&scheduler_path, e))?
        } else {
            SchedulerConfig::sd15()
        };
        let controlnet_dir = dir.join("controlnet");
        let controlnet = if entries.iter().any(|e| e.name == "controlnet") {
            Some(load_controlnet_dir(&controlnet_dir, opts)?)
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            vae_weights: Some(vae_weights),
            controlnet,
            scheduler_config,
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    /// Loads an original single-file checkpoint (`.safetensors` with `model.diffusion_model.*`,
    /// `first_stage_model.*` and `cond_stage_model.transformer.*` keys) built with `configs`,
    /// and the tokenizer the caller loaded (single files carry none). Each component's tensors
    /// are read to host memory once, converted to diffusers keys and moved to the device; the
    /// VAE's stay in host memory as [`StableDiffusion::vae_weights`].
    pub fn from_single_file(
        path: &Path,
        configs: &ModelConfigs,
        tokenizer: ClipTokenizer,
        opts: &LoadOptions,
    ) -> Result<Self> {
        check_dtype(&opts.device, opts.dtype)?;
        let file = SingleFile::open(path)?;
        let unet_weights = file.component(&KeyMap::unet(&configs.unet))?;
        let unet_config = UNet2DConditionModelConfig {
            attention_slicing: opts.attention_slicing,
            ..configs.unet.clone()
        };
        let unet = UNet2DConditionModel::new(
            unet_weights.var_builder(opts.dtype, &opts.device),
            &unet_config,
        )
        .map_err(|e| in_file(path, e))?;
        let vae_weights = file.component(&KeyMap::vae(&configs.vae))?;
        let vae = AutoencoderKL::new(
            vae_weights.var_builder(opts.dtype, &opts.device),
            configs.vae.clone(),
        )
        .map_err(|e| in_file(path, e))?;
        let clip_weights = file.component(&KeyMap::clip(&configs.text_encoder))?;
        let text_encoder = ClipTextModel::new(
            clip_weights.var_builder(opts.dtype, &opts.device),
            &configs.text_encoder,
        )
        .map_err(|e| in_file(path, e))?;
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            vae_weights: Some(vae_weights),
            controlnet: None,
            scheduler_config: configs.scheduler.clone(),
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    /// The same models with `controlnet` attached (replacing any other).
    pub fn with_controlnet(mut self, controlnet: ControlNet) -> Self {
        self.controlnet = Some(controlnet);
        self
    }

    /// The VAE in `dtype`: the loaded one when `dtype` is the models' dtype, else rebuilt from
    /// [`StableDiffusion::vae_weights`] (the pipeline uses this to redo an overflowing f16
    /// decode in f32).
    pub fn vae_in(&self, dtype: DType) -> Result<AutoencoderKL> {
        if dtype == self.dtype {
            return Ok(self.vae.clone());
        }
        let Some(weights) = &self.vae_weights else {
            bail!(
                "the VAE was not loaded from weights, so it cannot be rebuilt in {}",
                dtype.as_str()
            )
        };
        AutoencoderKL::new(
            weights.var_builder(dtype, &self.device),
            self.vae.config().clone(),
        )
    }
}

/// Loads a diffusers ControlNet folder (`config.json` and `diffusion_pytorch_model*.safetensors`).
pub fn load_controlnet_dir(dir: &Path, opts: &LoadOptions) -> Result<ControlNet> {
    check_dtype(&opts.device, opts.dtype)?;
    let config_path = dir.join("config.json");
    let config = ControlNetConfig {
        attention_slicing: opts.attention_slicing,
        ..controlnet_config_from_diffusers_json(&read_text(&config_path)?)
            .map_err(|e| in_file(&config_path, e))?
    };
    let weights = component_weights(dir, Component::ControlNet, opts.variant.as_deref())?;
    let model = ControlNetModel::new(weights.var_builder(opts.dtype, &opts.device), &config)?;
    Ok(ControlNet { model, config })
}

/// Loads an original ControlNet checkpoint (`control_model.*` keys, or the same keys without
/// the prefix) built with `config` ([`ControlNetConfig::sd15`] for SD 1.x ControlNets).
pub fn load_controlnet_single_file(
    path: &Path,
    config: &ControlNetConfig,
    opts: &LoadOptions,
) -> Result<ControlNet> {
    check_dtype(&opts.device, opts.dtype)?;
    let config = &ControlNetConfig {
        attention_slicing: opts.attention_slicing,
        ..config.clone()
    };
    let file = SingleFile::open(path)?;
    let weights = if file.is_ldm {
        file.component(&KeyMap::controlnet(config))?
    } else {
        // Already diffusers keys (a renamed `diffusion_pytorch_model.safetensors`).
        CheckedTensors::from_mmaped(file.source.clone(), file.tensors)
    };
    let model = ControlNetModel::new(weights.var_builder(opts.dtype, &opts.device), config)
        .map_err(|e| in_file(path, e))?;
    Ok(ControlNet {
        model,
        config: config.clone(),
    })
}

/// Loads a CLIP tokenizer folder: `tokenizer.json`, else `vocab.json` + `merges.txt`. The pad
/// token of `tokenizer_config.json` or `special_tokens_map.json` is used when given (SD 1.x pads
/// with `<|endoftext|>`, SD 2.x with `!`).
pub fn load_tokenizer_dir(dir: &Path) -> Result<ClipTokenizer> {
    let json = dir.join("tokenizer.json");
    let mut tokenizer = if json.is_file() {
        ClipTokenizer::from_tokenizer_json(&read_text(&json)?).map_err(|e| in_file(&json, e))?
    } else {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        if !vocab.is_file() || !merges.is_file() {
            bail!(
                "{}: no tokenizer.json, nor vocab.json and merges.txt",
                dir.display()
            )
        }
        ClipTokenizer::from_vocab_merges(&read_text(&vocab)?, &read_text(&merges)?)
            .map_err(|e| in_file(&vocab, e))?
    };
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        if let Some(pad) = pad_token(&read_text(&path)?).map_err(|e| in_file(&path, e))? {
            let Some(id) = tokenizer.token_id(&pad) else {
                bail!(
                    "{}: pad token {pad:?} is not in the vocabulary",
                    path.display()
                )
            };
            tokenizer.set_pad_id(id)?;
            break;
        }
    }
    Ok(tokenizer)
}

/// The `pad_token` of a `tokenizer_config.json` / `special_tokens_map.json` (a string or an
/// object with `content`), if any.
fn pad_token(json: &str) -> Result<Option<String>> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| candle_core::Error::Msg(format!("invalid JSON: {e}")))?;
    Ok(match value.get("pad_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(obj @ serde_json::Value::Object(_)) => obj
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    })
}

fn load_text_encoder_dir(dir: &Path, opts: &LoadOptions) -> Result<ClipTextModel> {
    let config_path = dir.join("config.json");
    let config = clip_config_from_transformers_json(&read_text(&config_path)?)
        .map_err(|e| in_file(&config_path, e))?;
    let weights = component_weights(dir, Component::TextEncoder, opts.variant.as_deref())?;
    ClipTextModel::new(weights.var_builder(opts.dtype, &opts.device), &config)
}

fn load_unet_dir(dir: &Path, opts: &LoadOptions) -> Result<UNet2DConditionModel> {
    let config_path = dir.join("config.json");
    let config = UNet2DConditionModelConfig {
        attention_slicing: opts.attention_slicing,
        ..unet_config_from_diffusers_json(&read_text(&config_path)?)
            .map_err(|e| in_file(&config_path, e))?
    };
    let weights = component_weights(dir, Component::Unet, opts.variant.as_deref())?;
    UNet2DConditionModel::new(weights.var_builder(opts.dtype, &opts.device), &config)
}

fn load_vae_dir(dir: &Path, opts: &LoadOptions) -> Result<(AutoencoderKL, CheckedTensors)> {
    let config_path = dir.join("config.json");
    let config = vae_config_from_diffusers_json(&read_text(&config_path)?)
        .map_err(|e| in_file(&config_path, e))?;
    let mut weights = component_weights(dir, Component::Vae, opts.variant.as_deref())?;
    let legacy = weights
        .names()
        .iter()
        .any(|n| n.contains(".attentions.") && n.ends_with(".query.weight"));
    if legacy {
        // VAEs saved by diffusers < 0.14 name the attention projections query/key/value.
        let names = weights.names();
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            let tensor = vb.get_unchecked(&name)?;
            tensors.insert(name, tensor);
        }
        let (tensors, _) = upgrade_legacy_attention_keys(tensors);
        weights = CheckedTensors::from_tensors(weights.source().to_string(), tensors);
    }
    let vae = AutoencoderKL::new(weights.var_builder(opts.dtype, &opts.device), config)?;
    Ok((vae, weights))
}

/// The weights of one component folder: its single file or its shards, plain or of `variant`.
fn component_weights(
    dir: &Path,
    component: Component,
    variant: Option<&str>,
) -> Result<CheckedTensors> {
    let names = component_files(component, variant)?;
    let (single, index) = match names.as_slice() {
        [single, index, ..] => (dir.join(single), dir.join(index)),
        _ => bail!("no weight file names for {}", component.folder()),
    };
    let paths = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let shards = shard_files(&read_text(&index)?).map_err(|e| in_file(&index, e))?;
        shards.iter().map(|s| dir.join(s)).collect()
    } else {
        let mut msg = format!(
            "{}: no {} weights: neither {} nor {}",
            dir.display(),
            component.folder(),
            names[0],
            names[1]
        );
        if let Some(found) = other_weight_files(dir) {
            msg.push_str(&format!(" (found {found}"));
            msg.push_str(match variant {
                None => "; pass the variant, e.g. fp16, if these are variant files)",
                Some(_) => ")",
            });
        }
        bail!("{msg}")
    };
    let source = match paths.as_slice() {
        [one] => one.display().to_string(),
        _ => format!("{} ({} shards)", dir.display(), paths.len()),
    };
    Ok(CheckedTensors::from_mmaped(source, mmap_checked(&paths)?))
}

/// Weight-looking files in `dir`, for the "no weights" message.
fn other_weight_files(dir: &Path) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".safetensors", ".bin", ".ckpt", ".pt", ".pth"]
                .iter()
                .any(|ext| n.ends_with(ext))
        })
        .collect();
    found.sort();
    (!found.is_empty()).then(|| found.join(", "))
}

/// Checks that every path is a safetensors file (refusing pickles by name and content), then
/// memory-maps them.
fn mmap_checked(paths: &[PathBuf]) -> Result<MmapedSafetensors> {
    for path in paths {
        let mut head = Vec::with_capacity(16);
        File::open(path)
            .and_then(|f| f.take(16).read_to_end(&mut head))
            .map_err(|e| io_error(path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_safetensors_bytes(&name, &head).map_err(|e| in_file(path, e))?;
    }
    // SAFETY: a mapping is sound only while nobody writes or truncates the file. easel maps the
    // weights read-only and never writes them, but another process can: that is the contract
    // every memory-mapped loader (candle's, safetensors') leaves to the user. A file changed
    // meanwhile can give wrong weights or a load error; names and shapes are checked on load.
    unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| match paths {
        [one] => in_file(one, e),
        _ => e,
    })
}

/// An open single-file checkpoint.
struct SingleFile {
    source: String,
    tensors: MmapedSafetensors,
    is_ldm: bool,
}

impl SingleFile {
    fn open(path: &Path) -> Result<Self> {
        let tensors = mmap_checked(&[path.to_path_buf()])?;
        let names: Vec<String> = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        let is_ldm = easel_diffusion::weights::is_ldm_checkpoint(names.iter().map(String::as_str));
        Ok(Self {
            source: path.display().to_string(),
            tensors,
            is_ldm,
        })
    }

    /// The tensors of one component under diffusers keys (read to host memory).
    fn component(&self, map: &KeyMap) -> Result<CheckedTensors> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, _) in self.tensors.tensors() {
            if map.ldm_to_diffusers(&name).is_some() {
                let tensor = self
                    .tensors
                    .load(&name, &Device::Cpu)
                    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.source)))?;
                tensors.insert(name, tensor);
            }
        }
        let converted = map
            .to_diffusers(&tensors)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.source)))?;
        Ok(CheckedTensors::from_tensors(
            format!("{} of {}", map.component(), self.source),
            converted.tensors,
        ))
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> candle_core::Error {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        _ => e.to_string(),
    };
    candle_core::Error::Msg(format!("cannot read {}: {reason}", path.display()))
}

/// Prefixes an error with the file it concerns (unless the message names it already).
fn in_file(path: &Path, e: candle_core::Error) -> candle_core::Error {
    let shown = path.display().to_string();
    let msg = e.to_string();
    if msg.contains(&shown) {
        candle_core::Error::Msg(msg)
    } else {
        candle_core::Error::Msg(format!("{shown}: {msg}"))
    }
}
