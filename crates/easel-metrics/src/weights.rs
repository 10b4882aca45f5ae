//! Weight files given by the user (never embedded): safetensors by extension, else a PyTorch
//! checkpoint read without executing anything; size-capped, named in every error.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use easel_core::hash::sha256_hex;
use easel_core::torch_checkpoint::read_torch_checkpoint;

use crate::error::{MetricError, Result};

/// Largest weights file read (the published VGG-19 is 80 MB, torchvision's AlexNet 233 MB).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The tensors of `path` (safetensors by extension, else a PyTorch checkpoint) and its hash.
pub(crate) fn read_tensors(path: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let weights_error = |problem: String| MetricError::Weights {
        file: path.display().to_string(),
        problem,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| weights_error(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(weights_error(format!(
            "is {size} bytes, more than the {MAX_FILE_BYTES} read"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| weights_error(e.to_string()))?;
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors = if is_safetensors {
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| weights_error(e.to_string()))?
    } else {
        read_torch_checkpoint(&bytes, &path.display().to_string())
            .map_err(|e| weights_error(e.to_string()))?
            .into_iter()
            .collect()
    };
    Ok((tensors, sha256_hex(&bytes)))
}
