//! Golden parity with the Python references of `tools/ref/metrics_ref.py` (scikit-image SSIM
//! and rgb2lab, cv2.Canny edge F1, a NumPy HistoGAN of StyleID's eval_histogan.py, NumPy/SciPy
//! KID and FID) on real photo pairs, plus the metrics' invariants.

use std::path::{Path, PathBuf};

use easel_metrics::edges::{edge_f1, edge_score};
use easel_metrics::histogram::{histogan_distance, rgb_uv_histogram, BINS};
use easel_metrics::lab::{lab_gap, lab_stats};
use easel_metrics::set::{
    fid, frechet_distance, kid, mean_and_covariance, Features, FID_MIN_IMAGES,
};
use easel_metrics::ssim::ssim;
use easel_metrics::{Better, MetricError, PairMeter};
use image::RgbImage;
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Json {
    let text = std::fs::read_to_string(fixtures().join("metrics_ref.json"))
        .expect("metrics_ref.json (run tools/ref/metrics_ref.py)");
    serde_json::from_str(&text).expect("valid JSON")
}

fn load(name: &str) -> RgbImage {
    image::open(fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

/// Every fixture pair: (name, a, b, its JSON).
fn pairs() -> Vec<(String, RgbImage, RgbImage, Json)> {
    let r = reference();
    let cases = r["pairs"].as_array().expect("pairs").clone();
    assert!(cases.len() >= 5, "{} pairs", cases.len());
    cases
        .into_iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let a = load(&format!("metrics_{name}_a.png"));
            let b = load(&format!("metrics_{name}_b.png"));
            (name, a, b, c)
        })
        .collect()
}

fn f64s(v: &Json) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn ssim_matches_scikit_image() {
    let mut checked = 0;
    for (name, a, b, c) in pairs() {
        let Some(want) = c["ssim"].as_f64() else {
            continue;
        };
        let got = ssim(&a, &b).unwrap();
        assert!((got - want).abs() <= 1e-9, "{name}: {got} vs {want}");
        checked += 1;
    }
    assert!(checked >= 5, "{checked} SSIM cases");
}

#[test]
fn edge_f1_matches_opencv() {
    let mut checked = 0;
    for (name, a, b, c) in pairs() {
        let Some(want) = c["edge_f1"].as_f64() else {
            continue;
        };
        let s = edge_score(&a, &b).unwrap();
        for (what, got, want) in [
            (
                "precision",
                s.precision,
                c["edge_precision"].as_f64().unwrap(),
            ),
            ("recall", s.recall, c["edge_recall"].as_f64().unwrap()),
            ("f1", s.f1, want),
        ] {
            // Same counts, same divisions: only JSON decimal rounding can differ.
            assert!(
                (got - want).abs() <= 1e-15,
                "{name} {what}: {got} vs {want}"
            );
        }
        assert_eq!(edge_f1(&a, &b).unwrap(), s.f1);
        checked += 1;
    }
    assert!(checked >= 5, "{checked} edge cases");
}

#[test]
fn histogan_matches_numpy_reference() {
    for (name, a, b, c) in pairs() {
        let want = c["histogan"].as_f64().unwrap();
        let got = histogan_distance(&a, &b).unwrap();
        assert!((got - want).abs() <= 1e-9, "{name}: {got} vs {want}");
    }
}

#[test]
fn lab_stats_match_scikit_image() {
    for (name, a, b, c) in pairs() {
        for (img, key) in [(&a, "lab_a"), (&b, "lab_b")] {
            let s = lab_stats(img);
            let (mean, std) = (f64s(&c[key]["mean"]), f64s(&c[key]["std"]));
            for ch in 0..3 {
                assert!(
                    (s.mean[ch] - mean[ch]).abs() <= 1e-9,
                    "{name} {key} mean[{ch}]: {} vs {}",
                    s.mean[ch],
                    mean[ch]
                );
                assert!(
                    (s.std[ch] - std[ch]).abs() <= 1e-9,
                    "{name} {key} std[{ch}]: {} vs {}",
                    s.std[ch],
                    std[ch]
                );
            }
        }
        // The gap is the norm of the reference statistics' differences.
        let gap = lab_gap(&a, &b);
        let norm = |x: Vec<f64>, y: Vec<f64>| {
            x.iter()
                .zip(&y)
                .map(|(p, q)| (p - q).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let want_mean = norm(f64s(&c["lab_a"]["mean"]), f64s(&c["lab_b"]["mean"]));
        let want_std = norm(f64s(&c["lab_a"]["std"]), f64s(&c["lab_b"]["std"]));
        assert!(
            (gap.mean - want_mean).abs() <= 1e-9,
            "{name}: {} vs {want_mean}",
            gap.mean
        );
        assert!(
            (gap.std - want_std).abs() <= 1e-9,
            "{name}: {} vs {want_std}",
            gap.std
        );
    }
}

fn features(v: &Json) -> Features {
    let rows: Vec<Vec<f64>> = v.as_array().unwrap().iter().map(f64s).collect();
    Features::new(&rows).unwrap()
}

#[test]
fn kid_and_frechet_distance_match_numpy_scipy() {
    let r = reference();
    let (a, b) = (features(&r["sets"]["a"]), features(&r["sets"]["b"]));
    assert_eq!((a.rows(), b.rows(), a.dim()), (40, 32, 16));
    let want_kid = r["sets"]["kid"].as_f64().unwrap();
    let got_kid = kid(&a, &b).unwrap();
    assert!(
        (got_kid - want_kid).abs() <= 1e-12,
        "KID {got_kid} vs {want_kid}"
    );
    let (m1, s1) = mean_and_covariance(&a).unwrap();
    let (m2, s2) = mean_and_covariance(&b).unwrap();
    let want_fid = r["sets"]["fid"].as_f64().unwrap();
    let got_fid = frechet_distance(&m1, &s1, &m2, &s2).unwrap();
    assert!(
        (got_fid - want_fid).abs() <= 1e-9,
        "FID {got_fid} vs {want_fid}"
    );
    // Symmetric in its arguments.
    let back = frechet_distance(&m2, &s2, &m1, &s1).unwrap();
    assert!((back - got_fid).abs() <= 1e-9, "{back} vs {got_fid}");
}

#[test]
fn identical_inputs_give_perfect_scores() {
    for (name, a, _, _) in pairs() {
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12, "{name}");
        assert_eq!(edge_f1(&a, &a).unwrap(), 1.0, "{name}");
        assert!(histogan_distance(&a, &a).unwrap().abs() < 1e-12, "{name}");
        let gap = lab_gap(&a, &a);
        assert_eq!((gap.mean, gap.std), (0.0, 0.0), "{name}");
    }
    let r = reference();
    let a = features(&r["sets"]["a"]);
    let (m, s) = mean_and_covariance(&a).unwrap();
    let d = frechet_distance(&m, &s, &m, &s).unwrap();
    assert!(d.abs() < 1e-9, "FID(a, a) = {d}");
    // KID is symmetric (KID(a, a) is not 0: the unbiased estimate assumes independent sets).
    let b = features(&r["sets"]["b"]);
    let (ab, ba) = (kid(&a, &b).unwrap(), kid(&b, &a).unwrap());
    assert!((ab - ba).abs() < 1e-12, "{ab} vs {ba}");
}

#[test]
fn histogram_is_normalised() {
    let (_, a, _, _) = &pairs()[0];
    let h = rgb_uv_histogram(a);
    assert_eq!(h.len(), 3 * BINS * BINS);
    let total: f64 = h.iter().sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    assert!(h.iter().all(|v| *v >= 0.0));
}

#[test]
fn size_mismatch_names_both_sizes() {
    let a = RgbImage::new(20, 16);
    let b = RgbImage::new(16, 20);
    for err in [ssim(&a, &b).unwrap_err(), edge_f1(&a, &b).unwrap_err()] {
        assert!(matches!(err, MetricError::SizeMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("20x16") && text.contains("16x20"), "{text}");
    }
}

#[test]
fn ssim_refuses_images_under_the_window() {
    let a = RgbImage::new(10, 40);
    let err = ssim(&a, &a).unwrap_err();
    assert!(
        matches!(err, MetricError::TooSmall { min: 11, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("10x40"), "{err}");
    let ok = RgbImage::new(11, 11);
    assert_eq!(ssim(&ok, &ok).unwrap(), 1.0);
}

#[test]
fn fid_refuses_small_sets_with_the_count() {
    let rows: Vec<Vec<f64>> = (0..100).map(|i| vec![i as f64, (i * i) as f64]).collect();
    let f = Features::new(&rows).unwrap();
    let err = fid(&f, &f).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("100 rows") && text.contains(&FID_MIN_IMAGES.to_string()),
        "{text}"
    );
}

#[test]
fn features_are_checked() {
    let err = Features::new(&[vec![1.0, 2.0], vec![3.0]]).unwrap_err();
    assert!(err.to_string().contains("row 1 has 1 values"), "{err}");
    let err = Features::new(&[vec![1.0, f64::NAN]]).unwrap_err();
    assert!(err.to_string().contains("row 0, column 1"), "{err}");
    let one = Features::new(&[vec![1.0, 2.0]]).unwrap();
    assert!(kid(&one, &one).is_err());
    let wide = Features::new(&[vec![1.0; 3], vec![2.0; 3]]).unwrap();
    let narrow = Features::new(&[vec![1.0; 2], vec![2.0; 2]]).unwrap();
    assert!(kid(&wide, &narrow)
        .unwrap_err()
        .to_string()
        .contains("width 3 and 2"));
}

#[test]
fn kid_uses_subsets_on_large_sets() {
    // 1200 rows each: 100 subsets of 1000. Same distribution → near 0; shifted → near the
    // all-rows estimate (the subsets are unbiased estimates of the same MMD²).
    let gen = |seed: u64, shift: f64| {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let rows: Vec<Vec<f64>> = (0..1200)
            .map(|_| (0..4).map(|_| next() + shift).collect())
            .collect();
        Features::new(&rows).unwrap()
    };
    let (a, b, c) = (gen(1, 0.0), gen(2, 0.0), gen(3, 0.5));
    let near = kid(&a, &b).unwrap();
    let far = kid(&a, &c).unwrap();
    assert!(near.abs() < 1e-3, "{near}");
    assert!(far > 0.05, "{far}");
}

#[test]
fn pair_meter_reports_each_metric_in_order() {
    let (_, photo, output, _) = pairs().remove(3);
    let (_, _, style, _) = pairs().remove(4);
    let meter = PairMeter::new(None);
    let values = meter.measure(&photo, &output, Some(&style)).unwrap();
    let keys: Vec<&str> = values.iter().map(|v| v.metric.key).collect();
    assert_eq!(
        keys,
        [
            "ssim",
            "edge_f1",
            "lab_mean_photo",
            "lab_std_photo",
            "histogan",
            "lab_mean_style",
            "lab_std_style"
        ]
    );
    assert_eq!(
        meter.metrics(true),
        values.iter().map(|v| v.metric.clone()).collect::<Vec<_>>()
    );
    let photo_gap = lab_gap(&output, &photo);
    let style_gap = lab_gap(&output, &style);
    let want = [
        ssim(&output, &photo).unwrap(),
        edge_f1(&photo, &output).unwrap(),
        photo_gap.mean,
        photo_gap.std,
        histogan_distance(&output, &style).unwrap(),
        style_gap.mean,
        style_gap.std,
    ];
    for (v, w) in values.iter().zip(want) {
        assert_eq!(v.value, w, "{}", v.metric.key);
    }
    assert_eq!(values[0].metric.better, Better::Higher);
    assert!(values[2..].iter().all(|v| v.metric.better == Better::Lower));
    assert!(values.iter().all(|v| v.metric.network.is_none()));
    // Without a style: the photo metrics only.
    let plain = meter.measure(&photo, &output, None).unwrap();
    assert_eq!(plain.len(), 4);
    assert_eq!(plain[0].value, want[0]);
}

#[test]
fn pair_meter_resizes_the_photo_to_the_output() {
    let (_, photo, output, _) = pairs().remove(0);
    let big = image::imageops::resize(
        &photo,
        photo.width() * 2,
        photo.height() * 2,
        image::imageops::FilterType::Lanczos3,
    );
    let meter = PairMeter::new(None);
    let values = meter.measure(&big, &output, None).unwrap();
    let back = image::imageops::resize(
        &big,
        output.width(),
        output.height(),
        image::imageops::FilterType::Lanczos3,
    );
    assert_eq!(values[0].value, ssim(&output, &back).unwrap());
    assert_eq!(values[1].value, edge_f1(&back, &output).unwrap());
}
