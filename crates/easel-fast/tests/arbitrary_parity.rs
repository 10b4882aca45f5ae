//! Parity of easel's arbitrary-style network with onnxruntime running the upstream ONNX files.
//!
//! Fixture `tests/fixtures/arbitrary_384.safetensors`, written by `tools/ref/arbitrary_ref.py`
//! (onnxruntime CPU; real pictures resized by PIL and stored as uint8, so both sides get identical
//! inputs): a 256×256 style picture and its style code, a 384×384 photo and its stylization with
//! that code, each for onnxruntime's default graph optimisations (`opt`) and ORT_DISABLE_ALL
//! (`noopt`; both give identical outputs with onnxruntime 1.32.0 on x86-64).
//!
//! The bounds are measured, not the 1e-3 / 1/255 originally hoped for: the network quantizes every
//! activation to int8, including each channel's instance-norm mean, variance and 1/σ, so a single
//! rounding flip anywhere (easel's f32 convolution sums in a different order from onnxruntime's
//! MLAS kernels, and a few of the 10⁶ first-layer values land on the other side of a rounding
//! boundary) changes a whole channel downstream. onnxruntime is just as sensitive to itself:
//! changing ONE input pixel by 1/255 moves its own output by a mean 5.2/255 (max 51/255, 61 % of
//! pixels), and one style pixel moves 19 code entries by one quantum. easel's error sits at that
//! level (see `weights/README.md`).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_fast::arbitrary::{preprocess_style, Config, StylePredictor, StyleTransformer};
use std::collections::HashMap;
use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(
        crate_dir().join("tests/fixtures/arbitrary_384.safetensors"),
        &Device::Cpu,
    )
}

fn models(cfg: &Config) -> Result<(StylePredictor, StyleTransformer)> {
    let path = crate_dir().join("weights/arbitrary.safetensors");
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(path)?, DType::F32, &Device::Cpu)?;
    Ok((
        StylePredictor::new(vb.pp("predict"), cfg)?,
        StyleTransformer::new(vb.pp("transform"), cfg)?,
    ))
}

/// `[H, W, 3]` u8 → `[1, 3, H, W]` f32 `v / 255` (a true division, as numpy does).
fn to_input(t: &Tensor) -> Result<Tensor> {
    let (h, w, c) = t.dims3()?;
    let v: Vec<f32> = t
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect();
    Tensor::from_vec(v, (h, w, c), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

/// The fixture's integer output `k` (`[H, W, 3]` u8) as the image `k / 256`, `[1, 3, H, W]`.
fn stylized(t: &Tensor) -> Result<Tensor> {
    (t.to_dtype(DType::F32)? / 256.0)?
        .permute((2, 0, 1))?
        .unsqueeze(0)
}

fn max_abs(t: &Tensor) -> Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Measured bounds (with a small margin) against one onnxruntime setting.
struct Case {
    name: &'static str,
    /// Fixture keys of onnxruntime's code and stylized image.
    code: &'static str,
    image: &'static str,
    cfg: Config,
    /// Max |code error| relative to max |code|.
    code_rel: f32,
    /// Image mean and max abs error (image in [0, 1]).
    image_mean: f32,
    image_max: f32,
    /// Mean abs error of the whole pipeline (easel's own code → easel's transformer).
    end_to_end_mean: f32,
}

#[test]
fn matches_onnxruntime_at_384() -> Result<()> {
    let fx = fixture()?;
    let get = |k: &str| {
        fx.get(k)
            .cloned()
            .ok_or_else(|| candle_core::Error::msg(format!("fixture has no {k}")))
    };
    let style = to_input(&get("style")?)?;
    let content = to_input(&get("content")?)?;
    let fq = Config::default();
    let plain = Config {
        fake_quant: false,
        ..Config::default()
    };
    // Measured (fake-quant): code 9.35e-3 (one quantum, 0.0199, of max |code| 2.13), image mean
    // 4.84/255, max 43.8/255, end to end 7.33/255 (26 code entries differ by one quantum).
    // Plain f32: code 1.23e-2, image mean 7.54/255, max 63.7/255, end to end 7.65/255.
    let cases = [
        Case {
            name: "fake-quant vs ORT default",
            code: "code_opt",
            image: "stylized_opt",
            cfg: fq.clone(),
            code_rel: 9.5e-3,
            image_mean: 5.5 / 255.0,
            image_max: 48.0 / 255.0,
            end_to_end_mean: 8.2 / 255.0,
        },
        Case {
            name: "fake-quant vs ORT_DISABLE_ALL",
            code: "code_noopt",
            image: "stylized_noopt",
            cfg: fq,
            code_rel: 9.5e-3,
            image_mean: 5.5 / 255.0,
            image_max: 48.0 / 255.0,
            end_to_end_mean: 8.2 / 255.0,
        },
        Case {
            name: "plain f32 vs ORT_DISABLE_ALL",
            code: "code_noopt",
            image: "stylized_noopt",
            cfg: plain,
            code_rel: 1.4e-2,
            image_mean: 8.5 / 255.0,
            image_max: 70.0 / 255.0,
            end_to_end_mean: 8.5 / 255.0,
        },
    ];
    for case in cases {
        let (predictor, transformer) = models(&case.cfg)?;
        let want_code = get(case.code)?.unsqueeze(0)?;
        let code = predictor.forward(&style)?;
        assert_eq!(code.dims(), &[1, 100]);
        let code_diff = (&code - &want_code)?.abs()?;
        let code_err = max_abs(&code_diff)? / max_abs(&want_code)?;
        let code_off = code_diff
            .gt(1e-6)?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        // The transformer runs on onnxruntime's code, so its error is its own.
        let image = transformer.forward(&content, &want_code)?;
        assert_eq!(image.dims(), &[1, 3, 384, 384]);
        let want = stylized(&get(case.image)?)?;
        let diff = (&image - &want)?.abs()?;
        let mean = diff.mean_all()?.to_scalar::<f32>()?;
        let max = max_abs(&diff)?;
        let off = diff
            .gt(1e-6)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        let e2e = (transformer.forward(&content, &code)? - &want)?
            .abs()?
            .mean_all()?
            .to_scalar::<f32>()?;
        println!(
            "{}: code max rel err {code_err:.3e} ({code_off} of 100 entries differ); image mean abs err {:.3}/255, max abs err {:.2}/255, {:.1}% of values differ; end to end mean abs err {:.3}/255",
            case.name,
            mean * 255.0,
            max * 255.0,
            off * 100.0,
            e2e * 255.0
        );
        assert!(
            code_err <= case.code_rel,
            "{}: code error {code_err}",
            case.name
        );
        assert!(
            mean <= case.image_mean,
            "{}: image mean error {mean}",
            case.name
        );
        assert!(
            max <= case.image_max,
            "{}: image max error {max}",
            case.name
        );
        assert!(
            e2e <= case.end_to_end_mean,
            "{}: end-to-end error {e2e}",
            case.name
        );
    }
    Ok(())
}

#[test]
fn preprocess_style_matches_pil() -> Result<()> {
    let fx = fixture()?;
    let src = to_input(&fx["resize_src"])?;
    let want = to_input(&fx["resize_dst"])?;
    let got = preprocess_style(&src)?;
    assert_eq!(got.dims(), &[1, 3, 256, 256]);
    let diff = (&got - &want)?.abs()?;
    let max = max_abs(&diff)?;
    let off = diff
        .gt(1e-6)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!(
        "preprocess_style vs PIL: max abs err {:.2}/255, {:.4}% of values differ",
        max * 255.0,
        off * 100.0
    );
    assert!(max <= 1.0 / 255.0 + 1e-6, "max error {max}");
    assert!(off <= 1e-3, "{off} of the values differ");
    Ok(())
}
