//! Invariants of the EfficientNet-Lite0 content and style distances (the network itself has
//! its own parity test in easel-fast).

use std::path::Path;

use candle_core::Device;
use easel_metrics::perceptual::Perceptual;
use easel_metrics::PairMeter;
use image::RgbImage;

fn load(name: &str) -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

#[test]
fn network_names_the_weights() {
    let p = Perceptual::embedded(&Device::Cpu).unwrap();
    // `sha256sum crates/easel-fast/weights/efficientnet-lite0.safetensors | cut -c1-12`.
    assert_eq!(
        p.network(),
        "EfficientNet-Lite0 (ImageNet) sha256:4352a74f6a82"
    );
}

#[test]
fn distances_are_zero_to_itself_and_grow_with_change() {
    let p = Perceptual::embedded(&Device::Cpu).unwrap();
    let photo = load("metrics_cat_blur_a.png");
    let blurred = load("metrics_cat_blur_b.png");
    let painting = load("metrics_hopper_scream_b.png");
    assert_eq!(p.content_distance(&photo, &photo).unwrap(), 0.0);
    assert_eq!(p.style_distance(&painting, &painting).unwrap(), 0.0);
    let near = p.content_distance(&blurred, &photo).unwrap();
    assert!(near > 0.0 && near.is_finite(), "{near}");
    // A painting of another size is further in style from the photo than its blur is.
    let style_near = p.style_distance(&blurred, &photo).unwrap();
    let style_far = p.style_distance(&painting, &photo).unwrap();
    assert!(
        0.0 < style_near && style_near < style_far,
        "{style_near} {style_far}"
    );
    // The photo is resized to the output: the same value as resizing it by hand.
    let big = image::imageops::resize(&photo, 192, 128, image::imageops::FilterType::Lanczos3);
    let back = image::imageops::resize(&big, 96, 64, image::imageops::FilterType::Lanczos3);
    assert_eq!(
        p.content_distance(&blurred, &big).unwrap(),
        p.content_distance(&blurred, &back).unwrap()
    );
}

#[test]
fn pair_meter_adds_network_metrics() {
    let p = Perceptual::embedded(&Device::Cpu).unwrap();
    let network = p.network();
    let photo = load("metrics_cat_blur_a.png");
    let output = load("metrics_cat_blur_b.png");
    let style = load("metrics_moraine_wave_b.png");
    let direct = (
        p.content_distance(&output, &photo).unwrap(),
        p.style_distance(&output, &style).unwrap(),
    );
    let meter = PairMeter::new(Some(p));
    let values = meter.measure(&photo, &output, Some(&style)).unwrap();
    let keys: Vec<&str> = values.iter().map(|v| v.metric.key).collect();
    assert_eq!(&keys[7..], ["content", "style"]);
    assert_eq!(values[7].value, direct.0);
    assert_eq!(values[8].value, direct.1);
    for v in &values[7..] {
        assert_eq!(v.metric.network.as_deref(), Some(network.as_str()));
    }
    let keys: Vec<&str> = meter.metrics(false).iter().map(|m| m.key).collect();
    assert_eq!(
        keys,
        [
            "ssim",
            "edge_f1",
            "lab_mean_photo",
            "lab_std_photo",
            "content"
        ]
    );
}
