//! Positional encodings of the StyTr² content tokens ([`crate::stytr`]).
//!
//! - [`Cape`]: StyTr²'s content-aware positional encoding (Deng et al., CVPR 2022,
//!   <https://arxiv.org/abs/2105.14576>, `models/transformer.py` of diyiiyiii/StyTR-2):
//!   `interpolate(new_ps(AdaptiveAvgPool2d(18)(content)), bilinear)` — the content embedding
//!   averaged to a fixed 18×18 grid, a 1×1 conv, and bilinear interpolation (align_corners=False)
//!   back to the token map. Quirk of the published code: it interpolates to `style.shape[-2:]`,
//!   which only runs when style and content have the same size (its test.py crops both to
//!   512×512); easel interpolates to the content's token map, the same thing wherever the
//!   published code runs, and defined for any style size.
//! - [`Pyramidal`]: a pyramidal encoding after PyramidStyler's PPE (Durairaju & Saruladha,
//!   "PyramidStyler: Transformer-Based Neural Style Transfer with Pyramidal Positional Encoding
//!   and Reinforcement Learning", <https://arxiv.org/abs/2510.01715>), see the type's doc for the
//!   choices the paper leaves open.
//!
//! Both work in token layout (`[B, h, w, d]`): average pooling and bilinear interpolation are
//! separable linear maps, applied as two small matrix products ([`resample`]) built exactly as
//! PyTorch's `adaptive_avg_pool2d` and `interpolate(mode="bilinear", align_corners=False)` index
//! their inputs, so the whole encoding runs on candle's matmul (and is differentiable).

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// Kernel sizes of the pyramidal encoding's convs at every scale.
pub const PYRAMID_KERNELS: [usize; 3] = [1, 3, 5];

/// The `[n_out, n_in]` matrix of `adaptive_avg_pool` along one axis: output `i` averages inputs
/// `⌊i·n_in/n_out⌋ .. ⌈(i+1)·n_in/n_out⌉` (PyTorch's windows; they overlap when `n_out > n_in`).
pub fn adaptive_avg_matrix(n_in: usize, n_out: usize) -> Result<Vec<f32>> {
    if n_in == 0 || n_out == 0 {
        bail!("adaptive average pooling from {n_in} to {n_out} positions")
    }
    let mut m = vec![0f32; n_out * n_in];
    for (i, row) in m.chunks_exact_mut(n_in).enumerate() {
        let start = i * n_in / n_out;
        let end = ((i + 1) * n_in).div_ceil(n_out);
        let v = 1.0 / (end - start) as f32;
        row[start..end].fill(v);
    }
    Ok(m)
}

/// The `[n_out, n_in]` matrix of bilinear interpolation (`align_corners=False`) along one axis,
/// as PyTorch computes it in f32: source `(i + 0.5)·n_in/n_out − 0.5` clamped at 0, weights
/// `1 − λ` and `λ` on its floor and the next position (the last position repeats).
pub fn bilinear_matrix(n_in: usize, n_out: usize) -> Result<Vec<f32>> {
    if n_in == 0 || n_out == 0 {
        bail!("bilinear interpolation from {n_in} to {n_out} positions")
    }
    let scale = n_in as f32 / n_out as f32;
    let mut m = vec![0f32; n_out * n_in];
    for (i, row) in m.chunks_exact_mut(n_in).enumerate() {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let l1 = src - i0 as f32;
        row[i0] += 1.0 - l1;
        row[i1] += l1;
    }
    Ok(m)
}

/// Applies the separable map `rows ⊗ cols` to a token grid `[B, h, w, d]`: `rows` is
/// `[oh, h]`, `cols` `[ow, w]` (row-major f32, see [`adaptive_avg_matrix`] /
/// [`bilinear_matrix`]); returns `[B, oh, ow, d]`.
pub fn resample(x: &Tensor, rows: (&[f32], usize), cols: (&[f32], usize)) -> Result<Tensor> {
    let (b, h, w, d) = x.dims4()?;
    let ((rm, oh), (cm, ow)) = (rows, cols);
    if rm.len() != oh * h || cm.len() != ow * w {
        bail!(
            "resample: maps of {} and {} values for a {h}x{w} grid",
            rm.len(),
            cm.len()
        )
    }
    let dev = x.device();
    let dtype = x.dtype();
    let rm = Tensor::from_slice(rm, (oh, h), dev)?.to_dtype(dtype)?;
    let cm = Tensor::from_slice(cm, (ow, w), dev)?.to_dtype(dtype)?;
    // Rows: [oh, h] · [B, h, w·d]; columns: [ow, w] · [B·oh, w, d].
    let y = rm.broadcast_matmul(&x.reshape((b, h, w * d))?)?;
    let y = cm.broadcast_matmul(&y.reshape((b * oh, w, d))?)?;
    y.reshape((b, oh, ow, d))
}

/// `x · W^T + b` over the last dim of `x` (`[…, d_in]`); `w` is `[d_out, d_in]`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (d_out, d_in) = w.dims2()?;
    let Some((&last, lead)) = dims.split_last() else {
        bail!("linear: a scalar input")
    };
    if last != d_in {
        bail!("linear: input {dims:?} for a [{d_out}, {d_in}] weight")
    }
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = lead.to_vec();
    out.push(d_out);
    y.reshape(out)
}

/// StyTr²'s content-aware positional encoding (`new_ps` of the transformer state dict).
#[derive(Debug, Clone)]
pub struct Cape {
    /// `new_ps.weight` as `[d, d]`.
    weight: Tensor,
    bias: Tensor,
    grid: usize,
}

impl Cape {
    /// `vb` holds `new_ps.weight` (`[d, d, 1, 1]`) and `new_ps.bias`; `grid` is the pooled size
    /// (18 in StyTr²).
    pub fn new(vb: VarBuilder, d: usize, grid: usize) -> Result<Self> {
        if grid == 0 {
            bail!("CAPE grid must be positive")
        }
        let vb = vb.pp("new_ps");
        Ok(Self {
            weight: vb.get((d, d, 1, 1), "weight")?.reshape((d, d))?,
            bias: vb.get(d, "bias")?,
            grid,
        })
    }

    /// The encoding of content tokens `[B, h, w, d]`, same shape.
    pub fn forward(&self, content: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = content.dims4()?;
        let g = self.grid;
        let pooled = resample(
            content,
            (&adaptive_avg_matrix(h, g)?, g),
            (&adaptive_avg_matrix(w, g)?, g),
        )?;
        let pos = linear(&pooled, &self.weight, Some(&self.bias))?;
        resample(
            &pos,
            (&bilinear_matrix(g, h)?, h),
            (&bilinear_matrix(g, w)?, w),
        )
    }
}

/// easel's pyramidal positional encoding, after PyramidStyler's PPE (multi-scale windows encoded
/// by 1×1/3×3/5×5 convs and fused). The paper extracts image windows of 64, 128 and 256 pixels
/// around each patch; it leaves open where the windows are taken, how they are pooled and how
/// the scales are fused. easel's choices, mirrored in `tools/ref/stytr_ref.py` (`PyramidalPE`):
///
/// - windows are taken on the patch embedding (like CAPE), `windows` tokens wide (`[8, 16, 32]`
///   tokens = the paper's 64/128/256 pixels): `adaptive_avg_pool2d` to a
///   `⌈h/win⌉ × ⌈w/win⌉` grid, so any size and aspect ratio works and every token's window
///   covers about `win × win` tokens;
/// - at each scale, three convs (kernels [`PYRAMID_KERNELS`], zero padding `k/2`, `branch`
///   output channels each) with a ReLU, concatenated;
/// - every scale is interpolated bilinearly (align_corners=False) back to the token map, the
///   scales are concatenated and fused by a 1×1 conv to `d` channels.
///
/// State-dict keys (under the transformer's): `ppe.branches.{scale}.{kernel}.weight|bias`,
/// `ppe.fuse.weight|bias`. Since the fusion is linear and the interpolation weights sum to 1,
/// easel fuses each scale at its pooled grid and interpolates the `d`-channel result, which is
/// the same map with far fewer products.
#[derive(Debug, Clone)]
pub struct Pyramidal {
    windows: Vec<usize>,
    /// Per scale: the convs of [`PYRAMID_KERNELS`].
    branches: Vec<Vec<Conv2d>>,
    /// Per scale: the columns of `ppe.fuse.weight` for its channels, `[d, 3·branch]`.
    fuse: Vec<Tensor>,
    fuse_bias: Tensor,
}

impl Pyramidal {
    /// `vb` holds the `ppe.*` weights.
    pub fn new(vb: VarBuilder, d: usize, windows: &[usize], branch: usize) -> Result<Self> {
        if windows.is_empty() || windows.contains(&0) || branch == 0 {
            bail!("pyramidal encoding needs positive windows and branch channels, got windows {windows:?}, branch {branch}")
        }
        let vb = vb.pp("ppe");
        let per_scale = PYRAMID_KERNELS.len() * branch;
        let mut branches = Vec::with_capacity(windows.len());
        for s in 0..windows.len() {
            let vbs = vb.pp("branches").pp(s);
            let convs = PYRAMID_KERNELS
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let cfg = Conv2dConfig {
                        padding: k / 2,
                        ..Default::default()
                    };
                    candle_nn::conv2d(d, branch, k, cfg, vbs.pp(i))
                })
                .collect::<Result<Vec<_>>>()?;
            branches.push(convs);
        }
        let fuse_w = vb
            .pp("fuse")
            .get((d, windows.len() * per_scale, 1, 1), "weight")?
            .reshape((d, windows.len() * per_scale))?;
        let fuse = (0..windows.len())
            .map(|s| fuse_w.narrow(1, s * per_scale, per_scale))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            windows: windows.to_vec(),
            branches,
            fuse,
            fuse_bias: vb.pp("fuse").get(d, "bias")?,
        })
    }

    /// The encoding of content tokens `[B, h, w, d]`, same shape.
    pub fn forward(&self, content: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = content.dims4()?;
        let mut sum: Option<Tensor> = None;
        for ((&win, convs), fuse) in self.windows.iter().zip(&self.branches).zip(&self.fuse) {
            let (gh, gw) = (h.div_ceil(win), w.div_ceil(win));
            let pooled = resample(
                content,
                (&adaptive_avg_matrix(h, gh)?, gh),
                (&adaptive_avg_matrix(w, gw)?, gw),
            )?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
            let ys = convs
                .iter()
                .map(|c| c.forward(&pooled)?.relu())
                .collect::<Result<Vec<_>>>()?;
            let y = Tensor::cat(&ys, 1)?.permute((0, 2, 3, 1))?.contiguous()?;
            let y = linear(&y, fuse, None)?;
            let y = resample(
                &y,
                (&bilinear_matrix(gh, h)?, h),
                (&bilinear_matrix(gw, w)?, w),
            )?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
        }
        match sum {
            Some(s) => s.broadcast_add(&self.fuse_bias),
            None => bail!("pyramidal encoding without scales"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_windows_follow_pytorch() -> Result<()> {
        // 5 → 3: windows [0, 2), [1, 4), [3, 5).
        let m = adaptive_avg_matrix(5, 3)?;
        let h = 0.5;
        let t = 1.0 / 3.0;
        assert_eq!(m, [h, h, 0., 0., 0., 0., t, t, t, 0., 0., 0., 0., h, h]);
        // 2 → 3 (upsampling windows overlap): [0, 1), [0, 2), [1, 2).
        assert_eq!(adaptive_avg_matrix(2, 3)?, [1., 0., h, h, 0., 1.]);
        assert!(adaptive_avg_matrix(0, 3).is_err());
        Ok(())
    }

    #[test]
    fn bilinear_rows_sum_to_one_and_follow_pytorch() -> Result<()> {
        // 2 → 4: sources -0.25→0, 0.25, 0.75, 1.25 (clamped to the last input).
        let m = bilinear_matrix(2, 4)?;
        assert_eq!(m, [1., 0., 0.75, 0.25, 0.25, 0.75, 0., 1.]);
        // 18 → 7 (downsampling samples, no antialiasing): every row sums to 1.
        let m = bilinear_matrix(18, 7)?;
        for row in m.chunks_exact(18) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        Ok(())
    }
}
