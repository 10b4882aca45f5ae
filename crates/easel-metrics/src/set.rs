//! Distances between two *sets* of image features: KID and FID.
//!
//! - [`kid`]: Kernel Inception Distance (Bińkowski et al. 2018), the unbiased estimate of
//!   MMD² with the polynomial kernel `k(x, y) = (x·y / d + 1)³` as in torch-fidelity and
//!   clean-fid:
//!   `Σ_{i≠j} k(aᵢ, aⱼ) / (m(m−1)) + Σ_{i≠j} k(bᵢ, bⱼ) / (n(n−1)) − 2 Σ k(aᵢ, bⱼ) / (mn)`.
//!   When both sets have at least [`KID_SUBSET_SIZE`] (1000) rows, torch-fidelity's scheme:
//!   the mean over [`KID_SUBSETS`] (100) subsets of 1000 rows of each set drawn without
//!   replacement. The draws come from a fixed SplitMix64 seed (2020, torch-fidelity's seed)
//!   instead of NumPy's Mersenne Twister, so the subsets — and the value, within the
//!   subset-sampling noise — differ from torch-fidelity's. Smaller sets are one subset of all
//!   their rows (the formula above with `m ≠ n` allowed). Each set needs 2 rows.
//! - [`fid`]: Fréchet distance of the Gaussians fitted to the sets (mean, unbiased covariance
//!   as `numpy.cov`): `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)`, as pytorch-fid's
//!   `calculate_frechet_distance` with `scipy.linalg.sqrtm`. Here `tr √(Σ₁Σ₂)` is
//!   `Σ √λᵢ` over the eigenvalues of the symmetric `√Σ₁ Σ₂ √Σ₁` (same spectrum as `Σ₁Σ₂`),
//!   from a symmetric eigendecomposition in f64 (Householder tridiagonalisation and implicit
//!   QL, as EISPACK `tred2`/`tql2`); eigenvalues below 0 from round-off count as 0. FID from
//!   fewer than [`FID_MIN_IMAGES`] images is refused: with fewer samples than the 2048
//!   Inception dimensions the covariance is singular and the value mostly bias.

use easel_core::rng::SplitMix64;

use crate::error::{MetricError, Result};

/// The fewest rows per set [`fid`] accepts.
pub const FID_MIN_IMAGES: usize = 2048;
/// Rows per KID subset (torch-fidelity's `kid_subset_size`).
pub const KID_SUBSET_SIZE: usize = 1000;
/// Number of KID subsets (torch-fidelity's `kid_subsets`).
pub const KID_SUBSETS: usize = 100;
const KID_SEED: u64 = 2020;

/// `n` feature vectors of the same width, in f64, all finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    data: Vec<f64>,
    dim: usize,
}

fn feature_error(what: &'static str, problem: String) -> MetricError {
    MetricError::Features { what, problem }
}

impl Features {
    /// Features from rows; errors if there are none, the widths differ or a value is not
    /// finite (the message names the row and column).
    pub fn new(rows: &[Vec<f64>]) -> Result<Self> {
        let dim = rows.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(feature_error(
                "features",
                "no rows, or rows of width 0".into(),
            ));
        }
        let mut data = Vec::with_capacity(rows.len() * dim);
        for (i, r) in rows.iter().enumerate() {
            if r.len() != dim {
                return Err(feature_error(
                    "features",
                    format!("row {i} has {} values, row 0 has {dim}", r.len()),
                ));
            }
            data.extend_from_slice(r);
        }
        Self::from_flat(data, dim)
    }

    /// Features from `n · dim` row-major values.
    pub fn from_flat(data: Vec<f64>, dim: usize) -> Result<Self> {
        if dim == 0 || data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(feature_error(
                "features",
                format!("{} values do not make rows of width {dim}", data.len()),
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(feature_error(
                "features",
                format!(
                    "value {} at row {}, column {} is not finite",
                    data[i],
                    i / dim,
                    i % dim
                ),
            ));
        }
        Ok(Self { data, dim })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i` (panics if `i >= rows()`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

fn check_pair(what: &'static str, a: &Features, b: &Features, min_rows: usize) -> Result<()> {
    if a.dim != b.dim {
        return Err(feature_error(
            what,
            format!("features of width {} and {}", a.dim, b.dim),
        ));
    }
    for (name, f) in [("first", a), ("second", b)] {
        if f.rows() < min_rows {
            return Err(feature_error(
                what,
                format!(
                    "the {name} set has {} rows, at least {min_rows} are needed",
                    f.rows()
                ),
            ));
        }
    }
    Ok(())
}

/// The kernel matrix `k(xᵢ, yⱼ)`, row-major `x.rows() × y.rows()`.
fn kernel_matrix(x: &Features, y: &Features) -> Vec<f64> {
    let d = x.dim as f64;
    let mut k = Vec::with_capacity(x.rows() * y.rows());
    for i in 0..x.rows() {
        let xi = x.row(i);
        for j in 0..y.rows() {
            let dot: f64 = xi.iter().zip(y.row(j)).map(|(p, q)| p * q).sum();
            k.push((dot / d + 1.0).powi(3));
        }
    }
    k
}

/// Unbiased MMD² of the rows `ia` of `a` and `ib` of `b` from the kernel matrices.
fn mmd2(
    kaa: &[f64],
    kbb: &[f64],
    kab: &[f64],
    na: usize,
    nb: usize,
    ia: &[usize],
    ib: &[usize],
) -> f64 {
    let off_diag = |k: &[f64], n: usize, idx: &[usize]| {
        let mut s = 0.0;
        for &i in idx {
            for &j in idx {
                if i != j {
                    s += k[i * n + j];
                }
            }
        }
        s
    };
    let (m, n) = (ia.len() as f64, ib.len() as f64);
    let mut cross = 0.0;
    for &i in ia {
        for &j in ib {
            cross += kab[i * nb + j];
        }
    }
    off_diag(kaa, na, ia) / (m * (m - 1.0)) + off_diag(kbb, nb, ib) / (n * (n - 1.0))
        - 2.0 * cross / (m * n)
}

/// KID between the sets `a` and `b` (see the module doc). Needs 2 rows in each and equal
/// widths. The kernel matrices of all rows are kept in memory (`8 (m² + n² + mn)` bytes).
pub fn kid(a: &Features, b: &Features) -> Result<f64> {
    check_pair("KID", a, b, 2)?;
    let (na, nb) = (a.rows(), b.rows());
    let kaa = kernel_matrix(a, a);
    let kbb = kernel_matrix(b, b);
    let kab = kernel_matrix(a, b);
    if na < KID_SUBSET_SIZE || nb < KID_SUBSET_SIZE {
        let (ia, ib): (Vec<usize>, Vec<usize>) = ((0..na).collect(), (0..nb).collect());
        return Ok(mmd2(&kaa, &kbb, &kab, na, nb, &ia, &ib));
    }
    let mut rng = SplitMix64::new(KID_SEED);
    let mut total = 0.0;
    for _ in 0..KID_SUBSETS {
        let ia = rng.choose(na, KID_SUBSET_SIZE);
        let ib = rng.choose(nb, KID_SUBSET_SIZE);
        total += mmd2(&kaa, &kbb, &kab, na, nb, &ia, &ib);
    }
    Ok(total / KID_SUBSETS as f64)
}

/// The mean (`d`) and unbiased covariance (`d × d` row-major, divided by `n − 1`, as
/// `numpy.cov(rowvar=False)`) of the rows. Needs 2 rows.
pub fn mean_and_covariance(f: &Features) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, d) = (f.rows(), f.dim);
    if n < 2 {
        return Err(feature_error(
            "covariance",
            format!("{n} row; at least 2 are needed"),
        ));
    }
    let mut mean = vec![0.0; d];
    for i in 0..n {
        for (m, v) in mean.iter_mut().zip(f.row(i)) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0; d * d];
    let mut centred = vec![0.0; d];
    for i in 0..n {
        for ((c, v), m) in centred.iter_mut().zip(f.row(i)).zip(&mean) {
            *c = v - m;
        }
        for (p, &cp) in centred.iter().enumerate() {
            let row = &mut cov[p * d..(p + 1) * d];
            for (q, &cq) in centred.iter().enumerate().skip(p) {
                row[q] += cp * cq;
            }
        }
    }
    for p in 0..d {
        for q in p..d {
            let v = cov[p * d + q] / (n - 1) as f64;
            cov[p * d + q] = v;
            cov[q * d + p] = v;
        }
    }
    Ok((mean, cov))
}

/// FID of two feature sets: [`frechet_distance`] of their [`mean_and_covariance`]. Refuses
/// sets of fewer than [`FID_MIN_IMAGES`] rows.
pub fn fid(a: &Features, b: &Features) -> Result<f64> {
    check_pair("FID", a, b, FID_MIN_IMAGES)?;
    let (m1, s1) = mean_and_covariance(a)?;
    let (m2, s2) = mean_and_covariance(b)?;
    frechet_distance(&m1, &s1, &m2, &s2)
}

fn check_gaussian(what: &'static str, mu: &[f64], sigma: &[f64], d: usize) -> Result<()> {
    if mu.len() != d || sigma.len() != d * d {
        return Err(feature_error(
            "Fréchet distance",
            format!(
                "{what}: mean of {} values and covariance of {} values, expected {d} and {}",
                mu.len(),
                sigma.len(),
                d * d
            ),
        ));
    }
    if mu.iter().chain(sigma).any(|v| !v.is_finite()) {
        return Err(feature_error(
            "Fréchet distance",
            format!("{what}: a value is not finite"),
        ));
    }
    let scale = sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for p in 0..d {
        for q in p + 1..d {
            let (x, y) = (sigma[p * d + q], sigma[q * d + p]);
            if (x - y).abs() > 1e-9 * scale {
                return Err(feature_error(
                    "Fréchet distance",
                    format!(
                        "{what}: covariance is not symmetric ([{p}][{q}] = {x}, [{q}][{p}] = {y})"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Fréchet distance of the Gaussians `(mu1, sigma1)` and `(mu2, sigma2)` (covariances `d × d`
/// row-major, symmetric); see the module doc.
pub fn frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64]) -> Result<f64> {
    let d = mu1.len();
    if d == 0 {
        return Err(feature_error("Fréchet distance", "empty mean".into()));
    }
    check_gaussian("first Gaussian", mu1, sigma1, d)?;
    check_gaussian("second Gaussian", mu2, sigma2, d)?;
    let diff: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    // √Σ₁ = Q diag(√λ) Qᵀ.
    let (vals, vecs) = symmetric_eigen(sigma1, d, true)?;
    let roots: Vec<f64> = vals.iter().map(|v| v.max(0.0).sqrt()).collect();
    let mut sqrt1 = vec![0.0; d * d];
    for (k, r) in roots.iter().enumerate() {
        let q = &vecs[k * d..(k + 1) * d];
        for i in 0..d {
            let a = r * q[i];
            for (s, &qj) in sqrt1[i * d..(i + 1) * d].iter_mut().zip(q) {
                *s += a * qj;
            }
        }
    }
    let m = matmul(&matmul(&sqrt1, sigma2, d), &sqrt1, d);
    let m = symmetrised(&m, d);
    let (eig, _) = symmetric_eigen(&m, d, false)?;
    let tr_covmean: f64 = eig.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok(diff + trace(sigma1) + trace(sigma2) - 2.0 * tr_covmean)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        let ci = &mut c[i * d..(i + 1) * d];
        for (k, &aik) in a[i * d..(i + 1) * d].iter().enumerate() {
            for (cv, bv) in ci.iter_mut().zip(&b[k * d..(k + 1) * d]) {
                *cv += aik * bv;
            }
        }
    }
    c
}

fn symmetrised(a: &[f64], d: usize) -> Vec<f64> {
    let mut s = a.to_vec();
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (a[i * d + j] + a[j * d + i]);
            s[i * d + j] = v;
            s[j * d + i] = v;
        }
    }
    s
}

/// Eigenvalues (ascending order not guaranteed) and, with `vectors`, the eigenvectors
/// (row `k` of the returned `d × d` matrix goes with eigenvalue `k`) of the symmetric `d × d`
/// matrix `a`: EISPACK's `tred2` and `tql2` (as in JAMA). The matrix is kept transposed
/// (`w[j·d + i]` is JAMA's `V[i][j]`) so that the inner loops run along rows.
pub fn symmetric_eigen(a: &[f64], d: usize, vectors: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = d;
    let mut w = a.to_vec(); // symmetric, so its transpose is itself
    let mut dd = vec![0.0; n];
    let mut e = vec![0.0; n];
    macro_rules! v {
        ($i:expr, $j:expr) => {
            w[($j) * n + ($i)]
        };
    }
    // tred2: Householder reduction to tridiagonal form.
    for j in 0..n {
        dd[j] = v!(n - 1, j);
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for x in &dd[..i] {
            scale += x.abs();
        }
        if scale == 0.0 {
            e[i] = dd[i - 1];
            for j in 0..i {
                dd[j] = v!(i - 1, j);
                v!(i, j) = 0.0;
                v!(j, i) = 0.0;
            }
        } else {
            for x in &mut dd[..i] {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = dd[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            dd[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = dd[j];
                v!(j, i) = f;
                g = e[j] + v!(j, j) * f;
                for k in j + 1..i {
                    g += v!(k, j) * dd[k];
                    e[k] += v!(k, j) * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * dd[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * dd[j];
            }
            for j in 0..i {
                f = dd[j];
                g = e[j];
                for k in j..i {
                    v!(k, j) -= f * e[k] + g * dd[k];
                }
                dd[j] = v!(i - 1, j);
                v!(i, j) = 0.0;
            }
        }
        dd[i] = h;
    }
    for i in 0..n.saturating_sub(1) {
        v!(n - 1, i) = v!(i, i);
        v!(i, i) = 1.0;
        let h = dd[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                dd[k] = v!(k, i + 1) / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v!(k, i + 1) * v!(k, j);
                }
                for k in 0..=i {
                    v!(k, j) -= g * dd[k];
                }
            }
        }
        for k in 0..=i {
            v!(k, i + 1) = 0.0;
        }
    }
    for j in 0..n {
        dd[j] = v!(n - 1, j);
        v!(n - 1, j) = 0.0;
    }
    v!(n - 1, n - 1) = 1.0;
    e[0] = 0.0;

    // tql2: implicit QL on the tridiagonal matrix.
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(dd[l].abs() + e[l].abs());
        let mut m = l;
        // e[n−1] is 0, so this stops at n−1 at the latest.
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 100 {
                    return Err(feature_error(
                        "eigendecomposition",
                        format!("no convergence for eigenvalue {l} of {n}"),
                    ));
                }
                let mut g = dd[l];
                let mut p = (dd[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                dd[l] = e[l] / (p + r);
                dd[l + 1] = e[l] * (p + r);
                let dl1 = dd[l + 1];
                let mut h = g - dd[l];
                for x in &mut dd[l + 2..n] {
                    *x -= h;
                }
                f += h;
                p = dd[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * dd[i] - s * g;
                    dd[i + 1] = h + s * (c * g + s * dd[i]);
                    if vectors {
                        // Rows i and i+1 of w are JAMA's columns i and i+1 of V.
                        let (lo, hi) = w.split_at_mut((i + 1) * n);
                        let (vi, vi1) = (&mut lo[i * n..], &mut hi[..n]);
                        for (a, b) in vi.iter_mut().zip(vi1.iter_mut()) {
                            let hb = *b;
                            *b = s * *a + c * hb;
                            *a = c * *a - s * hb;
                        }
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                dd[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        dd[l] += f;
        e[l] = 0.0;
    }
    Ok((dd, if vectors { w } else { Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, eigenvectors (1, ∓1)/√2.
        let (vals, vecs) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2, true).unwrap();
        let mut sorted = vals.clone();
        sorted.sort_by(f64::total_cmp);
        assert!(
            (sorted[0] - 1.0).abs() < 1e-14 && (sorted[1] - 3.0).abs() < 1e-14,
            "{vals:?}"
        );
        for (k, lambda) in vals.iter().enumerate() {
            let v = &vecs[2 * k..2 * k + 2];
            let av = [2.0 * v[0] + v[1], v[0] + 2.0 * v[1]];
            assert!((av[0] - lambda * v[0]).abs() < 1e-14, "{k}: {av:?} {v:?}");
            assert!((av[1] - lambda * v[1]).abs() < 1e-14, "{k}: {av:?} {v:?}");
            assert!((v[0] * v[0] + v[1] * v[1] - 1.0).abs() < 1e-14);
        }
    }

    #[test]
    fn eigen_reconstructs_a_random_symmetric_matrix() {
        let n = 7;
        let mut rng = SplitMix64::new(1);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let v = rng.unit() - 0.5;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, n, true).unwrap();
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| vals[k] * vecs[k * n + i] * vecs[k * n + j])
                    .sum();
                assert!(
                    (r - a[i * n + j]).abs() < 1e-13,
                    "[{i}][{j}] {r} vs {}",
                    a[i * n + j]
                );
            }
        }
    }

    #[test]
    fn choose_gives_distinct_indices() {
        let mut rng = SplitMix64::new(KID_SEED);
        let mut idx = rng.choose(50, 20);
        assert_eq!(idx.len(), 20);
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), 20);
        assert!(idx.iter().all(|&i| i < 50));
    }
}
