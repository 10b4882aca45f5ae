//! End-to-end gradient parity of a prompt-bank inversion step with torch autograd:
//! placeholder vectors → CLIP → ControlNet + UNet → ε-prediction MSE.
//!
//! Fixtures `e2e_grad_models.safetensors` / `e2e_grad_cases.safetensors` are written by
//! `tools/ref/e2e_grad_ref.py` (transformers 5.23, diffusers 0.42.1, tiny random models, seed 0;
//! its docstring lists the keys). Three `LayerGroups::DownMidUp` groups each run CLIP on the
//! same two prompts with their own 2 placeholder vectors (an added token outside the
//! vocabulary); the outputs are the groups' contexts in both the ControlNet and the UNet;
//! `x_t = DDIM.add_noise(x0, ε, 601)` and `loss = mse(unet(x_t, t, ctx, controlnet(x_t, t, ctx,
//! cond, 0.8)), ε)`.
//!
//! Checks (f32 CPU): contexts, x_t and the UNet output within 1e-4 max abs; the loss within
//! 1e-5; d loss / d vector for each of the 6 used vectors within 1e-3 relative (max abs
//! difference over max abs reference); every used vector's gradient non-zero; a 7th bank
//! vector used by no group gets no gradient entry. (The frozen weights are plain tensors, so no
//! optimizer can touch them; candle's backward still computes and stores a gradient for every
//! conv kernel it meets, so the store is not checked for them.) Run with `--nocapture` to see
//! the errors.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use easel_diffusion::clip::{ClipActivation, ClipTextConfig, ClipTextModel, Placeholder};
use easel_diffusion::contexts::{LayerGroups, UNetContexts};
use easel_diffusion::controlnet::{ControlNetConfig, ControlNetModel};
use easel_diffusion::schedulers::{Ddim, Scheduler, SchedulerConfig};
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};

mod common;

use common::{load, max_abs, max_abs_diff};

const GROUPS: usize = 3;
const VECTORS_PER_GROUP: usize = 2;

#[test]
fn placeholder_gradients_through_clip_controlnet_unet_match_torch() {
    let dev = Device::Cpu;
    let cases = load("e2e_grad_cases.safetensors");
    let get = |k: &str| {
        cases
            .get(k)
            .unwrap_or_else(|| panic!("fixture has no {k}"))
            .clone()
    };
    let c = get("config").to_vec1::<f64>().unwrap();
    let clip_cfg = ClipTextConfig {
        vocab_size: c[0] as usize,
        hidden_size: c[1] as usize,
        num_hidden_layers: c[2] as usize,
        num_attention_heads: c[3] as usize,
        intermediate_size: c[4] as usize,
        max_position_embeddings: c[5] as usize,
        hidden_act: ClipActivation::QuickGelu,
        layer_norm_eps: 1e-5,
        eos_token_id: c[6] as u32,
    };
    let (placeholder, timestep, scale) = (c[7] as u32, c[8] as usize, c[9]);

    let weights = load("e2e_grad_models.safetensors");
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let clip = ClipTextModel::new(vb.pp("clip"), &clip_cfg).unwrap();
    let unet =
        UNet2DConditionModel::new(vb.pp("unet"), &UNet2DConditionModelConfig::tiny()).unwrap();
    let controlnet = ControlNetModel::new(vb.pp("controlnet"), &ControlNetConfig::tiny()).unwrap();

    // The bank: 3 groups × 2 vectors, plus one vector no group uses.
    let n_used = GROUPS * VECTORS_PER_GROUP;
    let bank: Vec<Var> = (0..=n_used)
        .map(|k| Var::from_tensor(&get(&format!("v.{k}"))).unwrap())
        .collect();

    let ids = get("ids");
    let contexts: Vec<Tensor> = (0..GROUPS)
        .map(|g| {
            let rows: Vec<&Tensor> = bank[g * VECTORS_PER_GROUP..(g + 1) * VECTORS_PER_GROUP]
                .iter()
                .map(|v| v.as_tensor())
                .collect();
            let vectors = Tensor::stack(&rows, 0).unwrap();
            let embeds = clip
                .embed_with_placeholders(
                    &ids,
                    &[Placeholder {
                        id: placeholder,
                        vectors,
                    }],
                )
                .unwrap();
            clip.forward_embeds(&embeds, &ids)
                .unwrap()
                .last_hidden_state
        })
        .collect();
    for (g, ctx) in contexts.iter().enumerate() {
        let err = max_abs_diff(ctx, &get(&format!("context.{g}")));
        println!("context {g}: max abs err {err:.2e}");
        assert!(err <= 1e-4, "context {g}: max abs err {err}");
    }
    let ctx = UNetContexts::new(LayerGroups::DownMidUp, contexts).unwrap();

    let eps = get("eps");
    let ddim = Ddim::new(&SchedulerConfig::sd15(), 50, 0.0).unwrap();
    let x_t = ddim.add_noise(&get("x0"), eps.clone(), timestep).unwrap();
    let err = max_abs_diff(&x_t, &get("x_t"));
    println!("x_t: max abs err {err:.2e}");
    assert!(err <= 1e-4, "x_t: max abs err {err}");

    let t = timestep as f64;
    let residuals = controlnet
        .forward(&x_t, t, &ctx, &get("cond"), scale, false)
        .unwrap();
    let out = unet.forward(&x_t, t, &ctx, Some(&residuals)).unwrap();
    let err = max_abs_diff(&out, &get("unet_out"));
    println!("unet output: max abs err {err:.2e}");
    assert!(err <= 1e-4, "unet output: max abs err {err}");

    let loss = (out - &eps).unwrap().sqr().unwrap().mean_all().unwrap();
    let loss_ref = get("loss").to_vec1::<f32>().unwrap()[0];
    let loss_err = (loss.to_scalar::<f32>().unwrap() - loss_ref).abs();
    println!("loss {loss_ref:.6}: err {loss_err:.2e}");
    assert!(loss_err <= 1e-5, "loss err {loss_err}");

    let grads = loss.backward().unwrap();
    for (k, var) in bank[..n_used].iter().enumerate() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("vector {k}: no gradient"));
        let reference = get(&format!("grad.{k}"));
        let scale = max_abs(&reference);
        let rel = max_abs_diff(grad, &reference) / scale;
        println!("vector {k}: |grad| {scale:.3e}, relative err {rel:.2e}");
        assert!(max_abs(grad) > 0.0, "vector {k}: zero gradient");
        assert!(rel <= 1e-3, "vector {k}: relative gradient err {rel}");
    }
    assert!(
        grads.get(bank[n_used].as_tensor()).is_none(),
        "the unused bank vector got a gradient"
    );
}
