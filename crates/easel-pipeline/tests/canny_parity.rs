//! `easel_pipeline::canny` against OpenCV's `cv2.Canny` on real photos and paintings.
//!
//! Fixtures: `tests/fixtures/canny_cases.txt`, `canny_<name>.png` (the RGB uint8 input, resized
//! with PIL) and `canny_<name>_<case>.png` (OpenCV's edge map), written by
//! `tools/ref/canny_ref.py`.

use std::path::{Path, PathBuf};

use easel_pipeline::canny::{canny, CannyOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    name: String,
    case: String,
    opts: CannyOptions,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("canny_cases.txt")).expect("manifest");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 5, "manifest line {line:?}");
            Case {
                name: f[0].to_string(),
                case: f[1].to_string(),
                opts: CannyOptions {
                    low: f[2].parse().expect("low"),
                    high: f[3].parse().expect("high"),
                    blur_sigma: None,
                    l2_gradient: f[4] == "1",
                },
            }
        })
        .collect()
}

/// Every (image, thresholds) pair of the manifest: at least 95 % of the pixels agree with
/// OpenCV (in practice all of them do; the per-image agreement is printed).
#[test]
fn matches_opencv_on_photos_and_paintings() {
    let cases = cases();
    // 8 photos + 2 paintings, 3 threshold settings each.
    assert_eq!(cases.len(), 30);
    let mut worst = 1.0f64;
    for c in &cases {
        let input = image::open(fixtures().join(format!("canny_{}.png", c.name)))
            .expect("input png")
            .into_rgb8();
        let expected = image::open(fixtures().join(format!("canny_{}_{}.png", c.name, c.case)))
            .expect("edge png")
            .into_luma8();
        assert_eq!(input.dimensions(), expected.dimensions(), "{}", c.name);
        let got = canny(&input, &c.opts).expect("canny");
        assert_eq!(got.dimensions(), expected.dimensions());
        let total = expected.as_raw().len();
        let same = got
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .filter(|(a, b)| a == b)
            .count();
        let edges = expected.as_raw().iter().filter(|&&v| v == 255).count();
        let agreement = same as f64 / total as f64;
        println!(
            "{:11} {:11} {}x{}: {same}/{total} pixels agree ({:.4} %), {edges} OpenCV edge pixels",
            c.name,
            c.case,
            input.width(),
            input.height(),
            100.0 * agreement
        );
        assert!(edges > 0, "{} {}: fixture has no edges", c.name, c.case);
        assert!(
            agreement >= 0.95,
            "{} {}: only {:.3} % agreement",
            c.name,
            c.case,
            100.0 * agreement
        );
        worst = worst.min(agreement);
    }
    println!("worst agreement: {:.4} %", 100.0 * worst);
}

/// The diffusers default (100:200, L1) reproduces OpenCV exactly, pixel for pixel.
#[test]
fn default_thresholds_are_bit_exact() {
    for c in cases().iter().filter(|c| c.case == "l1_100_200") {
        assert_eq!(c.opts, CannyOptions::default());
        let input = image::open(fixtures().join(format!("canny_{}.png", c.name)))
            .expect("input png")
            .into_rgb8();
        let expected = image::open(fixtures().join(format!("canny_{}_{}.png", c.name, c.case)))
            .expect("edge png")
            .into_luma8();
        let got = canny(&input, &CannyOptions::default()).expect("canny");
        assert!(got == expected, "{}: differs from OpenCV", c.name);
    }
}
