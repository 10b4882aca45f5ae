//! Converters from upstream ONNX files and PyTorch checkpoints to easel's safetensors weights.

pub mod adain;
pub mod arbitrary;
pub mod cin26;
pub mod efficientnet;
pub mod stytr;

use candle_core::{DType, Result, Tensor};
use easel_core::safetensors_writer::{safetensors_bytes, TensorBytes};
use std::collections::{BTreeMap, HashMap};

/// f32 tensors by name: shape and values.
pub(crate) type F32Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Serializes the floating-point tensors of `tensors` as f32 safetensors with `metadata`;
/// tensors of other types (step counters and the like) are dropped. `source` names the file in
/// errors.
pub(crate) fn serialize_f32(
    tensors: &HashMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    source: &str,
) -> Result<Vec<u8>> {
    let values = tensors
        .iter()
        .filter(|(_, t)| t.dtype().is_float())
        .map(|(name, t)| {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((name.clone(), (t.dims().to_vec(), values)))
        })
        .collect::<Result<F32Tensors>>()?;
    serialize_f32_values(&values, &metadata, source)
}

/// Serializes f32 `tensors` with `metadata` through easel's one reproducible safetensors
/// writer. `source` names the file in errors.
pub(crate) fn serialize_f32_values(
    tensors: &F32Tensors,
    metadata: &BTreeMap<String, String>,
    source: &str,
) -> Result<Vec<u8>> {
    let views: Vec<TensorBytes<'_>> = tensors
        .iter()
        .map(|(name, (shape, values))| TensorBytes {
            name,
            dtype: safetensors::Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    safetensors_bytes(&views, metadata)
        .map_err(|e| candle_core::Error::msg(format!("{source}: safetensors: {e}")))
}
