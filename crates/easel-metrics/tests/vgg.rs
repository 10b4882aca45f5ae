//! AdaIN's and StyTr²'s losses on the tiny random VGG-19 of easel-fast's fixtures: the meter's
//! values are easel-fast's loss functions on the same features, 0 for identical pictures, and
//! a file that is no VGG is refused by name.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_fast::losses::{mse, normalized_content_loss, style_loss};
use easel_fast::vgg::{Config, Layer, VggEncoder};
use easel_metrics::vgg::VggLosses;
use easel_metrics::PairMeter;
use image::RgbImage;

fn tiny_vgg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-fast/tests/fixtures/adain_vgg_tiny.pth")
}

fn picture(seed: u32) -> RgbImage {
    RgbImage::from_fn(40, 32, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, ((v * 3) % 256) as u8, ((x * y + seed) % 256) as u8])
    })
}

#[test]
fn vgg_losses_are_easel_fasts_losses_and_zero_on_the_same_picture() {
    let dev = Device::Cpu;
    let vgg = VggLosses::from_file(&tiny_vgg(), &dev).unwrap();
    assert!(vgg
        .network()
        .starts_with("VGG-19 adain_vgg_tiny.pth sha256:"));
    let (photo, output, style) = (picture(1), picture(2), picture(3));
    let got = vgg.measure(&output, &photo, Some(&style)).unwrap();

    let weights = read_torch_checkpoint(&std::fs::read(tiny_vgg()).unwrap(), "tiny").unwrap();
    let enc = VggEncoder::new(
        VarBuilder::from_tensors(weights.into_iter().collect(), DType::F32, &dev),
        &Config::tiny(),
    )
    .unwrap();
    let feats = |img: &RgbImage| {
        enc.forward_layers(
            &easel_core::rgb_to_tensor(img, &dev).unwrap(),
            Layer::Relu5_1,
        )
        .unwrap()
    };
    let (fo, fp, fs) = (feats(&output), feats(&photo), feats(&style));
    let value =
        |t: candle_core::Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(got.adain_content, value(mse(&fo[3], &fp[3]).unwrap()));
    assert_eq!(
        got.stytr_content,
        value(normalized_content_loss(&fo, &fp).unwrap())
    );
    assert_eq!(
        got.adain_style,
        Some(value(style_loss(&fo[..4], &fs[..4]).unwrap()))
    );
    assert_eq!(got.stytr_style, Some(value(style_loss(&fo, &fs).unwrap())));
    assert!(got.adain_content > 0.0 && got.stytr_style.unwrap() > 0.0);

    let same = vgg.measure(&photo, &photo, Some(&photo)).unwrap();
    assert_eq!(same.adain_content, 0.0);
    assert_eq!(same.stytr_content, 0.0);
    assert_eq!(same.adain_style, Some(0.0));

    // The meter reports them after the weight-free metrics, named by the file.
    let meter = PairMeter::new(None).with_vgg(vgg);
    let values = meter.measure(&photo, &output, Some(&style)).unwrap();
    let tail: Vec<(&str, f64)> = values[values.len() - 4..]
        .iter()
        .map(|v| (v.metric.key, v.value))
        .collect();
    assert_eq!(
        tail,
        [
            ("adain_content", got.adain_content),
            ("stytr_content", got.stytr_content),
            ("adain_style", got.adain_style.unwrap()),
            ("stytr_style", got.stytr_style.unwrap()),
        ]
    );
    assert!(values[values.len() - 1]
        .metric
        .network
        .as_deref()
        .unwrap()
        .contains("adain_vgg_tiny.pth"));
}

#[test]
fn a_file_that_is_no_vgg_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("decoder.pth");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../easel-fast/tests/fixtures/adain_decoder_tiny.pth"),
        &bad,
    )
    .unwrap();
    let err = VggLosses::from_file(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("2.weight"), "{err}");
    let missing = VggLosses::from_file(&dir.path().join("none.pth"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("none.pth"), "{missing}");
}
