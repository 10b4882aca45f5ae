//! Converters from upstream ONNX files and PyTorch checkpoints to easel's safetensors weights.

pub mod adain;
pub mod arbitrary;
pub mod cin26;
pub mod efficientnet;
pub mod stytr;
pub mod torch_zip;

use candle_core::{DType, Result, Tensor};
use std::collections::HashMap;

/// Serializes the floating-point tensors of `tensors` as f32 safetensors, sorted by name, with
/// `metadata`; tensors of other types (step counters and the like) are dropped. `source` names
/// the file in errors.
pub(crate) fn serialize_f32(
    tensors: &HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
    source: &str,
) -> Result<Vec<u8>> {
    let mut named = tensors
        .iter()
        .filter(|(_, t)| t.dtype().is_float())
        .map(|(name, t)| {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), F32Bytes(t.dims().to_vec(), data)))
        })
        .collect::<Result<Vec<_>>>()?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::tensor::serialize(named, Some(metadata))
        .map_err(|e| candle_core::Error::msg(format!("{source}: safetensors: {e}")))
}

/// A tensor's shape and little-endian f32 bytes, for the safetensors writer.
struct F32Bytes(Vec<usize>, Vec<u8>);

impl safetensors::View for F32Bytes {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}
