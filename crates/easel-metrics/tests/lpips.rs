//! LPIPS against the lpips 0.1.4 package on a tiny AlexNet (`tools/ref/lpips_ref.py`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use easel_metrics::lpips::Lpips;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> image::RgbImage {
    image::open(fixtures().join(name)).unwrap().to_rgb8()
}

#[test]
fn lpips_matches_the_lpips_package() {
    let weights = fixtures().join("lpips_tiny.safetensors");
    let lpips = Lpips::from_files(&weights, &weights, &Device::Cpu).unwrap();
    assert!(lpips
        .network()
        .starts_with("LPIPS v0.1 AlexNet lpips_tiny.safetensors sha256:"));
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("lpips_ref.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (a, b) = (case["a"].as_str().unwrap(), case["b"].as_str().unwrap());
        let expected = case["lpips"].as_f64().unwrap();
        let got = lpips.distance(&load(a), &load(b)).unwrap();
        assert!(
            (got - expected).abs() <= 1e-4 * expected.max(1.0),
            "{a}: {got} vs {expected}"
        );
        assert_eq!(lpips.distance(&load(a), &load(a)).unwrap(), 0.0);
    }
}

#[test]
fn lpips_refuses_wrong_files_and_tiny_pictures() {
    let weights = fixtures().join("lpips_tiny.safetensors");
    let not_alexnet = fixtures().join("metrics_ref.json");
    let err = Lpips::from_files(&not_alexnet, &weights, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("metrics_ref.json"), "{err}");
    let lpips = Lpips::from_files(&weights, &weights, &Device::Cpu).unwrap();
    let small = image::RgbImage::new(30, 40);
    let err = lpips.distance(&small, &small).unwrap_err().to_string();
    assert!(err.contains("30x40") && err.contains("31x31"), "{err}");
}
