//! F1 score of the Canny edges of a photo and of its stylized output, with a 1-pixel
//! tolerance: how much of the photo's line structure the output keeps.
//!
//! Edge maps are [`easel_pipeline::canny::canny`] with [`CannyOptions::default`] (thresholds
//! 100/200, no blur, L1 magnitude: bit-exact with `cv2.Canny(rgb, 100, 200)`, the ControlNet
//! preprocessing). Then, with `N(p)` the 3×3 neighbourhood of pixel `p` (clipped at the
//! border):
//!
//! - precision `P` = share of output edge pixels with a photo edge pixel in `N(p)`;
//! - recall `R` = share of photo edge pixels with an output edge pixel in `N(p)`;
//! - `F1 = 2PR / (P + R)` (0 when `P + R = 0`).
//!
//! This is the same as `cv2.dilate` with a 3×3 ones kernel followed by counting, which is what
//! `tools/ref/metrics_ref.py` does. When neither image has an edge the output kept all of the
//! photo's (no) structure: F1 is 1. When exactly one has none, F1 is 0.

use easel_pipeline::canny::{canny, CannyOptions};
use image::{GrayImage, RgbImage};

use crate::error::{MetricError, Result};

/// Precision, recall and F1 of one comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeScore {
    /// Share of output edges near a photo edge.
    pub precision: f64,
    /// Share of photo edges near an output edge.
    pub recall: f64,
    /// Harmonic mean of both.
    pub f1: f64,
}

/// Edge F1 of `output` against `photo` (same size); see the module doc.
pub fn edge_f1(photo: &RgbImage, output: &RgbImage) -> Result<f64> {
    Ok(edge_score(photo, output)?.f1)
}

/// Precision, recall and F1 of `output`'s Canny edges against `photo`'s (same size).
pub fn edge_score(photo: &RgbImage, output: &RgbImage) -> Result<EdgeScore> {
    if photo.dimensions() != output.dimensions() {
        return Err(MetricError::SizeMismatch {
            what: "edge F1",
            a_width: photo.width(),
            a_height: photo.height(),
            b_width: output.width(),
            b_height: output.height(),
        });
    }
    let opts = CannyOptions::default();
    let edges = |img: &RgbImage| {
        canny(img, &opts).map_err(|e| MetricError::Compute {
            what: "edge F1 (Canny)",
            source: Box::new(e),
        })
    };
    Ok(score_maps(&edges(photo)?, &edges(output)?))
}

/// The score of two edge maps of the same size (nonzero = edge).
pub fn score_maps(photo: &GrayImage, output: &GrayImage) -> EdgeScore {
    let (hit_out, n_out) = near_count(output, photo);
    let (hit_photo, n_photo) = near_count(photo, output);
    match (n_photo, n_out) {
        (0, 0) => EdgeScore {
            precision: 1.0,
            recall: 1.0,
            f1: 1.0,
        },
        // The share on the empty side is undefined; report both as 0.
        (0, _) | (_, 0) => EdgeScore {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        },
        _ => {
            let precision = hit_out as f64 / n_out as f64;
            let recall = hit_photo as f64 / n_photo as f64;
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            EdgeScore {
                precision,
                recall,
                f1,
            }
        }
    }
}

/// `(edge pixels of `a` with an edge of `b` in their 3×3 neighbourhood, edge pixels of `a`)`.
/// Both maps have the same size (checked by the callers).
fn near_count(a: &GrayImage, b: &GrayImage) -> (usize, usize) {
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (ra, rb) = (a.as_raw(), b.as_raw());
    let (mut hits, mut total) = (0, 0);
    for y in 0..h {
        for x in 0..w {
            if ra[y * w + x] == 0 {
                continue;
            }
            total += 1;
            let near = (y.saturating_sub(1)..(y + 2).min(h))
                .any(|yy| (x.saturating_sub(1)..(x + 2).min(w)).any(|xx| rb[yy * w + xx] != 0));
            if near {
                hits += 1;
            }
        }
    }
    (hits, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: u32, h: u32, on: &[(u32, u32)]) -> GrayImage {
        let mut m = GrayImage::new(w, h);
        for &(x, y) in on {
            m.put_pixel(x, y, image::Luma([255]));
        }
        m
    }

    #[test]
    fn one_pixel_shift_is_tolerated_two_are_not() {
        let photo = map(8, 8, &[(2, 2), (2, 3), (2, 4)]);
        let shifted = map(8, 8, &[(3, 2), (3, 3), (3, 4)]);
        assert_eq!(score_maps(&photo, &shifted).f1, 1.0);
        let far = map(8, 8, &[(4, 2), (4, 3), (4, 4)]);
        assert_eq!(score_maps(&photo, &far).f1, 0.0);
    }

    #[test]
    fn precision_and_recall_count_each_side() {
        // Output has the photo's 2 edges plus 2 far away: P = 1/2, R = 1, F1 = 2/3.
        let photo = map(10, 10, &[(1, 1), (1, 2)]);
        let output = map(10, 10, &[(1, 1), (1, 2), (8, 8), (8, 7)]);
        let s = score_maps(&photo, &output);
        assert_eq!((s.precision, s.recall), (0.5, 1.0));
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn empty_maps() {
        let empty = map(5, 5, &[]);
        let one = map(5, 5, &[(0, 0)]);
        assert_eq!(score_maps(&empty, &empty).f1, 1.0);
        assert_eq!(score_maps(&empty, &one).f1, 0.0);
        assert_eq!(score_maps(&one, &empty).f1, 0.0);
    }
}
