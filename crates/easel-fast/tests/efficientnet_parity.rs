//! EfficientNet-Lite0 with the embedded weights against the PyTorch reference of
//! `tools/ref/efficientnet_ref.py` (same f16-rounded weights): features at ten taps and the
//! logits, through the candle-op path and the CPU path, and ImageNet top-1 on the shared photos.

use candle_core::{DType, Device, Result, Tensor};
use easel_fast::efficientnet::{EfficientNet, Tap};
use std::collections::HashMap;

fn cases() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/efficientnet_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// Largest |a − b| over max(1, largest |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1.0))
}

const TAPS: [&str; 10] = [
    "stem", "dw0", "dw1", "block2", "dw3", "dw5", "block5", "dw8", "block15", "head",
];

/// Both paths give PyTorch's activations at every tap within 1e-4 (of max(1, |feature|)) on odd
/// 23×37 pictures (uneven same padding), a batch of two.
#[test]
fn features_match_pytorch() -> Result<()> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let taps: Vec<Tap> = TAPS.iter().map(|t| Tap::parse(t)).collect::<Result<_>>()?;
    let x = &fx["x"];
    let candle_feats = net.forward(x, &taps)?;
    let (cpu_feats, _) = net.features_with_backward(x, &taps)?;
    for ((name, a), b) in TAPS.iter().zip(&candle_feats).zip(&cpu_feats) {
        let want = &fx[&format!("feat.{name}")];
        let (ea, eb) = (rel_diff(a, want)?, rel_diff(b, want)?);
        assert!(ea <= 1e-4, "{name} (candle ops): {ea}");
        assert!(eb <= 1e-4, "{name} (cpu path): {eb}");
    }
    let logits = net.logits(x)?;
    let e = rel_diff(&logits, &fx["logits"])?;
    assert!(e <= 1e-4, "logits: {e}");
    Ok(())
}

/// Taps come back in the order asked, each once per request, and the CPU path stops early
/// without changing shallower features.
#[test]
fn taps_in_any_order() -> Result<()> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let x = &fx["x"];
    let (feats, _) = net.features_with_backward(x, &[Tap::Block(5), Tap::Stem, Tap::Block(5)])?;
    assert_eq!(feats[0].dims(), fx["feat.block5"].dims());
    assert_eq!(feats[1].dims(), fx["feat.stem"].dims());
    assert!(rel_diff(&feats[2], &fx["feat.block5"])? <= 1e-4);
    assert!(net.forward(x, &[Tap::Depthwise(16)]).is_err());
    assert_eq!(Tap::parse("dw8")?, Tap::Depthwise(8));
    assert!(Tap::parse("relu4_1").is_err());
    Ok(())
}

/// ImageNet top-1 of the shared photos (224² centre crop, bicubic) is one of the classes that
/// `shared/data/peers/efficientnet-lite0/SOURCE.md` lists for them.
#[test]
fn imagenet_top1_on_the_shared_photos() -> Result<()> {
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/images/content"
    );
    for (file, classes) in [
        ("chelsea_cat.png", &[285usize, 282, 281][..]),
        ("coffee_cup.png", &[967, 968]),
        ("rocket_launch_night.jpg", &[657, 744]),
    ] {
        let img = image::open(format!("{dir}/{file}"))
            .map_err(candle_core::Error::wrap)?
            .to_rgb8();
        let (w, h) = img.dimensions();
        let s = 224.0 / w.min(h) as f64;
        let (rw, rh) = (
            ((w as f64 * s).round() as u32).max(224),
            ((h as f64 * s).round() as u32).max(224),
        );
        let r = image::imageops::resize(&img, rw, rh, image::imageops::FilterType::CatmullRom);
        let crop =
            image::imageops::crop_imm(&r, (rw - 224) / 2, (rh - 224) / 2, 224, 224).to_image();
        let x = easel_core::rgb_to_tensor(&crop, &Device::Cpu).map_err(candle_core::Error::wrap)?;
        let logits = net.logits(&x)?.squeeze(0)?;
        let top = logits.argmax(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
        assert!(
            classes.contains(&top),
            "{file}: top-1 class {top}, expected one of {classes:?}"
        );
    }
    Ok(())
}
