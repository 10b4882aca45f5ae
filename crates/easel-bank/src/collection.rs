//! The artwork collection a bank is learned from, as cached training views.
//!
//! Each artwork gives a fixed set of `K` views ([`crate::train::TrainConfig::views_per_image`],
//! 4 by default): the short side is resized to `resolution · s` with `s ~ U(1, 1.2)`, a square
//! `resolution × resolution` crop is taken at a uniform offset, and odd views are mirrored
//! horizontally (so both orientations are always present). The views are drawn from a
//! generator seeded by the image's hash, so an image always gives the same views, whatever the
//! training seed. Per view the trainer needs
//!
//! - the VAE latents: the posterior mean × the VAE's `scaling_factor` (the mean rather than a
//!   sample, so that a cached view is one fixed target), and
//! - the control image: the view's own Canny edges, for runs that train through the ControlNet
//!   ([`crate::train::TrainConfig::control`]; the official LSAST and ArtBank code trains
//!   without one and uses the ControlNet at inference only).
//!
//! Encoding is the expensive part, so [`prepare_examples`] caches both per image in a folder the
//! caller gives: `<cache>/<key>.safetensors`, `key` = sha256 of the image (size and pixels), the
//! resolution, `K`, the Canny thresholds and the caller's model key (so another VAE never reads
//! stale latents). Tensors: `latents` f32 `[K, 4, r/8, r/8]`, `edges` u8 `[K, r, r]`. Files are
//! written atomically (temporary file + rename); an unreadable cache file is recomputed.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{bail, DType, Device, Result, Tensor};
use easel_core::safetensors_writer::{safetensors_bytes, TensorBytes};
use easel_diffusion::vae::AutoencoderKL;
use easel_pipeline::canny::{canny, control_tensor, CannyOptions};
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};

use crate::train::TrainConfig;
use easel_core::hash::hex;
use easel_core::rng::SplitMix64;

/// Smallest short-side scale of a view (the crop covers the whole short side).
const MIN_SCALE: f64 = 1.0;
/// Largest short-side scale of a view.
const MAX_SCALE: f64 = 1.2;

/// One cached training view of an artwork.
#[derive(Debug, Clone)]
pub struct TrainExample {
    /// Scaled VAE latents `[1, 4, r/8, r/8]` (f32).
    pub latents: Tensor,
    /// The control image `[1, 3, r, r]` in `[0, 1]` (the view's Canny edges, f32).
    pub control: Tensor,
}

/// sha256 (hex) of a collection: of each image's width, height (u32 little-endian) and RGB
/// bytes, in order.
pub fn collection_hash(images: &[RgbImage]) -> String {
    let mut hasher = Sha256::new();
    for image in images {
        hash_image(&mut hasher, image);
    }
    hex(&hasher.finalize())
}

fn hash_image(hasher: &mut Sha256, image: &RgbImage) {
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
}

/// The `views` square views of side `resolution` of `image` (see the module docs). Fails for an
/// empty image, a zero resolution or zero views.
pub fn crop_views(image: &RgbImage, resolution: usize, views: usize) -> Result<Vec<RgbImage>> {
    let (w, h) = (image.width() as u64, image.height() as u64);
    if w == 0 || h == 0 {
        bail!("artwork has an empty {w}x{h} image")
    }
    if resolution == 0 || views == 0 {
        bail!("views need a resolution and a count of at least 1 (got {resolution}, {views})")
    }
    let mut hasher = Sha256::new();
    hash_image(&mut hasher, image);
    let digest = hasher.finalize();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    let mut rng = SplitMix64::new(u64::from_le_bytes(seed));
    let res = resolution as u64;
    (0..views)
        .map(|k| {
            let scale = MIN_SCALE + (MAX_SCALE - MIN_SCALE) * rng.unit();
            let short = ((res as f64 * scale).round() as u64).max(res);
            // Both sides at least `res`: the short one is `short`, the long one scales with it.
            let (nw, nh) = if w <= h {
                (short, (h * short).div_ceil(w).max(res))
            } else {
                ((w * short).div_ceil(h).max(res), short)
            };
            let (nw, nh) = (to_u32(nw)?, to_u32(nh)?);
            let resized = imageops::resize(image, nw, nh, FilterType::Triangle);
            let x = rng.below(u64::from(nw) - res + 1);
            let y = rng.below(u64::from(nh) - res + 1);
            let r = to_u32(res)?;
            let crop = imageops::crop_imm(&resized, to_u32(x)?, to_u32(y)?, r, r).to_image();
            Ok(if k % 2 == 1 {
                imageops::flip_horizontal(&crop)
            } else {
                crop
            })
        })
        .collect()
}

fn to_u32(v: u64) -> Result<u32> {
    match u32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("image side {v} does not fit in 32 bits"),
    }
}

/// The training views of `images` (`config.views_per_image` per image, image-major order),
/// encoded with `vae` on its `device` in `dtype`, read from or written to the `cache` folder
/// when given. `model_key` identifies the VAE (e.g. the base-model hash) in cache keys.
pub fn prepare_examples(
    images: &[RgbImage],
    vae: &AutoencoderKL,
    config: &TrainConfig,
    cache: Option<&Path>,
    model_key: &str,
    device: &Device,
    dtype: DType,
) -> Result<Vec<TrainExample>> {
    config.validate()?;
    if images.is_empty() {
        bail!("the artwork collection is empty")
    }
    if let Some(dir) = cache {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    let mut out = Vec::with_capacity(images.len() * config.views_per_image);
    for image in images {
        let path = cache.map(|dir| {
            dir.join(format!(
                "{}.safetensors",
                cache_key(image, config, model_key)
            ))
        });
        let cached = path.as_deref().and_then(|p| read_cache(p, config).ok());
        let (latents, edges) = match cached {
            Some(c) => c,
            None => {
                let computed = encode_views(image, vae, config, device, dtype)?;
                if let Some(p) = &path {
                    write_cache(p, &computed.0, &computed.1)?;
                }
                computed
            }
        };
        for (k, e) in edges.iter().enumerate() {
            out.push(TrainExample {
                latents: latents.narrow(0, k, 1)?.to_device(device)?,
                control: control_tensor(e, device)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            });
        }
    }
    Ok(out)
}

fn cache_key(image: &RgbImage, config: &TrainConfig, model_key: &str) -> String {
    let mut hasher = Sha256::new();
    hash_image(&mut hasher, image);
    hasher.update(
        format!(
            "|res={}|views={}|canny={}:{}|model={model_key}",
            config.resolution, config.views_per_image, config.canny_low, config.canny_high
        )
        .as_bytes(),
    );
    hex(&hasher.finalize())
}

/// Latents `[K, 4, h, w]` (f32, CPU) and edge maps of the views of `image`.
fn encode_views(
    image: &RgbImage,
    vae: &AutoencoderKL,
    config: &TrainConfig,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Vec<GrayImage>)> {
    let opts = CannyOptions::with_thresholds(config.canny_low, config.canny_high);
    let scaling = vae.config().scaling_factor;
    let mut latents = Vec::new();
    let mut edges = Vec::new();
    for view in crop_views(image, config.resolution, config.views_per_image)? {
        let (w, h) = (view.width() as usize, view.height() as usize);
        let pixels = Tensor::from_vec(view.as_raw().clone(), (h, w, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .affine(2.0 / 255.0, -1.0)?
            .unsqueeze(0)?
            .to_device(device)?
            .to_dtype(dtype)?;
        let posterior = vae.encode(&pixels)?;
        latents.push((posterior.mode().to_dtype(DType::F32)? * scaling)?.to_device(&Device::Cpu)?);
        edges.push(canny(&view, &opts).map_err(|e| candle_core::Error::Msg(e.to_string()))?);
    }
    Ok((Tensor::cat(&latents, 0)?, edges))
}

fn read_cache(path: &Path, config: &TrainConfig) -> Result<(Tensor, Vec<GrayImage>)> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let (Some(latents), Some(edges)) = (tensors.get("latents"), tensors.get("edges")) else {
        bail!("{}: not a latent cache file", path.display())
    };
    let (k, r, r2) = edges.dims3()?;
    let res = config.resolution;
    if k != config.views_per_image || r != res || r2 != res || latents.dims()[0] != k {
        bail!("{}: cache holds other views", path.display())
    }
    let side = to_u32(res as u64)?;
    let edges = (0..k)
        .map(|i| {
            let raw = edges.get(i)?.flatten_all()?.to_vec1::<u8>()?;
            match GrayImage::from_raw(side, side, raw) {
                Some(img) => Ok(img),
                None => bail!("{}: edge map {i} has the wrong size", path.display()),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((latents.to_dtype(DType::F32)?, edges))
}

fn write_cache(path: &Path, latents: &Tensor, edges: &[GrayImage]) -> Result<()> {
    let res = edges.first().map_or(0, |e| e.width() as usize);
    let raw: Vec<u8> = edges
        .iter()
        .flat_map(|e| e.as_raw().iter().copied())
        .collect();
    let edge_shape = [edges.len(), res, res];
    let views = [
        TensorBytes {
            name: "edges",
            dtype: Dtype::U8,
            shape: &edge_shape,
            data: raw.into(),
        },
        TensorBytes {
            name: "latents",
            dtype: Dtype::F32,
            shape: latents.dims(),
            data: easel_core::training::f32_bytes(latents)?.into(),
        },
    ];
    let bytes = safetensors_bytes(&views, &BTreeMap::new())
        .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))?;
    easel_core::write_atomic(path, |f| std::io::Write::write_all(f, &bytes))
        .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))
}

fn io_error(path: &Path, e: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {e}", path.display()))
}
