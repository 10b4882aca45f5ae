//! Key maps between diffusers state dicts and original (LDM) single-file checkpoints.
//!
//! Reference: `tests/fixtures/weights_ref.json`, written by `tools/ref/weights_ref.py`. Its
//! `maps` pair every single-file key with the diffusers key that diffusers 0.42.1's own
//! converters (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_ldm_clip_checkpoint`, `convert_controlnet_checkpoint`) put it under, for the tiny
//! fixture models and the SD 1.5 configs; the script asserts the converters restore the
//! diffusers state dicts exactly. Configs come from the `configs` there (diffusers'
//! `config.json` text), through easel's parsers.
//!
//! Checks: our maps equal diffusers' pairing on every key of every case, both directions,
//! with the single-file shapes (VAE attention 1×1 convolutions); the tiny fixtures round-trip
//! diffusers → single file → diffusers bitwise with no key left over; models loaded from the
//! single-file map give exactly (max abs err 0) the outputs of models loaded from the diffusers
//! files. Old diffusers VAE attention keys (`query`, ..., `proj_attn`) are upgraded.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use easel_diffusion::clip::ClipTextModel;
use easel_diffusion::contexts::UNetContexts;
use easel_diffusion::controlnet::ControlNetModel;
use easel_diffusion::unet::UNet2DConditionModel;
use easel_diffusion::vae::AutoencoderKL;
use easel_diffusion::weights::{
    clip_config_from_transformers_json, controlnet_config_from_diffusers_json, is_ldm_checkpoint,
    unet_config_from_diffusers_json, upgrade_legacy_attention_keys, vae_config_from_diffusers_json,
    CheckedTensors, KeyMap,
};
use serde_json::Value;

use common::{load, max_abs_diff, read_json};

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| read_json("weights_ref.json"))
}

fn config_json(case: &str) -> &'static str {
    reference()["configs"][case]
        .as_str()
        .unwrap_or_else(|| panic!("no config {case}"))
}

/// The key map of a reference case, from its config.json.
fn key_map(case: &str) -> KeyMap {
    let json = config_json(case);
    match case.split('_').next() {
        Some("unet") => KeyMap::unet(&unet_config_from_diffusers_json(json).unwrap()),
        Some("controlnet") => {
            KeyMap::controlnet(&controlnet_config_from_diffusers_json(json).unwrap())
        }
        Some("vae") => KeyMap::vae(&vae_config_from_diffusers_json(json).unwrap()),
        Some("clip") => KeyMap::clip(&clip_config_from_transformers_json(json).unwrap()),
        _ => panic!("unknown case {case}"),
    }
}

/// diffusers' pairs of a case: (single-file key, diffusers key, single-file shape).
fn pairs(case: &str) -> Vec<(String, String, Vec<usize>)> {
    reference()["maps"][case]
        .as_array()
        .unwrap_or_else(|| panic!("no map {case}"))
        .iter()
        .map(|p| {
            let shape = p[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
                shape,
            )
        })
        .collect()
}

const CASES: [&str; 9] = [
    "unet_tiny",
    "controlnet_tiny",
    "vae_tiny",
    "vae_deep",
    "clip_tiny",
    "unet_sd15",
    "controlnet_sd15",
    "vae_sd15",
    "clip_sd15",
];

#[test]
fn key_maps_match_diffusers_converters() {
    for case in CASES {
        let map = key_map(case);
        let pairs = pairs(case);
        assert!(pairs.len() > 30, "{case}: {} pairs", pairs.len());
        for (ldm, diffusers, _) in &pairs {
            assert_eq!(
                map.ldm_to_diffusers(ldm).as_deref(),
                Some(diffusers.as_str()),
                "{case}: ldm_to_diffusers({ldm})"
            );
            assert_eq!(
                map.diffusers_to_ldm(diffusers).as_deref(),
                Some(ldm.as_str()),
                "{case}: diffusers_to_ldm({diffusers})"
            );
        }
        println!("{case}: {} keys match diffusers' converter", pairs.len());
    }
}

#[test]
fn unknown_keys_are_not_mapped() {
    let map = key_map("unet_sd15");
    for key in [
        "model.diffusion_model.input_blocks.1.0.in_layers.1.weight", // SiLU has no weights
        "model.diffusion_model.output_blocks.12.0.in_layers.0.weight", // one block too far
        "model_ema.diffusion_modelinput_blocks00weight",
        "first_stage_model.encoder.conv_in.weight",
        "input_blocks.0.0.weight", // no prefix
    ] {
        assert_eq!(map.ldm_to_diffusers(key), None, "{key}");
    }
    assert_eq!(
        map.diffusers_to_ldm("up_blocks.4.resnets.0.conv1.weight"),
        None
    );
    assert_eq!(
        map.diffusers_to_ldm("down_blocks.0.resnets.0.conv9.weight"),
        None
    );
    // A ControlNet file without the `control_model.` prefix is read as is.
    let cn = key_map("controlnet_sd15");
    assert_eq!(
        cn.ldm_to_diffusers("zero_convs.3.0.bias").as_deref(),
        Some("controlnet_down_blocks.3.bias")
    );
    // transformers 5.x keys (no `text_model.`) export like the prefixed ones.
    let clip = key_map("clip_sd15");
    assert_eq!(
        clip.diffusers_to_ldm("encoder.layers.11.mlp.fc2.bias")
            .as_deref(),
        Some("cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias")
    );
}

/// The diffusers weights of a tiny case, as the fixtures store them.
fn diffusers_weights(case: &str) -> HashMap<String, Tensor> {
    let (file, prefix) = match case {
        "unet_tiny" => ("unet_tiny.safetensors", ""),
        "controlnet_tiny" => ("controlnet_tiny.safetensors", ""),
        "vae_tiny" => ("vae_tiny.safetensors", "tiny."),
        "vae_deep" => ("vae_tiny.safetensors", "deep."),
        "clip_tiny" => ("clip_quick_gelu.safetensors", "text_model."),
        _ => panic!("no fixture for {case}"),
    };
    load(file)
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix) && !k.contains('/'))
        .map(|(k, v)| {
            let k = if case == "clip_tiny" {
                k
            } else {
                k[prefix.len()..].to_string()
            };
            (k, v)
        })
        .collect()
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn tiny_fixtures_round_trip_bitwise() {
    let mut single_file = HashMap::new();
    for case in [
        "unet_tiny",
        "controlnet_tiny",
        "vae_tiny",
        "vae_deep",
        "clip_tiny",
    ] {
        let map = key_map(case);
        let original = diffusers_weights(case);
        let ldm = map.to_ldm(&original).unwrap();
        assert!(ldm.unmapped.is_empty(), "{case}: {:?}", ldm.unmapped);
        assert_eq!(ldm.tensors.len(), original.len(), "{case}");
        assert!(is_ldm_checkpoint(ldm.tensors.keys().map(String::as_str)));
        // Exactly diffusers' single-file keys and shapes.
        let expected: HashMap<String, Vec<usize>> = pairs(case)
            .into_iter()
            .map(|(l, _, shape)| (l, shape))
            .collect();
        assert_eq!(ldm.tensors.len(), expected.len(), "{case}");
        for (key, tensor) in &ldm.tensors {
            assert_eq!(
                Some(&tensor.dims().to_vec()),
                expected.get(key),
                "{case}: {key}"
            );
        }
        // Back: identical keys and bits.
        let back = map.to_diffusers(&ldm.tensors).unwrap();
        assert!(back.unmapped.is_empty(), "{case}: {:?}", back.unmapped);
        assert_eq!(back.tensors.len(), original.len(), "{case}");
        for (key, tensor) in &original {
            let got = back
                .tensors
                .get(key)
                .unwrap_or_else(|| panic!("{case}: lost {key}"));
            assert!(bitwise_equal(got, tensor), "{case}: {key} differs");
        }
        if case != "vae_deep" && case != "controlnet_tiny" {
            single_file.extend(ldm.tensors);
        }
    }
    // One single file with a UNet, a VAE and a CLIP: each map takes its own keys only.
    for case in ["unet_tiny", "vae_tiny", "clip_tiny"] {
        let back = key_map(case).to_diffusers(&single_file).unwrap();
        assert!(back.unmapped.is_empty(), "{case}");
        assert_eq!(back.tensors.len(), diffusers_weights(case).len(), "{case}");
    }
    // Unknown keys of a component are reported, not dropped silently.
    single_file.insert(
        "first_stage_model.encoder.mid.attn_2.q.weight".into(),
        Tensor::zeros((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let vae = key_map("vae_tiny").to_diffusers(&single_file).unwrap();
    assert_eq!(
        vae.unmapped,
        vec!["first_stage_model.encoder.mid.attn_2.q.weight"]
    );
    let err = key_map("controlnet_tiny")
        .to_diffusers(&HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no ControlNet tensors"), "{err}");
}

/// diffusers weights and the same weights through the single-file map, as checked sources.
fn both_sources(case: &str) -> (CheckedTensors, CheckedTensors) {
    let original = diffusers_weights(case);
    let map = key_map(case);
    let ldm = map.to_ldm(&original).unwrap().tensors;
    let back = map.to_diffusers(&ldm).unwrap().tensors;
    (
        CheckedTensors::from_tensors(format!("{case} (diffusers)"), original),
        CheckedTensors::from_tensors(format!("{case} (single file)"), back),
    )
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A fixed pseudo-random input (no RNG state shared with other tests).
    let n: usize = shape.iter().product();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

#[test]
fn single_file_models_equal_diffusers_models() {
    let dev = Device::Cpu;
    let sample = randn(&[1, 4, 8, 8], 1);
    let context = UNetContexts::single(randn(&[1, 77, 16], 2)).unwrap();

    let unet_cfg = unet_config_from_diffusers_json(config_json("unet_tiny")).unwrap();
    let (a, b) = both_sources("unet_tiny");
    let outs: Vec<Tensor> = [&a, &b]
        .iter()
        .map(|src| {
            let unet =
                UNet2DConditionModel::new(src.var_builder(DType::F32, &dev), &unet_cfg).unwrap();
            assert!(src.unused().is_empty(), "{:?}", src.unused());
            unet.forward(&sample, 500.0, &context, None).unwrap()
        })
        .collect();
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0, "UNet");

    let cn_cfg = controlnet_config_from_diffusers_json(config_json("controlnet_tiny")).unwrap();
    let (a, b) = both_sources("controlnet_tiny");
    let cond = randn(&[1, 3, 64, 64], 3).affine(0.5, 0.5).unwrap();
    let outs: Vec<Tensor> = [&a, &b]
        .iter()
        .map(|src| {
            let cn = ControlNetModel::new(src.var_builder(DType::F32, &dev), &cn_cfg).unwrap();
            assert!(src.unused().is_empty(), "{:?}", src.unused());
            let res = cn
                .forward(&sample, 500.0, &context, &cond, 1.0, false)
                .unwrap();
            let mut all = res.down;
            all.push(res.mid);
            Tensor::cat(
                &all.iter()
                    .map(|t| t.flatten_all().unwrap())
                    .collect::<Vec<_>>(),
                0,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0, "ControlNet");

    let vae_cfg = vae_config_from_diffusers_json(config_json("vae_tiny")).unwrap();
    let (a, b) = both_sources("vae_tiny");
    let image = randn(&[1, 3, 16, 16], 4);
    let outs: Vec<Tensor> = [&a, &b]
        .iter()
        .map(|src| {
            let vae =
                AutoencoderKL::new(src.var_builder(DType::F32, &dev), vae_cfg.clone()).unwrap();
            assert!(src.unused().is_empty(), "{:?}", src.unused());
            let latents = vae.encode(&image).unwrap().mean().clone();
            vae.decode(&latents).unwrap()
        })
        .collect();
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0, "VAE");

    let clip_cfg = clip_config_from_transformers_json(config_json("clip_tiny")).unwrap();
    let (a, b) = both_sources("clip_tiny");
    let ids = Tensor::new(&[[406u32, 5, 9, 200, 407, 407]], &dev).unwrap();
    let outs: Vec<Tensor> = [&a, &b]
        .iter()
        .map(|src| {
            let clip = ClipTextModel::new(src.var_builder(DType::F32, &dev), &clip_cfg).unwrap();
            assert!(src.unused().is_empty(), "{:?}", src.unused());
            clip.forward(&ids).unwrap()
        })
        .collect();
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0, "CLIP");
}

#[test]
fn legacy_vae_attention_keys_are_upgraded() {
    let current = diffusers_weights("vae_tiny");
    let legacy: HashMap<String, Tensor> = current
        .iter()
        .map(|(k, v)| {
            let k = [
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ]
            .iter()
            .fold(k.clone(), |k, (new, old)| k.replace(new, old));
            (k, v.clone())
        })
        .collect();
    assert!(legacy.contains_key("encoder.mid_block.attentions.0.proj_attn.weight"));
    let (upgraded, renamed) = upgrade_legacy_attention_keys(legacy);
    // q, k, v, out: weight and bias, in the encoder and the decoder.
    assert_eq!(renamed, 16);
    let mut got: Vec<_> = upgraded.keys().cloned().collect();
    let mut want: Vec<_> = current.keys().cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Current keys are left alone (the UNet's transformer projections included).
    let (same, renamed) = upgrade_legacy_attention_keys(diffusers_weights("unet_tiny"));
    assert_eq!(renamed, 0);
    assert_eq!(same.len(), diffusers_weights("unet_tiny").len());
}
