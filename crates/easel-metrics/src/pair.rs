//! Every per-pair metric of one output, named, with its direction, so that reports can
//! label columns (↑/↓), pick the best per photo and never mix networks in one column.

use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;

use crate::edges::edge_f1;
use crate::error::Result;
use crate::histogram::histogan_distance;
use crate::lab::lab_gap;
use crate::lpips::Lpips;
use crate::perceptual::Perceptual;
use crate::ssim::ssim;
use crate::vgg::VggLosses;

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
    vgg: Option<VggLosses>,
    lpips: Option<Lpips>,
}

impl PairMeter {
    /// A meter; with `perceptual`, content and style distances on its network too.
    pub fn new(perceptual: Option<Perceptual>) -> Self {
        Self {
            perceptual,
            vgg: None,
            lpips: None,
        }
    }

    /// This meter with the LPIPS distance to the photo too.
    pub fn with_lpips(mut self, lpips: Lpips) -> Self {
        self.lpips = Some(lpips);
        self
    }

    /// This meter with AdaIN's and StyTr²'s losses on `vgg` too.
    pub fn with_vgg(mut self, vgg: VggLosses) -> Self {
        self.vgg = Some(vgg);
        self
    }

    /// The metrics [`PairMeter::measure`] reports, in order, for an output with (or without) a
    /// style image: `ssim`, `edge_f1`, `lab_mean_photo`, `lab_std_photo`; with a style
    /// `histogan`, `lab_mean_style`, `lab_std_style`; with the perceptual network `content`
    /// and, with a style, `style`; with a VGG-19 `adain_content`, `stytr_content` and, with a
    /// style, `adain_style`, `stytr_style`; with LPIPS `lpips` (to the photo).
    pub fn metrics(&self, with_style: bool) -> Vec<Metric> {
        let plain = |key, label, better| Metric {
            key,
            label,
            better,
            network: None,
        };
        let mut m = vec![
            plain("ssim", "SSIM to photo", Better::Higher),
            plain("edge_f1", "edge F1 to photo", Better::Higher),
            plain("lab_mean_photo", "Lab mean gap to photo", Better::Lower),
            plain("lab_std_photo", "Lab std gap to photo", Better::Lower),
        ];
        if with_style {
            m.extend([
                plain("histogan", "HistoGAN distance to style", Better::Lower),
                plain("lab_mean_style", "Lab mean gap to style", Better::Lower),
                plain("lab_std_style", "Lab std gap to style", Better::Lower),
            ]);
        }
        if let Some(p) = &self.perceptual {
            let network = Some(p.network());
            m.push(Metric {
                key: "content",
                label: "content distance to photo",
                better: Better::Lower,
                network: network.clone(),
            });
            if with_style {
                m.push(Metric {
                    key: "style",
                    label: "Gram style distance to style",
                    better: Better::Lower,
                    network,
                });
            }
        }
        if let Some(vgg) = &self.vgg {
            let on_vgg = |key, label| Metric {
                key,
                label,
                better: Better::Lower,
                network: Some(vgg.network().to_string()),
            };
            m.push(on_vgg("adain_content", "AdaIN content loss to photo"));
            m.push(on_vgg("stytr_content", "StyTr² content loss to photo"));
            if with_style {
                m.push(on_vgg("adain_style", "AdaIN style loss to style"));
                m.push(on_vgg("stytr_style", "StyTr² style loss to style"));
            }
        }
        if let Some(lpips) = &self.lpips {
            m.push(Metric {
                key: "lpips",
                label: "LPIPS to photo",
                better: Better::Lower,
                network: Some(lpips.network().to_string()),
            });
        }
        m
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
        let resized;
        let photo = if photo.dimensions() == output.dimensions() {
            photo
        } else {
            resized = image::imageops::resize(
                photo,
                output.width(),
                output.height(),
                FilterType::Lanczos3,
            );
            &resized
        };
        let photo_gap = lab_gap(output, photo);
        let mut values = vec![
            ssim(output, photo)?,
            edge_f1(photo, output)?,
            photo_gap.mean,
            photo_gap.std,
        ];
        if let Some(style) = style {
            let style_gap = lab_gap(output, style);
            values.extend([
                histogan_distance(output, style)?,
                style_gap.mean,
                style_gap.std,
            ]);
        }
        if let Some(p) = &self.perceptual {
            values.push(p.content_distance(output, photo)?);
            if let Some(style) = style {
                values.push(p.style_distance(output, style)?);
            }
        }
        if let Some(vgg) = &self.vgg {
            let v = vgg.measure(output, photo, style)?;
            values.extend([v.adain_content, v.stytr_content]);
            values.extend(v.adain_style);
            values.extend(v.stytr_style);
        }
        if let Some(lpips) = &self.lpips {
            values.push(lpips.distance(output, photo)?);
        }
        Ok(self
            .metrics(style.is_some())
            .into_iter()
            .zip(values)
            .map(|(metric, value)| Value { metric, value })
            .collect())
    }
}
