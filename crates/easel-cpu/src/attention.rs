//! Fused multi-head attention for the CPU (f32): `softmax(q kᵀ · scale) v` per head without
//! materialising the score matrix, in the manner of FlashAttention (Dao et al. 2022,
//! <https://arxiv.org/abs/2205.14135>).
//!
//! Tokens stay in the `[B, tokens, heads · head_dim]` layout of the projections (head `h` is the
//! column range `h·head_dim ..`), so no head split or merge is copied. Per (batch, head):
//!
//! - the keys are packed transposed (`[head_dim][keys]`, keys padded with zeros to a multiple of
//!   [`KEY_PAD`]) and the values row-major (`[keys][head_dim]`, columns padded with zeros to whole
//!   vector groups), once;
//! - work units are blocks of [`QUERY_BLOCK`] queries; a unit walks the keys in tiles of
//!   [`KEY_TILE`]: a register-blocked micro-kernel writes the tile's scores (`QUERY_BLOCK ×
//!   KEY_TILE` floats, L1/L2-sized), an online softmax turns them into probabilities in place
//!   (running row maximum and sum; the partial output is rescaled when the maximum grows), and a
//!   second micro-kernel adds probabilities · values to the unit's output block;
//! - the output is divided by the row sums and written into the head's columns.
//!
//! Units are spread over threads with [`par_for`]. The micro-kernels run on AVX-512F or AVX2 +
//! FMA (runtime detection) or a portable fallback, all the same algorithm with different tile
//! shapes (so the sums are reassociated: each path is within 1e-5 of an f64 reference, not
//! bit-identical to the others); `exp` is [`crate::simd`]'s Cephes-style polynomial (relative
//! error ~1e-7).

use crate::pool::{catch_panic, par_chunks_mut, par_for, SharedMut};
use crate::simd::{Isa, Portable, Simd};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};

/// Queries per work unit (a multiple of every micro-kernel's row count).
const QUERY_BLOCK: usize = 64;
/// Keys per score tile (a multiple of [`KEY_PAD`]): with [`QUERY_BLOCK`] a 64 KiB score tile,
/// and for head_dim 64 a 64 KiB slice of packed keys and of values.
const KEY_TILE: usize = 256;
/// Keys are padded to a multiple of this (every micro-kernel's key width divides it).
const KEY_PAD: usize = 32;
/// Value / output columns are handled in groups of this many vectors.
const GROUP: usize = 4;

/// `softmax(q kᵀ · scale) v` per head as a candle op on contiguous CPU f32 tensors: `q`
/// `[B, L, d]`, `k` and `v` `[B, S, d]`, `d = heads · head_dim`; the result is `[B, L, d]` (heads
/// in the same column ranges). No backward: inference only.
#[derive(Debug, Clone, Copy)]
pub struct FusedAttention {
    /// Number of heads; divides `d`.
    pub heads: usize,
    /// Factor on the scores before the softmax (`1/√head_dim` for scaled dot products).
    pub scale: f32,
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    queries: usize,
    keys: usize,
    d: usize,
    heads: usize,
    head_dim: usize,
    /// `keys` rounded up to [`KEY_PAD`].
    keys_pad: usize,
    /// `head_dim` rounded up to whole groups of [`GROUP`] vectors of the widest ISA.
    head_dim_pad: usize,
    scale: f32,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "easel-fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let slice =
            |s: &'_ CpuStorage, l: &Layout, what: &str| -> Result<(Vec<usize>, usize, usize)> {
                let CpuStorage::F32(_) = s else {
                    bail!("fused attention: {what} must be f32")
                };
                let Some((start, end)) = l.contiguous_offsets() else {
                    bail!("fused attention: {what} must be contiguous")
                };
                Ok((l.dims().to_vec(), start, end))
            };
        let (dq, q0, q1) = slice(q, lq, "q")?;
        let (dk, k0, k1) = slice(k, lk, "k")?;
        let (dv, v0, v1) = slice(v, lv, "v")?;
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (q, k, v) else {
            bail!("fused attention: q, k and v must be f32")
        };
        let &[batch, queries, d] = dq.as_slice() else {
            bail!("fused attention: q must be [B, L, d], got {dq:?}")
        };
        if dk.len() != 3 || dk[0] != batch || dk[2] != d || dv != dk {
            bail!("fused attention: q {dq:?} with k {dk:?} and v {dv:?}")
        }
        if self.heads == 0 || !d.is_multiple_of(self.heads) {
            bail!(
                "fused attention: {} heads do not divide width {d}",
                self.heads
            )
        }
        let dims = Dims::new(batch, queries, dk[1], d, self.heads, self.scale);
        let mut out = vec![0f32; batch * queries * d];
        catch_panic("fused attention", || {
            attention(
                Isa::detect(),
                &q[q0..q1],
                &k[k0..k1],
                &v[v0..v1],
                &mut out,
                &dims,
            );
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((batch, queries, d))))
    }
}

impl Dims {
    fn new(batch: usize, queries: usize, keys: usize, d: usize, heads: usize, scale: f32) -> Self {
        let head_dim = d / heads;
        // 16 lanes (AVX-512) × GROUP: every ISA's vector width divides it.
        let group = 16 * GROUP;
        Self {
            batch,
            queries,
            keys,
            d,
            heads,
            head_dim,
            keys_pad: keys.div_ceil(KEY_PAD) * KEY_PAD,
            head_dim_pad: head_dim.div_ceil(group) * group,
            scale,
        }
    }
}

/// The whole computation: packing, then the query-block units on `isa`.
fn attention(isa: Isa, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: &Dims) {
    let Dims {
        batch,
        keys,
        d,
        heads,
        head_dim,
        keys_pad,
        head_dim_pad,
        ..
    } = *dims;
    if batch == 0 || dims.queries == 0 || head_dim == 0 {
        return;
    }
    let mut kt = vec![0f32; batch * heads * keys_pad * head_dim];
    let mut vp = vec![0f32; batch * heads * keys_pad * head_dim_pad];
    // Keys transposed per (batch, head): kt[bh][c][j] = k[b, j, h·head_dim + c].
    par_chunks_mut(&mut kt, keys_pad * head_dim, |bh, dst| {
        let (b, h) = (bh / heads, bh % heads);
        for j in 0..keys {
            let src = &k[(b * keys + j) * d + h * head_dim..][..head_dim];
            for (c, &x) in src.iter().enumerate() {
                dst[c * keys_pad + j] = x;
            }
        }
    });
    par_chunks_mut(&mut vp, keys_pad * head_dim_pad, |bh, dst| {
        let (b, h) = (bh / heads, bh % heads);
        for j in 0..keys {
            let src = &v[(b * keys + j) * d + h * head_dim..][..head_dim];
            dst[j * head_dim_pad..][..head_dim].copy_from_slice(src);
        }
    });
    let blocks = dims.queries.div_ceil(QUERY_BLOCK);
    let n_units = batch * heads * blocks;
    let out_ptr = SharedMut::new(out);
    let ctx = Context {
        dims,
        q,
        kt: &kt,
        vp: &vp,
        blocks,
    };
    par_for(n_units, |range| {
        let mut scratch = Scratch::new(dims);
        let out = out_ptr;
        match isa {
            // SAFETY: `isa` is supported (`Isa::detect`, or a test taking `Isa::supported`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::units_avx512(&ctx, range, &mut scratch, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::units_avx2(&ctx, range, &mut scratch, out) },
            // SAFETY: the portable vectors need no CPU feature; `ctx` and `out` are as `units`
            // requires.
            Isa::Portable => unsafe { units::<Portable, 4, 2, 2>(&ctx, range, &mut scratch, out) },
        }
    });
}

/// What every unit reads.
struct Context<'a> {
    dims: &'a Dims,
    q: &'a [f32],
    /// Packed keys, `[B·heads][head_dim][keys_pad]`.
    kt: &'a [f32],
    /// Packed values, `[B·heads][keys_pad][head_dim_pad]`.
    vp: &'a [f32],
    /// Query blocks per (batch, head).
    blocks: usize,
}

/// One thread's buffers, reused across its units.
struct Scratch {
    /// The unit's queries, `[QUERY_BLOCK][head_dim]` (missing rows zero).
    q: Vec<f32>,
    /// Scores, then probabilities, of one key tile: `[QUERY_BLOCK][KEY_TILE]`.
    s: Vec<f32>,
    /// Unnormalised output, `[QUERY_BLOCK][head_dim_pad]`.
    o: Vec<f32>,
    /// Running maximum of the scaled scores per row.
    max: Vec<f32>,
    /// Running sum of the probabilities per row.
    sum: Vec<f32>,
}

impl Scratch {
    fn new(dims: &Dims) -> Self {
        Self {
            q: vec![0.0; QUERY_BLOCK * dims.head_dim],
            s: vec![0.0; QUERY_BLOCK * KEY_TILE],
            o: vec![0.0; QUERY_BLOCK * dims.head_dim_pad],
            max: vec![0.0; QUERY_BLOCK],
            sum: vec![0.0; QUERY_BLOCK],
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{units, Context, Scratch, SharedMut};
    use crate::simd::x86::{Avx2, Avx512};

    /// [`units`] with AVX-512F micro-kernels: 8 queries × 32 keys for the scores, 4 queries ×
    /// 64 output columns for probabilities · values.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `ctx` and `out` as [`units`] requires.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn units_avx512(
        ctx: &Context,
        range: std::ops::Range<usize>,
        scratch: &mut Scratch,
        out: SharedMut,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { units::<Avx512, 8, 2, 4>(ctx, range, scratch, out) }
    }

    /// [`units`] with AVX2 + FMA micro-kernels: 4 queries × 16 keys, 2 queries × 32 columns.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `ctx` and `out` as [`units`] requires.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn units_avx2(
        ctx: &Context,
        range: std::ops::Range<usize>,
        scratch: &mut Scratch,
        out: SharedMut,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { units::<Avx2, 4, 2, 2>(ctx, range, scratch, out) }
    }
}

/// Runs the units `range` (unit `u` = batch·head `u / blocks`, query block `u % blocks`).
///
/// Micro-kernel shapes: scores `MR` queries × `NR` vectors of keys, probabilities · values
/// `PR` queries × [`GROUP`] vectors of columns. `QUERY_BLOCK` must be a multiple of `MR` and
/// `PR`, `KEY_PAD` of `NR · S::L`, and `16 · GROUP` of `GROUP · S::L`.
///
/// # Safety
/// The CPU must support `S`'s instructions; `ctx` must describe buffers of the sizes of
/// [`attention`], and `out` must point to the `[B, L, d]` output, of which the units write only
/// their own (rows, head columns).
#[inline(always)]
unsafe fn units<S: Simd, const MR: usize, const NR: usize, const PR: usize>(
    ctx: &Context,
    range: std::ops::Range<usize>,
    scratch: &mut Scratch,
    out: SharedMut,
) {
    let dims = ctx.dims;
    let (hd, hdp, kp) = (dims.head_dim, dims.head_dim_pad, dims.keys_pad);
    let l = S::L;
    for unit in range {
        let (bh, block) = (unit / ctx.blocks, unit % ctx.blocks);
        let (b, h) = (bh / dims.heads, bh % dims.heads);
        let q0 = block * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(dims.queries - q0);
        // Only whole micro-kernel rows: the padded rows are zero queries, never written out.
        let rows_pad = rows.div_ceil(8) * 8;
        scratch.q.fill(0.0);
        for i in 0..rows {
            let src = &ctx.q[(b * dims.queries + q0 + i) * dims.d + h * hd..][..hd];
            scratch.q[i * hd..][..hd].copy_from_slice(src);
        }
        scratch.o.fill(0.0);
        scratch.max.fill(f32::NEG_INFINITY);
        scratch.sum.fill(0.0);
        let kt = &ctx.kt[bh * hd * kp..][..hd * kp];
        let vp = &ctx.vp[bh * kp * hdp..][..kp * hdp];
        let qp = scratch.q.as_ptr();
        let sp = scratch.s.as_mut_ptr();
        let op = scratch.o.as_mut_ptr();
        let mut k0 = 0;
        while k0 < kp {
            let width = KEY_TILE.min(kp - k0);
            // ≥ 1: k0 < keys_pad and keys_pad − keys < KEY_PAD ≤ width.
            let valid = width.min(dims.keys - k0);
            // Scores: s[i][j] = Σ_c q[i][c] · kt[c][k0 + j].
            for i0 in (0..rows_pad).step_by(MR) {
                for j0 in (0..width).step_by(NR * l) {
                    // SAFETY: i0 + MR ≤ rows_pad ≤ QUERY_BLOCK rows of `q` and `s`; j0 + NR·L ≤
                    // width ≤ KEY_TILE columns of `s`; k0 + j0 + NR·L ≤ keys_pad columns of `kt`.
                    unsafe {
                        let mut acc = [[S::zero(); NR]; MR];
                        let kc = kt.as_ptr().add(k0 + j0);
                        for c in 0..hd {
                            let kv: [S::V; NR] =
                                std::array::from_fn(|n| S::load(kc.add(c * kp + n * l)));
                            for (r, row) in acc.iter_mut().enumerate() {
                                let qv = S::splat(*qp.add((i0 + r) * hd + c));
                                for (a, &k) in row.iter_mut().zip(&kv) {
                                    *a = S::fma(qv, k, *a);
                                }
                            }
                        }
                        for (r, row) in acc.iter().enumerate() {
                            for (n, &a) in row.iter().enumerate() {
                                S::store(sp.add((i0 + r) * KEY_TILE + j0 + n * l), a);
                            }
                        }
                    }
                }
            }
            // Online softmax of the valid columns, in place.
            for i in 0..rows_pad {
                let row = &mut scratch.s[i * KEY_TILE..][..valid];
                let whole = valid / l * l;
                // SAFETY: vectors only over `whole ≤ valid` floats of `row`.
                let row_max = unsafe {
                    let mut m = S::splat(f32::NEG_INFINITY);
                    for j in (0..whole).step_by(l) {
                        m = S::max(m, S::load(row.as_ptr().add(j)));
                    }
                    row[whole..]
                        .iter()
                        .fold(S::reduce_max(m), |m, &x| if x > m { x } else { m })
                };
                let old = scratch.max[i];
                let new = old.max(row_max * dims.scale);
                // SAFETY: as above.
                let sum = unsafe {
                    let (sc, neg) = (S::splat(dims.scale), S::splat(-new));
                    let mut acc = S::zero();
                    for j in (0..whole).step_by(l) {
                        let p = row.as_mut_ptr().add(j);
                        let e = S::exp(S::fma(S::load(p), sc, neg));
                        S::store(p, e);
                        acc = S::add(acc, e);
                    }
                    let mut sum = S::reduce_add(acc);
                    for x in &mut row[whole..] {
                        *x = (*x * dims.scale - new).exp();
                        sum += *x;
                    }
                    sum
                };
                let alpha = (old - new).exp();
                scratch.max[i] = new;
                scratch.sum[i] = scratch.sum[i] * alpha + sum;
                if alpha != 1.0 {
                    for x in &mut scratch.o[i * hdp..][..hdp] {
                        *x *= alpha;
                    }
                }
            }
            // Output += probabilities · values.
            for i0 in (0..rows_pad).step_by(PR) {
                for c0 in (0..hdp).step_by(GROUP * l) {
                    // SAFETY: i0 + PR ≤ rows_pad rows of `o` and `s`; c0 + GROUP·L ≤ head_dim_pad
                    // columns of `o` and `vp`; k0 + valid ≤ keys rows of `vp`.
                    unsafe {
                        let mut acc: [[S::V; GROUP]; PR] = std::array::from_fn(|r| {
                            std::array::from_fn(|n| S::load(op.add((i0 + r) * hdp + c0 + n * l)))
                        });
                        let vc = vp.as_ptr().add(k0 * hdp + c0);
                        for j in 0..valid {
                            let vv: [S::V; GROUP] =
                                std::array::from_fn(|n| S::load(vc.add(j * hdp + n * l)));
                            for (r, row) in acc.iter_mut().enumerate() {
                                let p = S::splat(*sp.add((i0 + r) * KEY_TILE + j));
                                for (a, &v) in row.iter_mut().zip(&vv) {
                                    *a = S::fma(p, v, *a);
                                }
                            }
                        }
                        for (r, row) in acc.iter().enumerate() {
                            for (n, &a) in row.iter().enumerate() {
                                S::store(op.add((i0 + r) * hdp + c0 + n * l), a);
                            }
                        }
                    }
                }
            }
            k0 += width;
        }
        for i in 0..rows {
            let inv = 1.0 / scratch.sum[i];
            // SAFETY: row q0 + i < queries of batch b, columns h·head_dim.. < d: this unit's
            // region of `out`, which `attention` sized as [B, L, d].
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    out.get().add((b * dims.queries + q0 + i) * dims.d + h * hd),
                    hd,
                )
            };
            for (d, &o) in dst.iter_mut().zip(&scratch.o[i * hdp..][..hd]) {
                *d = o * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform floats in `[-amp, amp)` from a fixed LCG.
    fn random(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// softmax(q kᵀ · scale) v per head, materialised, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], dims: &Dims) -> Vec<f32> {
        let (l, s, d, hd) = (dims.queries, dims.keys, dims.d, dims.head_dim);
        let mut out = vec![0f32; dims.batch * l * d];
        for b in 0..dims.batch {
            for h in 0..dims.heads {
                for i in 0..l {
                    let qi = &q[(b * l + i) * d + h * hd..][..hd];
                    let scores: Vec<f64> = (0..s)
                        .map(|j| {
                            let kj = &k[(b * s + j) * d + h * hd..][..hd];
                            let dot: f64 =
                                qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                            dot * dims.scale as f64
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..hd {
                        let o: f64 = (0..s)
                            .map(|j| e[j] * v[(b * s + j) * d + h * hd + c] as f64)
                            .sum();
                        out[(b * l + i) * d + h * hd + c] = (o / total) as f32;
                    }
                }
            }
        }
        out
    }

    /// Every ISA against the naive attention, on shapes with ragged query blocks, key tiles,
    /// key padding and head widths (none a multiple of its tile), and with scores large enough
    /// that later key tiles raise the running maximum (rescaling the partial output).
    #[test]
    fn fused_attention_matches_naive_softmax() {
        // (batch, queries, keys, heads, head_dim, amplitude)
        let shapes = [
            (1, 1, 1, 1, 3, 1.0),
            (1, 5, 7, 1, 8, 1.0),
            (2, 70, 300, 4, 8, 2.0),
            (1, 130, 517, 2, 64, 1.0),
            (1, 64, 32, 8, 64, 0.5),
            (2, 33, 257, 3, 20, 3.0),
            (1, 200, 600, 1, 72, 4.0),
        ];
        for (seed, &(batch, queries, keys, heads, head_dim, amp)) in shapes.iter().enumerate() {
            let d = heads * head_dim;
            let seed = seed as u64 * 3;
            let q = random(batch * queries * d, seed, amp);
            let k = random(batch * keys * d, seed + 1, amp);
            let v = random(batch * keys * d, seed + 2, 1.0);
            let dims = Dims::new(
                batch,
                queries,
                keys,
                d,
                heads,
                1.0 / (head_dim as f32).sqrt(),
            );
            let want = naive(&q, &k, &v, &dims);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; want.len()];
                attention(isa, &q, &k, &v, &mut got, &dims);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, |m, e| if e > m { e } else { m });
                assert!(
                    err <= 1e-5,
                    "{isa:?} B {batch} L {queries} S {keys} heads {heads} head_dim {head_dim}: {err}"
                );
            }
        }
    }

    #[test]
    fn op_refuses_bad_shapes() -> Result<()> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let t = |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &dev);
        let op = FusedAttention {
            heads: 3,
            scale: 1.0,
        };
        let err = t(&[1, 4, 8])?
            .apply_op3_no_bwd(&t(&[1, 5, 8])?, &t(&[1, 5, 8])?, &op)
            .unwrap_err();
        assert!(
            err.to_string().contains("3 heads do not divide width 8"),
            "{err}"
        );
        let op = FusedAttention {
            heads: 2,
            scale: 1.0,
        };
        let err = t(&[1, 4, 8])?
            .apply_op3_no_bwd(&t(&[1, 5, 8])?, &t(&[1, 6, 8])?, &op)
            .unwrap_err();
        assert!(err.to_string().contains("[1, 6, 8]"), "{err}");
        let ok = t(&[2, 4, 8])?.apply_op3_no_bwd(&t(&[2, 5, 8])?, &t(&[2, 5, 8])?, &op)?;
        assert_eq!(ok.dims(), [2, 4, 8]);
        Ok(())
    }
}
