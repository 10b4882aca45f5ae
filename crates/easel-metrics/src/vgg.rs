//! AdaIN's and StyTr²'s content and style losses on a given VGG-19 (`vgg_normalised.pth`,
//! [`easel_fast::vgg`]), measured on finished images — the numbers those papers and StyleID's
//! evaluation report. The weights are never embedded: the caller gives the file (a PyTorch
//! checkpoint read without executing anything, or safetensors), and every value names it by
//! file name and sha256.
//!
//! With `F_l` the relu*l*_1 features of a picture in [0, 1]:
//!
//! - AdaIN content: `mean((F_4(output) − F_4(photo))²)` (Huang & Belongie 2017 train against
//!   the AdaIN target; measured on a finished image the photo's features are the target, as
//!   StyTr²'s and StyleID's evaluations do);
//! - AdaIN style: [`easel_fast::losses::style_loss`] over relu1_1 … relu4_1 (MSE of
//!   per-channel means plus MSE of per-channel standard deviations);
//! - StyTr² content: [`easel_fast::losses::normalized_content_loss`] (mean-variance-normalised
//!   relu4_1 and relu5_1);
//! - StyTr² style: the same style loss over relu1_1 … relu5_1.
//!
//! Lower is closer; all are 0 for identical pictures. Images are shrunk to a long side of at
//! most [`MAX_SIDE`] first (Lanczos3), and the photo to the output's size.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_core::image_io::downscale_to_fit;
use easel_fast::losses::{mse, normalized_content_loss, style_loss};
use easel_fast::vgg::{Config, Layer, VggEncoder};
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{compute, MetricError, Result};

/// Longest side the network sees.
pub const MAX_SIDE: u32 = 512;

/// The four losses of one output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VggValues {
    /// AdaIN content loss to the photo.
    pub adain_content: f64,
    /// StyTr² content loss to the photo.
    pub stytr_content: f64,
    /// AdaIN style loss to the style (with a style).
    pub adain_style: Option<f64>,
    /// StyTr² style loss to the style (with a style).
    pub stytr_style: Option<f64>,
}

/// A loaded VGG-19 and its name.
pub struct VggLosses {
    encoder: VggEncoder,
    network: String,
    device: Device,
}

fn scalar(t: candle_core::Result<Tensor>, what: &'static str) -> Result<f64> {
    t.and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_scalar::<f64>())
        .map_err(compute(what))
}

impl VggLosses {
    /// Loads the VGG-19 of `path` (`.safetensors`, else a PyTorch checkpoint) on `device`; its
    /// widths are read from the weights, so the tiny test checkpoints load as well.
    pub fn from_file(path: &Path, device: &Device) -> Result<Self> {
        const WHAT: &str = "loading the VGG-19 weights";
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (tensors, hash) = crate::weights::read_tensors(path)?;
        let widths = easel_fast::train::vgg_widths(&tensors).map_err(compute(WHAT))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let encoder = VggEncoder::new(
            vb,
            &Config {
                widths,
                depth: Layer::Relu5_1,
            },
        )
        .map_err(compute(WHAT))?;
        Ok(Self {
            encoder,
            network: format!("VGG-19 {name} sha256:{}", &hash[..12]),
            device: device.clone(),
        })
    }

    /// `VGG-19 <file name> sha256:<first 12 hex digits of the file's sha256>`.
    pub fn network(&self) -> &str {
        &self.network
    }

    fn features(&self, img: &RgbImage, what: &'static str) -> Result<Vec<Tensor>> {
        let min = Layer::Relu5_1.min_side() as u32;
        if img.width() < min || img.height() < min {
            return Err(MetricError::TooSmall {
                what,
                width: img.width(),
                height: img.height(),
                min,
            });
        }
        let x = easel_core::rgb_to_tensor(img, &self.device).map_err(compute(what))?;
        self.encoder
            .forward_layers(&x, Layer::Relu5_1)
            .map_err(compute(what))
    }

    /// The losses of `output` against `photo` and, when given, `style` (see the module doc).
    pub fn measure(
        &self,
        output: &RgbImage,
        photo: &RgbImage,
        style: Option<&RgbImage>,
    ) -> Result<VggValues> {
        const WHAT: &str = "VGG-19 losses";
        let out = downscale_to_fit(output.clone(), MAX_SIDE);
        let photo = if photo.dimensions() == out.dimensions() {
            photo.clone()
        } else {
            image::imageops::resize(photo, out.width(), out.height(), FilterType::Lanczos3)
        };
        let fo = self.features(&out, WHAT)?;
        let fp = self.features(&photo, WHAT)?;
        let adain_content = scalar(mse(&fo[3], &fp[3]), WHAT)?;
        let stytr_content = scalar(normalized_content_loss(&fo, &fp), WHAT)?;
        let (adain_style, stytr_style) = match style {
            None => (None, None),
            Some(style) => {
                let fs = self.features(&downscale_to_fit(style.clone(), MAX_SIDE), WHAT)?;
                (
                    Some(scalar(style_loss(&fo[..4], &fs[..4]), WHAT)?),
                    Some(scalar(style_loss(&fo, &fs), WHAT)?),
                )
            }
        };
        Ok(VggValues {
            adain_content,
            stytr_content,
            adain_style,
            stytr_style,
        })
    }
}
