//! Group normalisation with a per-channel affine weight and bias, optionally followed by an
//! activation (the `GroupNorm` + `SiLU` pair of every Stable Diffusion ResNet block; instance
//! norm, one group per channel, + ReLU or sigmoid in the CIN stylizers), in one kernel: one read
//! for each group's mean, one for its variance, one read and one write for the output, where
//! candle's tensor ops make about seven passes and allocate an input-sized tensor for each.
//!
//! Statistics are two-pass (the mean, then the mean squared deviation, as `torch.nn.GroupNorm`
//! and candle_nn compute them), each as f32 vector partial sums per block of 1024 floats added
//! into an f64 total; the output is `y = (x − mean) · rstd · w + b`, then the [`NormActivation`]:
//! `max(y, 0)`, `y · σ(y)` or `σ(y)` with `σ(y) = a / (a + b)`, `a = e^min(y, 0)`,
//! `b = e^−max(y, 0)` (both exponents ≤ 0, so neither overflows). Every instruction set runs the
//! same operations in the same order: the results are bit-identical across them.

use crate::pool::{catch_panic, par_for, SharedMut};
use crate::simd::{Isa, Simd};
use candle_core::{bail, CpuStorage, CustomOp1, InplaceOp1, Layout, Result, Shape};

/// Logical lanes of the statistics' partial sums (one AVX-512 vector, two AVX2 ones), so that
/// every instruction set adds in the same order.
const LANES: usize = 16;
/// Floats per block of the statistics: each block's lane sums go into an f64 total.
const BLOCK: usize = 1024;

/// `Σ x` (`mean` `None`) or `Σ (x − mean)²` over `x`, in [`LANES`] f32 partial sums per
/// [`BLOCK`], reduced pairwise into an f64 total.
///
/// # Safety
/// The CPU supports `S`'s instruction set.
#[inline(always)]
unsafe fn block_sum<S: Simd>(x: &[f32], mean: Option<f32>) -> f64 {
    let parts = LANES / S::L;
    let mut total = 0f64;
    // SAFETY: the CPU supports `S`; every load reads `L` floats at `i + h·L` with
    // `i + LANES ≤ block.len()`.
    unsafe {
        let m = S::splat(mean.unwrap_or(0.0));
        for block in x.chunks(BLOCK) {
            let mut acc = [S::zero(); 2];
            let mut i = 0;
            while i + LANES <= block.len() {
                for (h, a) in acc.iter_mut().enumerate().take(parts) {
                    let v = S::load(block.as_ptr().add(i + h * S::L));
                    *a = match mean {
                        None => S::add(*a, v),
                        Some(_) => {
                            let d = S::sub(v, m);
                            S::fma(d, d, *a)
                        }
                    };
                }
                i += LANES;
            }
            let mut lanes = [0f32; LANES];
            for (h, &a) in acc.iter().enumerate().take(parts) {
                S::store(lanes.as_mut_ptr().add(h * S::L), a);
            }
            let mut width = LANES;
            while width > 1 {
                width /= 2;
                for l in 0..width {
                    lanes[l] += lanes[l + width];
                }
            }
            let mut tail = 0f32;
            for &v in &block[i..] {
                tail = match mean {
                    None => tail + v,
                    Some(mm) => (v - mm).mul_add(v - mm, tail),
                };
            }
            total += lanes[0] as f64 + tail as f64;
        }
    }
    total
}

/// What follows the normalisation's affine part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormActivation {
    /// Nothing.
    None,
    /// `max(y, 0)`.
    Relu,
    /// `y · σ(y)`.
    Silu,
    /// `σ(y) = 1 / (1 + e^−y)`.
    Sigmoid,
}

/// `y = v · scale + shift`, then `act`.
///
/// # Safety
/// The CPU supports `S`'s instruction set.
#[inline(always)]
unsafe fn affine<S: Simd>(v: S::V, scale: S::V, shift: S::V, act: NormActivation) -> S::V {
    // SAFETY: lane-wise methods on a CPU that supports `S` (this function's contract).
    unsafe {
        let y = S::fma(v, scale, shift);
        let zero = S::zero();
        if act == NormActivation::None {
            return y;
        }
        if act == NormActivation::Relu {
            return S::max(y, zero);
        }
        // σ(y) = a / (a + b) (no closure: it would lose the caller's target features).
        let a = S::exp(S::min(y, zero));
        let sum = S::add(a, S::exp(S::sub(zero, S::max(y, zero))));
        if act == NormActivation::Silu {
            S::div(S::mul(y, a), sum)
        } else {
            S::div(a, sum)
        }
    }
}

/// One group (`per` channel rows of `hw` floats at `src`, `len` floats in all) normalised into
/// `dst`, which may be `src` itself (each value is read before it is written).
///
/// # Safety
/// The CPU supports `S`'s instruction set; `src` and `dst` are valid for `len` floats, and no
/// other thread touches them during the call.
#[inline(always)]
unsafe fn group<S: Simd>(
    op: &GroupNormOp,
    first: usize,
    (src, dst): (*const f32, *mut f32),
    len: usize,
    hw: usize,
) {
    // SAFETY: the CPU supports `S`; the statistics read `len` floats at `src` (valid, this
    // function's contract) through a slice that ends before the first write; full loads and
    // stores touch `i..i + L` with `i + L ≤ hw` inside row k (which lies inside `len`), the
    // tail's masked ones the rest of the row.
    unsafe {
        let (mean, var) = {
            let x = std::slice::from_raw_parts(src, len);
            let mean = block_sum::<S>(x, None) / len as f64;
            (mean, block_sum::<S>(x, Some(mean as f32)) / len as f64)
        };
        let rstd = 1.0 / (var + op.eps).sqrt();
        for k in 0..len / hw {
            let ch = first + k;
            let scale = rstd * op.weight[ch] as f64;
            let shift = op.bias[ch] as f64 - mean * scale;
            let (sc, sh) = (S::splat(scale as f32), S::splat(shift as f32));
            let (src, dst) = (src.add(k * hw), dst.add(k * hw));
            let mut i = 0;
            while i + S::L <= hw {
                S::store(
                    dst.add(i),
                    affine::<S>(S::load(src.add(i)), sc, sh, op.activation),
                );
                i += S::L;
            }
            if i < hw {
                let v = affine::<S>(S::load_n(src.add(i), hw - i), sc, sh, op.activation);
                S::store_n(dst.add(i), v, hw - i);
            }
        }
    }
}

/// The raw parts of a group: where it is read, where it is written.
type GroupPtrs = (*const f32, *mut f32);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// # Safety
/// As [`group`].
unsafe fn group_avx512(op: &GroupNormOp, first: usize, ptrs: GroupPtrs, len: usize, hw: usize) {
    // SAFETY: this function is only reached with AVX-512F enabled; the pointers as the
    // caller guarantees.
    unsafe { group::<crate::simd::x86::Avx512>(op, first, ptrs, len, hw) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// As [`group`].
unsafe fn group_avx2(op: &GroupNormOp, first: usize, ptrs: GroupPtrs, len: usize, hw: usize) {
    // SAFETY: this function is only reached with AVX2 and FMA enabled; the pointers as the
    // caller guarantees.
    unsafe { group::<crate::simd::x86::Avx2>(op, first, ptrs, len, hw) }
}

/// # Safety
/// `isa` is supported; the pointers as [`group`] needs them.
unsafe fn group_on(
    isa: Isa,
    op: &GroupNormOp,
    first: usize,
    ptrs: GroupPtrs,
    len: usize,
    hw: usize,
) {
    match isa {
        // SAFETY: the caller checked that the CPU supports `isa`, and the pointers.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { group_avx512(op, first, ptrs, len, hw) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { group_avx2(op, first, ptrs, len, hw) },
        // SAFETY: the portable implementation runs anywhere; the pointers as above.
        Isa::Portable => unsafe { group::<crate::simd::Portable>(op, first, ptrs, len, hw) },
    }
}

/// A group norm layer's constants.
#[derive(Debug, Clone)]
pub struct GroupNormOp {
    /// Per-channel weight and bias.
    pub weight: Vec<f32>,
    /// See `weight`.
    pub bias: Vec<f32>,
    /// Groups (dividing the channel count).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// What follows the affine part.
    pub activation: NormActivation,
}

impl GroupNormOp {
    /// The normalisation of `x` (`[n, c, hw]`, contiguous) into `out` (as long), on the fastest
    /// instruction set.
    pub fn forward_into(
        &self,
        x: &[f32],
        dims: (usize, usize, usize),
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_into_on(Isa::detect(), x, dims, out)
    }

    /// As [`Self::forward_into`] on `isa` (an error if the CPU lacks it): every path gives the
    /// same bits.
    pub fn forward_into_on(
        &self,
        isa: Isa,
        x: &[f32],
        dims: (usize, usize, usize),
        out: &mut [f32],
    ) -> Result<()> {
        if x.len() != out.len() {
            bail!("group norm: {} floats in, {} out", x.len(), out.len())
        }
        self.run(isa, (x.as_ptr(), out.as_mut_ptr()), x.len(), dims)
    }

    /// The normalisation of `data` (`[n, c, hw]`, contiguous) in place, on `isa`: the same bits
    /// as [`Self::forward_into_on`].
    pub fn forward_in_place_on(
        &self,
        isa: Isa,
        data: &mut [f32],
        dims: (usize, usize, usize),
    ) -> Result<()> {
        let ptr = data.as_mut_ptr();
        self.run(isa, (ptr, ptr), data.len(), dims)
    }

    /// Checks the shapes, then normalises group by group over the pool, reading at `src` and
    /// writing at `dst` (both valid for `len` floats and held by the caller for the call).
    fn run(
        &self,
        isa: Isa,
        (src, dst): GroupPtrs,
        len: usize,
        (n, c, hw): (usize, usize, usize),
    ) -> Result<()> {
        if !isa.is_supported() {
            bail!("group norm: this CPU cannot run {isa:?} code")
        }
        let g = self.groups;
        if g == 0 || c % g != 0 || self.weight.len() != c || self.bias.len() != c {
            bail!(
                "group norm: {g} groups, {} weights and {} biases for {c} channels",
                self.weight.len(),
                self.bias.len()
            )
        }
        let expected = n.checked_mul(c).and_then(|v| v.checked_mul(hw));
        if expected != Some(len) || hw == 0 {
            bail!("group norm: {len} floats for [{n}, {c}, {hw}]")
        }
        let per = c / g;
        let group_len = per * hw;
        let (src, dst) = (
            SharedMut::from_ptr(src.cast_mut()),
            SharedMut::from_ptr(dst),
        );
        par_for(n * g, |range| {
            for unit in range {
                // SAFETY: `isa` is supported (checked above); unit (image, group) reads and
                // writes its own `group_len` floats at `unit · group_len`, inside the `len`
                // floats the caller holds (checked: len = n · g · group_len) and disjoint from
                // every other unit's.
                unsafe {
                    let at = unit * group_len;
                    let ptrs = (src.get().add(at).cast_const(), dst.get().add(at));
                    group_on(isa, self, (unit % g) * per, ptrs, group_len, hw);
                }
            }
        });
        Ok(())
    }
}

/// `(N, C, H·W…)` of a group norm's `[N, C, ...]` operand.
fn norm_dims(layout: &Layout) -> Result<(usize, usize, usize)> {
    let dims = layout.shape().dims();
    if dims.len() < 3 {
        bail!("group norm expects [N, C, ...], got {dims:?}")
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "easel-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "group norm")?;
        let dims = norm_dims(layout)?;
        let mut out = vec![0f32; data.len()];
        catch_panic("group norm", || self.forward_into(data, dims, &mut out))?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// In place: for a tensor the caller owns alone (a layer's fresh output), saving an output
/// buffer.
impl InplaceOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "easel-group-norm-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = crate::storage::contiguous_f32_mut(storage, layout, "group norm")?;
        let dims = norm_dims(layout)?;
        catch_panic("group norm", || {
            self.forward_in_place_on(Isa::detect(), data, dims)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// `torch.nn.GroupNorm` (and SiLU) in candle ops, as candle_nn computes it.
    fn reference(
        x: &Tensor,
        groups: usize,
        w: &Tensor,
        b: &Tensor,
        act: NormActivation,
    ) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let xg = x.reshape((n, groups, c / groups * h * wd))?;
        let centred = xg.broadcast_sub(&xg.mean_keepdim(2)?)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let y = centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .reshape((n, c, h, wd))?
            .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        match act {
            NormActivation::None => Ok(y),
            NormActivation::Relu => y.relu(),
            NormActivation::Silu => y.silu(),
            NormActivation::Sigmoid => (y.neg()?.exp()? + 1.0)?.recip(),
        }
    }

    /// Against the GroupNorm of candle ops (and candle's activations) within f32 rounding, over
    /// odd plane sizes (vector tails), one group per channel (instance norm) and several
    /// channels per group, and values far from zero (the two-pass variance); bit-identical on
    /// every instruction set this CPU has.
    #[test]
    fn matches_candle_and_is_bit_identical_on_every_isa() -> Result<()> {
        let dev = Device::Cpu;
        for (n, c, h, w, groups) in [
            (1, 4, 3, 5, 2),
            (2, 12, 7, 9, 4),
            (1, 64, 16, 16, 32),
            (2, 6, 5, 7, 6),
        ] {
            let len = n * c * h * w;
            let xv: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1013) as f32 / 101.3 - 5.0) * 2.0 + 30.0)
                .collect();
            let wv: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
            let bv: Vec<f32> = (0..c).map(|i| i as f32 * 0.05 - 0.3).collect();
            let x = Tensor::from_slice(&xv, (n, c, h, w), &dev)?;
            let (wt, bt) = (
                Tensor::from_slice(&wv, c, &dev)?,
                Tensor::from_slice(&bv, c, &dev)?,
            );
            for act in [
                NormActivation::None,
                NormActivation::Relu,
                NormActivation::Silu,
                NormActivation::Sigmoid,
            ] {
                let want = reference(&x, groups, &wt, &bt, act)?;
                let op = GroupNormOp {
                    weight: wv.clone(),
                    bias: bv.clone(),
                    groups,
                    eps: 1e-5,
                    activation: act,
                };
                let got = x.apply_op1_no_bwd(&op)?;
                let diff = (&got - &want)
                    .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())?;
                assert!(
                    diff < 1e-4,
                    "[{n}, {c}, {h}, {w}] / {groups} {act:?}: {diff}"
                );
                let base = got.flatten_all()?.to_vec1::<f32>()?;
                for isa in Isa::supported() {
                    let mut out = vec![0f32; len];
                    op.forward_into_on(isa, &xv, (n, c, h * w), &mut out)?;
                    assert_eq!(out, base, "{isa:?}");
                    let mut in_place = xv.clone();
                    op.forward_in_place_on(isa, &mut in_place, (n, c, h * w))?;
                    assert_eq!(in_place, base, "{isa:?} in place");
                }
                let y = x.copy()?;
                y.inplace_op1(&op)?;
                assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, base, "in-place op");
            }
        }
        let op = GroupNormOp {
            weight: vec![1.0; 3],
            bias: vec![0.0; 3],
            groups: 2,
            eps: 1e-5,
            activation: NormActivation::None,
        };
        assert!(op
            .forward_into(&[0.0; 6], (1, 3, 2), &mut [0.0; 6])
            .is_err());
        Ok(())
    }
}
