//! The Gram matrix `F Fᵀ` of `[C, N]` activations, for style losses.
//!
//! For Gatys' feature maps `C` is small (32 to 512) and `N = H·W` large (up to 2¹⁸), a shape for
//! which candle's gemm runs on one thread (it splits the output, here a few thousand values, not
//! the long inner sum). [`gram`] splits the output into 4×4 tiles of the upper triangle over the
//! pool, each tile 16 dot products with lane-wise partial sums of [`LANES`] floats, reduced in a
//! fixed order: every instruction set gives the same bits (fused multiply-adds throughout).

use crate::pool::{catch_panic, par_for, SharedMut};
use crate::simd::{Isa, Simd};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};

/// Partial sums per dot product (one AVX-512 vector, two AVX2 ones).
const LANES: usize = 16;
/// Floats per block: each block's lane sums start from zero and are added to an f64 total, so
/// rounding grows with the block length, not the row's (rows reach 2¹⁸ floats at 1024²).
const BLOCK: usize = 1024;
/// Rows per tile side.
const TILE: usize = 4;

/// The dot products of rows `a` with rows `b` (all of one length): `out[i][j] = a[i] · b[j]`,
/// each as [`LANES`] partial sums (`LANES / S::L` vectors) per [`BLOCK`] of floats, reduced
/// pairwise and added to an f64 total, then the tail.
///
/// # Safety
/// The CPU supports `S`'s instruction set.
#[inline(always)]
unsafe fn tile<S: Simd>(a: [&[f32]; TILE], b: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    let parts = LANES / S::L;
    let n = a[0].len();
    let body = n / LANES * LANES;
    // SAFETY: the CPU supports `S` (this function's contract); every load reads floats
    // `k + h·L .. k + (h + 1)·L` with `k + LANES ≤ body ≤ n`, inside each row.
    unsafe {
        let mut total = [[0f64; TILE]; TILE];
        for start in (0..body).step_by(BLOCK) {
            let mut acc = [[[S::zero(); 2]; TILE]; TILE];
            for k in (start..(start + BLOCK).min(body)).step_by(LANES) {
                for h in 0..parts {
                    let off = k + h * S::L;
                    // Plain loops, not closures: a closure does not inherit the caller's
                    // target features, so its loads would not inline.
                    let mut av = [S::zero(); TILE];
                    let mut bv = [S::zero(); TILE];
                    for t in 0..TILE {
                        av[t] = S::load(a[t].as_ptr().add(off));
                        bv[t] = S::load(b[t].as_ptr().add(off));
                    }
                    for (acc_i, &ai) in acc.iter_mut().zip(&av) {
                        for (acc_ij, &bj) in acc_i.iter_mut().zip(&bv) {
                            acc_ij[h] = S::fma(ai, bj, acc_ij[h]);
                        }
                    }
                }
            }
            for (total_i, acc_i) in total.iter_mut().zip(&acc) {
                for (t, acc_ij) in total_i.iter_mut().zip(acc_i) {
                    let mut lanes = [0f32; LANES];
                    for (h, &v) in acc_ij.iter().enumerate().take(parts) {
                        S::store(lanes.as_mut_ptr().add(h * S::L), v);
                    }
                    let mut width = LANES;
                    while width > 1 {
                        width /= 2;
                        for l in 0..width {
                            lanes[l] += lanes[l + width];
                        }
                    }
                    *t += lanes[0] as f64;
                }
            }
        }
        let mut out = [[0f32; TILE]; TILE];
        for i in 0..TILE {
            for j in 0..TILE {
                let mut tail = 0f32;
                for k in body..n {
                    tail = a[i][k].mul_add(b[j][k], tail);
                }
                out[i][j] = (total[i][j] + tail as f64) as f32;
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512(a: [&[f32]; TILE], b: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    // SAFETY: this function is only reached with AVX-512F enabled.
    unsafe { tile::<crate::simd::x86::Avx512>(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2(a: [&[f32]; TILE], b: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    // SAFETY: this function is only reached with AVX2 and FMA enabled.
    unsafe { tile::<crate::simd::x86::Avx2>(a, b) }
}

/// [`tile`] compiled for `isa` (which the caller checked the CPU has).
fn tile_on(isa: Isa, a: [&[f32]; TILE], b: [&[f32]; TILE]) -> [[f32; TILE]; TILE] {
    match isa {
        // SAFETY: `gram_on` checked that the CPU supports `isa`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { tile_avx512(a, b) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { tile_avx2(a, b) },
        // SAFETY: the portable implementation runs anywhere.
        Isa::Portable => unsafe { tile::<crate::simd::Portable>(a, b) },
    }
}

/// `F Fᵀ` (`[c, c]`, row-major) of `f` (`[c, n]`, row-major), on the fastest instruction set.
pub fn gram(f: &[f32], (c, n): (usize, usize)) -> Result<Vec<f32>> {
    gram_on(Isa::detect(), f, (c, n))
}

/// [`gram`] on the instruction set `isa` (an error if the CPU lacks it): every path gives the
/// same bits.
pub fn gram_on(isa: Isa, f: &[f32], (c, n): (usize, usize)) -> Result<Vec<f32>> {
    if !isa.is_supported() {
        bail!("gram: this CPU cannot run {isa:?} code")
    }
    let Some(len) = c.checked_mul(n) else {
        bail!("gram: [{c}, {n}] overflows")
    };
    if f.len() != len {
        bail!("gram: {} floats for [{c}, {n}]", f.len())
    }
    let mut out = vec![0f32; c * c];
    // Rows padded to whole tiles with an empty row (its products are dropped).
    let zeros = vec![0f32; n];
    let row = |i: usize| {
        if i < c {
            &f[i * n..(i + 1) * n]
        } else {
            &zeros[..]
        }
    };
    let blocks = c.div_ceil(TILE);
    // Upper-triangle tiles (bi ≤ bj), numbered row by row.
    let pairs: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|bi| (bi..blocks).map(move |bj| (bi, bj)))
        .collect();
    let dst = SharedMut::new(&mut out);
    par_for(pairs.len(), |range| {
        for &(bi, bj) in &pairs[range] {
            let a = std::array::from_fn(|t| row(bi * TILE + t));
            let b = std::array::from_fn(|t| row(bj * TILE + t));
            let t = tile_on(isa, a, b);
            for (ti, t_row) in t.iter().enumerate() {
                for (tj, &v) in t_row.iter().enumerate() {
                    let (i, j) = (bi * TILE + ti, bj * TILE + tj);
                    if i < c && j < c {
                        // SAFETY: tile (bi, bj) with bi ≤ bj writes (i, j) and (j, i) for its
                        // own rows and columns only; no other tile covers them (the pair
                        // (bj, bi) is not in the list), and both indices are < c, inside `out`.
                        unsafe {
                            *dst.get().add(i * c + j) = v;
                            *dst.get().add(j * c + i) = v;
                        }
                    }
                }
            }
        }
    });
    Ok(out)
}

/// [`gram`] as a candle op on a contiguous CPU f32 tensor `[C, N]` → `[C, C]` (no backward: the
/// style loss writes its gradient out).
#[derive(Debug, Clone, Copy)]
pub struct GramOp;

impl CustomOp1 for GramOp {
    fn name(&self) -> &'static str {
        "easel-gram"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "gram")?;
        let (c, n) = layout.shape().dims2()?;
        let out = catch_panic("gram", || gram(data, (c, n)))?;
        Ok((CpuStorage::F32(out), Shape::from((c, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Odd row counts (a partial tile) and lengths (a tail after the lanes): the Gram matrix is
    /// symmetric, matches candle's matmul within f32 rounding, and is bit-identical on every
    /// instruction set this CPU has.
    #[test]
    fn matches_matmul_and_is_bit_identical_on_every_isa() -> Result<()> {
        for (c, n) in [(1, 1), (5, 37), (32, 1000), (13, 4099)] {
            let f: Vec<f32> = (0..c * n)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
                .collect();
            let g = gram(&f, (c, n))?;
            let t = Tensor::from_slice(&f, (c, n), &Device::Cpu)?;
            let want = t.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale, "[{c}, {n}] {i}: {a} vs {b}");
                assert_eq!(*a, g[(i % c) * c + i / c], "symmetric");
            }
            for isa in Isa::supported() {
                assert_eq!(gram_on(isa, &f, (c, n))?, g, "{isa:?} on [{c}, {n}]");
            }
            let op = t
                .apply_op1_no_bwd(&GramOp)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(op, g);
        }
        assert!(gram(&[1.0; 5], (2, 3)).is_err());
        Ok(())
    }
}
