//! Helpers shared by the AdaIN / VGG parity tests: the fixture written by
//! `tools/ref/adain_ref.py`, its `torch.save` checkpoints read through
//! `easel_core::torch_checkpoint`, and comparison helpers.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_core::torch_checkpoint::read_torch_checkpoint;
use std::collections::HashMap;

/// f32 CPU against f32 PyTorch CPU: only summation order differs.
pub const TOLERANCE: f32 = 1e-4;

pub fn fixtures() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/adain_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

pub fn checkpoint(file: &str) -> Result<VarBuilder<'static>> {
    checkpoint_as(file, DType::F32)
}

/// [`checkpoint`] with the weights converted to `dtype`.
pub fn checkpoint_as(file: &str, dtype: DType) -> Result<VarBuilder<'static>> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let tensors = read_torch_checkpoint(&std::fs::read(path)?, file)?;
    Ok(VarBuilder::from_tensors(
        tensors.into_iter().collect(),
        dtype,
        &Device::Cpu,
    ))
}

/// uint8 `[H, W, 3]` → f32 `[1, 3, H, W]`, `u8 / 255` as numpy computes it.
pub fn image(u8_hwc: &Tensor) -> Result<Tensor> {
    (u8_hwc.to_dtype(DType::F32)? / 255.0)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}
