//! Element-wise loops and reductions over f32 slices, vectorised by [`crate::simd_fn`].

crate::simd_fn! {
    /// `dst[i] += src[i]`.
    pub fn add_assign(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// Sum of `f(x)` over `xs` in f64 (8 partial sums, so it vectorises).
#[inline(always)]
pub fn sum64(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `add_assign` adds element-wise (odd lengths: vector tails), and `sum64` sums in f64 what
    /// an f32 sum would round away.
    #[test]
    fn add_and_sum() {
        let mut a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..37).map(|i| 0.5 * i as f32).collect();
        add_assign(&mut a, &b);
        assert!(a.iter().enumerate().all(|(i, &v)| v == 1.5 * i as f32));
        // 2²⁴ + 1 + 1: an f32 accumulator stays at 2²⁴.
        let mut xs = vec![0.0f32; 20];
        xs[0] = 16_777_216.0;
        xs[9] = 1.0;
        xs[19] = 1.0;
        assert_eq!(sum64(&xs, |x| x), 16_777_218.0);
        assert_eq!(sum64(&[1.0, 2.0, 3.0], |x| x * x), 14.0);
    }
}
