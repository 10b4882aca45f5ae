//! `MaxPool2d(2, 2, ceil_mode=True)`: the 2×2 max pool of VGG-style encoders, an odd last row or
//! column forming its own window.

use crate::pool::{catch_panic, par_chunks_mut};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The pool of `x` (`[planes, h, w]`) into `[planes, ⌈h/2⌉, ⌈w/2⌉]`.
pub fn max_pool2_ceil_planes(x: &[f32], (planes, h, w): (usize, usize, usize)) -> Result<Vec<f32>> {
    if x.len() != planes * h * w || h == 0 || w == 0 {
        bail!("max pool: {} floats for [{planes}, {h}, {w}]", x.len())
    }
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0f32; planes * ho * wo];
    par_chunks_mut(&mut out, ho * wo, |p, dst| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for (y, drow) in dst.chunks_exact_mut(wo).enumerate() {
            let r0 = &plane[2 * y * w..(2 * y + 1) * w];
            let r1 = if 2 * y + 1 < h {
                &plane[(2 * y + 1) * w..(2 * y + 2) * w]
            } else {
                r0
            };
            pool_row(r0, r1, drow);
        }
    });
    Ok(out)
}

crate::simd_fn! {
    /// One output row of the 2×2 ceil-mode pool from input rows `r0`, `r1`.
    fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
        let w = r0.len();
        for (x, o) in out.iter_mut().enumerate().take(w / 2) {
            let (a, b) = (r0[2 * x].max(r0[2 * x + 1]), r1[2 * x].max(r1[2 * x + 1]));
            *o = a.max(b);
        }
        if w % 2 == 1 {
            out[w / 2] = r0[w - 1].max(r1[w - 1]);
        }
    }
}

/// [`max_pool2_ceil_planes`] as a candle op on contiguous CPU f32 tensors `[N, C, H, W]` (no backward:
/// inference only).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2Ceil;

impl CustomOp1 for MaxPool2Ceil {
    fn name(&self) -> &'static str {
        "easel-max-pool2-ceil"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "max pool")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = catch_panic("max pool", || max_pool2_ceil_planes(data, (n * c, h, w)))?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, c, h.div_ceil(2), w.div_ceil(2))),
        ))
    }
}

/// `MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)` of `x` `[N, C, H, W]`: an odd last
/// row/column forms its own window. [`MaxPool2Ceil`] for CPU f32 tensors autograd does not
/// track; elsewhere a maximum over the window axes of a `[N, C, H/2, 2, W/2, 2]` view (the odd
/// edge padded with `f32::MIN`, which leaves that window's maximum unchanged) rather than
/// candle's `max_pool2d`, whose backward gives the window maximum only a quarter of the gradient
/// (candle 0.11.1): the reduction's backward routes the whole gradient to it, as PyTorch does.
pub fn max_pool2_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        bail!("max pool of an empty {w}x{h} picture")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() {
        return x.contiguous()?.apply_op1_no_bwd(&MaxPool2Ceil);
    }
    let pad_end = |x: Tensor, dim: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        if shape[dim].is_multiple_of(2) {
            return Ok(x);
        }
        shape[dim] = 1;
        let low = Tensor::full(f32::MIN, shape, x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[&x, &low], dim)
    };
    let x = pad_end(pad_end(x.clone(), 2)?, 3)?;
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even windows take their maximum; the odd last row and column are windows of their own.
    #[test]
    fn pools_with_ceil_mode() -> Result<()> {
        // One 3×3 plane.
        let x = [1.0, 5.0, 2.0, 4.0, 3.0, 9.0, 7.0, 8.0, 6.0];
        assert_eq!(max_pool2_ceil_planes(&x, (1, 3, 3))?, [5.0, 9.0, 8.0, 6.0]);
        assert!(max_pool2_ceil_planes(&x, (2, 3, 3)).is_err());
        Ok(())
    }

    /// The op and the tensor-op path (an input autograd tracks) pool alike, and the tensor-op
    /// backward gives each window's maximum the whole gradient.
    #[test]
    fn both_paths_pool_alike_and_route_the_gradient() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[1f32, 5.0, 2.0, 4.0, 3.0, 9.0, 7.0, 8.0, 6.0], &dev)?
            .reshape((1, 1, 3, 3))?;
        let tracked = candle_core::Var::from_tensor(&x)?;
        for x in [&x, tracked.as_tensor()] {
            let y = max_pool2_ceil(x)?;
            assert_eq!(y.dims(), [1, 1, 2, 2]);
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [5.0, 9.0, 8.0, 6.0]);
        }
        let grads = max_pool2_ceil(tracked.as_tensor())?.sum_all()?.backward()?;
        let g = grads
            .get(tracked.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(
            g.transpose()?.as_deref(),
            Some(&[0f32, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0][..])
        );
        Ok(())
    }
}
