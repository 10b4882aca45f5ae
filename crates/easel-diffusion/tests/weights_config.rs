//! Model configs from diffusers / transformers `config.json` files.
//!
//! Reference: the `configs` of `tests/fixtures/weights_ref.json` (written by
//! `tools/ref/weights_ref.py`): the `config.json` text diffusers 0.42.1 and transformers 5.23
//! write for the tiny test models and for the SD 1.5 configs.
//!
//! Checks: those parse to easel's `tiny()` / `sd15()` presets; missing keys take the
//! libraries' defaults; unsupported architecture values fail naming the key and the value.

mod common;

use std::sync::OnceLock;

use easel_diffusion::clip::{ClipActivation, ClipTextConfig};
use easel_diffusion::controlnet::ControlNetConfig;
use easel_diffusion::unet::UNet2DConditionModelConfig;
use easel_diffusion::vae::AutoencoderKLConfig;
use easel_diffusion::weights::{
    clip_config_from_transformers_json, controlnet_config_from_diffusers_json,
    unet_config_from_diffusers_json, vae_config_from_diffusers_json,
};
use serde_json::Value;

use common::{read_json, vae_deep_config};

fn configs() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| read_json("weights_ref.json")["configs"].clone())
}

fn config(case: &str) -> &'static str {
    configs()[case]
        .as_str()
        .unwrap_or_else(|| panic!("no config {case}"))
}

/// `config(case)` with `key` set to `value` (JSON text).
fn with(case: &str, key: &str, value: &str) -> String {
    let mut json: Value = serde_json::from_str(config(case)).unwrap();
    json[key] = serde_json::from_str(value).unwrap();
    json.to_string()
}

#[test]
fn diffusers_configs_parse_to_presets() {
    assert_eq!(
        unet_config_from_diffusers_json(config("unet_tiny")).unwrap(),
        UNet2DConditionModelConfig::tiny()
    );
    assert_eq!(
        unet_config_from_diffusers_json(config("unet_sd15")).unwrap(),
        UNet2DConditionModelConfig::sd15()
    );
    assert_eq!(
        controlnet_config_from_diffusers_json(config("controlnet_tiny")).unwrap(),
        ControlNetConfig::tiny()
    );
    assert_eq!(
        controlnet_config_from_diffusers_json(config("controlnet_sd15")).unwrap(),
        ControlNetConfig::sd15()
    );
    assert_eq!(
        vae_config_from_diffusers_json(config("vae_tiny")).unwrap(),
        AutoencoderKLConfig::tiny()
    );
    assert_eq!(
        vae_config_from_diffusers_json(config("vae_sd15")).unwrap(),
        AutoencoderKLConfig::sd15()
    );
    assert_eq!(
        vae_config_from_diffusers_json(config("vae_deep")).unwrap(),
        vae_deep_config()
    );
    assert_eq!(
        clip_config_from_transformers_json(config("clip_tiny")).unwrap(),
        ClipTextConfig::tiny()
    );
    assert_eq!(
        clip_config_from_transformers_json(config("clip_sd15")).unwrap(),
        ClipTextConfig::sd15()
    );
}

#[test]
fn missing_keys_take_library_defaults() {
    // diffusers' UNet2DConditionModel defaults: SD 1.x blocks, cross_attention_dim 1280.
    let unet = unet_config_from_diffusers_json("{}").unwrap();
    assert_eq!(
        unet,
        UNet2DConditionModelConfig {
            cross_attention_dim: 1280,
            ..UNet2DConditionModelConfig::sd15()
        }
    );
    // `num_attention_heads`, when set, gives the heads (diffusers: `num_attention_heads or
    // attention_head_dim`); per-block lists are kept.
    let unet = unet_config_from_diffusers_json(
        r#"{"attention_head_dim": 8, "num_attention_heads": [5, 10, 20, 20],
            "sample_size": null, "transformer_layers_per_block": [1, 1, 1, 1]}"#,
    )
    .unwrap();
    assert_eq!(unet.attention_head_dim, [5, 10, 20, 20]);
    assert_eq!(unet.sample_size, 64);
    assert_eq!(unet.transformer_layers_per_block, 1);
    let vae = vae_config_from_diffusers_json("{}").unwrap();
    assert_eq!(vae.block_out_channels, [64]);
    assert_eq!(vae.layers_per_block, 1);
    // transformers' CLIPTextConfig defaults, and a whole CLIPConfig's text_config.
    let clip = clip_config_from_transformers_json("{}").unwrap();
    assert_eq!(
        (clip.hidden_size, clip.eos_token_id, clip.hidden_act),
        (512, 49407, ClipActivation::QuickGelu)
    );
    let nested = format!(
        r#"{{"model_type": "clip", "architectures": ["CLIPModel"], "text_config": {}}}"#,
        config("clip_sd15")
    );
    assert_eq!(
        clip_config_from_transformers_json(&nested).unwrap(),
        ClipTextConfig::sd15()
    );
}

#[test]
fn unsupported_values_are_named() {
    type Parse = fn(&str) -> candle_core::Result<()>;
    let unet: Parse = |j| unet_config_from_diffusers_json(j).map(drop);
    let controlnet: Parse = |j| controlnet_config_from_diffusers_json(j).map(drop);
    let vae: Parse = |j| vae_config_from_diffusers_json(j).map(drop);
    let clip: Parse = |j| clip_config_from_transformers_json(j).map(drop);
    let cases: Vec<(Parse, String, &str)> = vec![
        (
            unet,
            with(
                "unet_tiny",
                "down_block_types",
                r#"["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]"#,
            ),
            r#"unsupported block type "SimpleCrossAttnDownBlock2D" in "down_block_types""#,
        ),
        (
            unet,
            with(
                "unet_tiny",
                "up_block_types",
                r#"["UpBlock2D", "AttnUpBlock2D"]"#,
            ),
            r#"unsupported block type "AttnUpBlock2D" in "up_block_types""#,
        ),
        (
            unet,
            with("unet_sd15", "class_embed_type", r#""timestep""#),
            r#"unsupported "class_embed_type": "timestep""#,
        ),
        (
            unet,
            with(
                "unet_sd15",
                "mid_block_type",
                r#""UNetMidBlock2DSimpleCrossAttn""#,
            ),
            r#"unsupported "mid_block_type": "UNetMidBlock2DSimpleCrossAttn""#,
        ),
        (
            unet,
            with("unet_sd15", "addition_embed_type", r#""text_time""#),
            r#"unsupported "addition_embed_type": "text_time""#,
        ),
        (
            unet,
            with("unet_sd15", "_class_name", r#""UNet2DModel""#),
            r#""_class_name" must be one of ["UNet2DConditionModel"], found "UNet2DModel""#,
        ),
        (
            unet,
            with(
                "unet_sd15",
                "transformer_layers_per_block",
                "[1, 2, 10, 10]",
            ),
            r#""transformer_layers_per_block" must be one value for all blocks"#,
        ),
        (
            unet,
            with("unet_sd15", "cross_attention_dim", "[768, 768, 768, 768]"),
            r#""cross_attention_dim" must be one integer"#,
        ),
        (
            unet,
            with("unet_sd15", "layers_per_block", r#""two""#),
            r#""layers_per_block" must be a non-negative integer, found "two""#,
        ),
        (unet, "{not json".into(), "UNet config.json: invalid JSON"),
        (
            controlnet,
            with(
                "controlnet_sd15",
                "controlnet_conditioning_channel_order",
                r#""bgr""#,
            ),
            r#"unsupported "controlnet_conditioning_channel_order": "bgr""#,
        ),
        (
            controlnet,
            with(
                "controlnet_tiny",
                "down_block_types",
                r#"["CrossAttnDownBlock2D", "DownBlock3D"]"#,
            ),
            r#"unsupported block type "DownBlock3D""#,
        ),
        (
            vae,
            with(
                "vae_tiny",
                "down_block_types",
                r#"["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]"#,
            ),
            r#"unsupported block type "AttnDownEncoderBlock2D" in "down_block_types""#,
        ),
        (
            vae,
            with("vae_tiny", "up_block_types", r#"["UpDecoderBlock2D"]"#),
            r#""up_block_types" must be one entry per block_out_channels entry (2)"#,
        ),
        (
            vae,
            with("vae_sd15", "shift_factor", "0.1159"),
            r#"unsupported "shift_factor": 0.1159"#,
        ),
        (
            clip,
            with("clip_sd15", "hidden_act", r#""relu""#),
            r#""hidden_act" must be one of"#,
        ),
        (
            clip,
            with("clip_sd15", "architectures", r#"["T5EncoderModel"]"#),
            r#""architectures" must be a list with one of"#,
        ),
    ];
    for (parse, json, needle) in cases {
        let err = parse(&json).unwrap_err().to_string();
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    }
}
