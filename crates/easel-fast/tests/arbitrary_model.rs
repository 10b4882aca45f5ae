//! Behaviour of the arbitrary-style network on the committed weights: any content size, batch
//! and code broadcasting, strength interpolation, input validation.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_fast::arbitrary::{interpolate_style_codes, Config, StylePredictor, StyleTransformer};
use std::path::PathBuf;

fn models() -> Result<(StylePredictor, StyleTransformer)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/arbitrary.safetensors");
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(path)?, DType::F32, &Device::Cpu)?;
    let cfg = Config::default();
    Ok((
        StylePredictor::new(vb.pp("predict"), &cfg)?,
        StyleTransformer::new(vb.pp("transform"), &cfg)?,
    ))
}

/// A smooth deterministic test picture `[1, 3, h, w]` in [0, 1].
fn picture(h: usize, w: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            0.5 + 0.4 * ((x as f32 * 0.07 + c as f32).sin() * (y as f32 * 0.05).cos())
        })
        .collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu)
}

#[test]
fn odd_sizes_keep_their_shape_and_match_the_padded_run() -> Result<()> {
    let (predictor, transformer) = models()?;
    let code = predictor.forward(&picture(256, 256)?)?;
    for (h, w) in [(37, 50), (8, 9), (64, 48)] {
        let x = picture(h, w)?;
        let y = transformer.forward(&x, &code)?;
        assert_eq!(y.dims(), &[1, 3, h, w]);
        let (lo, hi) = (
            y.flatten_all()?.min(0)?.to_scalar::<f32>()?,
            y.flatten_all()?.max(0)?.to_scalar::<f32>()?,
        );
        assert!(
            (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
            "{lo}..{hi}"
        );
        // The output lies on the int8 output grid k/256.
        let k = (y * 256.0)?;
        let frac = (&k - k.round()?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(frac < 1e-4, "off the 1/256 grid by {frac}");
    }
    // 37×50 is reflection-padded to 40×52 inside: the same as padding it ourselves.
    let x = picture(37, 50)?;
    let rows: Vec<u32> = (0..37).chain([35, 34, 33]).collect();
    let cols: Vec<u32> = (0..50).chain([48, 47]).collect();
    let padded = x
        .index_select(&Tensor::new(rows, &Device::Cpu)?, 2)?
        .index_select(&Tensor::new(cols, &Device::Cpu)?, 3)?;
    let want = transformer
        .forward(&padded, &code)?
        .narrow(2, 0, 37)?
        .narrow(3, 0, 50)?;
    let d = (transformer.forward(&x, &code)? - want)?
        .abs()?
        .flatten_all()?
        .max(0)?;
    assert_eq!(d.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn batches_broadcast_one_code_and_match_single_runs() -> Result<()> {
    let (predictor, transformer) = models()?;
    let a = picture(32, 40)?;
    let b = (1.0 - &a)?;
    let batch = Tensor::cat(&[&a, &b], 0)?;
    let code = predictor.forward(&picture(256, 256)?)?;
    let y = transformer.forward(&batch, &code)?;
    let ya = transformer.forward(&a, &code.squeeze(0)?)?;
    let yb = transformer.forward(&b, &code)?;
    let d = (y - Tensor::cat(&[&ya, &yb], 0)?)?
        .abs()?
        .flatten_all()?
        .max(0)?;
    assert_eq!(d.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn strength_zero_is_the_content_code() -> Result<()> {
    let (predictor, transformer) = models()?;
    let photo = picture(48, 48)?;
    let style = predictor.forward(&(1.0 - picture(256, 256)?)?)?;
    let own = predictor.forward(&picture(256, 256)?)?;
    let code = interpolate_style_codes(&style, &own, 0.0)?;
    let d0 = (transformer.forward(&photo, &code)? - transformer.forward(&photo, &own)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert_eq!(d0, 0.0);
    // Different codes give different pictures.
    let d1 = (transformer.forward(&photo, &style)? - transformer.forward(&photo, &own)?)?
        .abs()?
        .mean_all()?
        .to_scalar::<f32>()?;
    assert!(d1 > 0.01, "styles barely differ: {d1}");
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let (predictor, transformer) = models()?;
    let code = Tensor::zeros((1, 100), DType::F32, &Device::Cpu)?;
    assert!(transformer.forward(&picture(7, 40)?, &code).is_err());
    assert!(transformer
        .forward(
            &Tensor::zeros((1, 4, 16, 16), DType::F32, &Device::Cpu)?,
            &code
        )
        .is_err());
    assert!(transformer
        .forward(
            &picture(16, 16)?,
            &Tensor::zeros((1, 99), DType::F32, &Device::Cpu)?
        )
        .is_err());
    let two = Tensor::zeros((2, 100), DType::F32, &Device::Cpu)?;
    assert!(transformer
        .forward(
            &Tensor::zeros((3, 3, 16, 16), DType::F32, &Device::Cpu)?,
            &two
        )
        .is_err());
    assert!(predictor.forward(&picture(16, 16)?).is_err());
    Ok(())
}
