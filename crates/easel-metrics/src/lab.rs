//! CIELAB colour statistics of an image and the gaps between two images' statistics.
//!
//! The conversion is scikit-image's (0.26) `skimage.color.rgb2lab` (D65, 2° observer) of a
//! uint8 image, in f64:
//!
//! 1. `c = v / 255`, linearised: `((c + 0.055) / 1.055)^2.4` if `c > 0.04045`, else `c / 12.92`;
//! 2. XYZ with scikit-image's `xyz_from_rgb` matrix, divided by the white
//!    `(0.95047, 1, 1.08883)`;
//! 3. `f(t) = ∛t` if `t > 0.008856`, else `7.787 t + 16/116`;
//!    `L = 116 f(Y) − 16`, `a = 500 (f(X) − f(Y))`, `b = 200 (f(Y) − f(Z))`.
//!
//! [`lab_stats`] is the per-channel mean and population standard deviation (`numpy.std`,
//! `ddof=0`) over all pixels; [`lab_gap`] the Euclidean norms of the differences of the
//! means and of the standard deviations (lower: closer colours).

use image::RgbImage;
use serde::Serialize;

const XYZ_FROM_RGB: [[f64; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
const WHITE_D65_2: [f64; 3] = [0.95047, 1.0, 1.08883];

/// Per-channel (L, a, b) mean and population standard deviation of an image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabStats {
    /// Mean L, a, b.
    pub mean: [f64; 3],
    /// Standard deviation of L, a, b (population, `ddof = 0`).
    pub std: [f64; 3],
}

/// The gap between two images' [`LabStats`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabGap {
    /// `‖mean_a − mean_b‖₂`.
    pub mean: f64,
    /// `‖std_a − std_b‖₂`.
    pub std: f64,
}

/// `rgb2lab` of one uint8 pixel.
pub fn rgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    let lin = rgb.map(|v| {
        let c = f64::from(v) / 255.0;
        if c > 0.04045 {
            ((c + 0.055) / 1.055).powf(2.4)
        } else {
            c / 12.92
        }
    });
    let mut f = [0.0; 3];
    for (i, row) in XYZ_FROM_RGB.iter().enumerate() {
        let t = (row[0] * lin[0] + row[1] * lin[1] + row[2] * lin[2]) / WHITE_D65_2[i];
        f[i] = if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        };
    }
    [
        116.0 * f[1] - 16.0,
        500.0 * (f[0] - f[1]),
        200.0 * (f[1] - f[2]),
    ]
}

/// Mean and standard deviation of each Lab channel over all pixels (zeros for an empty image).
pub fn lab_stats(img: &RgbImage) -> LabStats {
    let n = img.pixels().len();
    if n == 0 {
        return LabStats {
            mean: [0.0; 3],
            std: [0.0; 3],
        };
    }
    let lab: Vec<[f64; 3]> = img.pixels().map(|p| rgb_to_lab(p.0)).collect();
    let mut mean = [0.0; 3];
    for p in &lab {
        for c in 0..3 {
            mean[c] += p[c];
        }
    }
    mean = mean.map(|s| s / n as f64);
    // Two passes, like numpy.std, for accuracy.
    let mut var = [0.0; 3];
    for p in &lab {
        for c in 0..3 {
            var[c] += (p[c] - mean[c]).powi(2);
        }
    }
    let std = var.map(|s| (s / n as f64).sqrt());
    LabStats { mean, std }
}

/// The gaps between the Lab statistics of `a` and `b` (see the module doc).
pub fn lab_gap(a: &RgbImage, b: &RgbImage) -> LabGap {
    let (sa, sb) = (lab_stats(a), lab_stats(b));
    let norm = |x: [f64; 3], y: [f64; 3]| {
        x.iter()
            .zip(&y)
            .map(|(p, q)| (p - q).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    LabGap {
        mean: norm(sa.mean, sb.mean),
        std: norm(sa.std, sb.std),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_black_and_red_match_skimage() {
        // skimage.color.rgb2lab(np.uint8([[[255,255,255],[0,0,0],[255,0,0]]])).
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9);
        let white = rgb_to_lab([255, 255, 255]);
        assert!(
            close(
                white,
                [
                    100.0,
                    -0.002_454_937_862_050_865_5,
                    0.004_653_421_154_054_982
                ]
            ),
            "{white:?}"
        );
        assert_eq!(rgb_to_lab([0, 0, 0]), [0.0, 0.0, 0.0]);
        let red = rgb_to_lab([255, 0, 0]);
        assert!(
            close(
                red,
                [
                    53.240_587_943_744_9,
                    80.092_308_225_692_2,
                    67.202_751_044_428_7
                ]
            ),
            "{red:?}"
        );
    }
}
