//! The error type of easel-compare.

use std::path::PathBuf;

/// Everything that stops a comparison before or while it writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// A style could not be resolved or painted.
    #[error(transparent)]
    Host(#[from] easel_host::HostError),
    /// A plugin could not be found or read (boxed: plugin errors are large).
    #[error(transparent)]
    Plugin(Box<easel_styles::PluginError>),
    /// A metric could not be computed.
    #[error(transparent)]
    Metric(#[from] easel_metrics::MetricError),
    /// An image could not be read or written.
    #[error(transparent)]
    Image(#[from] easel_core::Error),
    /// No photo to paint.
    #[error("no photos to compare")]
    NoPhotos,
    /// No style to paint with.
    #[error("no styles to compare")]
    NoMethods,
    /// The output folder exists as something else.
    #[error("output folder {} exists and is not a folder", path.display())]
    OutputNotFolder {
        /// The path as given.
        path: PathBuf,
    },
    /// Two photos would write the same cell files.
    #[error("photos {} and {} have the same name {name:?}; their cells would collide", first.display(), second.display())]
    PhotoNameClash {
        /// The first photo.
        first: PathBuf,
        /// The second photo with that name.
        second: PathBuf,
        /// The shared file stem.
        name: String,
    },
    /// A SPEC that is no built-in method names no plugin file either (and there is no store).
    #[error("{name:?} is neither a built-in method nor a plugin file")]
    UnknownStyle {
        /// The name as given.
        name: String,
    },
    /// A painter gave something unusable.
    #[error("{what}: {problem}")]
    Painting {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        problem: String,
    },
    /// Set metrics need at least two pictures on each side.
    #[error("set metrics need at least 2 pictures per set; got {results} result(s) and {references} reference(s)")]
    SetTooSmall {
        /// Result pictures given.
        results: usize,
        /// Reference pictures given.
        references: usize,
    },
    /// A file of the comparison could not be written.
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<easel_styles::PluginError> for CompareError {
    fn from(err: easel_styles::PluginError) -> Self {
        CompareError::Plugin(Box::new(err))
    }
}

/// Result alias of easel-compare.
pub type Result<T> = std::result::Result<T, CompareError>;
