//! Training pictures of [`crate::train`]: folders of photos and paintings, resized so that the
//! short side is `load_size` (512 in the papers; aspect ratio kept, bilinear, as Huang &
//! Belongie §6 describe), from which every step draws random `crop × crop` windows.
//!
//! The draws of step `s` come from a generator seeded by `(seed, s)` ([`StepRng`]), so they do
//! not depend on what happened before: a resumed run sees the same pictures as a straight one.
//! Pictures are drawn uniformly with replacement (the repos walk random permutations); the
//! repos do not flip, neither do we.
//!
//! Decoded, resized pictures are kept in memory up to [`CACHE_BYTES`]; past that, they are
//! decoded again when drawn (the result is the same, only slower).

use std::path::{Path, PathBuf};

use candle_core::{bail, Device, Result, Tensor};
use image::imageops::FilterType;
use image::RgbImage;

/// Bytes of resized pictures an [`ImageSet`] keeps decoded (2 GiB).
pub const CACHE_BYTES: usize = 2 << 30;

/// easel's seeded generator (SplitMix64), one per training step.
#[derive(Debug, Clone)]
pub struct StepRng(u64);

impl StepRng {
    /// The generator of step `step` of a run seeded `seed`.
    pub fn for_step(seed: u64, step: usize) -> Self {
        Self(mix(seed ^ mix((step as u64).wrapping_add(0x5EED))))
    }

    /// A generator seeded with `seed` (weight initialisation).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)` (53 bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n ≥ 1`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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
    pub fn random_crop(&mut self, rng: &mut StepRng, crop: u32) -> Result<RgbImage> {
        let i = rng.below(self.len());
        let img = self.get(i)?;
        let (w, h) = img.dimensions();
        if w < crop || h < crop {
            bail!(
                "{}: {w}x{h} after resizing, smaller than the {crop}-pixel crop",
                self.paths[i].display()
            )
        }
        let x = rng.below((w - crop + 1) as usize) as u32;
        let y = rng.below((h - crop + 1) as usize) as u32;
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
