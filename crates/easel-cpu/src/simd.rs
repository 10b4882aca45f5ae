//! The instruction sets the kernels run on and the one vector abstraction they are written in.
//!
//! Every kernel of this crate is generic over [`Simd`] and compiled three times: for AVX-512F,
//! for AVX2 + FMA (x86-64, chosen at run time by [`Isa::detect`]) and portably (8-lane arrays the
//! compiler vectorises where it can). The three implementations compute the same IEEE operations
//! (`fma` is a correctly rounded fused multiply-add everywhere, `f32::mul_add` on the portable
//! path), so a kernel that uses only the lane-wise methods gives bit-identical results on every
//! path; only [`Simd::reduce_add`] / [`Simd::reduce_max`] depend on the lane count.

/// An instruction set a kernel can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA: 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust on 8-lane arrays, any CPU (slow without hardware FMA, but exact).
    Portable,
}

impl Isa {
    /// The widest instruction set the running CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx512.is_supported() {
                return Isa::Avx512;
            }
            if Isa::Avx2.is_supported() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether the running CPU can execute this instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Portable => true,
        }
    }

    /// Every instruction set the running CPU supports, narrowest first (for tests that compare
    /// the paths).
    pub fn supported() -> Vec<Isa> {
        let all = [
            Isa::Portable,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512,
        ];
        all.into_iter().filter(|i| i.is_supported()).collect()
    }
}

/// `(y + 1.5·2²³) − 1.5·2²³` rounds `|y| < 2²²` to the nearest integer, ties to even (the default
/// IEEE rounding of the addition), like `round_ties_even` but without a libm call.
pub const ROUND_MAGIC: f32 = 12_582_912.0;

/// One SIMD register of `L` f32 lanes.
///
/// # Safety
/// Every method is `unsafe` with one contract: it runs on a CPU with the implementation's
/// instruction set (inside a `#[target_feature]` function reached after [`Isa::is_supported`]),
/// and every pointer is valid for `L` floats (`n` for the `_n` variants).
pub(crate) trait Simd {
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
    /// `a > b ? a : b` per lane (so `b` when equal or NaN, as `maxps` does).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `a < b ? a : b` per lane.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    unsafe fn round(a: Self::V) -> Self::V;
    /// `y · 2ⁿ` for integral `n` in `[-125, 127]` and `y` in `[0.5, 2)`.
    unsafe fn ldexp(y: Self::V, n: Self::V) -> Self::V;
    unsafe fn reduce_max(a: Self::V) -> f32;
    unsafe fn reduce_add(a: Self::V) -> f32;

    /// `eˣ` for `x ≤ 0` (inputs below −86 give e⁻⁸⁶ ≈ 4e−38, not 0); Cephes `expf`, relative
    /// error ~1e-7.
    #[inline(always)]
    unsafe fn exp(x: Self::V) -> Self::V {
        // SAFETY: lane-wise methods under this method's own contract.
        unsafe {
            let x = Self::max(x, Self::splat(EXP_MIN));
            let n = Self::round(Self::mul(x, Self::splat(std::f32::consts::LOG2_E)));
            let r = Self::fma(n, Self::splat(-LN2_HI), x);
            let r = Self::fma(n, Self::splat(-LN2_LO), r);
            let mut p = Self::splat(EXP_POLY[0]);
            for &c in &EXP_POLY[1..] {
                p = Self::fma(p, r, Self::splat(c));
            }
            // e^r ≈ 1 + r + r² p(r)
            let y = Self::fma(p, Self::mul(r, r), Self::add(r, Self::splat(1.0)));
            Self::ldexp(y, n)
        }
    }
}

/// Lower clamp of the `exp` argument (keeps 2ⁿ a normal number).
const EXP_MIN: f32 = -86.0;
/// ln 2 split so that `n · LN2_HI` is exact for the `n` that occur (Cephes `expf`).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// Portable "vector" of 8 lanes (the compiler vectorises the lane loops where it can).
pub(crate) struct Portable;

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
            // SAFETY: the caller guarantees `n` readable floats at `p`, and i < n.
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
            // SAFETY: the caller guarantees `n` writable floats at `p`, and i < n.
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
    #[inline(always)]
    unsafe fn round(a: Self::V) -> Self::V {
        std::array::from_fn(|i| (a[i] + ROUND_MAGIC) - ROUND_MAGIC)
    }
    #[inline(always)]
    unsafe fn ldexp(y: Self::V, n: Self::V) -> Self::V {
        std::array::from_fn(|i| {
            f32::from_bits((y[i].to_bits() as i32).wrapping_add((n[i] as i32) << 23) as u32)
        })
    }
    #[inline(always)]
    unsafe fn reduce_max(a: Self::V) -> f32 {
        a.iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }
    #[inline(always)]
    unsafe fn reduce_add(a: Self::V) -> f32 {
        a.iter().sum()
    }
}

// The AVX-512 intrinsics are stable since Rust 1.89 (the workspace's `rust-version`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    pub(crate) struct Avx512;
    pub(crate) struct Avx2;

    /// Lane mask `i < n` of 16 lanes.
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    impl Simd for Avx512 {
        const L: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: AVX-512F is enabled and `p` has 16 readable floats (the trait's contract).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> __m512 {
            // SAFETY: AVX-512F is enabled; the masked load touches only the `n` readable floats.
            unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: AVX-512F is enabled and `p` has 16 writable floats (the trait's contract).
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: __m512, n: usize) {
            // SAFETY: AVX-512F is enabled; the masked store touches only the `n` writable floats.
            unsafe { _mm512_mask_storeu_ps(p, mask16(n), v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        unsafe fn ldexp(y: __m512, n: __m512) -> __m512 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_scalef_ps(y, n) }
        }
        #[inline(always)]
        unsafe fn reduce_max(a: __m512) -> f32 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_reduce_max_ps(a) }
        }
        #[inline(always)]
        unsafe fn reduce_add(a: __m512) -> f32 {
            // SAFETY: AVX-512F is enabled (the trait's contract).
            unsafe { _mm512_reduce_add_ps(a) }
        }
    }

    /// Lane mask `i < n` of 8 lanes (all bits of the lanes to keep set).
    ///
    /// # Safety
    /// AVX2 must be enabled.
    #[inline(always)]
    unsafe fn mask8(n: usize) -> __m256i {
        const IDX: [i32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        // SAFETY: AVX2 is enabled (this function's contract); `IDX` holds 8 i32.
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
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: AVX2 is enabled and `p` has 8 readable floats (the trait's contract).
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> __m256 {
            // SAFETY: AVX2 is enabled; the masked load touches only the `n` readable floats.
            unsafe { _mm256_maskload_ps(p, mask8(n)) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: AVX2 is enabled and `p` has 8 writable floats (the trait's contract).
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
            // SAFETY: AVX2 is enabled; the masked store touches only the `n` writable floats.
            unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: AVX2 and FMA are enabled (the trait's contract).
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        unsafe fn ldexp(y: __m256, n: __m256) -> __m256 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe {
                let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
                _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e))
            }
        }
        #[inline(always)]
        unsafe fn reduce_max(a: __m256) -> f32 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe {
                let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
                _mm_cvtss_f32(m)
            }
        }
        #[inline(always)]
        unsafe fn reduce_add(a: __m256) -> f32 {
            // SAFETY: AVX2 is enabled (the trait's contract).
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

/// Defines `fn $name(args) -> ret` whose body is compiled three times — for AVX-512F, for
/// AVX2 + FMA and portably — and dispatched on the running CPU, so the compiler can vectorise its
/// loops with the widest registers. For element-wise loops of IEEE operations, whose values do
/// not depend on the vector width.
#[macro_export]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector `exp` against `f32::exp` over the range the softmax feeds it.
    #[test]
    fn vector_exp_is_accurate() {
        let xs: Vec<f32> = (0..8000).map(|i| -(i as f32) * 0.0125).collect();
        for chunk in xs.chunks_exact(8) {
            // SAFETY: the portable vector needs no CPU feature; `chunk` has 8 floats.
            let e = unsafe { Portable::exp(Portable::load(chunk.as_ptr())) };
            for (&x, &y) in chunk.iter().zip(&e) {
                let want = x.exp();
                assert!(
                    (y - want).abs() <= 2e-7 * want + 1e-37,
                    "exp({x}) = {y}, want {want}"
                );
            }
        }
    }

    /// The detected instruction set is among the supported ones, which always include the
    /// portable path.
    #[test]
    fn detection_is_consistent() {
        let all = Isa::supported();
        assert_eq!(all[0], Isa::Portable);
        assert!(all.contains(&Isa::detect()));
        assert_eq!(*all.last().unwrap_or(&Isa::Portable), Isa::detect());
    }
}
