//! Structural similarity (SSIM) of two RGB images, on their luminance.
//!
//! Exactly scikit-image's (0.26)
//! `structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True, sigma=1.5,
//! use_sample_covariance=False, data_range=1)`, the setting of Wang et al. 2004:
//!
//! 1. grey `Y = 0.2125 R + 0.7154 G + 0.0721 B` of the values divided by 255 (`rgb2gray`);
//! 2. local means `μ`, variances `σ²` and covariance `σ_ab` with an 11-tap Gaussian (σ 1.5,
//!    truncated at 3.5σ, radius 5, normalised), separable, rows then columns, borders
//!    reflected half-sample (`d c b a | a b c d`, SciPy's `mode='reflect'`);
//!    population (co)variances `E[ab] − μ_a μ_b`;
//! 3. `S = (2 μ_a μ_b + C1)(2 σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))` with
//!    `C1 = 0.01²`, `C2 = 0.03²`;
//! 4. the mean of `S` over the image without its 5-pixel border.
//!
//! Everything is computed in f64, as scikit-image does for this input.

use image::RgbImage;

use crate::error::{MetricError, Result};

/// The Gaussian window's side: `2 · int(3.5 · 1.5 + 0.5) + 1`.
pub const WINDOW: u32 = 11;
const RADIUS: usize = 5;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// `rgb2gray` of a uint8 image: one f64 per pixel, row-major.
pub fn luminance(img: &RgbImage) -> Vec<f64> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(|v| f64::from(v) / 255.0);
            0.2125 * r + 0.7154 * g + 0.0721 * b
        })
        .collect()
}

/// SSIM of `a` and `b` (see the module doc): 1 for identical images, lower the less alike.
/// The images must have the same size, at least 11×11.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    if a.dimensions() != b.dimensions() {
        return Err(MetricError::SizeMismatch {
            what: "SSIM",
            a_width: a.width(),
            a_height: a.height(),
            b_width: b.width(),
            b_height: b.height(),
        });
    }
    let (w, h) = a.dimensions();
    if w < WINDOW || h < WINDOW {
        return Err(MetricError::TooSmall {
            what: "SSIM",
            width: w,
            height: h,
            min: WINDOW,
        });
    }
    let (w, h) = (w as usize, h as usize);
    let x = luminance(a);
    let y = luminance(b);
    let kernel = gaussian_kernel();
    let blur = |v: &[f64]| filter(v, w, h, &kernel);
    let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
    let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
    let xy: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    let (ux, uy) = (blur(&x), blur(&y));
    let (uxx, uyy, uxy) = (blur(&xx), blur(&yy), blur(&xy));
    let mut sum = 0.0;
    for r in RADIUS..h - RADIUS {
        for c in RADIUS..w - RADIUS {
            let i = r * w + c;
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            let num = (2.0 * mx * my + C1) * (2.0 * vxy + C2);
            let den = (mx * mx + my * my + C1) * (vx + vy + C2);
            sum += num / den;
        }
    }
    let n = (h - 2 * RADIUS) * (w - 2 * RADIUS);
    Ok(sum / n as f64)
}

/// SciPy's `_gaussian_kernel1d(1.5, 0, 5)`: `exp(−x²/(2σ²))` normalised to sum 1.
fn gaussian_kernel() -> [f64; 2 * RADIUS + 1] {
    let mut k = [0.0; 2 * RADIUS + 1];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 / (SIGMA * SIGMA) * x * x).exp();
    }
    let s: f64 = k.iter().sum();
    k.map(|v| v / s)
}

/// Half-sample reflection of index `i` into `0..n` (`n ≥ 11 > RADIUS`, so one fold suffices).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i - 1
    } else if i >= n {
        2 * n - i - 1
    } else {
        i
    };
    j as usize
}

/// Separable correlation with `k`, along rows (axis 0) first and then columns, as
/// `scipy.ndimage.gaussian_filter` orders its passes.
fn filter(v: &[f64], w: usize, h: usize, k: &[f64; 2 * RADIUS + 1]) -> Vec<f64> {
    let mut tmp = vec![0.0; w * h];
    for r in 0..h {
        for c in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                let rr = reflect(r as isize + t as isize - RADIUS as isize, h);
                s += kv * v[rr * w + c];
            }
            tmp[r * w + c] = s;
        }
    }
    let mut out = vec![0.0; w * h];
    for r in 0..h {
        let row = &tmp[r * w..(r + 1) * w];
        for c in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                s += kv * row[reflect(c as isize + t as isize - RADIUS as isize, w)];
            }
            out[r * w + c] = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_scipy() {
        // scipy.ndimage._filters._gaussian_kernel1d(1.5, 0, 5)[5] and [0].
        let k = gaussian_kernel();
        assert!((k[5] - 0.266_011_724_861_794_36).abs() < 1e-12, "{}", k[5]);
        assert!((k[0] - 0.001_028_380_084_479_11).abs() < 1e-12, "{}", k[0]);
    }

    #[test]
    fn reflect_is_half_sample() {
        assert_eq!(reflect(-1, 11), 0);
        assert_eq!(reflect(-5, 11), 4);
        assert_eq!(reflect(11, 11), 10);
        assert_eq!(reflect(15, 11), 6);
    }
}
