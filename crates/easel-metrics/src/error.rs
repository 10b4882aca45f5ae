//! The error type of easel-metrics.

/// Everything that can go wrong while measuring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// Two images that must be the same size are not.
    #[error(
        "{what}: images are {a_width}x{a_height} and {b_width}x{b_height}, which must be equal"
    )]
    SizeMismatch {
        /// Which metric.
        what: &'static str,
        /// First image width.
        a_width: u32,
        /// First image height.
        a_height: u32,
        /// Second image width.
        b_width: u32,
        /// Second image height.
        b_height: u32,
    },
    /// An image is too small for the metric (e.g. smaller than SSIM's 11-pixel window).
    #[error("{what}: a {width}x{height} image is too small (at least {min}x{min})")]
    TooSmall {
        /// Which metric.
        what: &'static str,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Smallest side accepted.
        min: u32,
    },
    /// Feature sets that cannot be compared (too few rows, different widths, non-finite values).
    #[error("{what}: {problem}")]
    Features {
        /// Which metric.
        what: &'static str,
        /// What is wrong, with the numbers.
        problem: String,
    },
    /// A weights file could not be read or is not what it should be.
    #[error("weights {file}: {problem}")]
    Weights {
        /// The file as given.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A network or tensor computation failed.
    #[error("{what}: {source}")]
    Compute {
        /// What was being computed.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Wraps a computation error as [`MetricError::Compute`] of `what`.
pub(crate) fn compute<E>(what: &'static str) -> impl Fn(E) -> MetricError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| MetricError::Compute {
        what,
        source: Box::new(e),
    }
}

/// Result alias of easel-metrics.
pub type Result<T> = std::result::Result<T, MetricError>;
