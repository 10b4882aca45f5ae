//! Training pictures of [`crate::train`]: folders of photos and paintings, resized so that the
//! short side is `load_size` (512 in the papers; aspect ratio kept, bilinear, as Huang &
//! Belongie §6 describe), from which every step draws random `crop × crop` windows.
//!
//! The draws of step `s` come from a generator seeded by `(seed, s)` ([`SplitMix64::for_step`]), so they do
//! not depend on what happened before: a resumed run sees the same pictures as a straight one.
//! Pictures are drawn uniformly with replacement (the repos walk random permutations); the
//! repos do not flip, neither do we.
//!
//! Decoded, resized pictures are kept in memory up to [`CACHE_BYTES`]; past that, they are
//! decoded again when drawn (the result is the same, only slower).

use std::path::{Path, PathBuf};

use candle_core::{bail, Device, Result, Tensor};
use easel_core::rng::SplitMix64;
use image::imageops::FilterType;
use image::RgbImage;

/// Bytes of resized pictures an [`ImageSet`] keeps decoded (2 GiB).
pub const CACHE_BYTES: usize = 2 << 30;

/// The pictures of one folder (its image files, not recursively, sorted by name).
#[derive(Debug)]
pub struct ImageSet {
    paths: Vec<PathBuf>,
    load_size: u32,
    cache: Vec<Option<RgbImage>>,
    cached_bytes: usize,
}

impl ImageSet {
    /// The images of `dir` ([`easel_core::collect_images`]), to be resized to short side
    /// `load_size`. Fails when the folder is missing or holds no image.
    pub fn from_dir(dir: &Path, load_size: usize) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: not a folder of images", dir.display())
        }
        let paths = core_err(easel_core::collect_images(&[dir.to_path_buf()]))?;
        let load_size = match u32::try_from(load_size) {
            Ok(s) if s > 0 => s,
            _ => bail!("load size {load_size} is not a usable picture side"),
        };
        Ok(Self {
            cache: vec![None; paths.len()],
            paths,
            load_size,
            cached_bytes: 0,
        })
    }

    /// Number of pictures.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there is no picture (never, for a set made by [`Self::from_dir`]).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The picture files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Picture `i`, resized to short side `load_size`.
    pub fn get(&mut self, i: usize) -> Result<RgbImage> {
        let Some(path) = self.paths.get(i) else {
            bail!("picture {i} of {} does not exist", self.paths.len())
        };
        if let Some(img) = &self.cache[i] {
            return Ok(img.clone());
        }
        let img = core_err(easel_core::load_rgb(
            path,
            &easel_core::LoadOptions::with_max_side(u32::MAX),
        ))?;
        let img = resize_short_side(&img, self.load_size);
        let bytes = img.as_raw().len();
        if self.cached_bytes + bytes <= CACHE_BYTES {
            self.cached_bytes += bytes;
            self.cache[i] = Some(img.clone());
        }
        Ok(img)
    }

    /// A random picture and a random `crop × crop` window of it, drawn from `rng`.
    pub fn random_crop(&mut self, rng: &mut SplitMix64, crop: u32) -> Result<RgbImage> {
        let i = rng.below(self.len() as u64) as usize;
        let img = self.get(i)?;
        let (w, h) = img.dimensions();
        if w < crop || h < crop {
            bail!(
                "{}: {w}x{h} after resizing, smaller than the {crop}-pixel crop",
                self.paths[i].display()
            )
        }
        let x = rng.below(u64::from(w - crop + 1)) as u32;
        let y = rng.below(u64::from(h - crop + 1)) as u32;
        Ok(image::imageops::crop_imm(&img, x, y, crop, crop).to_image())
    }
}

/// `img` scaled (bilinear) so that its short side is `side`, the aspect ratio kept (the long
/// side rounded to the nearest pixel, at least 1).
pub fn resize_short_side(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1);
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(side) + u64::from(short) / 2) / u64::from(short)).max(1) as u32
    };
    let (nw, nh) = if w <= h {
        (side, scale(h))
    } else {
        (scale(w), side)
    };
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    image::imageops::resize(img, nw, nh, FilterType::Triangle)
}

/// The centre `side × side` window of `img` resized to short side `side` (sample grids).
pub fn center_square(img: &RgbImage, side: u32) -> RgbImage {
    let img = resize_short_side(img, side);
    let (w, h) = img.dimensions();
    image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side).to_image()
}

/// Pictures `[1, 3, H, W]` stacked into one `[N, 3, H, W]` f32 tensor in [0, 1] on `device`.
pub fn batch_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let tensors = images
        .iter()
        .map(|img| core_err(easel_core::rgb_to_tensor(img, device)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&tensors, 0)
}

/// An easel-core error as a candle error, its one-line message kept.
pub(crate) fn core_err<T>(r: easel_core::Result<T>) -> Result<T> {
    r.map_err(|e| candle_core::Error::Msg(e.to_string()))
}
