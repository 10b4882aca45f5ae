//! Content and style distances in the feature space of the embedded EfficientNet-Lite0
//! (ImageNet weights, [`easel_fast::efficientnet::EMBEDDED_WEIGHTS`]): the losses that
//! `easel_fast::gatys` optimises, measured on finished images.
//!
//! Images go in as `[1, 3, H, W]` RGB in [0, 1] ([`easel_core::rgb_to_tensor`]); the network
//! applies the ImageNet mean/std normalisation itself, as it does for Gatys. Taps are
//! [`LayerSet::efficientnet_lite0`]:
//!
//! - content distance: `Σ_content taps mean((F(output) − F(photo))²)` (block 5's output);
//! - style distance: `Σ_style taps mean((G(output) − G(style))²)` with the Gram matrix
//!   `G = F Fᵀ / (C·H·W)` of [`easel_fast::gatys::gram`] (stem and depthwise 1, 3, 5, 8).
//!
//! Both are 0 for identical inputs; lower is closer. Images with a side over [`MAX_SIDE`]
//! (512) are first shrunk to fit with [`easel_core::image_io::downscale_to_fit`] (Lanczos3,
//! aspect kept) to bound time and memory; for the content distance the photo is then resized
//! to the output's (shrunk) size with Lanczos3. The style image keeps its own size (Gram
//! matrices do not depend on it). Features are f32 (the network's precision); the differences
//! are summed in f64.

use candle_core::{Device, Tensor};
use easel_core::hash::sha256_hex;
use easel_core::image_io::downscale_to_fit;
use easel_fast::efficientnet::{EfficientNet, EMBEDDED_WEIGHTS};
use easel_fast::gatys::{gram, Layer, LayerSet, Perceptual as PerceptualNet};
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{compute, MetricError, Result};

/// Longest side the network sees; larger images are shrunk to it.
pub const MAX_SIDE: u32 = 512;

/// Content and Gram style distances on the embedded EfficientNet-Lite0.
pub struct Perceptual {
    net: EfficientNet,
    layers: LayerSet,
    device: Device,
}

/// Mean squared difference of two tensors of the same shape, in f64.
fn mse(a: &Tensor, b: &Tensor, what: &'static str) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(MetricError::Features {
            what,
            problem: format!("feature shapes {:?} and {:?} differ", a.dims(), b.dims()),
        });
    }
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        t.flatten_all()
            .and_then(|t| t.to_device(&Device::Cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(compute(what))
    };
    let (x, y) = (flat(a)?, flat(b)?);
    if x.is_empty() {
        return Ok(0.0);
    }
    let s: f64 = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
        .sum();
    Ok(s / x.len() as f64)
}

impl Perceptual {
    /// The embedded network on `device`.
    pub fn embedded(device: &Device) -> Result<Self> {
        let net =
            EfficientNet::lite0_embedded(device).map_err(compute("loading EfficientNet-Lite0"))?;
        Ok(Self {
            net,
            layers: LayerSet::efficientnet_lite0(),
            device: device.clone(),
        })
    }

    /// `EfficientNet-Lite0 (ImageNet) sha256:<first 12 hex digits of the weights' sha256>`.
    pub fn network(&self) -> String {
        let hash = sha256_hex(EMBEDDED_WEIGHTS);
        format!("EfficientNet-Lite0 (ImageNet) sha256:{}", &hash[..12])
    }

    fn features(
        &self,
        img: &RgbImage,
        layers: &[Layer],
        what: &'static str,
    ) -> Result<Vec<Tensor>> {
        if img.width() == 0 || img.height() == 0 {
            return Err(MetricError::TooSmall {
                what,
                width: img.width(),
                height: img.height(),
                min: 1,
            });
        }
        let x = easel_core::rgb_to_tensor(img, &self.device).map_err(compute(what))?;
        PerceptualNet::features(&self.net, &x, layers).map_err(compute(what))
    }

    /// Content distance of `output` to `photo` (see the module doc).
    pub fn content_distance(&self, output: &RgbImage, photo: &RgbImage) -> Result<f64> {
        const WHAT: &str = "content distance";
        let out = downscale_to_fit(output.clone(), MAX_SIDE);
        let photo = if photo.dimensions() == out.dimensions() {
            photo.clone()
        } else {
            image::imageops::resize(photo, out.width(), out.height(), FilterType::Lanczos3)
        };
        let taps = &self.layers.content;
        let fo = self.features(&out, taps, WHAT)?;
        let fp = self.features(&photo, taps, WHAT)?;
        fo.iter().zip(&fp).map(|(a, b)| mse(a, b, WHAT)).sum()
    }

    /// Gram style distance of `output` to `style` (any sizes; see the module doc).
    pub fn style_distance(&self, output: &RgbImage, style: &RgbImage) -> Result<f64> {
        const WHAT: &str = "style distance";
        let out = downscale_to_fit(output.clone(), MAX_SIDE);
        let style = downscale_to_fit(style.clone(), MAX_SIDE);
        let taps = &self.layers.style;
        let fo = self.features(&out, taps, WHAT)?;
        let fs = self.features(&style, taps, WHAT)?;
        let mut total = 0.0;
        for (a, b) in fo.iter().zip(&fs) {
            let ga = gram(a, None).map_err(compute(WHAT))?;
            let gb = gram(b, None).map_err(compute(WHAT))?;
            total += mse(&ga, &gb, WHAT)?;
        }
        Ok(total)
    }
}
