//! Element-wise loops and reductions over f32 slices, vectorised by [`crate::simd_fn`].

crate::simd_fn! {
    /// `dst[i] += src[i]`.
    pub fn add_assign(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

crate::simd_fn! {
    /// The gradient through `y = clamp(x, lo, hi)` from `y`: zeroes `g[i]` where `y[i]` is
    /// clamped (`y ≤ lo` or `y ≥ hi`, PyTorch's rule for ReLU and ReLU6), as a select so that
    /// it vectorises.
    pub fn clamp_backward(g: &mut [f32], y: &[f32], lo: f32, hi: f32) {
        for (gv, &yv) in g.iter_mut().zip(y) {
            *gv = if yv > lo && yv < hi { *gv } else { 0.0 };
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

    /// The clamp's gradient passes strictly inside (lo, hi) only, NaN activations included
    /// among the blocked ones, over a vector body and tail.
    #[test]
    fn clamp_backward_passes_the_open_interval() {
        let y: Vec<f32> = (0..19)
            .map(|i| i as f32 * 0.5 - 1.0)
            .chain([f32::NAN])
            .collect();
        let mut g = vec![2.0f32; y.len()];
        clamp_backward(&mut g, &y, 0.0, 6.0);
        for (&gv, &yv) in g.iter().zip(&y) {
            let inside = yv > 0.0 && yv < 6.0;
            assert_eq!(gv, if inside { 2.0 } else { 0.0 }, "y = {yv}");
        }
        assert_eq!(g.iter().filter(|&&v| v == 2.0).count(), 11);
    }
}
