//! Direct f32 NCHW convolution for the CPU, shared by the fast networks.
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
//! - work is split into (row, column chunk, channel group) units taken by
//!   `candle_core::utils::get_num_threads()` threads ([`par_for`]), which block (not spin) while
//!   they wait.
//!
//! Every product is a correctly rounded fused multiply-add (`_mm512_fmadd_ps`, `_mm256_fmadd_ps`,
//! `f32::mul_add` on the portable path) in the same order on every path, so all CPUs give
//! bit-identical results (the portable path is slow without hardware FMA, but exact).
//!
//! Padding is the caller's business ([`pad`] builds reflection / zero / upsampling pads in one
//! gather). [`Conv2dOp`] wraps a [`Conv2d`] as a candle custom op for CPU f32 tensors.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};
use std::borrow::Cow;

/// Output channels per register tile (groups-1 convs).
const OCB: usize = 4;
/// Pixels per column chunk of a 1×1 conv's single "row" (one work unit): one AVX-512 tile wide,
/// so that the chunk's input column (`c_in` × 64 floats) stays in L1 across all output blocks.
const FLAT_CHUNK: usize = 64;

/// `x ↦ (clamp(round_half_even(x / scale), lo, hi)) · scale`: int8 quantize → dequantize with the
/// zero point folded into `lo = −128 − zp`, `hi = 127 − zp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quantize {
    pub scale: f32,
    pub lo: f32,
    pub hi: f32,
}

/// `(y + 1.5·2²³) − 1.5·2²³` rounds `|y| < 2²²` to the nearest integer, ties to even (the default
/// IEEE rounding of the addition), like `round_ties_even` but without a libm call; clamping to
/// the integer bounds first commutes with the rounding.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

impl Quantize {
    #[inline(always)]
    pub(crate) fn apply(&self, x: f32) -> f32 {
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
pub(crate) struct Epilogue {
    pub clamp: Option<(f32, f32)>,
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
    pub(crate) fn apply_slice(&self, xs: &mut [f32]) {
        if self.clamp.is_none() && self.quant.is_none() {
            return;
        }
        epilogue_slice(self, xs)
    }
}

/// Defines `fn $name(args) -> ret` whose body is compiled three times — for AVX-512F, for
/// AVX2 + FMA and portably — and dispatched on the running CPU, so the compiler can vectorise its
/// loops with the widest registers. For element-wise loops of IEEE operations, whose values do
/// not depend on the vector width.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                inner($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                inner($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

simd_fn! {
    fn epilogue_slice(ep: &Epilogue, xs: &mut [f32]) {
        for v in xs {
            *v = ep.scalar(*v);
        }
    }
}

simd_fn! {
    /// `dst[i] += src[i]`.
    pub(crate) fn add_assign(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIMD abstraction

#[derive(Debug, Clone, Copy, PartialEq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// One SIMD register of `L` f32 lanes. All methods are `unsafe`: the caller must run on a CPU with
/// the instruction set and pass pointers valid for `L` (or `n`) floats.
trait Simd {
    const L: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// Loads `n < L` floats, zero elsewhere (reads nothing past `p + n`).
    unsafe fn load_n(p: *const f32, n: usize) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Stores the first `n < L` lanes (writes nothing past `p + n`).
    unsafe fn store_n(p: *mut f32, v: Self::V, n: usize);
    /// `a · b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;

    /// The epilogue on a vector of sums.
    #[inline(always)]
    unsafe fn epilogue(v: Self::V, bias: f32, ep: &Epilogue) -> Self::V {
        let mut v = Self::add(v, Self::splat(bias));
        if let Some((lo, hi)) = ep.clamp {
            v = Self::min(Self::max(v, Self::splat(lo)), Self::splat(hi));
        }
        if let Some(q) = ep.quant {
            let s = Self::splat(q.scale);
            let m = Self::splat(ROUND_MAGIC);
            let y = Self::min(
                Self::max(Self::div(v, s), Self::splat(q.lo)),
                Self::splat(q.hi),
            );
            v = Self::mul(Self::sub(Self::add(y, m), m), s);
        }
        v
    }
}

/// Portable "vector" of 8 lanes (the compiler vectorises the lane loops where it can).
struct Portable;

impl Simd for Portable {
    const L: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 8 readable floats at `p`.
        unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) }
    }
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> Self::V {
        let mut v = [0.0; 8];
        for (i, x) in v.iter_mut().enumerate().take(n) {
            // SAFETY: the caller guarantees `n` readable floats at `p`.
            *x = unsafe { *p.add(i) };
        }
        v
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees 8 writable floats at `p`.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], v) }
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: Self::V, n: usize) {
        for (i, &x) in v.iter().enumerate().take(n) {
            // SAFETY: the caller guarantees `n` writable floats at `p`.
            unsafe { *p.add(i) = x };
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
}

// The AVX-512 intrinsics are stable since Rust 1.89 (the workspace's `rust-version`).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    pub(super) struct Avx512;
    pub(super) struct Avx2;

    // SAFETY (all methods): callers run these only inside `#[target_feature]` functions reached
    // after the matching `is_x86_feature_detected!` check, with pointers valid as documented on
    // the trait. Masked loads/stores do not touch memory of masked-off lanes.
    impl Simd for Avx512 {
        const L: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: __m512, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
    }

    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        const IDX: [i32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        // SAFETY: AVX2 is enabled in every caller (see above).
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_loadu_si256(IDX.as_ptr() as *const __m256i),
            )
        }
    }

    impl Simd for Avx2 {
        const L: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> __m256 {
            unsafe { _mm256_maskload_ps(p, mask8(n)) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
            unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the convolution

/// Convolution weights packed for the direct kernel (groups 1 or depthwise), with bias.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    depthwise: bool,
    /// groups 1: per block of [`OCB`] output channels `[c_in][k][k][OCB]` (zero for missing
    /// channels); depthwise: `[c][k][k]`.
    packed: Vec<f32>,
    bias: Vec<f32>,
}

/// Recycled f32 buffers for one network pass: large fresh allocations cost a page fault and a
/// kernel-zeroed page per 4 KiB, which for the small predictor layers took longer than the convs.
#[derive(Default)]
pub(crate) struct Scratch {
    free: Vec<Vec<f32>>,
}

impl Scratch {
    /// A buffer of `len` floats with unspecified (initialised) contents.
    pub(crate) fn take(&mut self, len: usize) -> Vec<f32> {
        // Prefer the shortest buffer already `len` long (nothing to initialise), else the one
        // with room that is longest (least to zero), else a new one.
        let ready = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let best = ready.or_else(|| {
            self.free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .max_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
        });
        let mut v = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// Returns a buffer for reuse (a bounded number are kept).
    pub(crate) fn give(&mut self, v: Vec<f32>) {
        if self.free.len() < 16 && v.capacity() > 0 {
            self.free.push(v);
        }
    }
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

/// A raw output pointer shared by the pool's threads; every work unit writes a disjoint region.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only used to write regions that no other unit reads or writes (see the
// work split in `Conv2d::forward_into`), and the buffer outlives the pool call.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    #[inline(always)]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Geometry of one call.
#[derive(Clone, Copy)]
struct Geom {
    /// Output rows and columns as the kernel sees them (a 1×1 stride-1 conv: 1 × H·W).
    ho: usize,
    wo: usize,
}

impl Conv2d {
    /// `weight`: `[c_out, c_in / groups, k, k]` row-major; `bias`: `[c_out]` or none (zeros).
    /// `depthwise`: groups = `c_in` = `c_out`; otherwise groups = 1.
    pub(crate) fn new(
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
        })
    }

    pub(crate) fn c_out(&self) -> usize {
        self.c_out
    }

    /// Output size for an (already padded) `h`×`w` input.
    pub(crate) fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (k, s) = (self.k, self.stride);
        if h < k || w < k {
            bail!("conv2d: input {h}x{w} smaller than the {k}x{k} kernel")
        }
        Ok(((h - k) / s + 1, (w - k) / s + 1))
    }

    /// Convolves `x` (`[n, c_in, h, w]`, already padded); returns `[n, c_out, ho, wo]`.
    pub(crate) fn forward(
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
    pub(crate) fn forward_into(
        &self,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        ep: &Epilogue,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<()> {
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
        let isa = isa();
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
            let dst = OutPtr(out_img.as_mut_ptr());
            let run = |range: std::ops::Range<usize>| {
                for u in range {
                    let g = u % groups;
                    let rest = u / groups;
                    let (y, xc) = (rest / units_per_row, rest % units_per_row);
                    let x0 = xc * chunk;
                    let x1 = (x0 + chunk).min(gw);
                    let b = g * group..((g + 1) * group).min(blocks);
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
        out: OutPtr,
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
        out: OutPtr,
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
        out: OutPtr,
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
        out: OutPtr,
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
            // SAFETY (all tiles): each tile reads input columns below the row's end (x0 + lanes
            // ≤ wo) and writes output row y, columns x0.. of this block's channels.
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
                    let v = S::epilogue(v, bias, ep);
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
                let v = S::epilogue(v, bias, ep);
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
pub(crate) struct Conv2dOp<'a> {
    pub conv: &'a Conv2d,
    pub ep: Epilogue,
}

impl CustomOp1 for Conv2dOp<'_> {
    fn name(&self) -> &'static str {
        "easel-direct-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("direct conv2d expects an f32 tensor")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("direct conv2d expects a contiguous tensor")
        };
        let dims = layout.shape().dims4()?;
        let (ho, wo) = self.conv.out_size(dims.2, dims.3)?;
        let out = self.conv.forward(&data[start..end], dims, &self.ep)?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims.0, self.conv.c_out, ho, wo)),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// padding

/// Source index of each output position along one axis: `Some(i)` copies input `i`, `None` is 0.
pub(crate) type AxisMap = Vec<Option<usize>>;

/// Reflection padding of an axis of `n` (ONNX `reflect`: the edge is not repeated), optionally
/// after nearest-neighbour upsampling by `up` (upsample, then pad the upsampled axis).
pub(crate) fn reflect_map(n: usize, up: usize, before: usize, after: usize) -> Result<AxisMap> {
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
pub(crate) fn zero_map(n: usize, before: usize, after: usize) -> AxisMap {
    (0..before)
        .map(|_| None)
        .chain((0..n).map(Some))
        .chain((0..after).map(|_| None))
        .collect()
}

/// Gathers `x` (`[planes, h, w]`) into `[planes, rows.len(), cols.len()]`.
pub(crate) fn pad(
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
        let dst = OutPtr(out.as_mut_ptr());
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

/// Sum of `f(x)` over `xs` in f64 (8 partial sums, so it vectorises).
#[inline(always)]
pub(crate) fn sum64(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v) as f64;
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v) as f64;
    }
    acc.iter().sum()
}

/// Calls `f(i, chunk)` for the `chunk_len`-float chunks of `data` (a partial last chunk is left
/// alone), spread over threads as by [`par_for`].
pub(crate) fn par_chunks_mut(
    data: &mut [f32],
    chunk_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if chunk_len == 0 {
        return;
    }
    let n = data.len() / chunk_len;
    let ptr = OutPtr(data.as_mut_ptr());
    par_for(n, |range| {
        for i in range {
            // SAFETY: i < n, so chunk i lies inside `data`; chunks are disjoint and each index is
            // visited once, so no two threads alias.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * chunk_len), chunk_len) };
            f(i, chunk);
        }
    });
}

/// Runs `f` on the items `0..n`, in chunks taken from a shared cursor by the calling thread and
/// up to `candle_core::utils::get_num_threads() − 1` helpers of a persistent pool (inline for one
/// thread or one item).
///
/// The caller never waits for a helper that has not started: helpers join a job only while it is
/// open, and once the caller has taken the last chunk it closes the job and waits only for helpers
/// already inside. Idle helpers block on a condition variable (no spinning). On a loaded machine
/// (other processes on the cores) this degrades to the caller doing the work alone instead of
/// stalling each op for a scheduling slice, which spawned-and-joined threads or a barrier do.
pub(crate) fn par_for(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = candle_core::utils::get_num_threads().min(n);
    if threads <= 1 {
        f(0..n);
        return;
    }
    let chunk = n.div_ceil(threads * 4).max(1);
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let start = cursor.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
        if start >= n {
            break;
        }
        f(start..n.min(start + chunk));
    };
    pool::run(threads - 1, &work);
}

mod pool {
    use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

    /// A job as the helpers see it: a type-erased `&(dyn Fn() + Sync)` with its lifetime erased.
    #[derive(Clone, Copy)]
    struct Job(*const (dyn Fn() + Sync + 'static));
    // SAFETY: the pointee is `Sync`, and `run` keeps it alive while any helper may call it.
    unsafe impl Send for Job {}

    struct State {
        job: Option<Job>,
        /// Incremented for every job, so a helper joins each job at most once.
        gen: u64,
        /// Helpers allowed to join the current job.
        wanted: usize,
        /// Helpers inside the current job.
        active: usize,
        /// The first panic of a helper in the current job, re-raised on the caller's thread.
        panic: Option<Box<dyn std::any::Any + Send>>,
    }

    struct Pool {
        state: Mutex<State>,
        /// Signals helpers that a job is open.
        start: Condvar,
        /// Signals the caller that the last active helper left.
        done: Condvar,
        helpers: usize,
    }

    fn pool() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let helpers = candle_core::utils::get_num_threads().saturating_sub(1);
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                state: Mutex::new(State {
                    job: None,
                    gen: 0,
                    wanted: 0,
                    active: 0,
                    panic: None,
                }),
                start: Condvar::new(),
                done: Condvar::new(),
                helpers,
            }));
            for i in 0..helpers {
                // A failed spawn only means fewer helpers: the caller does the work.
                let _ = std::thread::Builder::new()
                    .name(format!("easel-conv-{i}"))
                    .spawn(move || helper(pool));
            }
            pool
        })
    }

    /// Pool threads besides the caller.
    #[cfg(test)]
    pub(super) fn helpers() -> usize {
        pool().helpers
    }

    impl Pool {
        /// The state; poisoning is ignored (no code panics while holding the lock, and the
        /// counters stay consistent either way).
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    fn helper(pool: &'static Pool) {
        let mut seen = 0u64;
        loop {
            let job = {
                let mut st = pool.lock();
                loop {
                    if st.gen != seen {
                        seen = st.gen;
                        if let Some(job) = st.job {
                            if st.wanted > 0 {
                                st.wanted -= 1;
                                st.active += 1;
                                break job;
                            }
                        }
                    }
                    st = pool.start.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            };
            // SAFETY: `active` was incremented while the job was open, so `run` does not return
            // (and the closure stays alive) until this helper decrements it below.
            let f = unsafe { &*job.0 };
            // A panic inside `f` must still release the caller, and must reach it: the items
            // the panicking chunk skipped are unwritten, so the caller re-raises it rather than
            // return stale buffers as a result.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let mut st = pool.lock();
            if let Err(payload) = outcome {
                st.panic.get_or_insert(payload);
            }
            st.active -= 1;
            if st.active == 0 {
                pool.done.notify_all();
            }
        }
    }

    /// Runs `work` on the calling thread and on up to `helpers` pool threads that start while it
    /// is still running; returns once every thread that started it has finished. A panic in a
    /// helper's share is re-raised here, on the calling thread, once all have finished.
    pub(super) fn run(helpers: usize, work: &(dyn Fn() + Sync)) {
        let pool = pool();
        let helpers = helpers.min(pool.helpers);
        // SAFETY: only the lifetime is erased; the job is withdrawn below, and `run` waits for
        // every helper that took it, before `work` goes out of scope.
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
                work,
            )
        });
        let opened = helpers > 0 && {
            let mut st = pool.lock();
            // Another thread's job still running (nested or concurrent calls): work alone.
            let free = st.job.is_none();
            if free {
                st.job = Some(job);
                st.gen = st.gen.wrapping_add(1);
                st.wanted = helpers;
                // Left over when the caller's own share panicked in an earlier job.
                st.panic = None;
                pool.start.notify_all();
            }
            free
        };
        // Withdraws the job and waits for the helpers inside it — also if `work` panics — and
        // collects a helper's panic. `self.1`: the job is still open (so this runs once).
        struct Close<'a>(&'a Pool, bool);
        impl Close<'_> {
            fn finish(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
                if !std::mem::take(&mut self.1) {
                    return None;
                }
                let mut st = self.0.lock();
                // No new helper joins; the job stays in place until its helpers are out and
                // their panic is taken, so that a concurrent `run` works alone instead of
                // opening a job that would reset (or mix into) this one's panic and count.
                st.wanted = 0;
                while st.active > 0 {
                    st = self.0.done.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                st.job = None;
                st.panic.take()
            }
        }
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                // Only reached open while unwinding from the caller's own panic: that one
                // propagates, a helper's is dropped.
                drop(self.finish());
            }
        }
        let mut close = Close(pool, opened);
        work();
        if let Some(payload) = close.finish() {
            std::panic::resume_unwind(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn a_helpers_panic_reaches_the_caller() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        if pool::helpers() == 0 {
            // One thread: nothing runs off the calling thread, so nothing can be lost.
            return;
        }
        let helper_entered = AtomicBool::new(false);
        let caller = std::thread::current().id();
        let result = std::panic::catch_unwind(|| {
            pool::run(1, &|| {
                if std::thread::current().id() == caller {
                    // Give a helper the time to join, so that the panic is a helper's.
                    let start = Instant::now();
                    while !helper_entered.load(Ordering::SeqCst)
                        && start.elapsed() < Duration::from_secs(5)
                    {
                        std::thread::yield_now();
                    }
                } else {
                    helper_entered.store(true, Ordering::SeqCst);
                    panic!("injected helper panic");
                }
            })
        });
        assert!(helper_entered.load(Ordering::SeqCst), "no helper joined");
        let payload = result.expect_err("a helper's panic must not be swallowed");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"injected helper panic")
        );
        // The pool still works afterwards.
        let sum = std::sync::atomic::AtomicUsize::new(0);
        par_for(100, |r| {
            sum.fetch_add(r.len(), Ordering::SeqCst);
        });
        assert_eq!(sum.load(Ordering::SeqCst), 100);
    }

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
        ep.apply_slice(&mut z);
        assert_eq!(z, y);
        Ok(())
    }

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
}
