//! Parity of `easel_fast::vgg::VggEncoder` ("vgg_normalised" VGG-19) with the PyTorch `vgg`
//! `nn.Sequential` of naoto0804/pytorch-AdaIN `net.py`, rebuilt with widths ÷ 8 and random
//! weights (seed 0) by `tools/ref/adain_ref.py`. The weights are read from the script's
//! `torch.save` checkpoint `adain_vgg_tiny.pth` through `easel_core::torch_checkpoint`; the
//! input picture and the five expected activations are in `adain_cases.safetensors`.

use candle_core::{DType, Device, Result, Tensor};
use easel_fast::vgg::{self, Layer, VggEncoder};

mod common;
use common::{checkpoint, fixtures, image, max_abs_diff, TOLERANCE};

#[test]
fn vgg_features_match_pytorch() -> Result<()> {
    let fx = fixtures()?;
    let vgg = VggEncoder::new(checkpoint("adain_vgg_tiny.pth")?, &vgg::Config::tiny())?;
    let content = image(&fx["image.content"])?; // 100x70: odd sizes through the ceil pools
    let feats = vgg.forward_features(&content)?;
    for layer in Layer::ALL {
        let want = &fx[&format!("features.{}", layer.name())];
        let err = max_abs_diff(feats.get(layer), want)?;
        println!("{}: {:?} max abs err {err:.2e}", layer.name(), want.dims());
        assert!(err <= TOLERANCE, "{}: {err}", layer.name());
        // forward_to stops at the layer and gives the same activation.
        let err = max_abs_diff(&vgg.forward_to(&content, layer)?, want)?;
        assert!(err <= TOLERANCE, "{} (forward_to): {err}", layer.name());
    }
    Ok(())
}

#[test]
fn too_small_or_too_deep_is_an_error() -> Result<()> {
    let vgg = VggEncoder::new(checkpoint("adain_vgg_tiny.pth")?, &vgg::Config::tiny())?;
    let x16 = Tensor::zeros((1, 3, 16, 30), DType::F32, &Device::Cpu)?;
    let err = vgg.forward_features(&x16).expect_err("too small");
    assert!(err
        .to_string()
        .contains("a 30x16 picture is too small to reach relu5_1"));
    assert_eq!(vgg.forward_to(&x16, Layer::Relu4_1)?.dims(), [1, 64, 2, 4]);
    let shallow = VggEncoder::new(
        checkpoint("adain_vgg_tiny.pth")?,
        &vgg::Config {
            depth: Layer::Relu2_1,
            ..vgg::Config::tiny()
        },
    )?;
    let err = shallow.forward_to(&x16, Layer::Relu3_1).expect_err("depth");
    assert!(err
        .to_string()
        .contains("built to relu2_1 cannot compute relu3_1"));
    Ok(())
}
