//! The error type of the style host. Every variant names the offending value; none names a
//! command-line flag: [`Setting`] and [`ModelRole`] say which input was wrong, and a front end
//! words them in its own terms.

use std::path::PathBuf;

/// Which model input a source error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    /// The Stable Diffusion weights (hub id, diffusers folder or single file).
    StableDiffusion,
    /// The configuration folder of a single-file Stable Diffusion checkpoint.
    SdConfig,
    /// The ControlNet weights.
    ControlNet,
    /// A fast method's weights folder or hub repository.
    FastWeights,
}

/// A setting of a request, for [`HostError::Setting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The short side of the diffusion canvas.
    Size,
    /// How much style (fast) or how much of the schedule (diffusion) is applied.
    Strength,
    /// Denoising steps of the full schedule.
    Steps,
    /// Classifier-free guidance scale.
    Guidance,
    /// DDIM's eta.
    Eta,
    /// Images per photo.
    Batch,
    /// The ControlNet conditioning scale.
    ControlScale,
    /// The ControlNet's start / end fractions.
    ControlWindow,
    /// Canny thresholds.
    Canny,
    /// The long-side cap of fast-method photos.
    MaxSize,
    /// A style reference (painting, preset mix, weights).
    Style,
    /// The dtype of the models.
    Dtype,
    /// StyTr²'s attention heads.
    Heads,
    /// StyTr²'s CAPE grid.
    CapeGrid,
    /// The pyramidal encoding's windows.
    Windows,
    /// Gatys: optimiser iterations per octave.
    Iterations,
    /// Gatys: coarse-to-fine passes.
    Octaves,
    /// Gatys: the painting's size relative to the photo's.
    StyleScale,
    /// Gatys: the weight of the content loss.
    ContentWeight,
    /// Gatys: the weight of the style loss.
    StyleWeight,
    /// Gatys: the weight of the total-variation loss.
    TvWeight,
    /// A mask splitting the photo between paintings.
    Mask,
    /// Gatys: the colour controls (luminance only, histogram matching).
    Color,
    /// Tile-by-tile VAE encoding and decoding.
    VaeTiling,
    /// Gatys: the layers whose Gram matrices carry the style.
    StyleLayers,
    /// Gatys: the layers that carry the content.
    ContentLayers,
    /// Gatys: the VGG-19 checkpoint to optimise on.
    Vgg19,
}

impl Setting {
    /// The setting's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Size => "size",
            Setting::Strength => "strength",
            Setting::Steps => "steps",
            Setting::Guidance => "guidance",
            Setting::Eta => "eta",
            Setting::Batch => "batch",
            Setting::ControlScale => "control scale",
            Setting::ControlWindow => "control window",
            Setting::Canny => "canny thresholds",
            Setting::MaxSize => "max size",
            Setting::Style => "style",
            Setting::Dtype => "dtype",
            Setting::Heads => "attention heads",
            Setting::CapeGrid => "CAPE grid",
            Setting::Windows => "pyramid windows",
            Setting::Iterations => "iterations",
            Setting::Octaves => "octaves",
            Setting::StyleScale => "style scale",
            Setting::ContentWeight => "content weight",
            Setting::StyleWeight => "style weight",
            Setting::TvWeight => "TV weight",
            Setting::Mask => "mask",
            Setting::Color => "colour control",
            Setting::VaeTiling => "VAE tiling",
            Setting::StyleLayers => "style layers",
            Setting::ContentLayers => "content layers",
            Setting::Vgg19 => "VGG-19 weights",
        }
    }
}

/// Everything the style host can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A request setting is out of range or inconsistent.
    #[error("{} {value} {problem}", setting.name())]
    Setting {
        /// Which setting.
        setting: Setting,
        /// The offending value as given.
        value: String,
        /// What is wrong with it (a phrase following the value: "is outside (0, 1]").
        problem: String,
    },
    /// A model source cannot be used as given.
    #[error("{problem}")]
    Source {
        /// Which model.
        role: ModelRole,
        /// What is wrong, naming the value.
        problem: String,
    },
    /// A fast method's weight files are not given or not where they were said to be.
    #[error("{problem}; {home}")]
    MissingWeights {
        /// The method (`AdaIN`, `StyTr²`).
        method: &'static str,
        /// What is missing.
        problem: String,
        /// Where the public weights are published.
        home: String,
    },
    /// The ControlNet registry entry is missing or malformed.
    #[error("ControlNet registry entry {name}: {problem}")]
    Registry {
        /// The entry.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A hub repository's cached weights mix fp16 and full-precision files.
    #[error(
        "{repo}: the cached weights mix fp16 and full-precision files ({}); download the same \
         kind for unet, vae and text_encoder",
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MixedVariants {
        /// The repository.
        repo: String,
        /// The weight files found.
        files: Vec<PathBuf>,
    },
    /// Image I/O, hub resolution and other easel-core failures.
    #[error(transparent)]
    Core(#[from] easel_core::Error),
    /// A weight file cannot be read.
    #[error("cannot read {what} {}: {reason}", path.display())]
    ReadWeights {
        /// What the file holds, e.g. `AdaIN weights`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Loading a model from its files failed.
    #[error("loading {what} from {}: {source}", path.display())]
    Load {
        /// The model, e.g. `Stable Diffusion`.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bank cannot condition the model.
    #[error(transparent)]
    Bank(Box<easel_bank::conditioning::ConditioningError>),
    /// The work's estimated memory exceeds what the device has available; nothing was started.
    #[error("{error}")]
    Memory {
        /// The estimate and what was available.
        error: easel_core::memory::OutOfMemory,
        /// The settings that lower the need.
        relief: &'static [Setting],
    },
    /// A model computation failed.
    #[error("{what}: {source}")]
    Compute {
        /// What was being done.
        what: String,
        /// The tensor error.
        source: candle_core::Error,
    },
}

impl HostError {
    /// A [`HostError::Setting`]: `value` of `setting` `problem`.
    pub(crate) fn setting(
        setting: Setting,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        Self::Setting {
            setting,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// A [`HostError::Source`].
    pub(crate) fn source(role: ModelRole, problem: impl Into<String>) -> Self {
        Self::Source {
            role,
            problem: problem.into(),
        }
    }

    /// A [`HostError::Compute`] while doing `what`.
    pub(crate) fn compute(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let what = what.into();
        move |source| Self::Compute { what, source }
    }
}

impl From<easel_bank::conditioning::ConditioningError> for HostError {
    fn from(e: easel_bank::conditioning::ConditioningError) -> Self {
        // Boxed: bank errors are large and rare; every other result stays small.
        Self::Bank(Box::new(e))
    }
}

/// The result type of the style host.
pub type Result<T> = std::result::Result<T, HostError>;
