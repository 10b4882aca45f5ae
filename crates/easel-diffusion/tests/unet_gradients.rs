//! Gradient parity through ControlNet and UNet with torch autograd.
//!
//! Fixtures from `tools/ref/unet_ref.py` (`grad/*` keys): with three contexts routed
//! DownMidUp to both models,
//! `loss = mse(unet(x, t, ctx, controlnet(x, t, ctx, cond, 0.7)), target)`, and the gradients
//! of the loss with respect to each context. Relative error (max abs difference over the max
//! abs reference gradient) ≤ 1e-3 per context; the loss itself within 1e-5.

mod common;

use candle_core::{DType, Device, Var};
use candle_nn::VarBuilder;
use easel_diffusion::contexts::{LayerGroups, UNetContexts};
use easel_diffusion::controlnet::{ControlNetConfig, ControlNetModel};
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};

use common::{load, max_abs, max_abs_diff, tensor};

#[test]
fn context_gradients_match_torch() {
    let dev = Device::Cpu;
    let cases = load("unet_cases.safetensors");
    let get = |k: &str| tensor(&cases, &format!("grad/{k}"));
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(load("unet_tiny.safetensors"), DType::F32, &dev),
        &UNet2DConditionModelConfig::tiny(),
    )
    .unwrap();
    let controlnet = ControlNetModel::new(
        VarBuilder::from_tensors(load("controlnet_tiny.safetensors"), DType::F32, &dev),
        &ControlNetConfig::tiny(),
    )
    .unwrap();

    let vars: Vec<Var> = (0..3)
        .map(|k| Var::from_tensor(&get(&format!("context.{k}"))).unwrap())
        .collect();
    let ctx = UNetContexts::new(
        LayerGroups::DownMidUp,
        vars.iter().map(|v| v.as_tensor().clone()).collect(),
    )
    .unwrap();
    let sample = get("sample");
    let t = f64::from(get("timestep").to_vec1::<f32>().unwrap()[0]);
    let residuals = controlnet
        .forward(&sample, t, &ctx, &get("cond"), 0.7, false)
        .unwrap();
    let out = unet.forward(&sample, t, &ctx, Some(&residuals)).unwrap();
    let loss = (out - get("target"))
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let loss_err =
        (loss.to_scalar::<f32>().unwrap() - get("loss").to_vec1::<f32>().unwrap()[0]).abs();
    println!("loss err {loss_err:.2e}");
    assert!(loss_err <= 1e-5, "loss err {loss_err}");

    let grads = loss.backward().unwrap();
    for (k, var) in vars.iter().enumerate() {
        let grad = grads
            .get(var.as_tensor())
            .expect("gradient reaches the context");
        let reference = get(&format!("grad.{k}"));
        let rel = max_abs_diff(grad, &reference) / max_abs(&reference);
        println!("context {k}: relative gradient err {rel:.2e}");
        assert!(rel <= 1e-3, "context {k}: relative gradient err {rel}");
    }
}
