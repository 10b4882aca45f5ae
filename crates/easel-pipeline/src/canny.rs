//! The Canny edge detector that makes the ControlNet (canny) control image.
//!
//! With the default [`CannyOptions`] the result is bit-exact with OpenCV's
//! `cv2.Canny(image, low, high)` (aperture 3, `L2gradient=False`) on an RGB
//! uint8 array, which is how diffusers and lllyasviel/ControlNet preprocess:
//!
//! 1. 3×3 Sobel `dx`, `dy` of every channel, integer arithmetic, borders
//!    replicated (OpenCV's `BORDER_REPLICATE`).
//! 2. Per pixel, the channel with the largest magnitude (`|dx| + |dy|`, or
//!    `dx² + dy²` with [`CannyOptions::l2_gradient`]) gives the gradient; ties
//!    go to the first channel (R).
//! 3. Non-maximum suppression along the gradient direction quantised to
//!    0°/45°/90°/135° with OpenCV's fixed-point `tan 22.5°` test; magnitudes
//!    outside the image count as 0. As in OpenCV the comparison is strict on
//!    one side and not on the other, so that a plateau keeps one pixel.
//! 4. A pixel that survives is *strong* if its magnitude is `> high` and a
//!    *candidate* if it is `> low` (thresholds floored to integers first, and
//!    squared for L2 as OpenCV does). Hysteresis keeps the candidates
//!    8-connected to a strong pixel through candidates.
//!
//! OpenCV's Canny does not blur; [`CannyOptions::blur_sigma`] adds the
//! Gaussian pre-blur of the textbook algorithm for callers who want it.
//!
//! [`control_tensor`] turns the edge map into the `[1, 3, H, W]` control
//! image (edges stacked to three channels, values 0 or 1).

use candle_core::{Device, Tensor};
use easel_core::{Error, Result};
use image::{GrayImage, RgbImage};

/// The low threshold diffusers' ControlNet examples use.
pub const DEFAULT_LOW: f32 = 100.0;
/// The high threshold diffusers' ControlNet examples use.
pub const DEFAULT_HIGH: f32 = 200.0;
/// Largest accepted [`CannyOptions::blur_sigma`] (the kernel has `2·round(3σ)+1` taps).
pub const MAX_BLUR_SIGMA: f32 = 100.0;

/// `tan(22.5°)` in Q15, as OpenCV's `canny.cpp` computes it
/// (`(int)(0.4142135623730950488016887242097 * (1 << 15) + 0.5)`).
const TG22: i64 = 13573;

/// Settings of [`canny`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CannyOptions {
    /// Hysteresis low threshold: pixels with a gradient magnitude above it may
    /// be edges if connected to a strong one. Floored to an integer, like
    /// OpenCV. Must be finite, `>= 0` and `<= high`.
    pub low: f32,
    /// Hysteresis high threshold: pixels with a gradient magnitude above it
    /// are edges (if they survive non-maximum suppression). Floored to an
    /// integer. Must be finite and `>= 0`.
    pub high: f32,
    /// Standard deviation (in pixels) of a Gaussian blur applied to each
    /// channel before the gradient. `None` (the default) is OpenCV's
    /// behaviour: no blur. Must be finite, `> 0` and at most
    /// [`MAX_BLUR_SIGMA`].
    pub blur_sigma: Option<f32>,
    /// Use the L2 magnitude `sqrt(dx² + dy²)` instead of `|dx| + |dy|`
    /// (OpenCV's `L2gradient`). Default `false`, as in diffusers.
    pub l2_gradient: bool,
}

impl Default for CannyOptions {
    /// Thresholds 100:200, no blur, L1 magnitude: diffusers' settings.
    fn default() -> Self {
        Self {
            low: DEFAULT_LOW,
            high: DEFAULT_HIGH,
            blur_sigma: None,
            l2_gradient: false,
        }
    }
}

impl CannyOptions {
    /// Default options with the given thresholds.
    pub fn with_thresholds(low: f32, high: f32) -> Self {
        Self {
            low,
            high,
            ..Self::default()
        }
    }

    /// Checks the fields; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<()> {
        check_thresholds(self.low, self.high)?;
        if let Some(sigma) = self.blur_sigma {
            if !sigma.is_finite() || sigma <= 0.0 || sigma > MAX_BLUR_SIGMA {
                return Err(Error::InvalidArgument(format!(
                    "Canny blur sigma must be a number in (0, {MAX_BLUR_SIGMA}], got {sigma}"
                )));
            }
        }
        Ok(())
    }
}

fn check_thresholds(low: f32, high: f32) -> Result<()> {
    for (name, value) in [("low", low), ("high", high)] {
        if !value.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "Canny {name} threshold must be a finite number, got {value}"
            )));
        }
        if value < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "Canny {name} threshold must not be negative, got {value}"
            )));
        }
    }
    if low > high {
        return Err(Error::InvalidArgument(format!(
            "Canny low threshold ({low}) must not exceed the high threshold ({high})"
        )));
    }
    Ok(())
}

/// Parses the CLI's `--canny LOW:HIGH` value, e.g. `"100:200"` → `(100.0, 200.0)`.
///
/// Spaces around either number are allowed. Errors (one line, quoting the
/// input) when there is no single `:`, either side is not a finite number,
/// either is negative, or `LOW > HIGH`. `LOW == HIGH` is accepted.
pub fn parse_thresholds(text: &str) -> Result<(f32, f32)> {
    let malformed = |why: &str| {
        Error::InvalidArgument(format!(
            "invalid Canny thresholds {text:?}: {why}; expected LOW:HIGH, e.g. 100:200"
        ))
    };
    let (low, high) = text
        .split_once(':')
        .ok_or_else(|| malformed("no ':' between the two thresholds"))?;
    if high.contains(':') {
        return Err(malformed("more than one ':'"));
    }
    let number = |part: &str, which: &str| -> Result<f32> {
        let part = part.trim();
        if part.is_empty() {
            return Err(malformed(&format!("the {which} threshold is missing")));
        }
        let value: f32 = part
            .parse()
            .map_err(|_| malformed(&format!("the {which} threshold {part:?} is not a number")))?;
        if !value.is_finite() {
            return Err(malformed(&format!(
                "the {which} threshold {part:?} is not a finite number"
            )));
        }
        if value < 0.0 {
            return Err(malformed(&format!(
                "the {which} threshold {part} is negative"
            )));
        }
        Ok(value)
    };
    let (low, high) = (number(low, "low")?, number(high, "high")?);
    if low > high {
        return Err(malformed(&format!(
            "the low threshold {low} is greater than the high threshold {high}"
        )));
    }
    Ok((low, high))
}

/// Canny edges of an RGB image: 255 on edges, 0 elsewhere, same size.
///
/// With `blur_sigma: None` this is `cv2.Canny(rgb_array, low, high,
/// L2gradient=l2_gradient)` bit for bit. Errors only on invalid options; an
/// empty image gives an empty map.
pub fn canny(image: &RgbImage, opts: &CannyOptions) -> Result<GrayImage> {
    edges(image.as_raw(), image.width(), image.height(), 3, opts)
}

/// Canny edges of a single-channel image (`cv2.Canny` on a 2-D array).
///
/// Same contract as [`canny`].
pub fn canny_gray(image: &GrayImage, opts: &CannyOptions) -> Result<GrayImage> {
    edges(image.as_raw(), image.width(), image.height(), 1, opts)
}

/// The control image as pixels: the edge map copied to R, G and B
/// (what diffusers builds with `np.concatenate([edges] * 3, axis=2)`).
pub fn control_image(edges: &GrayImage) -> RgbImage {
    RgbImage::from_fn(edges.width(), edges.height(), |x, y| {
        let v = edges.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

/// The control image as the ControlNet consumes it: `[1, 3, H, W]` `f32` on
/// `device`, each channel the edge map scaled to `[0, 1]` (`v / 255`).
pub fn control_tensor(edges: &GrayImage, device: &Device) -> Result<Tensor> {
    let (width, height) = (edges.width() as usize, edges.height() as usize);
    let plane: Vec<f32> = edges
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let mut data = Vec::with_capacity(3 * plane.len());
    for _ in 0..3 {
        data.extend_from_slice(&plane);
    }
    Ok(Tensor::from_vec(data, (1, 3, height, width), device)?)
}

/// Thresholds as OpenCV compares them: floored to integers; for L2 clamped
/// to 32767 and squared first (the magnitude is then `dx² + dy²`).
fn integer_thresholds(opts: &CannyOptions) -> (i64, i64) {
    let convert = |t: f32| {
        let mut t = f64::from(t);
        if opts.l2_gradient {
            t = t.min(32767.0);
            if t > 0.0 {
                t *= t;
            }
        }
        // Finite and >= 0 (validated), at most 32767² for L2; `as` saturates
        // for huge L1 thresholds, which then simply exceed every magnitude.
        t.floor() as i64
    };
    (convert(opts.low), convert(opts.high))
}

/// Map states, as in OpenCV's `canny.cpp`.
const CANDIDATE: u8 = 0;
const NOT_EDGE: u8 = 1;
const EDGE: u8 = 2;

/// Canny on interleaved 8-bit pixels with `channels` channels per pixel.
fn edges(
    data: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    opts: &CannyOptions,
) -> Result<GrayImage> {
    opts.validate()?;
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return Ok(GrayImage::new(width, height));
    }
    debug_assert_eq!(data.len(), w * h * channels);
    let blurred;
    let data = match opts.blur_sigma {
        Some(sigma) => {
            blurred = gaussian_blur(data, w, h, channels, sigma);
            &blurred[..]
        }
        None => data,
    };

    // Gradient and magnitude of the max-magnitude channel, in buffers padded
    // by one pixel on every side: magnitude 0 outside the image, as OpenCV.
    let pw = w + 2;
    let padded = pw * (h + 2);
    let mut mag = vec![0i64; padded];
    let mut gx = vec![0i32; padded];
    let mut gy = vec![0i32; padded];
    let left: Vec<usize> = (0..w).map(|x| x.saturating_sub(1)).collect();
    let right: Vec<usize> = (0..w).map(|x| (x + 1).min(w - 1)).collect();
    for y in 0..h {
        let up = y.saturating_sub(1) * w;
        let mid = y * w;
        let down = (y + 1).min(h - 1) * w;
        for x in 0..w {
            let (l, r) = (left[x], right[x]);
            let at = |row: usize, col: usize, c: usize| i32::from(data[(row + col) * channels + c]);
            let mut best: Option<(i64, i32, i32)> = None;
            for c in 0..channels {
                let dx = (at(up, r, c) - at(up, l, c))
                    + 2 * (at(mid, r, c) - at(mid, l, c))
                    + (at(down, r, c) - at(down, l, c));
                let dy = (at(down, l, c) - at(up, l, c))
                    + 2 * (at(down, x, c) - at(up, x, c))
                    + (at(down, r, c) - at(up, r, c));
                let m = if opts.l2_gradient {
                    i64::from(dx) * i64::from(dx) + i64::from(dy) * i64::from(dy)
                } else {
                    i64::from(dx.abs() + dy.abs())
                };
                // Strictly greater: on a tie the first channel wins, as in OpenCV.
                if best.is_none_or(|(bm, _, _)| m > bm) {
                    best = Some((m, dx, dy));
                }
            }
            if let Some((m, dx, dy)) = best {
                let i = (y + 1) * pw + x + 1;
                mag[i] = m;
                gx[i] = dx;
                gy[i] = dy;
            }
        }
    }

    // Non-maximum suppression and thresholds. The map's one-pixel frame stays
    // NOT_EDGE, so hysteresis never leaves the padded buffer.
    let (low, high) = integer_thresholds(opts);
    let mut map = vec![NOT_EDGE; padded];
    let mut stack = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = (y + 1) * pw + x + 1;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (xs, ys) = (gx[i], gy[i]);
            let ax = i64::from(xs.abs());
            let ay = i64::from(ys.abs()) << 15;
            let tg22x = ax * TG22;
            let local_max = if ay < tg22x {
                // Near-horizontal gradient: compare left and right.
                m > mag[i - 1] && m >= mag[i + 1]
            } else {
                let tg67x = tg22x + (ax << 16);
                if ay > tg67x {
                    // Near-vertical gradient: compare up and down.
                    m > mag[i - pw] && m >= mag[i + pw]
                } else if (xs ^ ys) < 0 {
                    // Diagonal, dx and dy of opposite signs: up-right / down-left.
                    m > mag[i - pw + 1] && m > mag[i + pw - 1]
                } else {
                    // Diagonal, same signs: up-left / down-right.
                    m > mag[i - pw - 1] && m > mag[i + pw + 1]
                }
            };
            if local_max {
                if m > high {
                    map[i] = EDGE;
                    stack.push(i);
                } else {
                    map[i] = CANDIDATE;
                }
            }
        }
    }

    // Hysteresis: grow the strong pixels through 8-connected candidates.
    // Every index on the stack is inside the frame, so `i ± pw ± 1` is in bounds.
    while let Some(i) = stack.pop() {
        for n in [
            i - pw - 1,
            i - pw,
            i - pw + 1,
            i - 1,
            i + 1,
            i + pw - 1,
            i + pw,
            i + pw + 1,
        ] {
            if map[n] == CANDIDATE {
                map[n] = EDGE;
                stack.push(n);
            }
        }
    }

    let mut out = GrayImage::new(width, height);
    for (y, row) in out.as_mut().chunks_exact_mut(w).enumerate() {
        let start = (y + 1) * pw + 1;
        for (px, &state) in row.iter_mut().zip(&map[start..start + w]) {
            *px = if state == EDGE { 255 } else { 0 };
        }
    }
    Ok(out)
}

/// Separable Gaussian blur of each channel: `2·round(3σ)+1` taps (OpenCV's
/// kernel size for 8-bit images), mirrored borders without repeating the edge
/// pixel (OpenCV's default `BORDER_REFLECT_101`), `f32` accumulation, rounded
/// back to 8 bits. Not bit-exact with `cv2.GaussianBlur`, whose 8-bit path
/// uses fixed-point arithmetic.
fn gaussian_blur(data: &[u8], w: usize, h: usize, channels: usize, sigma: f32) -> Vec<u8> {
    // sigma is validated to (0, MAX_BLUR_SIGMA], so the radius is small.
    let radius = (3.0 * sigma).round() as usize;
    let kernel: Vec<f32> = {
        let k: Vec<f32> = (0..=2 * radius)
            .map(|i| {
                let d = i as f32 - radius as f32;
                (-(d * d) / (2.0 * sigma * sigma)).exp()
            })
            .collect();
        let sum: f32 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect()
    };
    let reflect = |p: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as isize - 1);
        let mut p = p.rem_euclid(period);
        if p >= n as isize {
            p = period - p;
        }
        p as usize
    };
    let mut horizontal = vec![0f32; data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let mut acc = 0f32;
                for (k, &wt) in kernel.iter().enumerate() {
                    let sx = reflect(x as isize + k as isize - radius as isize, w);
                    acc += wt * f32::from(data[(y * w + sx) * channels + c]);
                }
                horizontal[(y * w + x) * channels + c] = acc;
            }
        }
    }
    let mut out = vec![0u8; data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let mut acc = 0f32;
                for (k, &wt) in kernel.iter().enumerate() {
                    let sy = reflect(y as isize + k as isize - radius as isize, h);
                    acc += wt * horizontal[(sy * w + x) * channels + c];
                }
                out[(y * w + x) * channels + c] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}
