//! The error type of easel-core.
//!
//! Every variant renders as one line that names the file involved and says
//! what is wrong in words a user can act on; the CLI prints them as they are.

use std::fmt;
use std::path::PathBuf;

/// What gets an image over the decode limit through, for [`Error::TooLarge`]; a front end
/// words "downscale on load" in its own terms (a flag, a setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRelief {
    /// A maximum side, which allows a larger decode budget, gets it through.
    DownscaleOnLoad,
    /// Even downscaled on load, at most this many pixels can be decoded.
    BeyondDownscale {
        /// The decode budget of a downscaled load, in pixels.
        max_pixels: u64,
    },
    /// It was already downscaled on load: only a smaller image helps.
    SmallerImage,
}

impl fmt::Display for SizeRelief {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeRelief::DownscaleOnLoad => {
                f.write_str("downscale it on load, or use a smaller image")
            }
            SizeRelief::BeyondDownscale { max_pixels } => write!(
                f,
                "even downscaled on load at most {} MP can be decoded; use a smaller image",
                megapixels_short(*max_pixels)
            ),
            SizeRelief::SmallerImage => f.write_str("use a smaller image"),
        }
    }
}

/// Everything that can go wrong in easel-core.
///
/// Paths are kept as the caller spelled them (not canonicalised) so that
/// messages match what the user typed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read: missing, a directory, no permission...
    #[error("cannot read image {}: {reason}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// Why, e.g. `file not found`, `is a directory`.
        reason: String,
    },

    /// The file is empty (0 bytes).
    #[error("image {} is empty (0 bytes)", path.display())]
    EmptyFile {
        /// The path as given.
        path: PathBuf,
    },

    /// The content is not one of the formats easel decodes.
    #[error(
        "image {} is not a supported image format (supported: JPEG, PNG, WebP, BMP, TIFF){}",
        path.display(),
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    UnsupportedFormat {
        /// The path as given.
        path: PathBuf,
        /// Decoder detail, when there is one (e.g. an unsupported sub-format).
        detail: Option<String>,
    },

    /// The decoder recognised the format but the data is damaged or cut short.
    #[error("image {} is truncated or corrupt: {reason}", path.display())]
    Corrupt {
        /// The path as given.
        path: PathBuf,
        /// The decoder's reason.
        reason: String,
    },

    /// The header announces a width or height of zero.
    #[error("image {} has zero size ({width}x{height})", path.display())]
    ZeroSize {
        /// The path as given.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },

    /// The header announces more pixels than the decode limit allows.
    ///
    /// Checked before any pixel is decoded.
    #[error(
        "image {} is {width}x{height} = {} MP, over the {} MP limit; {relief}",
        path.display(),
        megapixels_1dp(u64::from(*width) * u64::from(*height)),
        megapixels_short(*max_pixels)
    )]
    TooLarge {
        /// The path as given.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit in force, in pixels.
        max_pixels: u64,
        /// What the user can do about it.
        relief: SizeRelief,
    },

    /// Writing the output would overwrite one of the inputs.
    #[error("refusing to write {}: it is one of the input images", path.display())]
    OutputIsInput {
        /// The output path as given.
        path: PathBuf,
    },

    /// The output file extension is not one easel writes.
    #[error(
        "cannot write {}: unsupported output extension {ext:?}; use one of .png, .jpg, .jpeg",
        path.display()
    )]
    UnsupportedOutput {
        /// The output path as given.
        path: PathBuf,
        /// The extension found (empty when there is none).
        ext: String,
    },

    /// Writing the output failed (missing directory, disk full, encoder error...).
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The output path as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// An input path given on the command line cannot be used.
    #[error("cannot use input {}: {reason}", path.display())]
    Input {
        /// The path as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The inputs, once directories are expanded, hold no image.
    #[error("no images found in {}; looked for {}", describe_paths(paths), crate::image_io::IMAGE_EXTENSIONS.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(", "))]
    NoImages {
        /// The paths that were searched.
        paths: Vec<PathBuf>,
    },

    /// An argument is out of range: a tensor of the wrong shape or holding
    /// NaN, a zero `max_side`... The message says which and why.
    #[error("{0}")]
    InvalidArgument(String),

    /// `--device` was given something that is not a device name.
    #[error("unknown device {given:?}; expected one of: auto, cpu, cuda")]
    UnknownDevice {
        /// What was given.
        given: String,
    },

    /// CUDA was asked for but this binary cannot use it.
    #[error("{0}")]
    Cuda(String),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Model files are neither in the Hugging Face cache nor downloadable
    /// now (offline, or the hub cannot be reached). The message (several
    /// lines) lists every missing file and the commands that fetch them.
    #[error("{0}")]
    MissingModelFiles(Box<crate::hub::MissingModelFiles>),

    /// Files are missing from a local model folder.
    #[error("missing model files in {}: {}", dir.display(), files.join(", "))]
    MissingLocalFiles {
        /// The folder as given.
        dir: PathBuf,
        /// The missing files, as paths inside the folder.
        files: Vec<String>,
    },

    /// The hub answered but a model file could not be downloaded: it does
    /// not exist, access is denied, or writing the cache failed.
    #[error("cannot download {file} from {repo_id} @ {revision}: {reason}")]
    Download {
        /// Repository id.
        repo_id: String,
        /// Revision asked for.
        revision: String,
        /// File name inside the repository (alternatives joined with " or ").
        file: String,
        /// Why.
        reason: String,
    },

    /// A model file name, repository id or revision was refused (e.g. a
    /// `..` that would lead out of the model folder).
    #[error("refusing model file name {name:?}: {reason}")]
    ModelFileName {
        /// The name as given.
        name: String,
        /// Why.
        reason: String,
    },

    /// A model source (`--sd`, `--controlnet`...) cannot be used.
    #[error("cannot use model {given:?}: {reason}")]
    ModelSource {
        /// What was given.
        given: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`Error`] as the error type.
pub type Result<T> = std::result::Result<T, Error>;

/// `108000000` → `108.0`; tiny counts keep their digits (`512` → `0.000512`)
/// rather than collapsing to a misleading `0.0`.
fn megapixels_1dp(pixels: u64) -> String {
    let mp = pixels as f64 / 1e6;
    if pixels >= 100_000 {
        format!("{mp:.1}")
    } else {
        format!("{mp}")
    }
}

/// `64000000` → `64`, `1500000` → `1.5`: limits read better without a
/// trailing `.0`.
pub(crate) fn megapixels_short(pixels: u64) -> String {
    if pixels.is_multiple_of(1_000_000) {
        format!("{}", pixels / 1_000_000)
    } else {
        megapixels_1dp(pixels)
    }
}

fn describe_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(no input paths given)".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
