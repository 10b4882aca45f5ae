//! Read ONNX models to import their weights.
//!
//! easel never executes ONNX graphs: it re-implements a network in candle and uses this crate to
//! read the network's initializers (and the few graph facts an importer needs, such as which
//! `DequantizeLinear` node feeds a `Conv`). Quantized weights (int8 QDQ) are dequantized exactly as
//! ONNX defines it: `(q - zero_point) * scale`, per tensor or per `axis`.
//!
//! Only the protobuf fields listed in [`proto`] are decoded; external-data tensors are refused.

pub mod proto;

use prost::Message;
use proto::{data_type, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::HashMap;

/// Errors raised while reading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a readable ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("ONNX tensor '{0}' not found (neither an initializer nor a Constant output)")]
    MissingTensor(String),
    #[error("ONNX tensor '{name}': {reason}")]
    BadTensor { name: String, reason: String },
    #[error("ONNX node producing '{0}' not found")]
    MissingNode(String),
    #[error("ONNX node #{index} ({op_type}) has no outputs")]
    NodeWithoutOutputs { index: usize, op_type: String },
    #[error("ONNX {op_type} node '{output}' has no input {index}")]
    MissingInput {
        op_type: String,
        output: String,
        index: usize,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A decoded tensor: dimensions plus values widened to `f32` (weights) or kept as `i64` (shapes).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

impl Array {
    /// Number of elements the dimensions describe.
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An ONNX model: its graph nodes and constant tensors, indexed by name.
pub struct OnnxModel {
    graph: GraphProto,
    opsets: Vec<(String, i64)>,
    initializers: HashMap<String, usize>,
    producers: HashMap<String, usize>,
}

impl OnnxModel {
    /// Parses a serialized `ModelProto`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model = ModelProto::decode(bytes)?;
        let graph = model.graph.ok_or(Error::NoGraph)?;
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut producers = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            // Every node has an output (ONNX requires one); `nodes()` promises it to importers.
            if node.output.is_empty() {
                return Err(Error::NodeWithoutOutputs {
                    index: i,
                    op_type: node.op_type.clone(),
                });
            }
            for out in &node.output {
                producers.insert(out.clone(), i);
            }
        }
        let opsets = model
            .opset_import
            .iter()
            .map(|o| (o.domain.clone(), o.version))
            .collect();
        Ok(Self {
            graph,
            opsets,
            initializers,
            producers,
        })
    }

    /// `(domain, version)` of each imported operator set.
    pub fn opsets(&self) -> &[(String, i64)] {
        &self.opsets
    }

    /// Graph nodes in file (topological) order; each has at least one output (so `output[0]`
    /// is safe), inputs are read with [`node_input`].
    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph.node
    }

    /// Names of the graph inputs that are not initializers.
    pub fn input_names(&self) -> Vec<&str> {
        self.graph
            .input
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !self.initializers.contains_key(*n))
            .collect()
    }

    /// Names of the graph outputs.
    pub fn output_names(&self) -> Vec<&str> {
        self.graph.output.iter().map(|v| v.name.as_str()).collect()
    }

    /// Names of all initializers, in file order.
    pub fn initializer_names(&self) -> Vec<&str> {
        self.graph
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The node whose outputs include `value`.
    pub fn producer(&self, value: &str) -> Option<&NodeProto> {
        self.producers.get(value).map(|&i| &self.graph.node[i])
    }

    /// Nodes that read `value` as one of their inputs.
    pub fn consumers<'a>(&'a self, value: &'a str) -> impl Iterator<Item = &'a NodeProto> + 'a {
        self.graph
            .node
            .iter()
            .filter(move |n| n.input.iter().any(|i| i == value))
    }

    /// The raw protobuf of a constant: an initializer, or the `value` of a `Constant` node.
    pub fn constant_proto(&self, name: &str) -> Option<&TensorProto> {
        if let Some(&i) = self.initializers.get(name) {
            return Some(&self.graph.initializer[i]);
        }
        let node = self.producer(name)?;
        if node.op_type != "Constant" {
            return None;
        }
        attribute(node, "value").and_then(|a| a.t.as_ref())
    }

    /// A constant tensor's values widened to f32 (exact for int8/uint8/int32 weights and scales).
    pub fn constant(&self, name: &str) -> Result<Array> {
        let proto = self
            .constant_proto(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        decode_tensor(proto)
    }

    /// A constant integer tensor (shapes, pads, axes) as i64 values.
    pub fn constant_i64(&self, name: &str) -> Result<Vec<i64>> {
        let proto = self
            .constant_proto(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        decode_i64(proto)
    }

    /// The f32 value of `name` when it is a constant, or the output of a `DequantizeLinear` node
    /// whose inputs are constants (how int8 QDQ models store weights and biases).
    pub fn weight(&self, name: &str) -> Result<Array> {
        if self.constant_proto(name).is_some() {
            return self.constant(name);
        }
        let node = self
            .producer(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if node.op_type != "DequantizeLinear" {
            return Err(Error::BadTensor {
                name: name.to_string(),
                reason: format!(
                    "produced by a {} node, not a constant or DequantizeLinear",
                    node.op_type
                ),
            });
        }
        let quantized = self.constant(node_input(node, 0)?)?;
        let scale = self.constant(input(node, 1, name)?)?;
        let zero_point = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(zp) => Some(self.constant(zp)?),
            None => None,
        };
        let axis = attribute(node, "axis").map(|a| a.i).unwrap_or(1);
        dequantize(name, &quantized, &scale, zero_point.as_ref(), axis)
    }

    /// `(scale, zero_point)` of a per-tensor `QuantizeLinear` node producing `value`, if any.
    /// Importers use it to reproduce activation fake-quantization.
    pub fn activation_quant(&self, value: &str) -> Result<Option<(f32, f32)>> {
        let Some(node) = self.producer(value) else {
            return Ok(None);
        };
        if node.op_type != "QuantizeLinear" {
            return Ok(None);
        }
        let scale = self.constant(input(node, 1, value)?)?;
        let zero_point = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(zp) => self.constant(zp)?.values.first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        match scale.values.as_slice() {
            [s] => Ok(Some((*s, zero_point))),
            _ => Err(Error::BadTensor {
                name: value.to_string(),
                reason: format!(
                    "expected a per-tensor activation scale, found {} values",
                    scale.values.len()
                ),
            }),
        }
    }
}

/// The attribute `name` of `node`, if set.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Input `index` of `node`, or an error naming the node (crafted files may have fewer inputs
/// than the operator takes).
pub fn node_input(node: &NodeProto, index: usize) -> Result<&str> {
    node.input
        .get(index)
        .map(String::as_str)
        .ok_or_else(|| Error::MissingInput {
            op_type: node.op_type.clone(),
            output: node.output.first().cloned().unwrap_or_default(),
            index,
        })
}

fn input<'a>(node: &'a NodeProto, index: usize, context: &str) -> Result<&'a str> {
    node.input
        .get(index)
        .map(String::as_str)
        .ok_or_else(|| Error::BadTensor {
            name: context.to_string(),
            reason: format!("{} node has no input {index}", node.op_type),
        })
}

fn dims_of(proto: &TensorProto) -> Result<Vec<usize>> {
    proto
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| Error::BadTensor {
                name: proto.name.clone(),
                reason: format!("negative dimension {d}"),
            })
        })
        .collect()
}

fn bad(proto: &TensorProto, reason: String) -> Error {
    Error::BadTensor {
        name: proto.name.clone(),
        reason,
    }
}

fn decode_tensor(proto: &TensorProto) -> Result<Array> {
    if proto.data_location == 1 {
        return Err(bad(proto, "external data is not supported".into()));
    }
    let dims = dims_of(proto)?;
    let raw = &proto.raw_data;
    let values: Vec<f32> = match proto.data_type {
        data_type::FLOAT if !raw.is_empty() => le_chunks::<4>(proto, raw)?
            .map(f32::from_le_bytes)
            .collect(),
        data_type::FLOAT => proto.float_data.clone(),
        data_type::DOUBLE if !raw.is_empty() => le_chunks::<8>(proto, raw)?
            .map(|b| f64::from_le_bytes(b) as f32)
            .collect(),
        data_type::DOUBLE => proto.double_data.iter().map(|&v| v as f32).collect(),
        data_type::INT8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as f32).collect(),
        data_type::UINT8 if !raw.is_empty() => raw.iter().map(|&b| b as f32).collect(),
        data_type::INT8 | data_type::UINT8 | data_type::INT32 if raw.is_empty() => {
            proto.int32_data.iter().map(|&v| v as f32).collect()
        }
        data_type::INT32 => le_chunks::<4>(proto, raw)?
            .map(|b| i32::from_le_bytes(b) as f32)
            .collect(),
        data_type::INT64 => decode_i64(proto)?.into_iter().map(|v| v as f32).collect(),
        other => return Err(bad(proto, format!("unsupported data type {other}"))),
    };
    let expected: usize = dims.iter().product();
    if values.len() != expected {
        return Err(bad(
            proto,
            format!(
                "holds {} values but its dims {dims:?} need {expected}",
                values.len()
            ),
        ));
    }
    Ok(Array { dims, values })
}

fn decode_i64(proto: &TensorProto) -> Result<Vec<i64>> {
    match proto.data_type {
        data_type::INT64 if !proto.raw_data.is_empty() => {
            Ok(le_chunks::<8>(proto, &proto.raw_data)?
                .map(i64::from_le_bytes)
                .collect())
        }
        data_type::INT64 => Ok(proto.int64_data.clone()),
        data_type::INT32 if !proto.raw_data.is_empty() => {
            Ok(le_chunks::<4>(proto, &proto.raw_data)?
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect())
        }
        data_type::INT32 => Ok(proto.int32_data.iter().map(|&v| v as i64).collect()),
        other => Err(bad(
            proto,
            format!("expected an integer tensor, found data type {other}"),
        )),
    }
}

fn le_chunks<'a, const N: usize>(
    proto: &TensorProto,
    raw: &'a [u8],
) -> Result<impl Iterator<Item = [u8; N]> + 'a> {
    if !raw.len().is_multiple_of(N) {
        return Err(bad(
            proto,
            format!("raw data of {} bytes is not a multiple of {N}", raw.len()),
        ));
    }
    // chunks_exact(N) yields slices of exactly N bytes, so the conversion cannot fail.
    Ok(raw
        .chunks_exact(N)
        .map(|c| <[u8; N]>::try_from(c).expect("chunk of N bytes")))
}

/// ONNX `DequantizeLinear`: `(q - zero_point) * scale`, per tensor or per slice along `axis`.
fn dequantize(
    name: &str,
    quantized: &Array,
    scale: &Array,
    zero_point: Option<&Array>,
    axis: i64,
) -> Result<Array> {
    let err = |reason: String| Error::BadTensor {
        name: name.to_string(),
        reason,
    };
    let n_scales = scale.values.len();
    if let Some(zp) = zero_point {
        if zp.values.len() != n_scales {
            return Err(err(format!(
                "{} zero points for {n_scales} scales",
                zp.values.len()
            )));
        }
    }
    let zp_at = |i: usize| zero_point.map_or(0.0, |zp| zp.values[i]);
    let values = if n_scales == 1 {
        let (s, zp) = (scale.values[0], zp_at(0));
        quantized.values.iter().map(|&q| (q - zp) * s).collect()
    } else {
        let rank = quantized.dims.len() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        if axis < 0 || axis >= rank {
            return Err(err(format!("axis {axis} out of range for rank {rank}")));
        }
        let axis = axis as usize;
        if quantized.dims[axis] != n_scales {
            return Err(err(format!(
                "{n_scales} scales but axis {axis} has size {}",
                quantized.dims[axis]
            )));
        }
        let inner: usize = quantized.dims[axis + 1..].iter().product();
        quantized
            .values
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let c = (i / inner) % n_scales;
                (q - zp_at(c)) * scale.values[c]
            })
            .collect()
    };
    Ok(Array {
        dims: quantized.dims.clone(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            raw_data: raw,
            ..Default::default()
        }
    }

    /// A graph with one per-channel int8 QDQ weight: w = DequantizeLinear(q, scale, zp, axis=0).
    fn qdq_model() -> Vec<u8> {
        let q = tensor(
            "q",
            &[2, 3],
            data_type::INT8,
            vec![1, 2, 3, 0xff, 0xfe, 0x80],
        );
        let scale = TensorProto {
            name: "scale".into(),
            dims: vec![2],
            data_type: data_type::FLOAT,
            float_data: vec![0.5, 2.0],
            ..Default::default()
        };
        let zp = tensor("zp", &[2], data_type::INT8, vec![1, 0]);
        let node = NodeProto {
            input: vec!["q".into(), "scale".into(), "zp".into()],
            output: vec!["w".into()],
            op_type: "DequantizeLinear".into(),
            attribute: vec![AttributeProto {
                name: "axis".into(),
                i: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                node: vec![node],
                initializer: vec![q, scale, zp],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn dequantizes_per_channel_int8() {
        let model = OnnxModel::from_bytes(&qdq_model()).unwrap();
        let w = model.weight("w").unwrap();
        assert_eq!(w.dims, vec![2, 3]);
        // Row 0: (q - 1) * 0.5; row 1: (q - 0) * 2 with q = -1, -2, -128.
        assert_eq!(w.values, vec![0.0, 0.5, 1.0, -2.0, -4.0, -256.0]);
    }

    /// A one-node graph with `node`.
    fn model_with(node: NodeProto) -> Vec<u8> {
        ModelProto {
            graph: Some(GraphProto {
                node: vec![node],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn crafted_nodes_are_errors_not_panics() {
        // No outputs: refused when the model is read.
        let err = OnnxModel::from_bytes(&model_with(NodeProto {
            input: vec!["x".into()],
            op_type: "Relu".into(),
            ..Default::default()
        }))
        .err()
        .unwrap()
        .to_string();
        assert_eq!(err, "ONNX node #0 (Relu) has no outputs");
        // A DequantizeLinear with no inputs: its weight is an error naming the node.
        let model = OnnxModel::from_bytes(&model_with(NodeProto {
            output: vec!["w".into()],
            op_type: "DequantizeLinear".into(),
            ..Default::default()
        }))
        .unwrap();
        let err = model.weight("w").unwrap_err().to_string();
        assert_eq!(err, "ONNX DequantizeLinear node 'w' has no input 0");
    }

    #[test]
    fn missing_tensor_is_named() {
        let model = OnnxModel::from_bytes(&qdq_model()).unwrap();
        let err = model.weight("nope").unwrap_err().to_string();
        assert!(err.contains("'nope' not found"), "{err}");
    }

    #[test]
    fn wrong_element_count_is_refused() {
        let bad = tensor("t", &[4], data_type::FLOAT, vec![0; 12]);
        let err = decode_tensor(&bad).unwrap_err().to_string();
        assert!(
            err.contains("holds 3 values but its dims [4] need 4"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_a_model() {
        assert!(matches!(
            OnnxModel::from_bytes(b"\xff\xff\xff\xff"),
            Err(Error::Decode(_))
        ));
    }
}
