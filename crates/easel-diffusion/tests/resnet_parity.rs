//! Golden parity of `ResnetBlock2D`, `Downsample2D` and `Upsample2D` with diffusers.
//!
//! The fixture `tests/fixtures/vae_blocks.safetensors` is written by `tools/ref/vae_ref.py`
//! (torch + diffusers on CPU, f32, `torch.manual_seed(0)`, all parameters randomised); each case
//! stores the module's parameters under its diffusers state-dict keys, prefixed by the case
//! name, with its input and output. Max abs error ≤ 1e-4.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_diffusion::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use easel_diffusion::sampling::{Downsample2D, Upsample2D};

use common::{cached, max_abs_diff, tensor};

const TOL: f32 = 1e-4;

fn fixtures() -> &'static HashMap<String, Tensor> {
    cached("vae_blocks.safetensors")
}

fn get(key: &str) -> Tensor {
    tensor(fixtures(), key)
}

fn vb(case: &str) -> VarBuilder<'static> {
    VarBuilder::from_tensors(fixtures().clone(), DType::F32, &Device::Cpu).pp(case)
}

#[test]
fn resnet_block_matches_diffusers() {
    let base = ResnetBlock2DConfig::default();
    // (case, in_channels, config, uses temb) — mirrors RESNET_CASES in vae_ref.py.
    let cases = [
        (
            "resnet_temb",
            16,
            ResnetBlock2DConfig {
                out_channels: Some(16),
                temb_channels: Some(12),
                groups: 4,
                ..base
            },
            true,
        ),
        (
            "resnet_no_temb_shortcut",
            8,
            ResnetBlock2DConfig {
                out_channels: Some(16),
                temb_channels: None,
                groups: 4,
                groups_out: Some(8),
                ..base
            },
            false,
        ),
        (
            "resnet_temb_shortcut_scaled",
            16,
            ResnetBlock2DConfig {
                out_channels: Some(24),
                temb_channels: Some(10),
                groups: 8,
                eps: 1e-5,
                output_scale_factor: 2.0,
                ..base
            },
            true,
        ),
        (
            "resnet_forced_shortcut",
            8,
            ResnetBlock2DConfig {
                out_channels: Some(8),
                temb_channels: Some(6),
                groups: 2,
                use_in_shortcut: Some(true),
                ..base
            },
            true,
        ),
    ];
    for (case, in_channels, config, uses_temb) in cases {
        let block = ResnetBlock2D::new(vb(case), in_channels, config).unwrap();
        let temb = uses_temb.then(|| get(&format!("{case}/temb")));
        let out = block
            .forward(&get(&format!("{case}/x")), temb.as_ref())
            .unwrap();
        let err = max_abs_diff(&out, &get(&format!("{case}/out")));
        println!("{case}: max abs err {err:.2e}");
        assert!(err <= TOL, "{case}: max abs err {err}");
    }
}

#[test]
fn resnet_block_rejects_bad_inputs() {
    let config = ResnetBlock2DConfig {
        out_channels: Some(16),
        temb_channels: None,
        groups: 4,
        groups_out: Some(8),
        ..Default::default()
    };
    let block = ResnetBlock2D::new(vb("resnet_no_temb_shortcut"), 8, config).unwrap();
    let x = get("resnet_no_temb_shortcut/x");
    let temb = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(block.forward(&x, Some(&temb)).is_err());
    let wrong_channels = Tensor::zeros((1, 12, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(block.forward(&wrong_channels, None).is_err());
    let zero_groups = ResnetBlock2DConfig {
        groups: 0,
        ..config
    };
    assert!(ResnetBlock2D::new(vb("resnet_no_temb_shortcut"), 8, zero_groups).is_err());
    let missing_temb_proj = ResnetBlock2DConfig {
        temb_channels: Some(4),
        ..config
    };
    assert!(ResnetBlock2D::new(vb("resnet_no_temb_shortcut"), 8, missing_temb_proj).is_err());
}

#[test]
fn samplers_match_diffusers() {
    // (case, in, out, padding) — mirrors SAMPLER_CASES in vae_ref.py.
    for (case, cin, cout, padding) in [("down_pad1", 8, 8, 1), ("down_pad0", 8, 12, 0)] {
        let down = Downsample2D::new(vb(case), cin, cout, padding).unwrap();
        let out = down.forward(&get(&format!("{case}/x"))).unwrap();
        let err = max_abs_diff(&out, &get(&format!("{case}/out")));
        println!("{case}: max abs err {err:.2e}");
        assert!(err <= TOL, "{case}: max abs err {err}");
    }
    for (case, cin, cout, size) in [("up_x2", 8, 8, None), ("up_size", 8, 6, Some((7, 9)))] {
        let up = Upsample2D::new(vb(case), cin, cout).unwrap();
        let out = up.forward(&get(&format!("{case}/x")), size).unwrap();
        let err = max_abs_diff(&out, &get(&format!("{case}/out")));
        println!("{case}: max abs err {err:.2e}");
        assert!(err <= TOL, "{case}: max abs err {err}");
    }
    assert!(Downsample2D::new(vb("down_pad1"), 8, 8, 2).is_err());
}
