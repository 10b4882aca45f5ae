//! The operands of easel's candle custom ops: contiguous CPU f32 storage, or an error naming the
//! op.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// The values of a contiguous f32 operand of `op`.
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op} expects an f32 tensor, got {:?}", storage.dtype())
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op} expects a contiguous tensor")
    };
    Ok(&data[start..end])
}

/// The values of a contiguous f32 operand of an in-place `op`.
pub fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let dtype = storage.dtype();
    let CpuStorage::F32(data) = storage else {
        bail!("{op} expects an f32 tensor, got {dtype:?}")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op} expects a contiguous tensor")
    };
    Ok(&mut data[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A contiguous f32 operand gives its values from its offset; a transposed or f64 one an
    /// error naming the op.
    #[test]
    fn contiguous_f32_operands_only() -> Result<()> {
        // The CPU storage and layout of `t`, handed to `f`.
        fn with_cpu<R>(t: &Tensor, f: impl FnOnce(&CpuStorage, &Layout) -> R) -> Result<R> {
            let (storage, layout) = t.storage_and_layout();
            let candle_core::Storage::Cpu(s) = &*storage else {
                bail!("a CPU tensor has CPU storage")
            };
            Ok(f(s, layout))
        }
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?;
        let row = with_cpu(&t.narrow(0, 1, 1)?, |s, l| {
            contiguous_f32(s, l, "test op").map(<[f32]>::to_vec)
        })??;
        assert_eq!(row, [3.0, 4.0, 5.0]);
        let transposed = with_cpu(&t.t()?, |s, l| contiguous_f32(s, l, "test op").is_err())?;
        assert!(transposed);
        let t64 = t.to_dtype(candle_core::DType::F64)?;
        let err = with_cpu(&t64, |s, l| {
            contiguous_f32(s, l, "test op")
                .map(|_| ())
                .unwrap_err()
                .to_string()
        })?;
        assert!(err.contains("test op expects an f32"), "{err}");
        Ok(())
    }
}
