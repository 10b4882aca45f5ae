//! LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
//! Metric", CVPR 2018, <https://arxiv.org/abs/1801.03924>) on the AlexNet backbone, as the
//! `lpips` 0.1.4 package computes `LPIPS(net='alex')(a, b, normalize=True)`.
//!
//! Neither part is embedded: the backbone is torchvision's AlexNet state dict
//! (`features.{0,3,6,8,10}.{weight,bias}`; a `.pth` read without executing it, or safetensors)
//! and the linear layers are `lpips/weights/v0.1/alex.pth` of the PyPI wheel lpips 0.1.4
//! (`lin{0..4}.model.1.weight`, `[1, C, 1, 1]`). The distance names both files by hash.
//!
//! For pictures in [0, 1]: `x ← ((2x − 1) − shift) / scale` (shift −0.030, −0.088, −0.188; scale
//! 0.458, 0.448, 0.450); features after the ReLUs of the five convolutions (conv 11×11 stride 4
//! pad 2 → ReLU → max pool 3/2 → conv 5×5 pad 2 → ReLU → max pool 3/2 → three conv 3×3 pad 1 with
//! ReLUs); each unit-normalised over channels (`x / (‖x‖ + 1e-10)`); the squared difference
//! weighted by the linear layer (a 1×1 conv to one channel), averaged over space, summed over the
//! five layers. Lower is closer; 0 for identical pictures.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{compute, MetricError, Result};

/// The channels of the five convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LpipsConfig {
    /// Output channels of `features.0`, `.3`, `.6`, `.8`, `.10`.
    pub widths: [usize; 5],
}

impl LpipsConfig {
    /// torchvision's AlexNet: 64, 192, 384, 256, 256.
    pub fn alex() -> Self {
        Self {
            widths: [64, 192, 384, 256, 256],
        }
    }
}

/// The torchvision indices of the convolutions, their kernel, stride and padding.
const CONVS: [(usize, usize, usize, usize); 5] = [
    (0, 11, 4, 2),
    (3, 5, 1, 2),
    (6, 3, 1, 1),
    (8, 3, 1, 1),
    (10, 3, 1, 1),
];
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// The smallest side the backbone reaches its last layer with (conv 11/4 then two 3/2 pools).
pub const MIN_SIDE: u32 = 31;
/// Longest side the network sees; larger pictures are shrunk first.
pub const MAX_SIDE: u32 = 512;

/// LPIPS with its backbone and linear layers loaded.
pub struct Lpips {
    convs: Vec<Conv2d>,
    lins: Vec<Tensor>,
    network: String,
    device: Device,
}

impl Lpips {
    /// LPIPS from `backbone` (prefix `features`) and `lins` (keys `lin{k}.model.1.weight`).
    pub fn new(backbone: VarBuilder, lins: VarBuilder, cfg: &LpipsConfig) -> Result<Self> {
        const WHAT: &str = "loading LPIPS";
        let mut convs = Vec::with_capacity(5);
        let mut lin_weights = Vec::with_capacity(5);
        let mut in_channels = 3;
        for (k, &(index, kernel, stride, padding)) in CONVS.iter().enumerate() {
            let out = cfg.widths[k];
            let conv = candle_nn::conv2d(
                in_channels,
                out,
                kernel,
                Conv2dConfig {
                    padding,
                    stride,
                    ..Default::default()
                },
                backbone.pp("features").pp(index.to_string()),
            )
            .map_err(compute(WHAT))?;
            convs.push(conv);
            lin_weights.push(
                lins.pp(format!("lin{k}"))
                    .pp("model")
                    .pp("1")
                    .get((1, out, 1, 1), "weight")
                    .map_err(compute(WHAT))?,
            );
            in_channels = out;
        }
        Ok(Self {
            convs,
            lins: lin_weights,
            network: String::new(),
            device: backbone.device().clone(),
        })
    }

    /// Loads the AlexNet `backbone` file and the linear-layer file `lins` on `device`; the
    /// widths are read from the backbone (so test-sized networks load too).
    pub fn from_files(backbone: &Path, lins: &Path, device: &Device) -> Result<Self> {
        let (net, net_hash) = crate::weights::read_tensors(backbone)?;
        let (lin, lin_hash) = crate::weights::read_tensors(lins)?;
        let mut widths = [0; 5];
        for (w, &(index, ..)) in widths.iter_mut().zip(&CONVS) {
            let key = format!("features.{index}.weight");
            *w = match net.get(&key) {
                Some(t) if t.rank() == 4 => t.dim(0).map_err(compute("reading LPIPS widths"))?,
                Some(t) => {
                    return Err(MetricError::Weights {
                        file: backbone.display().to_string(),
                        problem: format!("{key} has shape {:?}, not a conv kernel", t.dims()),
                    })
                }
                None => {
                    return Err(MetricError::Weights {
                        file: backbone.display().to_string(),
                        problem: format!(
                            "{key} is missing (not a torchvision AlexNet state dict?)"
                        ),
                    })
                }
            };
        }
        let mut lpips = Self::new(
            VarBuilder::from_tensors(net, DType::F32, device),
            VarBuilder::from_tensors(lin, DType::F32, device),
            &LpipsConfig { widths },
        )?;
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        lpips.network = format!(
            "LPIPS v0.1 AlexNet {} sha256:{} + {} sha256:{}",
            name(backbone),
            &net_hash[..12],
            name(lins),
            &lin_hash[..12]
        );
        Ok(lpips)
    }

    /// The backbone and linear layers by file name and hash.
    pub fn network(&self) -> &str {
        &self.network
    }

    fn features(&self, img: &RgbImage) -> candle_core::Result<Vec<Tensor>> {
        let x = easel_core::rgb_to_tensor(img, &self.device).map_err(candle_core::Error::wrap)?;
        let shift = Tensor::from_slice(&SHIFT, (1, 3, 1, 1), &self.device)?;
        let scale = Tensor::from_slice(&SCALE, (1, 3, 1, 1), &self.device)?;
        let mut x = ((x * 2.0)? - 1.0)?
            .broadcast_sub(&shift)?
            .broadcast_div(&scale)?;
        let mut out = Vec::with_capacity(5);
        for (k, conv) in self.convs.iter().enumerate() {
            if k == 1 || k == 2 {
                x = x.max_pool2d_with_stride(3, 2)?;
            }
            x = conv.forward(&x)?.relu()?;
            out.push(x.clone());
        }
        Ok(out)
    }

    /// The LPIPS distance of `a` and `b` (`b` is resized to `a`'s size with Lanczos3 when they
    /// differ; pictures over 512 px are shrunk first).
    pub fn distance(&self, a: &RgbImage, b: &RgbImage) -> Result<f64> {
        const WHAT: &str = "LPIPS";
        let a = easel_core::image_io::downscale_to_fit(a.clone(), MAX_SIDE);
        if a.width() < MIN_SIDE || a.height() < MIN_SIDE {
            return Err(MetricError::TooSmall {
                what: WHAT,
                width: a.width(),
                height: a.height(),
                min: MIN_SIDE,
            });
        }
        let b = if b.dimensions() == a.dimensions() {
            b.clone()
        } else {
            image::imageops::resize(b, a.width(), a.height(), FilterType::Lanczos3)
        };
        let unit = |t: &Tensor| -> candle_core::Result<Tensor> {
            let norm = (t.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
            t.broadcast_div(&norm)
        };
        let total = (|| -> candle_core::Result<f64> {
            let (fa, fb) = (self.features(&a)?, self.features(&b)?);
            let mut total = 0f64;
            for ((x, y), lin) in fa.iter().zip(&fb).zip(&self.lins) {
                let d = (unit(x)? - unit(y)?)?.sqr()?;
                let weighted = d.broadcast_mul(lin)?.sum_keepdim(1)?;
                let mean = weighted.mean(D::Minus1)?.mean(D::Minus1)?;
                total += f64::from(mean.flatten_all()?.to_vec1::<f32>()?[0]);
            }
            Ok(total)
        })()
        .map_err(compute(WHAT))?;
        Ok(total)
    }
}
