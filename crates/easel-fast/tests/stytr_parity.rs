//! Parity of `easel_fast::stytr::StyTr` with the PyTorch reference modules of
//! `tools/ref/stytr_ref.py` (diyiiyiii/StyTR-2's transformer / embedding / decoder in eval mode,
//! tiny widths, random weights, seed 0). Weights are read from the script's `torch.save`
//! checkpoints through `easel_core::torch_checkpoint`; inputs (a 100×70 photo, an 84×60 style,
//! both padded to multiples of 8) and expected outputs are in `stytr_cases.safetensors`.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use easel_fast::stytr::{Config, PositionalEncoding, StyTr};
use std::collections::HashMap;

#[allow(dead_code)] // the AdaIN fixture loader in common is not used here
mod common;
use common::{checkpoint, image, max_abs_diff, TOLERANCE};

fn fixtures() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stytr_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

fn network(transformer: &str, cfg: &Config) -> Result<StyTr> {
    StyTr::new(
        checkpoint(transformer)?,
        checkpoint("stytr_embedding_tiny.pth")?,
        checkpoint("stytr_decoder_tiny.pth")?,
        cfg,
    )
}

fn cases() -> Vec<(&'static str, &'static str, Config)> {
    let cape18 = Config {
        pos: PositionalEncoding::Cape { grid: 18 },
        ..Config::tiny()
    };
    vec![
        ("cape", "stytr_transformer_cape_tiny.pth", Config::tiny()),
        ("cape18", "stytr_transformer_cape_tiny.pth", cape18),
        (
            "ppe",
            "stytr_transformer_ppe_tiny.pth",
            Config::tiny_pyramidal(),
        ),
    ]
}

#[test]
fn stytr_matches_pytorch_on_non_square_inputs_of_different_sizes() -> Result<()> {
    let fx = fixtures()?;
    let content = image(&fx["image.content"])?;
    let style = image(&fx["image.style"])?;
    assert_eq!(content.dims(), [1, 3, 70, 100]);
    assert_eq!(style.dims(), [1, 3, 60, 84]);
    for (name, file, cfg) in cases() {
        let net = network(file, &cfg)?;
        let out = net.stylize(&content, &style)?;
        let want = &fx[&format!("expected.{name}")];
        let err = max_abs_diff(&out, want)?;
        println!("{name}: max abs err {err:.2e}");
        assert!(err <= TOLERANCE, "{name}: {err}");
    }
    // The encodings matter: the CAPE and pyramidal results differ by far more than the tolerance.
    let gap = max_abs_diff(&fx["expected.cape"], &fx["expected.ppe"])?;
    assert!(gap > 100.0 * TOLERANCE, "{gap}");
    Ok(())
}

/// A photo autograd tracks: every op that sees it (the content encoder, the decoder layers,
/// the CNN decoder) takes candle's ops, what CUDA and training run (matmul, softmax, chunked
/// queries); only the style encoder keeps the CPU kernels.
fn tracked(photo: &Tensor) -> Result<Tensor> {
    Ok(Var::from_tensor(photo)?.as_tensor().clone())
}

/// The CPU kernels (fused attention, direct-convolution decoder) and candle's ops both match
/// PyTorch, and each other.
#[test]
fn candle_path_matches_cpu_kernels() -> Result<()> {
    let fx = fixtures()?;
    let content = image(&fx["image.content"])?;
    let style = image(&fx["image.style"])?;
    for (name, file, cfg) in cases() {
        let net = network(file, &cfg)?;
        let want = &fx[&format!("expected.{name}")];
        let a = net.stylize(&content, &style)?;
        let b = net.stylize(&tracked(&content)?, &style)?;
        assert!(
            !a.track_op() && b.track_op(),
            "{name}: the two paths differ"
        );
        let (ea, eb, gap) = (
            max_abs_diff(&a, want)?,
            max_abs_diff(&b, want)?,
            max_abs_diff(&a, &b)?,
        );
        println!("{name}: kernels {ea:.2e}, candle {eb:.2e}, kernels vs candle {gap:.2e}");
        assert!(
            ea <= TOLERANCE && eb <= TOLERANCE && gap <= TOLERANCE,
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn chunked_attention_equals_unchunked() -> Result<()> {
    let fx = fixtures()?;
    let content = tracked(&image(&fx["image.content"])?)?;
    let style = image(&fx["image.style"])?;
    for (name, file, cfg) in cases() {
        let whole = network(file, &cfg)?.stylize(&content, &style)?;
        // 4 heads × 117 keys at most: 5 queries per chunk (uneven last chunk), or 1.
        for max in [4 * 117 * 5, 1] {
            let chunked = Config {
                max_attention_scores: max,
                ..cfg.clone()
            };
            let out = network(file, &chunked)?.stylize(&content, &style)?;
            let err = max_abs_diff(&out, &whole)?;
            println!("{name} max_attention_scores {max}: {err:.2e}");
            assert!(err <= 1e-5, "{name} {max}: {err}");
        }
    }
    Ok(())
}

#[test]
fn bad_inputs_are_refused() -> Result<()> {
    let net = network("stytr_transformer_cape_tiny.pth", &Config::tiny())?;
    let dev = Device::Cpu;
    let img = |h: usize, w: usize| Tensor::zeros((1, 3, h, w), DType::F32, &dev);
    let err = net.stylize(&img(8, 40)?, &img(32, 32)?).unwrap_err();
    assert!(err.to_string().contains("at least 9 pixels"), "{err}");
    let err = net.stylize(&img(32, 32)?, &img(32, 7)?).unwrap_err();
    assert!(err.to_string().contains("at least 8 pixels"), "{err}");
    let gray = Tensor::zeros((1, 1, 32, 32), DType::F32, &dev)?;
    let err = net.stylize(&gray, &img(32, 32)?).unwrap_err();
    assert!(err.to_string().contains("one RGB picture"), "{err}");
    let err = net.forward(&img(30, 32)?, &img(32, 32)?).unwrap_err();
    assert!(err.to_string().contains("multiples of 8"), "{err}");
    // Smallest photo: 9x9 pads to 16x16 (2x2 tokens), style 8x8 (one token).
    assert_eq!(net.stylize(&img(9, 9)?, &img(8, 8)?)?.dims(), [1, 3, 9, 9]);
    // Weights of the wrong network: the missing key is named.
    let err = network("stytr_transformer_cape_tiny.pth", &Config::tiny_pyramidal()).unwrap_err();
    assert!(err.to_string().contains("ppe"), "{err}");
    let bad = Config {
        d_model: 36,
        ..Config::tiny()
    };
    let err = network("stytr_transformer_cape_tiny.pth", &bad).unwrap_err();
    assert!(
        err.to_string().contains("decoder takes 32 channels"),
        "{err}"
    );
    Ok(())
}

/// The published checkpoints' keys and shapes (`stytr_original_keys.json`, from the reference
/// modules at full size) hold every key `Config::original()` needs, with the shape it expects.
#[test]
fn original_checkpoint_layout_loads() -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stytr_original_keys.json"
    );
    let keys: HashMap<String, HashMap<String, Vec<usize>>> =
        serde_json::from_str(&std::fs::read_to_string(path)?).map_err(candle_core::Error::wrap)?;
    let vb = |part: &str| -> Result<VarBuilder<'static>> {
        let tensors = keys[part]
            .iter()
            .map(|(k, shape)| {
                let t = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?;
                Ok((k.clone(), t))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        assert!(!tensors.is_empty(), "{part}");
        Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
    };
    let net = StyTr::new(
        vb("transformer")?,
        vb("embedding")?,
        vb("decoder")?,
        &Config::original(),
    )?;
    assert_eq!(net.config().d_model, 512);
    Ok(())
}
