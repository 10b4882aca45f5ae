//! Golden parity of easel's `ControlNetModel` with diffusers.
//!
//! Fixtures (`tests/fixtures/controlnet_tiny.safetensors`, `unet_cases.safetensors`) are
//! written by `tools/ref/unet_ref.py`: diffusers' ControlNet with the config of
//! `ControlNetConfig::tiny()`, random weights (`torch.manual_seed(0)`, every parameter
//! perturbed so the zero convs are not zero), CPU f32. Per-group contexts are reproduced on the
//! diffusers side by forward pre-hooks on each cross-attention transformer.
//!
//! Checks (max abs err ≤ 1e-4 on every residual): conditioning scale 0.7 with and without
//! guess mode, DownMidUp and PerLayer routing (the ControlNet takes the contexts of the UNet
//! layers with the same index), and `global_pool_conditions`.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_diffusion::contexts::{LayerGroups, UNetContexts};
use easel_diffusion::controlnet::{ControlNetConfig, ControlNetModel};
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};

use common::{cached, load, max_abs_diff, tensor};

const TOL: f32 = 1e-4;

fn get(key: &str) -> Tensor {
    tensor(cached("unet_cases.safetensors"), key)
}

fn controlnet(global_pool_conditions: bool) -> ControlNetModel {
    let vb = VarBuilder::from_tensors(
        load("controlnet_tiny.safetensors"),
        DType::F32,
        &Device::Cpu,
    );
    let cfg = ControlNetConfig {
        global_pool_conditions,
        ..ControlNetConfig::tiny()
    };
    ControlNetModel::new(vb, &cfg).expect("build tiny ControlNet")
}

#[test]
fn layout_matches_the_unet() {
    let vb = VarBuilder::from_tensors(load("unet_tiny.safetensors"), DType::F32, &Device::Cpu);
    let unet = UNet2DConditionModel::new(vb, &UNet2DConditionModelConfig::tiny()).unwrap();
    assert_eq!(
        controlnet(false).cross_attention_layout(),
        unet.cross_attention_layout()
    );
}

#[test]
fn residuals_match_diffusers() {
    // (case, grouping, contexts, guess mode, global pooling)
    let table: [(&str, LayerGroups, usize, bool, bool); 5] = [
        ("controlnet_single", LayerGroups::Single, 1, false, false),
        ("controlnet_guess", LayerGroups::Single, 1, true, false),
        (
            "controlnet_down_mid_up",
            LayerGroups::DownMidUp,
            3,
            false,
            false,
        ),
        (
            "controlnet_per_layer",
            LayerGroups::PerLayer,
            6,
            false,
            false,
        ),
        ("controlnet_global_pool", LayerGroups::Single, 1, true, true),
    ];
    for (case, groups, count, guess_mode, global_pool) in table {
        let model = controlnet(global_pool);
        let key = |k: &str| format!("{case}/{k}");
        let tensors = (0..count)
            .map(|k| get(&key(&format!("context.{k}"))))
            .collect();
        let ctx = UNetContexts::new(groups, tensors).unwrap();
        let t = f64::from(get(&key("timestep")).to_vec1::<f32>().unwrap()[0]);
        let res = model
            .forward(
                &get(&key("sample")),
                t,
                &ctx,
                &get(&key("cond")),
                0.7,
                guess_mode,
            )
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(res.down.len(), 6, "{case}");
        let mut worst = max_abs_diff(&res.mid, &get(&key("mid")));
        for (i, r) in res.down.iter().enumerate() {
            worst = worst.max(max_abs_diff(r, &get(&key(&format!("down.{i}")))));
        }
        println!("{case}: max abs err {worst:.2e}");
        assert!(worst <= TOL, "{case}: max abs err {worst}");
    }
}

#[test]
fn malformed_inputs_are_refused() {
    let model = controlnet(false);
    let sample = get("controlnet_single/sample");
    let ctx = UNetContexts::single(get("controlnet_single/context.0")).unwrap();
    // A conditioning image that is not 8× the latent size.
    let cond = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward(&sample, 1.0, &ctx, &cond, 1.0, false)
        .is_err());
    // Per-layer contexts must cover the whole UNet (6 layers), not just the ControlNet's 3.
    let three = UNetContexts::new(
        LayerGroups::PerLayer,
        vec![get("controlnet_single/context.0"); 3],
    )
    .unwrap();
    let cond = get("controlnet_single/cond");
    assert!(model
        .forward(&sample, 1.0, &three, &cond, 1.0, false)
        .is_err());
}
