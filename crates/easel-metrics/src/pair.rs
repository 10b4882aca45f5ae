//! Every per-pair metric of one output, named, with its direction, so that reports can
//! label columns (↑/↓), pick the best per photo and never mix networks in one column.

use image::RgbImage;
use serde::Serialize;

use crate::error::Result;
use crate::perceptual::Perceptual;

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Larger is better (SSIM, edge F1).
    Higher,
    /// Smaller is better (distances).
    Lower,
}

/// A metric's identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// Stable key for JSON/CSV columns (`ssim`, `edge_f1`, `histogan`, ...).
    pub key: &'static str,
    /// Short human label (`SSIM to photo`).
    pub label: &'static str,
    /// Which way it improves.
    pub better: Better,
    /// The network it is computed on, with the sha256 of its weights (`None`: no network).
    pub network: Option<String>,
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Value {
    /// What was measured.
    pub metric: Metric,
    /// The value.
    pub value: f64,
}

/// Measures outputs against their photo and style.
pub struct PairMeter {
    perceptual: Option<Perceptual>,
}

impl PairMeter {
    /// A meter; with `perceptual`, content and style distances on its network too.
    pub fn new(perceptual: Option<Perceptual>) -> Self {
        Self { perceptual }
    }

    /// The metrics [`PairMeter::measure`] reports, in order, for an output with (or without) a
    /// style image.
    pub fn metrics(&self, with_style: bool) -> Vec<Metric> {
        let _ = (with_style, &self.perceptual);
        todo!("metrics helper")
    }

    /// Measures `output` against `photo` (resized to the output's size with Lanczos3 when the
    /// sizes differ) and, when given, against `style`. The values come in the order of
    /// [`PairMeter::metrics`].
    pub fn measure(
        &self,
        photo: &RgbImage,
        output: &RgbImage,
        style: Option<&RgbImage>,
    ) -> Result<Vec<Value>> {
        let _ = (photo, output, style);
        todo!("metrics helper")
    }
}
