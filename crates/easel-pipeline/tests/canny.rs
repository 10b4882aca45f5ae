//! Behaviour of `easel_pipeline::canny` on synthetic images, options and CLI parsing.
//!
//! No fixtures: the expected values follow from the 3×3 Sobel kernel (a step of height `v`
//! has `|dx| = 4v` on the two columns next to it) and were also checked against
//! `cv2.Canny` 5.0 by hand. The OpenCV parity on real photos is `tests/canny_parity.rs`
//! (fixtures from `tools/ref/canny_ref.py`).

use candle_core::Device;
use easel_pipeline::canny::{
    canny, canny_gray, control_image, control_tensor, parse_thresholds, CannyOptions,
};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// 16×12 image, 0 left of column `at`, `value` from column `at` on (all channels).
fn vertical_step(at: u32, value: u8) -> RgbImage {
    RgbImage::from_fn(
        16,
        12,
        |x, _| if x < at { Rgb([0; 3]) } else { Rgb([value; 3]) },
    )
}

fn edge_columns(edges: &GrayImage) -> Vec<u32> {
    let mut cols: Vec<u32> = edges
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] == 255)
        .map(|(x, _, _)| x)
        .collect();
    cols.sort_unstable();
    cols.dedup();
    cols
}

fn count(edges: &GrayImage) -> usize {
    edges.as_raw().iter().filter(|&&v| v == 255).count()
}

fn only_0_255(edges: &GrayImage) -> bool {
    edges.as_raw().iter().all(|&v| v == 0 || v == 255)
}

/// A vertical step edge gives a one-pixel-wide line on the last dark column, in every row:
/// both columns beside the step have |dx| = 4 * 200 = 800, and OpenCV's NMS keeps the left
/// one of a plateau (`m > left && m >= right`).
#[test]
fn step_edge_is_one_pixel_wide_at_the_step() {
    let edges = canny(&vertical_step(8, 200), &CannyOptions::default()).unwrap();
    assert_eq!(edges.dimensions(), (16, 12));
    assert!(only_0_255(&edges));
    assert_eq!(edge_columns(&edges), vec![7]);
    assert_eq!(count(&edges), 12, "every row of column 7");

    // The transposed case: a horizontal step keeps the last dark row (`m > up && m >= down`).
    let img = RgbImage::from_fn(
        10,
        14,
        |_, y| if y < 5 { Rgb([20; 3]) } else { Rgb([220; 3]) },
    );
    let edges = canny(&img, &CannyOptions::default()).unwrap();
    for (x, y, p) in edges.enumerate_pixels() {
        assert_eq!(p[0], if y == 4 { 255 } else { 0 }, "({x}, {y})");
    }
}

/// The step's position moves the line with it, including to the image border.
#[test]
fn step_edge_follows_the_step() {
    for at in [1, 3, 12, 15] {
        let edges = canny(&vertical_step(at, 90), &CannyOptions::default()).unwrap();
        assert_eq!(edge_columns(&edges), vec![at - 1], "step at column {at}");
    }
}

/// Strong means `magnitude > high` (strictly): a step of 50 has magnitude 200, which is not
/// an edge at 100:200 but is at 100:199.9 (thresholds are floored to 199).
#[test]
fn high_threshold_is_exclusive_and_floored() {
    let img = vertical_step(8, 50);
    assert_eq!(
        count(&canny(&img, &CannyOptions::with_thresholds(100.0, 200.0)).unwrap()),
        0
    );
    let edges = canny(&img, &CannyOptions::with_thresholds(100.0, 199.9)).unwrap();
    assert_eq!(edge_columns(&edges), vec![7]);
    assert_eq!(count(&edges), 12);
}

/// Hysteresis: the weak half of an edge (magnitude 120) is kept only when it is connected to
/// the strong half (magnitude 240) and above `low` (strictly).
#[test]
fn hysteresis_keeps_weak_pixels_connected_to_strong_ones() {
    // Rows 0..6: step 0 -> 60 (|dx| = 240); rows 6..12: step 0 -> 30 (|dx| = 120).
    let img = RgbImage::from_fn(16, 12, |x, y| match (x < 8, y < 6) {
        (true, _) => Rgb([0; 3]),
        (false, true) => Rgb([60; 3]),
        (false, false) => Rgb([30; 3]),
    });
    let pixels = |edges: &GrayImage| -> Vec<(u32, u32)> {
        edges
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] == 255)
            .map(|(x, y, _)| (x, y))
            .collect()
    };
    // The edge runs down column 7, steps right along row 5 where the right side changes
    // from 60 to 30 (a horizontal edge there), and continues down column 7 (as cv2.Canny).
    let mut expected: Vec<(u32, u32)> = (0..5).map(|y| (7, y)).collect();
    expected.extend((8..16).map(|x| (x, 5)));
    expected.push((8, 6));
    expected.extend((7..12).map(|y| (7, y)));
    expected.sort_by_key(|&(x, y)| (y, x));
    let edges = canny(&img, &CannyOptions::with_thresholds(100.0, 200.0)).unwrap();
    assert_eq!(pixels(&edges), expected, "weak rows 7..12 connected");

    // low = 120: magnitude 120 is not > low, so the weak rows are no longer candidates.
    let edges = canny(&img, &CannyOptions::with_thresholds(120.0, 200.0)).unwrap();
    let mut expected: Vec<(u32, u32)> = (0..5).map(|y| (7, y)).collect();
    expected.extend([(8, 5), (8, 6)]);
    assert_eq!(pixels(&edges), expected);

    // A weak edge alone (no strong pixel anywhere) disappears.
    let weak = vertical_step(8, 30);
    assert_eq!(
        count(&canny(&weak, &CannyOptions::with_thresholds(100.0, 200.0)).unwrap()),
        0
    );
    // ...and comes back once its magnitude is above `high`.
    assert_eq!(
        count(&canny(&weak, &CannyOptions::with_thresholds(100.0, 119.0)).unwrap()),
        12
    );
}

/// The L2 magnitude uses squared thresholds: a step of 50 has sqrt(dx²) = 200, not > 200.
#[test]
fn l2_gradient_thresholds() {
    let img = vertical_step(8, 50);
    let mut opts = CannyOptions {
        l2_gradient: true,
        ..CannyOptions::default()
    };
    assert_eq!(count(&canny(&img, &opts).unwrap()), 0);
    opts.high = 199.0;
    assert_eq!(edge_columns(&canny(&img, &opts).unwrap()), vec![7]);
}

/// Per pixel the channel with the largest gradient wins: an edge only in blue is found.
#[test]
fn colour_edge_in_one_channel() {
    let img = RgbImage::from_fn(16, 12, |x, _| {
        if x < 8 {
            Rgb([40, 40, 0])
        } else {
            Rgb([40, 40, 250])
        }
    });
    let edges = canny(&img, &CannyOptions::default()).unwrap();
    assert_eq!(edge_columns(&edges), vec![7]);
    // A gray image replicated to RGB gives the same edges as the gray image itself.
    let gray = GrayImage::from_fn(23, 17, |x, y| Luma([((x * 37 + y * y * 11) % 256) as u8]));
    let rgb = RgbImage::from_fn(23, 17, |x, y| {
        let v = gray.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    let opts = CannyOptions::with_thresholds(50.0, 150.0);
    let from_gray = canny_gray(&gray, &opts).unwrap();
    assert!(count(&from_gray) > 0);
    assert!(from_gray == canny(&rgb, &opts).unwrap());
}

/// Tiny and empty images give maps of their own size and never panic.
#[test]
fn tiny_images_do_not_panic() {
    let blur = CannyOptions {
        blur_sigma: Some(1.0),
        ..CannyOptions::default()
    };
    let all = [
        CannyOptions::default(),
        blur,
        CannyOptions::with_thresholds(0.0, 0.0),
    ];
    for (w, h) in [(0, 0), (0, 5), (1, 1), (2, 2), (1, 7), (7, 1), (2, 3)] {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([((x + y) % 2 * 255) as u8, 0, 255]));
        for opts in &all {
            let edges = canny(&img, opts).unwrap();
            assert_eq!(edges.dimensions(), (w, h));
            assert!(only_0_255(&edges));
        }
    }
    // A single pixel has no gradient (replicated borders): no edge even at 0:0.
    let one = RgbImage::from_pixel(1, 1, Rgb([255, 0, 0]));
    assert_eq!(
        count(&canny(&one, &CannyOptions::with_thresholds(0.0, 0.0)).unwrap()),
        0
    );
    // 2x2 with a dark left column: |dx| = 4 * 255 on both columns, the left one kept.
    let two = RgbImage::from_fn(2, 2, |x, _| Rgb([(x * 255) as u8; 3]));
    let edges = canny(&two, &CannyOptions::default()).unwrap();
    assert_eq!(edges.as_raw(), &vec![255, 0, 255, 0]);
    // A 1-pixel-wide column alternating in red: only its ends are edges (as cv2.Canny).
    let column = RgbImage::from_fn(1, 7, |_, y| Rgb([(y % 2 * 255) as u8, 0, 255]));
    let edges = canny(&column, &CannyOptions::default()).unwrap();
    assert_eq!(edges.as_raw(), &vec![255, 0, 0, 0, 0, 0, 255]);
}

/// Blur smooths away pixel noise but keeps a strong step as a single line near it.
#[test]
fn blur_option() {
    // Checkerboard noise (+-40) on a step of 200.
    let img = RgbImage::from_fn(32, 24, |x, y| {
        let base: i32 = if x < 16 { 20 } else { 220 };
        let noise = if (x + y) % 2 == 0 { 30 } else { -30 };
        Rgb([(base + noise).clamp(0, 255) as u8; 3])
    });
    let plain = canny(&img, &CannyOptions::with_thresholds(50.0, 100.0)).unwrap();
    let blurred = canny(
        &img,
        &CannyOptions {
            blur_sigma: Some(1.5),
            ..CannyOptions::with_thresholds(50.0, 100.0)
        },
    )
    .unwrap();
    assert!(count(&plain) > count(&blurred));
    let cols = edge_columns(&blurred);
    assert_eq!(cols.len(), 1, "{cols:?}");
    assert!((14..=16).contains(&cols[0]), "{cols:?}");
    assert_eq!(count(&blurred), 24);
}

#[test]
fn invalid_options_are_errors() {
    let bad = [
        CannyOptions::with_thresholds(f32::NAN, 200.0),
        CannyOptions::with_thresholds(100.0, f32::INFINITY),
        CannyOptions::with_thresholds(-1.0, 200.0),
        CannyOptions::with_thresholds(201.0, 200.0),
        CannyOptions {
            blur_sigma: Some(0.0),
            ..CannyOptions::default()
        },
        CannyOptions {
            blur_sigma: Some(f32::NAN),
            ..CannyOptions::default()
        },
        CannyOptions {
            blur_sigma: Some(1e9),
            ..CannyOptions::default()
        },
    ];
    let img = vertical_step(8, 200);
    for opts in bad {
        let err = canny(&img, &opts).unwrap_err().to_string();
        assert!(err.contains("Canny"), "{err}");
        assert!(opts.validate().is_err());
    }
    assert_eq!(
        CannyOptions::with_thresholds(201.0, 200.0)
            .validate()
            .unwrap_err()
            .to_string(),
        "Canny low threshold (201) must not exceed the high threshold (200)"
    );
    // Huge thresholds are valid and simply find nothing.
    let huge = CannyOptions::with_thresholds(1e30, 3e38);
    assert_eq!(count(&canny(&img, &huge).unwrap()), 0);
}

#[test]
fn parse_thresholds_accepts_low_colon_high() {
    assert_eq!(parse_thresholds("100:200").unwrap(), (100.0, 200.0));
    assert_eq!(parse_thresholds(" 50 : 150 ").unwrap(), (50.0, 150.0));
    assert_eq!(parse_thresholds("0:0").unwrap(), (0.0, 0.0));
    assert_eq!(parse_thresholds("12.5:12.5").unwrap(), (12.5, 12.5));
}

#[test]
fn parse_thresholds_errors_say_what_is_wrong() {
    let cases = [
        ("100", "no ':'"),
        ("100-200", "no ':'"),
        ("", "no ':'"),
        ("1:2:3", "more than one ':'"),
        (":200", "low threshold is missing"),
        ("100:", "high threshold is missing"),
        ("abc:200", "\"abc\" is not a number"),
        ("100:x", "\"x\" is not a number"),
        ("nan:200", "not a finite number"),
        ("100:inf", "not a finite number"),
        ("-5:200", "-5 is negative"),
        (
            "300:200",
            "low threshold 300 is greater than the high threshold 200",
        ),
    ];
    for (input, expected) in cases {
        let err = parse_thresholds(input).unwrap_err().to_string();
        assert!(err.contains(expected), "{input:?}: {err}");
        assert!(err.contains("expected LOW:HIGH, e.g. 100:200"), "{err}");
        assert!(!err.contains('\n'));
    }
}

#[test]
fn control_image_and_tensor_stack_the_edges() {
    let edges = canny(&vertical_step(8, 200), &CannyOptions::default()).unwrap();
    let rgb = control_image(&edges);
    assert_eq!(rgb.dimensions(), (16, 12));
    assert_eq!(rgb.get_pixel(7, 3), &Rgb([255, 255, 255]));
    assert_eq!(rgb.get_pixel(8, 3), &Rgb([0, 0, 0]));

    let t = control_tensor(&edges, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[1, 3, 12, 16]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let plane = 12 * 16;
    for c in 0..3 {
        for y in 0..12 {
            for x in 0..16 {
                let expected = if x == 7 { 1.0 } else { 0.0 };
                assert_eq!(v[c * plane + y * 16 + x], expected, "c{c} ({x}, {y})");
            }
        }
    }
    let empty = control_tensor(&GrayImage::new(0, 0), &Device::Cpu).unwrap();
    assert_eq!(empty.dims(), &[1, 3, 0, 0]);
}
