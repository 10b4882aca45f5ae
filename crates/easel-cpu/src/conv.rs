//! Direct f32 NCHW convolution, the fast networks' and (on the CPU) the diffusion models'.
//!
//! candle's CPU `conv2d` builds im2col tiles element by element and runs depthwise convs one
//! channel at a time; for the few-channel, large-image layers of the style networks that
//! dominates the run time (25× slower than this kernel). [`Conv2d`] computes outputs directly:
//!
//! - groups 1: register tiles of 4 output channels × 4 vectors of pixels of one output row (AVX-512:
//!   4 × 64 pixels, AVX2: 4 × 16, portable: 4 × 16), accumulated over (input channel, ky, kx) —
//!   ONNX's im2col order — with fused multiply-add, from weights packed per block of 4 output
//!   channels as `[c_in][ky][kx][4]`. A 1×1 stride-1 conv treats the image as one row of H·W
//!   pixels, which makes it a register-blocked matrix product;
//! - depthwise (groups = channels): per channel, vectors across the output row;
//! - strided convs read a copy of the input split into column phases, so every read is contiguous;
//! - an [`Epilogue`] fused into the store: bias, then an optional clamp (ReLU / ReLU6), then an
//!   optional int8 fake quantization ([`Quantize`]);
//! - work is split into (row, column chunk, channel group) units over the pool ([`par_for`]).
//!
//! Every product is a correctly rounded fused multiply-add in the same order on every
//! instruction set ([`Isa`]), so all CPUs give bit-identical results (tested on each path the
//! CPU has: `conv_is_bit_identical_on_every_isa`).
//!
//! Padding is the caller's business ([`crate::pad`] builds reflection / zero / upsampling pads in
//! one gather). [`Conv2dOp`] wraps a [`Conv2d`] as a candle custom op for CPU f32 tensors.

use crate::pool::{catch_panic, par_for, SharedMut};
use crate::scratch::Scratch;
#[cfg(target_arch = "x86_64")]
use crate::simd::x86;
use crate::simd::{Isa, Portable, Simd, ROUND_MAGIC};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::borrow::Cow;

/// Output channels per register tile (groups-1 convs).
const OCB: usize = 4;
/// Pixels per column chunk of a 1×1 conv's single "row" (one work unit): one AVX-512 tile wide,
/// so that the chunk's input column (`c_in` × 64 floats) stays in L1 across all output blocks.
const FLAT_CHUNK: usize = 64;

/// `x ↦ (clamp(round_half_even(x / scale), lo, hi)) · scale`: int8 quantize → dequantize with the
/// zero point folded into `lo = −128 − zp`, `hi = 127 − zp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantize {
    /// The quantization step.
    pub scale: f32,
    /// Smallest integer level (`−128 − zero point`).
    pub lo: f32,
    /// Largest integer level (`127 − zero point`).
    pub hi: f32,
}

impl Quantize {
    /// One value.
    #[inline(always)]
    pub fn apply(&self, x: f32) -> f32 {
        // Comparisons rather than `f32::max`/`min` (whose NaN rules block vectorisation); the same
        // values for every non-NaN input.
        let y = x / self.scale;
        let y = if y < self.lo { self.lo } else { y };
        let y = if y > self.hi { self.hi } else { y };
        ((y + ROUND_MAGIC) - ROUND_MAGIC) * self.scale
    }
}

/// What happens to each output after the sums: `+ bias`, then `clamp`, then `quant`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Epilogue {
    /// `(lo, hi)`: ReLU is `(0, ∞)`, ReLU6 `(0, 6)`.
    pub clamp: Option<(f32, f32)>,
    /// int8 fake quantization, after the clamp.
    pub quant: Option<Quantize>,
}

impl Epilogue {
    #[inline(always)]
    fn scalar(&self, v: f32) -> f32 {
        let v = match self.clamp {
            Some((lo, hi)) => {
                let v = if v < lo { lo } else { v };
                if v > hi {
                    hi
                } else {
                    v
                }
            }
            None => v,
        };
        match self.quant {
            Some(q) => q.apply(v),
            None => v,
        }
    }

    /// Applies the clamp and quantization (not the bias) to a slice, vectorised.
    pub fn apply_slice(&self, xs: &mut [f32]) {
        if self.clamp.is_none() && self.quant.is_none() {
            return;
        }
        epilogue_slice(self, xs)
    }

    /// Applies the clamp and quantization (not the bias) to a tensor: one vectorised pass
    /// ([`EpilogueOp`]) for CPU f32 tensors autograd does not track, tensor ops elsewhere. The
    /// quantization's tensor ops are `x / scale`, clamped, rounded half to even by adding and
    /// subtracting [`ROUND_MAGIC`] (exact for the clamped int8 range), times `scale`: the CPU
    /// kernel's values wherever the device's f32 division and addition are IEEE
    /// round-to-nearest (CUDA's are).
    pub fn apply_tensor(&self, x: &Tensor) -> Result<Tensor> {
        if self.clamp.is_none() && self.quant.is_none() {
            return Ok(x.clone());
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() {
            return x.contiguous()?.apply_op1_no_bwd(&EpilogueOp(*self));
        }
        let y = match self.clamp {
            // ReLU as candle's op: one op, and its usual gradient.
            Some((lo, hi)) if lo == 0.0 && hi == f32::INFINITY => x.relu()?,
            Some((lo, hi)) => x.clamp(lo, hi)?,
            None => x.clone(),
        };
        let Some(q) = self.quant else { return Ok(y) };
        let magic = ROUND_MAGIC as f64;
        let scale = Tensor::new(q.scale, x.device())?.to_dtype(x.dtype())?;
        let levels = y.broadcast_div(&scale)?.clamp(q.lo, q.hi)?;
        ((levels + magic)? - magic)?.broadcast_mul(&scale)
    }
}

/// [`Epilogue::apply_slice`] as a candle op on contiguous CPU f32 tensors.
#[derive(Debug, Clone, Copy)]
pub struct EpilogueOp(pub Epilogue);

impl CustomOp1 for EpilogueOp {
    fn name(&self) -> &'static str {
        "easel-clamp-quantize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "clamp / quantize")?;
        let mut out = data.to_vec();
        self.0.apply_slice(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

crate::simd_fn! {
    fn epilogue_slice(ep: &Epilogue, xs: &mut [f32]) {
        for v in xs {
            *v = ep.scalar(*v);
        }
    }
}

/// The epilogue on a vector of sums.
///
/// # Safety
/// As every [`Simd`] method: the CPU has `S`'s instruction set.
#[inline(always)]
unsafe fn epilogue<S: Simd>(v: S::V, bias: f32, ep: &Epilogue) -> S::V {
    // SAFETY: lane-wise vector methods under this function's contract.
    unsafe {
        let mut v = S::add(v, S::splat(bias));
        if let Some((lo, hi)) = ep.clamp {
            v = S::min(S::max(v, S::splat(lo)), S::splat(hi));
        }
        if let Some(q) = ep.quant {
            let s = S::splat(q.scale);
            let m = S::splat(ROUND_MAGIC);
            let y = S::min(S::max(S::div(v, s), S::splat(q.lo)), S::splat(q.hi));
            v = S::mul(S::sub(S::add(y, m), m), s);
        }
        v
    }
}

/// Convolution weights packed for the direct kernel (groups 1 or depthwise), with bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
    /// groups 1: per block of [`OCB`] output channels `[c_in][k][k][OCB]` (zero for missing
    /// channels); depthwise: `[c][k][k]`.
    packed: Vec<f32>,
    bias: Vec<f32>,
    /// Tests: the work unit that panics (as a bug in a kernel would).
    #[cfg(test)]
    fail_unit: Option<usize>,
}

/// The input of one image as the kernel reads it: `rows` rows per channel, each split into
/// `stride` column phases of `wp` floats (phase `p` holds columns `p, p + s, p + 2s, …`).
struct Src<'a> {
    data: Cow<'a, [f32]>,
    rows: usize,
    wp: usize,
    stride: usize,
    /// [`Self::kx_offsets`] of the conv reading it.
    kx_off: Vec<usize>,
}

impl<'a> Src<'a> {
    fn new(
        x: &'a [f32],
        (c, h, w): (usize, usize, usize),
        stride: usize,
        scratch: &mut Scratch,
    ) -> Self {
        if stride == 1 {
            return Self {
                data: Cow::Borrowed(x),
                rows: h,
                wp: w,
                stride,
                kx_off: Vec::new(),
            };
        }
        let wp = w.div_ceil(stride);
        let mut data = scratch.take(c * h * stride * wp);
        for (src, dst) in x.chunks_exact(w).zip(data.chunks_exact_mut(stride * wp)) {
            if stride == 2 {
                let (even, odd) = dst.split_at_mut(wp);
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if w % 2 == 1 {
                    even[wp - 1] = src[w - 1];
                    odd[wp - 1] = 0.0;
                }
                continue;
            }
            for (p, phase) in dst.chunks_exact_mut(wp).enumerate() {
                let mut it = src[p.min(w)..].iter().step_by(stride);
                for d in phase.iter_mut() {
                    // Past the row's end (only read by no output): zero.
                    *d = it.next().copied().unwrap_or(0.0);
                }
            }
        }
        Self {
            data: Cow::Owned(data),
            rows: h,
            wp,
            stride,
            kx_off: Vec::new(),
        }
    }

    /// Pointer to input column `kx + s·x0` of row `r` of channel `c`; the following reads step by
    /// `s` input columns. Valid for `wp − kx/s − x0` floats.
    #[inline(always)]
    fn ptr(&self, c: usize, r: usize, kx: usize, x0: usize) -> *const f32 {
        let base = ((c * self.rows + r) * self.stride + kx % self.stride) * self.wp;
        // SAFETY: callers pass c < channels, r < rows, kx/s + x0 ≤ wp, so the offset is within
        // (or one past the end of) `data`.
        unsafe { self.data.as_ptr().add(base + kx / self.stride + x0) }
    }

    /// The offsets of the `k` kernel columns from [`Self::ptr`]`(c, r, 0, x0)` (phase and
    /// position), computed once per conv call rather than with two divisions per product.
    fn kx_offsets(&self, k: usize) -> Vec<usize> {
        (0..k)
            .map(|kx| (kx % self.stride) * self.wp + kx / self.stride)
            .collect()
    }
}

/// Geometry of one call.
#[derive(Clone, Copy)]
struct Geom {
    /// Output rows and columns as the kernel sees them (a 1×1 stride-1 conv: 1 × H·W).
    ho: usize,
    wo: usize,
}

/// The kernel of a convolution's input gradient: `w` (`[c_out, c_in / groups, k, k]`) with its
/// channels swapped and each `k × k` tap flipped, `[c_in][c_out][k−1−ky][k−1−kx]` (depthwise:
/// each channel's taps flipped). A stride-1 convolution with it of the output gradient (padded
/// and, for strided convolutions, zero-dilated) gives the input gradient.
pub fn transposed_kernel(
    w: &[f32],
    (c_in, c_out, k): (usize, usize, usize),
    depthwise: bool,
) -> Vec<f32> {
    let kk = k * k;
    let mut wt = vec![0f32; w.len()];
    if depthwise {
        for (dst, src) in wt.chunks_exact_mut(kk).zip(w.chunks_exact(kk)) {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[kk - 1 - i];
            }
        }
    } else {
        for o in 0..c_out {
            for i in 0..c_in {
                for j in 0..kk {
                    wt[(i * c_out + o) * kk + j] = w[(o * c_in + i) * kk + kk - 1 - j];
                }
            }
        }
    }
    wt
}

impl Conv2d {
    /// `weight`: `[c_out, c_in / groups, k, k]` row-major; `bias`: `[c_out]` or none (zeros).
    /// `depthwise`: groups = `c_in` = `c_out`; otherwise groups = 1.
    pub fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        depthwise: bool,
    ) -> Result<Self> {
        let per_out = if depthwise { k * k } else { c_in * k * k };
        if k == 0 || stride == 0 || c_out == 0 || (depthwise && c_in != c_out) {
            bail!("conv2d: unsupported shape {c_in}->{c_out} k{k} s{stride} depthwise={depthwise}")
        }
        if weight.len() != c_out * per_out {
            bail!(
                "conv2d: {} weights for [{c_out}, {}, {k}, {k}]",
                weight.len(),
                per_out / (k * k)
            )
        }
        let bias = match bias {
            Some(b) if b.len() == c_out => b.to_vec(),
            Some(b) => bail!("conv2d: {} biases for {c_out} output channels", b.len()),
            None => vec![0.0; c_out],
        };
        let packed = if depthwise {
            weight.to_vec()
        } else {
            let blocks = c_out.div_ceil(OCB);
            let mut p = vec![0f32; blocks * per_out * OCB];
            for (o, w) in weight.chunks_exact(per_out).enumerate() {
                let block = &mut p[(o / OCB) * per_out * OCB..(o / OCB + 1) * per_out * OCB];
                for (i, &v) in w.iter().enumerate() {
                    block[i * OCB + o % OCB] = v;
                }
            }
            p
        };
        Ok(Self {
            c_in,
            c_out,
            k,
            stride,
            depthwise,
            packed,
            bias,
            #[cfg(test)]
            fail_unit: None,
        })
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Output size for an (already padded) `h`×`w` input.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (k, s) = (self.k, self.stride);
        if h < k || w < k {
            bail!("conv2d: input {h}x{w} smaller than the {k}x{k} kernel")
        }
        Ok(((h - k) / s + 1, (w - k) / s + 1))
    }

    /// Convolves `x` (`[n, c_in, h, w]`, already padded); returns `[n, c_out, ho, wo]`.
    pub fn forward(
        &self,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        ep: &Epilogue,
    ) -> Result<Vec<f32>> {
        let (ho, wo) = self.out_size(h, w)?;
        let mut out = vec![0f32; n * self.c_out * ho * wo];
        self.forward_into(x, (n, c, h, w), ep, &mut out, &mut Scratch::default())?;
        Ok(out)
    }

    /// As [`Self::forward`], into `out` (`n · c_out · ho · wo` floats).
    pub fn forward_into(
        &self,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        ep: &Epilogue,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<()> {
        self.forward_into_on(Isa::detect(), x, dims, ep, out, scratch)
    }

    /// As [`Self::forward_into`] on the instruction set `isa` (an error if the CPU lacks it):
    /// every path gives the same bits.
    pub fn forward_into_on(
        &self,
        isa: Isa,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        ep: &Epilogue,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<()> {
        if !isa.is_supported() {
            bail!("conv2d: this CPU cannot run {isa:?} code")
        }
        if c != self.c_in || x.len() != n * c * h * w {
            bail!(
                "conv2d: input [{n}, {c}, {h}, {w}] ({} floats) for {} input channels",
                x.len(),
                self.c_in
            )
        }
        let (ho, wo) = self.out_size(h, w)?;
        let plane = ho * wo;
        if out.len() != n * self.c_out * plane {
            bail!(
                "conv2d: output buffer of {} floats, need {}",
                out.len(),
                n * self.c_out * plane
            )
        }
        if n == 0 || plane == 0 {
            return Ok(());
        }
        let flat = self.k == 1 && self.stride == 1;
        let (gh, gw) = if flat { (1, plane) } else { (ho, wo) };
        let chunk = if flat { FLAT_CHUNK.min(gw) } else { gw };
        let units_per_row = gw.div_ceil(chunk);
        let threads = candle_core::utils::get_num_threads().max(1);
        // Channel groups: enough units to balance the threads, but whole blocks per unit.
        let blocks = if self.depthwise {
            self.c_out
        } else {
            self.c_out.div_ceil(OCB)
        };
        let want = 8 * threads;
        let groups = if self.depthwise {
            blocks.min(want)
        } else {
            want.div_ceil(gh * units_per_row).clamp(1, blocks)
        };
        let group = blocks.div_ceil(groups);
        let groups = blocks.div_ceil(group);
        let geom = Geom { ho: gh, wo: gw };
        let n_units = gh * units_per_row * groups;
        // Below ~1M multiply-adds per image, waking a helper costs about what it saves.
        let per_out = if self.depthwise { 1 } else { c } * self.k * self.k;
        let small = self.c_out * plane * per_out < 1 << 20;
        for (img, out_img) in x
            .chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(self.c_out * plane))
        {
            let src = if flat {
                Src {
                    data: Cow::Borrowed(img),
                    rows: 1,
                    wp: h * w,
                    stride: 1,
                    kx_off: Vec::new(),
                }
            } else {
                Src::new(img, (c, h, w), self.stride, scratch)
            };
            let src = Src {
                kx_off: src.kx_offsets(self.k),
                ..src
            };
            let dst = SharedMut::new(out_img);
            let run = |range: std::ops::Range<usize>| {
                for u in range {
                    let g = u % groups;
                    let rest = u / groups;
                    let (y, xc) = (rest / units_per_row, rest % units_per_row);
                    let x0 = xc * chunk;
                    let x1 = (x0 + chunk).min(gw);
                    let b = g * group..((g + 1) * group).min(blocks);
                    #[cfg(test)]
                    if self.fail_unit == Some(u) {
                        panic!("injected failure in conv unit {u}");
                    }
                    // SAFETY: unit (y, xc, g) writes output rows y, columns x0..x1 of the
                    // channels of blocks `b` only: disjoint from every other unit, inside
                    // `out_img` (checked length above); `isa` matches the running CPU.
                    unsafe { self.unit(isa, &src, dst, geom, y, x0..x1, b, ep) };
                }
            };
            if small {
                run(0..n_units);
            } else {
                par_for(n_units, run);
            }
            if let Cow::Owned(v) = src.data {
                scratch.give(v);
            }
        }
        Ok(())
    }

    /// # Safety
    /// `isa` must be supported by the CPU; `out` must point to the `[c_out, ho, wo]` output of
    /// the image `src` holds, and no other thread may touch the region this unit writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit(
        &self,
        isa: Isa,
        src: &Src,
        out: SharedMut,
        g: Geom,
        y: usize,
        xs: std::ops::Range<usize>,
        blocks: std::ops::Range<usize>,
        ep: &Epilogue,
    ) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller.
            Isa::Avx512 => unsafe { self.unit_avx512(src, out, g, y, xs, blocks, ep) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller.
            Isa::Avx2 => unsafe { self.unit_avx2(src, out, g, y, xs, blocks, ep) },
            // SAFETY: forwarded from the caller.
            Isa::Portable => unsafe {
                self.unit_generic::<Portable, 2>(src, out, g, y, xs, blocks, ep)
            },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit_avx512(
        &self,
        src: &Src,
        out: SharedMut,
        g: Geom,
        y: usize,
        xs: std::ops::Range<usize>,
        blocks: std::ops::Range<usize>,
        ep: &Epilogue,
    ) {
        // SAFETY: forwarded from `unit`.
        unsafe { self.unit_generic::<x86::Avx512, 4>(src, out, g, y, xs, blocks, ep) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit_avx2(
        &self,
        src: &Src,
        out: SharedMut,
        g: Geom,
        y: usize,
        xs: std::ops::Range<usize>,
        blocks: std::ops::Range<usize>,
        ep: &Epilogue,
    ) {
        // SAFETY: forwarded from `unit`.
        unsafe { self.unit_generic::<x86::Avx2, 2>(src, out, g, y, xs, blocks, ep) }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit_generic<S: Simd, const PB: usize>(
        &self,
        src: &Src,
        out: SharedMut,
        g: Geom,
        y: usize,
        xs: std::ops::Range<usize>,
        blocks: std::ops::Range<usize>,
        ep: &Epilogue,
    ) {
        let plane = g.ho * g.wo;
        let row = y * g.wo;
        let wide = PB * S::L;
        for b in blocks {
            let mut x0 = xs.start;
            // SAFETY: the ISA and `out` are as `unit` requires (forwarded); each tile reads input
            // columns below the row's end (x0 + lanes ≤ wo) and writes output row y, columns
            // x0.. of this block's channels only.
            unsafe {
                if self.depthwise {
                    let o = out.get().add(b * plane + row);
                    while x0 + wide <= xs.end {
                        self.tile_dw::<S, PB>(src, b, y, x0, o.add(x0), S::L, ep);
                        x0 += wide;
                    }
                    while x0 < xs.end {
                        let n = S::L.min(xs.end - x0);
                        self.tile_dw::<S, 1>(src, b, y, x0, o.add(x0), n, ep);
                        x0 += n;
                    }
                } else {
                    let valid = OCB.min(self.c_out - b * OCB);
                    let o: [*mut f32; OCB] = std::array::from_fn(|j| {
                        out.get().add((b * OCB + j.min(valid - 1)) * plane + row)
                    });
                    while x0 + wide <= xs.end {
                        self.tile::<S, PB>(src, b, y, x0, &o, valid, S::L, ep);
                        x0 += wide;
                    }
                    while x0 < xs.end {
                        let n = S::L.min(xs.end - x0);
                        self.tile::<S, 1>(src, b, y, x0, &o, valid, n, ep);
                        x0 += n;
                    }
                }
            }
        }
    }

    /// Output channels of block `b` (the first `valid`), row `y`, `PB` vectors from column `x0`;
    /// the last vector has `last` valid lanes.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<S: Simd, const PB: usize>(
        &self,
        src: &Src,
        b: usize,
        y: usize,
        x0: usize,
        out: &[*mut f32; OCB],
        valid: usize,
        last: usize,
        ep: &Epilogue,
    ) {
        let (k, s) = (self.k, self.stride);
        let per_block = self.c_in * k * k * OCB;
        // SAFETY: the caller guarantees the ISA and the bounds (see `unit_generic`); the
        // packed weights hold `per_block` floats per block.
        unsafe {
            let mut acc = [[S::zero(); PB]; OCB];
            let kx_off = &src.kx_off[..];
            let mut wp = self.packed.as_ptr().add(b * per_block);
            for ci in 0..self.c_in {
                for ky in 0..k {
                    let row = src.ptr(ci, y * s + ky, 0, x0);
                    for &off in kx_off {
                        let p = row.add(off);
                        let mut xv = [S::zero(); PB];
                        for (i, v) in xv.iter_mut().enumerate() {
                            *v = if i + 1 == PB && last < S::L {
                                S::load_n(p.add(i * S::L), last)
                            } else {
                                S::load(p.add(i * S::L))
                            };
                        }
                        for (j, a) in acc.iter_mut().enumerate() {
                            let wv = S::splat(*wp.add(j));
                            for (ai, &xi) in a.iter_mut().zip(&xv) {
                                *ai = S::fma(wv, xi, *ai);
                            }
                        }
                        wp = wp.add(OCB);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(valid) {
                let bias = self.bias[b * OCB + j];
                for (i, &v) in a.iter().enumerate() {
                    let v = epilogue::<S>(v, bias, ep);
                    let dst = out[j].add(x0 + i * S::L);
                    if i + 1 == PB && last < S::L {
                        S::store_n(dst, v, last);
                    } else {
                        S::store(dst, v);
                    }
                }
            }
        }
    }

    /// Depthwise: channel `c`, row `y`, `PB` vectors from column `x0` (`out` points at column x0).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_dw<S: Simd, const PB: usize>(
        &self,
        src: &Src,
        c: usize,
        y: usize,
        x0: usize,
        out: *mut f32,
        last: usize,
        ep: &Epilogue,
    ) {
        let (k, s) = (self.k, self.stride);
        // SAFETY: as in `tile`.
        unsafe {
            let mut acc = [S::zero(); PB];
            let kx_off = &src.kx_off[..];
            let mut w = self.packed.as_ptr().add(c * k * k);
            for ky in 0..k {
                let row = src.ptr(c, y * s + ky, 0, x0);
                for &off in kx_off {
                    let p = row.add(off);
                    let wv = S::splat(*w);
                    w = w.add(1);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xv = if i + 1 == PB && last < S::L {
                            S::load_n(p.add(i * S::L), last)
                        } else {
                            S::load(p.add(i * S::L))
                        };
                        *a = S::fma(wv, xv, *a);
                    }
                }
            }
            let bias = self.bias[c];
            for (i, &v) in acc.iter().enumerate() {
                let v = epilogue::<S>(v, bias, ep);
                if i + 1 == PB && last < S::L {
                    S::store_n(out.add(i * S::L), v, last);
                } else {
                    S::store(out.add(i * S::L), v);
                }
            }
        }
    }
}

/// [`Conv2d`] with its [`Epilogue`] as a candle op on contiguous CPU f32 tensors `[N, C, H, W]`.
pub struct Conv2dOp<'a> {
    /// The packed weights.
    pub conv: &'a Conv2d,
    /// What is fused into the store.
    pub ep: Epilogue,
}

impl CustomOp1 for Conv2dOp<'_> {
    fn name(&self) -> &'static str {
        "easel-direct-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = crate::storage::contiguous_f32(storage, layout, "direct conv2d")?;
        let dims = layout.shape().dims4()?;
        let (ho, wo) = self.conv.out_size(dims.2, dims.3)?;
        let out = catch_panic("direct conv2d", || self.conv.forward(data, dims, &self.ep))?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims.0, self.conv.c_out, ho, wo)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        // (c_in, c_out, k, stride, groups, h, w): odd sizes, vector tails, channel-block tails.
        for (c_in, c_out, k, stride, groups, h, w) in [
            (3, 8, 9, 1, 1, 23, 41),
            (8, 3, 9, 1, 1, 20, 37),
            (8, 16, 3, 2, 1, 19, 34),
            (32, 32, 3, 1, 1, 14, 70),
            (5, 5, 3, 2, 5, 17, 18),
            (6, 6, 3, 1, 6, 9, 40),
            (96, 96, 3, 1, 96, 10, 10),
            (24, 144, 1, 1, 1, 9, 31),
            (320, 13, 1, 1, 1, 8, 8),
            (7, 5, 1, 2, 1, 9, 9),
            (1280, 100, 1, 1, 1, 1, 1),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c_in, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in / groups, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let conv = Conv2d::new(
                &weight.flatten_all()?.to_vec1::<f32>()?,
                Some(&bias.to_vec1::<f32>()?),
                (c_in, c_out, k),
                stride,
                groups > 1,
            )?;
            let got = x.apply_op1_no_bwd(&Conv2dOp {
                conv: &conv,
                ep: Epilogue::default(),
            })?;
            let want = x
                .conv2d(&weight, 0, stride, 1, groups)?
                .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
            assert_eq!(got.dims(), want.dims());
            let err = (got - &want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(
                err < 1e-5 * scale.max(1.0),
                "{c_in}->{c_out} k{k} s{stride} g{groups}: {err} (max {scale})"
            );
        }
        Ok(())
    }

    #[test]
    fn epilogue_clamps_then_quantizes() -> Result<()> {
        // A 1×1 identity conv with bias 0.25 → ReLU6 → quantize with scale 0.5, zp −3.
        let conv = Conv2d::new(&[1.0], Some(&[0.25]), (1, 1, 1), 1, false)?;
        let ep = Epilogue {
            clamp: Some((0.0, 6.0)),
            quant: Some(Quantize {
                scale: 0.5,
                lo: -125.0,
                hi: 130.0,
            }),
        };
        let x = [0.0f32, 0.5, 1.0, -3.0, 100.0, 0.05, 2.0];
        let y = conv.forward(&x, (1, 1, 1, x.len()), &ep)?;
        // +0.25: 0.25 0.75 1.25 −2.75 100.25 0.3 2.25; clamp: …, 0, 6, …; /0.5 → 0.5→0 (even),
        // 1.5→2, 2.5→2, 0, 12, 0.6→1, 4.5→4.
        assert_eq!(y, [0.0, 1.0, 1.0, 0.0, 6.0, 0.5, 2.0]);
        let mut z = vec![0.25f32, 0.75, 1.25, -2.75, 100.25, 0.3, 2.25];
        let t = Tensor::new(z.as_slice(), &Device::Cpu)?;
        // The op (CPU f32) and the tensor ops (an input autograd tracks) give the same values.
        let tracked = candle_core::Var::from_tensor(&t)?;
        for t in [&t, tracked.as_tensor()] {
            assert_eq!(ep.apply_tensor(t)?.to_vec1::<f32>()?, y, "{}", t.track_op());
        }
        ep.apply_slice(&mut z);
        assert_eq!(z, y);
        Ok(())
    }

    /// Every instruction set the CPU has gives the portable path's bits exactly, on shapes with
    /// vector and channel-block tails, strides, depthwise and 1×1 convs, with and without a
    /// clamp + quantize epilogue. (AVX-512 runs where the CPU has it: tools/gpu/check.sh's
    /// `cpu-isa` step runs this test on the device machine's CPU too.)
    #[test]
    fn conv_is_bit_identical_on_every_isa() -> Result<()> {
        let dev = Device::Cpu;
        let quant = Epilogue {
            clamp: Some((0.0, 6.0)),
            quant: Some(Quantize {
                scale: 0.05,
                lo: -128.0,
                hi: 127.0,
            }),
        };
        for (c_in, c_out, k, stride, depthwise, h, w) in [
            (3, 8, 9, 1, false, 23, 41),
            (8, 3, 3, 2, false, 19, 37),
            (32, 33, 3, 1, false, 14, 70),
            (6, 6, 3, 1, true, 9, 40),
            (5, 5, 3, 2, true, 17, 18),
            (24, 144, 1, 1, false, 9, 31),
            (7, 5, 1, 2, false, 9, 9),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c_in, h, w), &dev)?.flatten_all()?;
            let per = if depthwise { 1 } else { c_in };
            let weight = Tensor::randn(0f32, 1.0, (c_out, per, k, k), &dev)?.flatten_all()?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev)?.to_vec1::<f32>()?;
            let conv = Conv2d::new(
                &weight.to_vec1::<f32>()?,
                Some(&bias),
                (c_in, c_out, k),
                stride,
                depthwise,
            )?;
            let x = x.to_vec1::<f32>()?;
            let (ho, wo) = conv.out_size(h, w)?;
            for ep in [Epilogue::default(), quant] {
                let run = |isa: Isa| -> Result<Vec<u32>> {
                    let mut out = vec![f32::NAN; 2 * c_out * ho * wo];
                    let mut scratch = Scratch::default();
                    conv.forward_into_on(isa, &x, (2, c_in, h, w), &ep, &mut out, &mut scratch)?;
                    Ok(out.iter().map(|v| v.to_bits()).collect())
                };
                let want = run(Isa::Portable)?;
                for isa in Isa::supported() {
                    let got = run(isa)?;
                    let first = got.iter().zip(&want).position(|(a, b)| a != b);
                    assert_eq!(
                        first, None,
                        "{isa:?} differs from the portable path: {c_in}->{c_out} k{k} s{stride} \
                         dw={depthwise} {ep:?}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A work unit that panics — on the caller or a pool helper, in a conv large enough to be
    /// split over the pool and in one run inline — makes the op return an error, never an output
    /// with that unit's pixels left unwritten.
    #[test]
    fn panicking_unit_gives_an_error_not_an_image() -> Result<()> {
        let dev = Device::Cpu;
        for (c, h, w) in [(32, 64, 64), (2, 8, 8)] {
            let weight = vec![0.01f32; c * c * 9];
            let mut conv = Conv2d::new(&weight, None, (c, c, 3), 1, false)?;
            let x = Tensor::ones((1, c, h, w), candle_core::DType::F32, &dev)?;
            let healthy = x.apply_op1_no_bwd(&Conv2dOp {
                conv: &conv,
                ep: Epilogue::default(),
            })?;
            assert_eq!(healthy.dims(), [1, c, h - 2, w - 2]);
            for unit in [0, 5] {
                conv.fail_unit = Some(unit);
                let err = x
                    .apply_op1_no_bwd(&Conv2dOp {
                        conv: &conv,
                        ep: Epilogue::default(),
                    })
                    .expect_err("a panicking unit must not give an image");
                assert!(
                    err.to_string().contains(
                        "direct conv2d: a worker panicked (injected failure in conv unit"
                    ),
                    "{err}"
                );
            }
        }
        Ok(())
    }
}
