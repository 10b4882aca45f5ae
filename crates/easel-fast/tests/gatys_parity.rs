//! `easel_fast::gatys` against the PyTorch reference of `tools/ref/gatys_ref.py` on the embedded
//! EfficientNet-Lite0: loss terms and the gradient to the picture (plain and masked), the first
//! 20 L-BFGS and Adam losses from the photo; and the spatial control's effect.

use candle_core::{Device, Result, Tensor};
use easel_fast::efficientnet::EfficientNet;
use easel_fast::gatys::{
    self, gram, Event, LayerSet, Objective, OptimizerKind, Perceptual, Settings,
};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

fn cases() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gatys_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// The fixture's weights: content 1, style 1e5, TV 10.
fn settings() -> Settings {
    Settings {
        content_weight: 1.0,
        style_weight: 1e5,
        tv_weight: 10.0,
        ..Settings::new()
    }
}

/// Largest |a − b| over largest |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale)
}

fn check_losses(got: gatys::Losses, want: &Tensor, what: &str) -> Result<()> {
    let want = want.to_vec1::<f32>()?;
    for (name, g, w) in [
        ("content", got.content, want[0]),
        ("style", got.style, want[1]),
        ("tv", got.tv, want[2]),
        ("total", got.total, want[3]),
    ] {
        let rel = ((g - w as f64) / w as f64).abs();
        assert!(rel <= 1e-4, "{what} {name}: {g} vs {w} ({rel:e})");
    }
    Ok(())
}

/// Content, style, TV and total losses and the gradient of the total to the picture match
/// PyTorch within 1e-4 relative, without and with a two-region mask: this checks the Gram and
/// masked Gram losses and the hand-written backward through ReLU6 clamps, depthwise and strided
/// convs, same padding and folded batch norms.
#[test]
fn losses_and_gradient_match_pytorch() -> Result<()> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let s = settings();
    let plain = Objective::new(&net, &fx["photo"], &[fx["style_a"].clone()], None, &s)?;
    let (losses, grad) = plain.evaluate(&fx["x"])?;
    check_losses(losses, &fx["plain.losses"], "plain")?;
    let e = rel_diff(&grad, &fx["plain.grad"])?;
    assert!(e <= 1e-4, "plain gradient: {e:e}");

    let styles = [fx["style_a"].clone(), fx["style_b"].clone()];
    let masked = Objective::new(&net, &fx["photo"], &styles, Some(&fx["regions"]), &s)?;
    let (losses, grad) = masked.evaluate(&fx["x"])?;
    check_losses(losses, &fx["masked.losses"], "masked")?;
    let e = rel_diff(&grad, &fx["masked.grad"])?;
    assert!(e <= 1e-4, "masked gradient: {e:e}");
    Ok(())
}

fn trajectory(kind: OptimizerKind) -> Result<Vec<f64>> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let s = Settings {
        iterations: 20,
        optimizer: kind,
        ..settings()
    };
    let objective = Objective::new(&net, &fx["photo"], &[fx["style_a"].clone()], None, &s)?;
    let mut losses = Vec::new();
    gatys::optimise(
        &objective,
        &fx["photo"],
        &s,
        &AtomicBool::new(false),
        &mut |_, l, _| {
            losses.push(l.total);
            Ok(())
        },
    )?;
    Ok(losses)
}

/// L-BFGS from the photo follows `torch.optim.LBFGS` (lr 1, history 100, no line search): the
/// first 6 losses within 1e-4 relative (measured: 8.7e-6 at most), and the run makes the same
/// progress over 20 iterations (final loss below 0.7× the start, as PyTorch's 0.57×).
///
/// Not 1e-3 over all 20: without a line search this objective is chaotic. PyTorch against itself,
/// with the start picture perturbed by 1e-6 noise, differs by 4.7e-5 at iteration 6, 1.6e-3 at
/// iteration 8 and 1–4 % from iteration 10 on (also with TV 100, style 1e4 or 1e3, lr 0.5 or
/// 0.2, or a 112×80 picture: 0.5–87 %). easel's gradient differs from PyTorch's by f32 summation
/// order (≤ 1e-4 relative, `losses_and_gradient_match_pytorch`), which moves it off the
/// trajectory from iteration 6 (2.3e-3) as such a perturbation does.
#[test]
fn lbfgs_follows_pytorch() -> Result<()> {
    let want = cases()?["lbfgs.losses"].to_vec1::<f32>()?;
    let got = trajectory(OptimizerKind::Lbfgs)?;
    assert!(got.len() > want.len(), "{} evaluations", got.len());
    for (i, (g, w)) in got.iter().zip(&want).take(6).enumerate() {
        let rel = ((g - *w as f64) / *w as f64).abs();
        assert!(rel <= 1e-4, "iteration {i}: {g} vs {w} ({rel:e})");
    }
    assert!(want[19] < want[0] * 0.7, "the reference run makes progress");
    assert!(
        got[19] < got[0] * 0.7,
        "easel's run makes progress: {} -> {}",
        got[0],
        got[19]
    );
    Ok(())
}

/// 20 Adam steps (lr 0.02) follow `torch.optim.Adam`'s losses within 1e-3 relative.
#[test]
fn adam_follows_pytorch() -> Result<()> {
    let want = cases()?["adam.losses"].to_vec1::<f32>()?;
    let got = trajectory(OptimizerKind::Adam)?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let rel = ((g - *w as f64) / *w as f64).abs();
        assert!(rel <= 1e-3, "step {i}: {g} vs {w} ({rel:e})");
    }
    Ok(())
}

/// Spatial control: after optimising with Starry Night on the left and the Great Wave on the
/// right, each half's Gram matrices (at every style layer, summed squared distance) are closer to
/// its own painting's than to the other's.
#[test]
fn mask_regions_take_their_own_painting() -> Result<()> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let s = Settings {
        iterations: 40,
        ..settings()
    };
    let styles = [fx["style_a"].clone(), fx["style_b"].clone()];
    let out = gatys::stylize(
        &net,
        &fx["photo"],
        &styles,
        Some(&fx["regions"]),
        &s,
        &AtomicBool::new(false),
        &mut |_| Ok(()),
    )?;
    let layers = &LayerSet::efficientnet_lite0().style;
    let halves = [out.image.narrow(3, 0, 28)?, out.image.narrow(3, 28, 28)?];
    let style_grams: Vec<Vec<Tensor>> = styles
        .iter()
        .map(|st| {
            Perceptual::features(&net, st, layers)?
                .iter()
                .map(|f| gram(f, None))
                .collect()
        })
        .collect::<Result<_>>()?;
    for (r, half) in halves.iter().enumerate() {
        let grams: Vec<Tensor> = Perceptual::features(&net, half, layers)?
            .iter()
            .map(|f| gram(f, None))
            .collect::<Result<_>>()?;
        let dist = |k: usize| -> Result<f32> {
            let mut d = 0f32;
            for (g, t) in grams.iter().zip(&style_grams[k]) {
                d += (g - t)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
            Ok(d)
        };
        let (own, other) = (dist(r)?, dist(1 - r)?);
        assert!(own < other, "region {r}: own painting {own}, other {other}");
    }
    Ok(())
}

/// Cancelling before the first iteration returns the start picture (the best so far), marked
/// cancelled; previews arrive every N iterations.
#[test]
fn cancel_keeps_the_best_and_previews_arrive() -> Result<()> {
    let fx = cases()?;
    let net = EfficientNet::lite0_embedded(&Device::Cpu)?;
    let styles = [fx["style_a"].clone()];
    let cancelled = gatys::stylize(
        &net,
        &fx["photo"],
        &styles,
        None,
        &settings(),
        &AtomicBool::new(true),
        &mut |_| Ok(()),
    )?;
    assert!(cancelled.cancelled);
    assert_eq!(cancelled.iterations, 0);
    assert!(rel_diff(&cancelled.image, &fx["photo"])? < 1e-6);

    let s = Settings {
        iterations: 6,
        preview_every: 2,
        ..settings()
    };
    let mut previews = Vec::new();
    let mut last = f64::INFINITY;
    let out = gatys::stylize(
        &net,
        &fx["photo"],
        &styles,
        None,
        &s,
        &AtomicBool::new(false),
        &mut |e| {
            match e {
                Event::Preview(p, img) => previews.push((p.iteration, img.dims().to_vec())),
                Event::Progress(p) => last = p.losses.total,
            }
            Ok(())
        },
    )?;
    assert_eq!(previews.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4, 6]);
    assert_eq!(previews[0].1, [1, 3, 40, 56]);
    assert!(out.losses.total <= last);
    assert!(!out.cancelled);
    Ok(())
}
