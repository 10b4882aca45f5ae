//! Golden parity of easel's `UNet2DConditionModel` with diffusers.
//!
//! Fixtures (`tests/fixtures/unet_tiny.safetensors`, `unet_cases.safetensors`) are written by
//! `tools/ref/unet_ref.py`: diffusers' UNet with the config of
//! `UNet2DConditionModelConfig::tiny()`, random weights (`torch.manual_seed(0)`), CPU f32.
//! Per-group contexts are reproduced on the diffusers side by forward pre-hooks that hand each
//! cross-attention transformer its group's context.
//!
//! Checks (max abs err ≤ 1e-4): one context for all layers (shared and per-sample
//! timesteps), DownMidUp and PerLayer routing, ControlNet residual inputs, and a latent size
//! that is not a multiple of the downsampling factor. Also: sliced attention equals full
//! attention (≤ 1e-5), and malformed inputs are refused.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_diffusion::attention::AttentionSlicing;
use easel_diffusion::contexts::{CrossAttentionLayout, LayerGroups, UNetContexts};
use easel_diffusion::unet::{ControlResiduals, UNet2DConditionModel, UNet2DConditionModelConfig};

use common::{cached, load, max_abs_diff, tensor};

const TOL: f32 = 1e-4;

fn get(key: &str) -> Tensor {
    tensor(cached("unet_cases.safetensors"), key)
}

fn unet(slicing: AttentionSlicing) -> UNet2DConditionModel {
    let vb = VarBuilder::from_tensors(load("unet_tiny.safetensors"), DType::F32, &Device::Cpu);
    let cfg = UNet2DConditionModelConfig {
        attention_slicing: slicing,
        ..UNet2DConditionModelConfig::tiny()
    };
    UNet2DConditionModel::new(vb, &cfg).expect("build tiny UNet")
}

fn contexts(case: &str, groups: LayerGroups, count: usize) -> UNetContexts {
    let tensors = (0..count)
        .map(|k| get(&format!("{case}/context.{k}")))
        .collect();
    UNetContexts::new(groups, tensors).unwrap()
}

#[test]
fn layout_matches_diffusers() {
    let unet = unet(AttentionSlicing::Full);
    let layout = unet.cross_attention_layout();
    assert_eq!(
        layout,
        CrossAttentionLayout {
            down: 2,
            mid: 1,
            up: 3
        }
    );
    assert_eq!(unet.num_cross_attention_layers(), 6);
    assert_eq!(unet.num_down_residuals(), 6);
}

#[test]
fn forward_matches_diffusers() {
    // (case, grouping, number of contexts, timestep per sample, residuals)
    let table: [(&str, LayerGroups, usize, bool, bool); 6] = [
        ("unet_single", LayerGroups::Single, 1, false, false),
        (
            "unet_single_per_sample_t",
            LayerGroups::Single,
            1,
            true,
            false,
        ),
        ("unet_down_mid_up", LayerGroups::DownMidUp, 3, false, false),
        ("unet_per_layer", LayerGroups::PerLayer, 6, false, false),
        ("unet_odd_size", LayerGroups::Single, 1, false, false),
        ("unet_residuals", LayerGroups::PerLayer, 6, false, true),
    ];
    let unet = unet(AttentionSlicing::Full);
    for (case, groups, count, per_sample, with_residuals) in table {
        let sample = get(&format!("{case}/sample"));
        let timestep = get(&format!("{case}/timestep"));
        let ctx = contexts(case, groups, count);
        let residuals = with_residuals.then(|| ControlResiduals {
            down: (0..6)
                .map(|i| get(&format!("{case}/res_down.{i}")))
                .collect(),
            mid: get(&format!("{case}/res_mid")),
        });
        let out = if per_sample {
            unet.forward(&sample, &timestep, &ctx, residuals.as_ref())
        } else {
            let t = f64::from(timestep.to_vec1::<f32>().unwrap()[0]);
            unet.forward(&sample, t, &ctx, residuals.as_ref())
        }
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let err = max_abs_diff(&out, &get(&format!("{case}/out")));
        println!("{case}: max abs err {err:.2e}");
        assert!(err <= TOL, "{case}: max abs err {err}");
    }
}

#[test]
fn sliced_attention_equals_full_attention() {
    let full = unet(AttentionSlicing::Full);
    // 64 latent tokens at the top level: chunks of 5 leave a ragged last chunk.
    let sliced = unet(AttentionSlicing::QueryChunks(5));
    let case = "unet_per_layer";
    let sample = get(&format!("{case}/sample"));
    let ctx = contexts(case, LayerGroups::PerLayer, 6);
    let a = full.forward(&sample, 999.0, &ctx, None).unwrap();
    let b = sliced.forward(&sample, 999.0, &ctx, None).unwrap();
    let err = max_abs_diff(&a, &b);
    println!("sliced vs full: max abs err {err:.2e}");
    assert!(err <= 1e-5, "sliced vs full: {err}");
}

#[test]
fn malformed_inputs_are_refused() {
    let unet = unet(AttentionSlicing::Full);
    let sample = get("unet_single/sample");
    // Wrong number of per-layer contexts for this model.
    let five = contexts("unet_per_layer", LayerGroups::PerLayer, 5);
    assert!(unet.forward(&sample, 1.0, &five, None).is_err());
    // Context batch differs from the sample's.
    let one = UNetContexts::single(get("unet_odd_size/context.0")).unwrap();
    assert!(unet.forward(&sample, 1.0, &one, None).is_err());
    // Context width differs from cross_attention_dim.
    let wide = UNetContexts::single(Tensor::zeros((2, 77, 24), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert!(unet.forward(&sample, 1.0, &wide, None).is_err());
    // Residual count and shape.
    let ctx = contexts("unet_single", LayerGroups::Single, 1);
    let res = |n: usize, mid: Tensor| ControlResiduals {
        down: (0..n)
            .map(|i| get(&format!("unet_residuals/res_down.{i}")))
            .collect(),
        mid,
    };
    assert!(unet
        .forward(
            &sample,
            1.0,
            &ctx,
            Some(&res(5, get("unet_residuals/res_mid")))
        )
        .is_err());
    let bad_mid = Tensor::zeros((2, 16, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(unet
        .forward(&sample, 1.0, &ctx, Some(&res(6, bad_mid)))
        .is_err());
    // Per-sample timesteps of the wrong length.
    let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    assert!(unet.forward(&sample, &t, &ctx, None).is_err());
}

/// The routing matters: swapping two layers' contexts changes the output well beyond the
/// tolerance (so the per-group cases above test the routing, not just the layers).
#[test]
fn misrouted_contexts_change_the_output() {
    let unet = unet(AttentionSlicing::Full);
    let case = "unet_per_layer";
    let sample = get(&format!("{case}/sample"));
    let mut tensors: Vec<Tensor> = (0..6)
        .map(|k| get(&format!("{case}/context.{k}")))
        .collect();
    tensors.swap(0, 5);
    let swapped = UNetContexts::new(LayerGroups::PerLayer, tensors).unwrap();
    let out = unet.forward(&sample, 999.0, &swapped, None).unwrap();
    let err = max_abs_diff(&out, &get(&format!("{case}/out")));
    assert!(
        err > 100.0 * TOL,
        "swapping contexts changed the output by only {err}"
    );
}

/// f16 weights and inputs run (softmax and norm statistics in f32) and stay close to the f32
/// reference (max abs err ≤ 2e-2). bf16 is not tested here: candle's CPU matmul has no bf16.
#[test]
fn half_precision_stays_close() {
    let case = "unet_down_mid_up";
    let (dtype, tol) = (DType::F16, 2e-2);
    let vb = VarBuilder::from_tensors(load("unet_tiny.safetensors"), dtype, &Device::Cpu);
    let unet = UNet2DConditionModel::new(vb, &UNet2DConditionModelConfig::tiny()).unwrap();
    let tensors = (0..3)
        .map(|k| get(&format!("{case}/context.{k}")).to_dtype(dtype).unwrap())
        .collect();
    let ctx = UNetContexts::new(LayerGroups::DownMidUp, tensors).unwrap();
    let sample = get(&format!("{case}/sample")).to_dtype(dtype).unwrap();
    let out = unet.forward(&sample, 500.0, &ctx, None).unwrap();
    assert_eq!(out.dtype(), dtype);
    let out = out.to_dtype(DType::F32).unwrap();
    let err = max_abs_diff(&out, &get(&format!("{case}/out")));
    println!("{dtype:?}: max abs err {err:.2e}");
    assert!(err <= tol, "{dtype:?}: max abs err {err}");
}
