//! HistoGAN RGB-uv colour histograms and the Hellinger distance between them: the colour
//! metric of StyleID's `evaluation/eval_histogan.py` (jiwoogit/StyleID, after Afifi et al.,
//! "HistoGAN", CVPR 2021), with its settings: 64 bins, inverse-quadratic kernel (σ 0.02),
//! intensity scale on, images larger than 256 px resized.
//!
//! For an RGB image with values `v / 255`:
//!
//! 1. if its width or its height is over 256, it is resized to **256×256** (the aspect ratio
//!    is not kept) with `F.interpolate(mode='bilinear', align_corners=False)` — no
//!    antialiasing, half-pixel centres, source coordinates below 0 clamped to 0, the last
//!    row/column repeated — as the reference does;
//! 2. per pixel, `I_y = √(R² + G² + B² + ε)` and, for each channel `c` with the other two
//!    `c₁, c₂` in RGB order, `u = ln(I_c + ε) − ln(I_c₁ + ε)`, `v = ln(I_c + ε) − ln(I_c₂ + ε)`
//!    (`ε = 10⁻⁶`);
//! 3. `H[c][i][j] = Σ_pixels I_y · k(u − b_i) · k(v − b_j)` with `k(d) = 1 / (1 + d²/σ²)` and
//!    bin centres `b = numpy.linspace(−3, 3, 64)`;
//! 4. `H / (Σ H + ε)` over all three channels.
//!
//! The distance is `(1/√2) · ‖√H_a − √H_b‖₂`, in [0, 1]; lower is closer colours.
//!
//! Differences from the reference: everything is computed in f64 where PyTorch computes the
//! resize, the kernel products and the sums in f32, so values agree to about 1e-6.

use image::RgbImage;

use crate::error::{MetricError, Result};

/// Bins per axis.
pub const BINS: usize = 64;
/// Largest side used as it is; larger images are resized to `MAX_SIDE × MAX_SIDE`.
pub const MAX_SIDE: u32 = 256;
const SIGMA: f64 = 0.02;
const EPS: f64 = 1e-6;

/// `numpy.linspace(-3, 3, 64)`, bit for bit (`i · step + start`, the last set to the stop).
fn bin_centres() -> [f64; BINS] {
    let step = 6.0 / (BINS - 1) as f64;
    let mut b = [0.0; BINS];
    for (i, v) in b.iter_mut().enumerate() {
        *v = i as f64 * step - 3.0;
    }
    b[BINS - 1] = 3.0;
    b
}

/// One axis of PyTorch's bilinear `align_corners=False` resize from `n_in` to `n_out`:
/// per output index, the two source indices and their weights.
fn bilinear_axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f64, f64)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|d| {
            let src = (scale * (d as f64 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f64;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// The image's RGB values in [0, 1], resized as the reference does (step 1 of the module
/// doc): one `[r, g, b]` per pixel, row-major.
pub fn histogram_input(img: &RgbImage) -> Vec<[f64; 3]> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = |x: usize, y: usize| {
        let p = img.as_raw();
        let i = 3 * (y * w + x);
        [p[i], p[i + 1], p[i + 2]].map(|v| f64::from(v) / 255.0)
    };
    if img.width() <= MAX_SIDE && img.height() <= MAX_SIDE {
        return img
            .pixels()
            .map(|p| p.0.map(|v| f64::from(v) / 255.0))
            .collect();
    }
    let side = MAX_SIDE as usize;
    let ys = bilinear_axis(h, side);
    let xs = bilinear_axis(w, side);
    let mut out = Vec::with_capacity(side * side);
    for &(y0, y1, wy0, wy1) in &ys {
        for &(x0, x1, wx0, wx1) in &xs {
            let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
            let mut v = [0.0; 3];
            for k in 0..3 {
                v[k] = wy0 * (wx0 * a[k] + wx1 * b[k]) + wy1 * (wx0 * c[k] + wx1 * d[k]);
            }
            out.push(v);
        }
    }
    out
}

/// The normalised RGB-uv histogram of `img`: `3 · 64 · 64` values, indexed
/// `[channel][u bin][v bin]`, summing to about 1 (see the module doc). An empty image gives
/// zeros.
pub fn rgb_uv_histogram(img: &RgbImage) -> Vec<f64> {
    let bins = bin_centres();
    let mut hist = vec![0.0; 3 * BINS * BINS];
    let kernel = |x: f64, out: &mut [f64; BINS]| {
        for (o, b) in out.iter_mut().zip(&bins) {
            let d = (x - b).abs();
            *o = 1.0 / (1.0 + d * d / (SIGMA * SIGMA));
        }
    };
    let (mut ku, mut kv) = ([0.0; BINS], [0.0; BINS]);
    // The other two channels of each channel, in RGB order (the reference's Iu/Iv pairs).
    const OTHERS: [(usize, usize); 3] = [(1, 2), (0, 2), (0, 1)];
    for p in histogram_input(img) {
        let iy = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2] + EPS).sqrt();
        let logs = p.map(|v| (v + EPS).ln());
        for (c, &(c1, c2)) in OTHERS.iter().enumerate() {
            kernel(logs[c] - logs[c1], &mut ku);
            kernel(logs[c] - logs[c2], &mut kv);
            let plane = &mut hist[c * BINS * BINS..(c + 1) * BINS * BINS];
            for (row, &u) in plane.chunks_exact_mut(BINS).zip(&ku) {
                let a = iy * u;
                for (h, &v) in row.iter_mut().zip(&kv) {
                    *h += a * v;
                }
            }
        }
    }
    let total: f64 = hist.iter().sum::<f64>() + EPS;
    for h in &mut hist {
        *h /= total;
    }
    hist
}

/// The Hellinger distance `(1/√2) ‖√H_a − √H_b‖₂` of two [`rgb_uv_histogram`]s.
///
/// Errors if the lengths differ (not histograms of this module) or a value is negative or not
/// finite.
pub fn hellinger(a: &[f64], b: &[f64]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(MetricError::Features {
            what: "HistoGAN distance",
            problem: format!("histograms of {} and {} bins", a.len(), b.len()),
        });
    }
    if let Some(bad) = a.iter().chain(b).find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(MetricError::Features {
            what: "HistoGAN distance",
            problem: format!("histogram value {bad} is not a finite number >= 0"),
        });
    }
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
        .sum();
    Ok(s.sqrt() / std::f64::consts::SQRT_2)
}

/// The HistoGAN distance of `a` and `b` (any sizes): [`hellinger`] of their
/// [`rgb_uv_histogram`]s. Errors on an empty image.
pub fn histogan_distance(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    for img in [a, b] {
        if img.width() == 0 || img.height() == 0 {
            return Err(MetricError::TooSmall {
                what: "HistoGAN distance",
                width: img.width(),
                height: img.height(),
                min: 1,
            });
        }
    }
    hellinger(&rgb_uv_histogram(a), &rgb_uv_histogram(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_match_numpy_linspace() {
        let b = bin_centres();
        assert_eq!(b[0], -3.0);
        assert_eq!(b[63], 3.0);
        // numpy.linspace(-3, 3, 64)[1] and [32].
        assert_eq!(b[1], -2.904_761_904_761_904_7);
        assert_eq!(b[32], 0.047_619_047_619_047_45);
    }

    #[test]
    fn bilinear_axis_matches_torch_formula() {
        // 4 → 2: source centres 0.5 and 2.5.
        let a = bilinear_axis(4, 2);
        assert_eq!(a, vec![(0, 1, 0.5, 0.5), (2, 3, 0.5, 0.5)]);
        // 2 → 4: src = 0.5·(d + 0.5) − 0.5 = −0.25 (clamped to 0), 0.25, 0.75, 1.25 (the
        // last index repeated).
        let b = bilinear_axis(2, 4);
        assert_eq!(b[0], (0, 1, 1.0, 0.0));
        assert_eq!(b[1], (0, 1, 0.75, 0.25));
        assert_eq!(b[3], (1, 1, 0.75, 0.25));
    }
}
