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
use crate::scratch::zeroed;
use crate::simd::{Isa, Simd};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};

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

/// One group (`per` channel rows of `hw` floats in `x`) normalised into `out`.
///
/// # Safety
/// The CPU supports `S`'s instruction set; `x` and `out` hold `per · hw` floats.
#[inline(always)]
unsafe fn group<S: Simd>(op: &GroupNormOp, first: usize, x: &[f32], out: &mut [f32], hw: usize) {
    let len = x.len().min(out.len());
    // SAFETY: the CPU supports `S`; full loads and stores touch `i..i + L` with
    // `i + L ≤ hw` inside row k (which lies inside `len`), the tail's masked ones the rest of
    // the row.
    unsafe {
        let mean = block_sum::<S>(&x[..len], None) / len as f64;
        let var = block_sum::<S>(&x[..len], Some(mean as f32)) / len as f64;
        let rstd = 1.0 / (var + op.eps).sqrt();
        for k in 0..len / hw {
            let ch = first + k;
            let scale = rstd * op.weight[ch] as f64;
            let shift = op.bias[ch] as f64 - mean * scale;
            let (sc, sh) = (S::splat(scale as f32), S::splat(shift as f32));
            let (src, dst) = (x.as_ptr().add(k * hw), out.as_mut_ptr().add(k * hw));
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn group_avx512(op: &GroupNormOp, first: usize, x: &[f32], out: &mut [f32], hw: usize) {
    // SAFETY: this function is only reached with AVX-512F enabled.
    unsafe { group::<crate::simd::x86::Avx512>(op, first, x, out, hw) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn group_avx2(op: &GroupNormOp, first: usize, x: &[f32], out: &mut [f32], hw: usize) {
    // SAFETY: this function is only reached with AVX2 and FMA enabled.
    unsafe { group::<crate::simd::x86::Avx2>(op, first, x, out, hw) }
}

fn group_on(isa: Isa, op: &GroupNormOp, first: usize, x: &[f32], out: &mut [f32], hw: usize) {
    match isa {
        // SAFETY: `forward_into_on` checked that the CPU supports `isa`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { group_avx512(op, first, x, out, hw) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { group_avx2(op, first, x, out, hw) },
        // SAFETY: the portable implementation runs anywhere.
        Isa::Portable => unsafe { group::<crate::simd::Portable>(op, first, x, out, hw) },
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
        (n, c, hw): (usize, usize, usize),
        out: &mut [f32],
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
        let len = n
            .checked_mul(c)
            .and_then(|v| v.checked_mul(hw))
            .filter(|&v| v == x.len() && v == out.len());
        if len.is_none() || hw == 0 {
            bail!(
                "group norm: {} floats in, {} out, for [{n}, {c}, {hw}]",
                x.len(),
                out.len()
            )
        }
        let per = c / g;
        let group_len = per * hw;
        let dst = SharedMut::new(out);
        par_for(n * g, |range| {
            for unit in range {
                let xs = &x[unit * group_len..(unit + 1) * group_len];
                // SAFETY: unit (image, group) writes its own `group_len` floats: disjoint from
                // every other unit's, inside `out` (length checked above).
                let out_group = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add(unit * group_len), group_len)
                };
                group_on(isa, self, (unit % g) * per, xs, out_group, hw);
            }
        });
        Ok(())
    }
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "easel-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("group norm expects an f32 tensor")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("group norm expects a contiguous tensor")
        };
        let dims = layout.shape().dims();
        if dims.len() < 3 {
            bail!("group norm expects [N, C, ...], got {dims:?}")
        }
        let hw = dims[2..].iter().product();
        let mut out = zeroed(end - start);
        catch_panic("group norm", || {
            self.forward_into(&data[start..end], (dims[0], dims[1], hw), &mut out)
        })?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
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
                }
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
