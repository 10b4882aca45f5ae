//! Training losses of the fast stylizers, on features of the frozen VGG-19 ([`crate::vgg`]).
//!
//! - AdaIN (Huang & Belongie 2017, <https://arxiv.org/abs/1703.06868>, §6; naoto0804/
//!   pytorch-AdaIN `net.py` `Net.forward`): the content loss is the MSE between the relu4_1
//!   features of the output and the AdaIN target `t` they were decoded from; the style loss sums,
//!   over relu1_1 … relu4_1, the MSE of the per-channel means plus the MSE of the per-channel
//!   standard deviations ([`calc_mean_std`]) of the output's and the style's features. Weights:
//!   content 1, style 10 (`train.py` defaults).
//! - StyTr² (Deng et al. 2022, <https://arxiv.org/abs/2105.14576>, §3.4; diyiiyiii/StyTR-2
//!   `models/StyTR.py` `StyTrans.forward`): the content loss compares mean-variance-normalised
//!   ([`mean_variance_norm`]) relu4_1 and relu5_1 features of the output and the content picture;
//!   the style loss is AdaIN's over relu1_1 … relu5_1; the identity losses ask the network to
//!   reproduce a picture stylized with itself: `λ_id1` the pixel MSE of `I_cc` against `I_c` plus
//!   `I_ss` against `I_s`, `λ_id2` the feature MSE of the same pairs at all five layers. Weights:
//!   content 7, style 10, identity 70 and 1 (`train.py`).
//!
//! Every MSE is PyTorch's `nn.MSELoss()`: the mean over all elements, batch included. Targets
//! (style and content features, the AdaIN target) carry no gradient: the losses detach them.

use crate::adain::{adaptive_instance_normalization, calc_mean_std, Decoder};
use crate::stytr::StyTr;
use crate::vgg::{Layer, VggEncoder};
use candle_core::{bail, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How much each loss term counts in the total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    /// Content loss weight.
    pub content: f64,
    /// Style loss weight.
    pub style: f64,
    /// Pixel identity loss weight (`λ_id1`; the transformer only).
    pub identity_pixels: f64,
    /// Feature identity loss weight (`λ_id2`; the transformer only).
    pub identity_features: f64,
}

impl LossWeights {
    /// pytorch-AdaIN `train.py`: content 1, style 10.
    pub fn adain() -> Self {
        Self {
            content: 1.0,
            style: 10.0,
            identity_pixels: 0.0,
            identity_features: 0.0,
        }
    }

    /// StyTR-2 `train.py`: content 7, style 10, `λ_id1` 70, `λ_id2` 1.
    pub fn stytr() -> Self {
        Self {
            content: 7.0,
            style: 10.0,
            identity_pixels: 70.0,
            identity_features: 1.0,
        }
    }

    /// Checks that every weight is finite and ≥ 0; the error names the wrong one.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("content", self.content),
            ("style", self.style),
            ("identity_pixels", self.identity_pixels),
            ("identity_features", self.identity_features),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                bail!("loss weight {name} must be finite and >= 0, got {w}")
            }
        }
        Ok(())
    }
}

/// The unweighted terms of one training loss and their weighted sum.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// Content loss (scalar).
    pub content: Tensor,
    /// Style loss (scalar).
    pub style: Tensor,
    /// Pixel identity loss (scalar; `None` for AdaIN).
    pub identity_pixels: Option<Tensor>,
    /// Feature identity loss (scalar; `None` for AdaIN).
    pub identity_features: Option<Tensor>,
    /// `Σ weight · term`: what is back-propagated.
    pub total: Tensor,
}

impl LossTerms {
    /// Weighs the terms with `w` and sums them into [`Self::total`].
    pub fn weighted(
        content: Tensor,
        style: Tensor,
        identity: Option<(Tensor, Tensor)>,
        w: &LossWeights,
    ) -> Result<Self> {
        let mut total = ((&content * w.content)? + (&style * w.style)?)?;
        let (identity_pixels, identity_features) = match identity {
            Some((pixels, features)) => {
                total = ((total + (&pixels * w.identity_pixels)?)?
                    + (&features * w.identity_features)?)?;
                (Some(pixels), Some(features))
            }
            None => (None, None),
        };
        Ok(Self {
            content,
            style,
            identity_pixels,
            identity_features,
            total,
        })
    }
}

/// `nn.MSELoss()(input, target)` with `target` detached: the mean of the squared differences
/// over all elements. The shapes must be equal.
pub fn mse(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    if input.dims() != target.dims() {
        bail!(
            "MSE of tensors of different shapes {:?} and {:?}",
            input.dims(),
            target.dims()
        )
    }
    (input - target.detach())?.sqr()?.mean_all()
}

/// The repos' `calc_style_loss`: MSE of the per-channel means plus MSE of the per-channel
/// standard deviations ([`calc_mean_std`]) of `input` against `target` (both `[N, C, ·, ·]`
/// with the same `N`, `C`; spatial sizes may differ).
pub fn mean_std_loss(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (im, is) = calc_mean_std(input)?;
    let (tm, ts) = calc_mean_std(target)?;
    mse(&im, &tm)? + mse(&is, &ts)?
}

/// The style loss: [`mean_std_loss`] summed over the layers of two feature lists (relu1_1 …
/// relu4_1 for AdaIN, … relu5_1 for StyTr², as [`VggEncoder::forward_layers`] returns them).
pub fn style_loss(output: &[Tensor], style: &[Tensor]) -> Result<Tensor> {
    if output.is_empty() || output.len() != style.len() {
        bail!(
            "the style loss needs equally many output and style layers (at least one), got {} and {}",
            output.len(),
            style.len()
        )
    }
    let mut loss = mean_std_loss(&output[0], &style[0])?;
    for (o, s) in output.iter().zip(style).skip(1) {
        loss = (loss + mean_std_loss(o, s)?)?;
    }
    Ok(loss)
}

/// StyTR-2 `function.py` `normal`: features minus their per-channel mean, divided by their
/// per-channel standard deviation ([`calc_mean_std`], eps 1e-5).
pub fn mean_variance_norm(feat: &Tensor) -> Result<Tensor> {
    let (mean, std) = calc_mean_std(feat)?;
    feat.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// The five-layer feature list of `name` (relu1_1 … relu5_1), or an error naming it.
fn five<'a>(feats: &'a [Tensor], name: &str) -> Result<&'a [Tensor; 5]> {
    match feats.try_into() {
        Ok(f) => Ok(f),
        Err(_) => bail!(
            "{name}: expected the five layers relu1_1 … relu5_1, got {}",
            feats.len()
        ),
    }
}

/// The StyTr² content loss: MSE of the mean-variance-normalised relu4_1 features of the output
/// and the content picture, plus the same at relu5_1 (five-layer lists).
pub fn normalized_content_loss(output: &[Tensor], content: &[Tensor]) -> Result<Tensor> {
    let (o, c) = (five(output, "output")?, five(content, "content")?);
    let term = |i: usize| mse(&mean_variance_norm(&o[i])?, &mean_variance_norm(&c[i])?);
    term(3)? + term(4)?
}

/// The StyTr² feature identity loss: MSE of `a`'s features against `b`'s at all five layers,
/// summed.
pub fn feature_identity_loss(a: &[Tensor], b: &[Tensor]) -> Result<Tensor> {
    let (a, b) = (five(a, "identity output")?, five(b, "identity target")?);
    let mut loss = mse(&a[0], &b[0])?;
    for (x, y) in a.iter().zip(b).skip(1) {
        loss = (loss + mse(x, y)?)?;
    }
    Ok(loss)
}

/// The AdaIN training loss of one batch (pytorch-AdaIN `Net.forward`): `t = adain(f(content),
/// f(style))` at relu4_1, `g = decoder(t)`; content = MSE(relu4_1 of `g`, `t`), style =
/// [`style_loss`] of `g` against `style` over relu1_1 … relu4_1, total weighted by `w`.
/// `content` and `style` are `[N, 3, H, W]` with the same `N`; `H`, `W` multiples of 8 (≥ 16) so
/// that `g` has the content's size. Only the decoder's variables receive gradients when the
/// encoder holds plain tensors.
pub fn adain_loss(
    encoder: &VggEncoder,
    decoder: &Decoder,
    content: &Tensor,
    style: &Tensor,
    w: &LossWeights,
) -> Result<LossTerms> {
    let (n, _, h, wd) = content.dims4()?;
    let (ns, _, _, _) = style.dims4()?;
    if n != ns {
        bail!("AdaIN loss: {n} content pictures but {ns} styles")
    }
    if !h.is_multiple_of(8) || !wd.is_multiple_of(8) || h < 16 || wd < 16 {
        bail!(
            "AdaIN loss: the pictures are {wd}x{h}; both sides must be multiples of 8, at least 16"
        )
    }
    let style_feats = encoder.forward_layers(style, Layer::Relu4_1)?;
    let content_f = encoder.forward_to(content, Layer::Relu4_1)?;
    let t = adaptive_instance_normalization(&content_f, &style_feats[3])?.detach();
    let g = decoder.forward(&t)?;
    let g_feats = encoder.forward_layers(&g, Layer::Relu4_1)?;
    let content_loss = mse(&g_feats[3], &t)?;
    let style_loss = style_loss(&g_feats, &style_feats)?;
    LossTerms::weighted(content_loss, style_loss, None, w)
}

/// The StyTr² training loss of one batch (StyTR-2 `StyTrans.forward` in training): `I_cs =
/// net(content, style)`, `I_cc = net(content, content)`, `I_ss = net(style, style)`; content =
/// [`normalized_content_loss`] of `I_cs` against `content`, style = [`style_loss`] of `I_cs`
/// against `style` over relu1_1 … relu5_1, `λ_id1` = MSE(`I_cc`, content) + MSE(`I_ss`, style),
/// `λ_id2` = [`feature_identity_loss`] of the same pairs; total weighted by `w`. `content` and
/// `style` are `[N, 3, H, W]` with the same `N`, sides multiples of 8 and at least 24 (relu5_1
/// needs 17 pixels). The encoder must reach relu5_1; gradients reach whatever of `net` is
/// variables.
pub fn stytr_loss(
    encoder: &VggEncoder,
    net: &StyTr,
    content: &Tensor,
    style: &Tensor,
    w: &LossWeights,
) -> Result<LossTerms> {
    let (n, _, _, _) = content.dims4()?;
    let (ns, _, _, _) = style.dims4()?;
    if n != ns {
        bail!("StyTr² loss: {n} content pictures but {ns} styles")
    }
    for (what, x) in [("content", content), ("style", style)] {
        let (_, _, h, wd) = x.dims4()?;
        if !h.is_multiple_of(8) || !wd.is_multiple_of(8) || h < 24 || wd < 24 {
            bail!(
                "StyTr² loss: the {what} pictures are {wd}x{h}; both sides must be multiples of 8, at least 24"
            )
        }
    }
    let feats = |x: &Tensor| encoder.forward_layers(x, Layer::Relu5_1);
    let content_feats = feats(content)?;
    let style_feats = feats(style)?;
    let ics_feats = feats(&net.forward(content, style)?)?;
    let content_loss = normalized_content_loss(&ics_feats, &content_feats)?;
    let style_loss = style_loss(&ics_feats, &style_feats)?;
    let icc = net.forward(content, content)?;
    let iss = net.forward(style, style)?;
    let identity_pixels = (mse(&icc, content)? + mse(&iss, style)?)?;
    let identity_features = (feature_identity_loss(&feats(&icc)?, &content_feats)?
        + feature_identity_loss(&feats(&iss)?, &style_feats)?)?;
    LossTerms::weighted(
        content_loss,
        style_loss,
        Some((identity_pixels, identity_features)),
        w,
    )
}
