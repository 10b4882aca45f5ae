//! Padding as one gather: reflection, zero and nearest-neighbour upsampling pads, described per
//! axis by an index map, so that a padded (and upsampled) picture is written once.

use crate::pool::{catch_panic, par_for, SharedMut};
use crate::scratch::Scratch;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Source index of each output position along one axis: `Some(i)` copies input `i`, `None` is 0.
pub type AxisMap = Vec<Option<usize>>;

/// Reflection padding of an axis of `n` (ONNX `reflect`: the edge is not repeated), optionally
/// after nearest-neighbour upsampling by `up` (upsample, then pad the upsampled axis).
pub fn reflect_map(n: usize, up: usize, before: usize, after: usize) -> Result<AxisMap> {
    let m = n * up;
    if m == 0 || before >= m || after >= m {
        bail!("reflection padding ({before}, {after}) needs a side longer than {m} pixels")
    }
    let last = m as i64 - 1;
    Ok((0..m + before + after)
        .map(|i| {
            let p = i as i64 - before as i64;
            let r = if p < 0 {
                -p
            } else if p > last {
                2 * last - p
            } else {
                p
            };
            Some(r as usize / up)
        })
        .collect())
}

/// Zero padding of an axis of `n`.
pub fn zero_map(n: usize, before: usize, after: usize) -> AxisMap {
    (0..before)
        .map(|_| None)
        .chain((0..n).map(Some))
        .chain((0..after).map(|_| None))
        .collect()
}

/// TensorFlow's `SAME` zero padding of an axis of `n` for a `k`-wide kernel with `stride`:
/// `(before, after)` so that the output has `⌈n / stride⌉` pixels, the odd pixel at the end.
pub fn same_padding(n: usize, k: usize, stride: usize) -> (usize, usize) {
    let total = ((n.div_ceil(stride.max(1)).max(1) - 1) * stride + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// Gathers `x` (`[planes, h, w]`) into `[planes, rows.len(), cols.len()]`.
pub fn pad(
    x: &[f32],
    (planes, h, w): (usize, usize, usize),
    rows: &AxisMap,
    cols: &AxisMap,
    scratch: &mut Scratch,
) -> Result<Vec<f32>> {
    if x.len() != planes * h * w
        || rows.iter().flatten().any(|&r| r >= h)
        || cols.iter().flatten().any(|&c| c >= w)
    {
        bail!("pad: index maps out of range for [{planes}, {h}, {w}]")
    }
    let (ho, wo) = (rows.len(), cols.len());
    let mut out = scratch.take(planes * ho * wo);
    // The run of columns that copies a contiguous input range (the unpadded middle).
    let run = cols
        .iter()
        .enumerate()
        .find_map(|(i, c)| (*c == Some(0)).then_some(i))
        .filter(|&i| i + w <= wo && (0..w).all(|j| cols[i + j] == Some(j)));
    let fill = |dst: &mut [f32], plane: &[f32]| {
        for (dr, r) in dst.chunks_exact_mut(wo).zip(rows) {
            let Some(r) = *r else {
                dr.fill(0.0);
                continue;
            };
            let src = &plane[r * w..(r + 1) * w];
            match run {
                Some(i) => {
                    dr[i..i + w].copy_from_slice(src);
                    for j in (0..i).chain(i + w..wo) {
                        dr[j] = cols[j].map_or(0.0, |c| src[c]);
                    }
                }
                None => {
                    for (d, c) in dr.iter_mut().zip(cols) {
                        *d = c.map_or(0.0, |c| src[c]);
                    }
                }
            }
        }
    };
    if out.len() < 1 << 15 {
        for (dst, plane) in out.chunks_exact_mut(ho * wo).zip(x.chunks_exact(h * w)) {
            fill(dst, plane);
        }
    } else {
        let dst = SharedMut::new(&mut out);
        par_for(planes, |range| {
            for p in range {
                // SAFETY: plane p of `out` (in bounds: p < planes) is written by this unit only.
                let d =
                    unsafe { std::slice::from_raw_parts_mut(dst.get().add(p * ho * wo), ho * wo) };
                fill(d, &x[p * h * w..(p + 1) * h * w]);
            }
        });
    }
    Ok(out)
}

/// [`pad`] as a candle op on contiguous CPU f32 tensors `[N, C, H, W]`: every plane gathered
/// through the row and column maps (their index ranges checked against `H` and `W`).
#[derive(Debug, Clone)]
pub struct PadOp {
    /// Source row of each output row.
    pub rows: AxisMap,
    /// Source column of each output column.
    pub cols: AxisMap,
}

impl PadOp {
    /// `ReflectionPad2d(pad)` after nearest-neighbour upsampling by `up` of an `h`×`w` picture.
    pub fn reflect(h: usize, w: usize, pad: usize, up: usize) -> Result<Self> {
        Ok(Self {
            rows: reflect_map(h, up, pad, pad)?,
            cols: reflect_map(w, up, pad, pad)?,
        })
    }

    /// Zero padding by `pad` on every side of an `h`×`w` picture.
    pub fn zeros(h: usize, w: usize, pad: usize) -> Self {
        Self {
            rows: zero_map(h, pad, pad),
            cols: zero_map(w, pad, pad),
        }
    }
}

impl CustomOp1 for PadOp {
    fn name(&self) -> &'static str {
        "easel-pad-gather"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "pad gather")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = catch_panic("pad gather", || {
            pad(
                data,
                (n * c, h, w),
                &self.rows,
                &self.cols,
                &mut Scratch::default(),
            )
        })?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, c, self.rows.len(), self.cols.len())),
        ))
    }
}

/// Reflection padding of the two spatial dims of `x` `[N, C, H, W]`: `top`/`left` rows mirrored
/// before, `bottom`/`right` after, the edge not repeated (`nn.ReflectionPad2d`,
/// `F.pad(mode="reflect")`). One [`PadOp`] gather for CPU f32 tensors autograd does not track;
/// index selects (which have a backward) elsewhere.
pub fn reflect_pad(
    x: &Tensor,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if top.max(bottom) >= h || left.max(right) >= w {
        bail!(
            "reflection padding ({top}, {bottom}, {left}, {right}) needs a larger input than {w}x{h}"
        )
    }
    if top + bottom + left + right == 0 {
        return Ok(x.clone());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() {
        let op = PadOp {
            rows: reflect_map(h, 1, top, bottom)?,
            cols: reflect_map(w, 1, left, right)?,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    let index = |n: usize, before: usize, after: usize| -> Result<Tensor> {
        let map = reflect_map(n, 1, before, after)?;
        // Every entry is `Some` (a reflection map has no zeros); sides fit u32 (checked dims).
        let idx: Vec<u32> = map.iter().flatten().map(|&i| i as u32).collect();
        Tensor::new(idx, x.device())
    };
    let x = if top + bottom > 0 {
        x.index_select(&index(h, top, bottom)?, 2)?
    } else {
        x.clone()
    };
    if left + right > 0 {
        x.index_select(&index(w, left, right)?, 3)
    } else {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_maps_reflect_zero_and_upsample() -> Result<()> {
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect(); // 2 planes of 1×4
        let rows = reflect_map(1, 2, 1, 0)?; // upsample 1 → 2 rows, reflect 1 on top
        assert_eq!(rows, vec![Some(0), Some(0), Some(0)]);
        let cols = reflect_map(4, 1, 2, 3)?;
        let mut scratch = Scratch::default();
        // A dirty recycled buffer: padding must overwrite every value.
        scratch.give(vec![f32::NAN; 100]);
        let y = pad(&x, (2, 1, 4), &zero_map(1, 1, 0), &cols, &mut scratch)?;
        assert_eq!(y.len(), 2 * 2 * 9);
        assert_eq!(&y[..9], &[0.0; 9]);
        assert_eq!(&y[9..18], &[2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(&y[27..36], &[6.0, 5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0]);
        let up = pad(
            &x[..4],
            (1, 1, 4),
            &rows,
            &reflect_map(4, 2, 1, 1)?,
            &mut scratch,
        )?;
        assert_eq!(
            &up[..10],
            &[0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]
        );
        assert!(reflect_map(2, 1, 2, 0).is_err());
        Ok(())
    }

    /// TensorFlow's `SAME` rule: the odd pixel goes at the end.
    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(256, 3, 2), (0, 1));
        assert_eq!(same_padding(255, 3, 2), (1, 1));
        assert_eq!(same_padding(256, 3, 1), (1, 1));
        assert_eq!(same_padding(255, 1, 1), (0, 0));
        assert_eq!(same_padding(9, 9, 1), (4, 4));
    }

    /// The gather and the index-select path (an input autograd tracks) give the same mirror
    /// image, and too much padding is refused.
    #[test]
    fn reflect_pad_mirrors_without_repeating_the_edge() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 6.0, &dev)?.reshape((1, 1, 2, 3))?;
        let tracked = candle_core::Var::from_tensor(&x)?;
        for x in [&x, tracked.as_tensor()] {
            let y = reflect_pad(x, 1, 0, 2, 1)?;
            assert_eq!(
                y.flatten_all()?.to_vec1::<f32>()?,
                [5., 4., 3., 4., 5., 4., 2., 1., 0., 1., 2., 1., 5., 4., 3., 4., 5., 4.]
            );
            assert!(reflect_pad(x, 2, 0, 0, 0).is_err());
        }
        Ok(())
    }
}
