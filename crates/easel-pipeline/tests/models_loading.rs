//! Loading models from disk: diffusers folders (plain, fp16 variant, sharded), single-file
//! checkpoints (LDM and ControlNet keys), the tokenizer folder, `scheduler_config.json`, and the
//! errors for missing / mis-shaped tensors, pickle files and f16 on CPU.
//!
//! The tiny diffusers folders in `tests/fixtures/` are written by `tools/ref/pipeline_ref.py`;
//! the variants, shards and single files are derived from them here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use easel_diffusion::schedulers::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use easel_diffusion::weights::{
    clip_config_from_transformers_json, controlnet_config_from_diffusers_json,
    unet_config_from_diffusers_json, vae_config_from_diffusers_json, KeyMap,
};
use easel_pipeline::conditioning::{encode_prompt, PromptConditioning};
use easel_pipeline::models::{
    load_controlnet_dir, load_controlnet_single_file, load_tokenizer_dir, LoadOptions,
    ModelConfigs, StableDiffusion,
};
use easel_pipeline::pipeline::StylizeRequest;
use easel_pipeline::scheduler_config::scheduler_config_from_diffusers_json;

mod common;

use common::{fixtures, max_abs_diff};

fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A small seeded run: 64×64 gray-gradient photo, 4 DDIM steps at strength 0.75.
fn run(sd: &StableDiffusion) -> Tensor {
    let ramp = Tensor::arange(0f32, 64., &Device::Cpu)
        .unwrap()
        .affine(1.0 / 64.0, 0.0)
        .unwrap();
    let photo = ramp
        .reshape((1, 1, 1, 64))
        .unwrap()
        .broadcast_as((1, 3, 64, 64))
        .unwrap()
        .contiguous()
        .unwrap();
    let mut req = StylizeRequest::new(photo.clone());
    req.steps = 4;
    req.strength = 0.75;
    req.seed = 11;
    if sd.controlnet.is_some() {
        req.control_image = Some(photo);
    }
    let mut conditioning = PromptConditioning::new(sd, "a cat", "blurry").unwrap();
    sd.stylize(&req, &mut conditioning, &mut |_, _| {}).unwrap()
}

fn folder_model() -> StableDiffusion {
    let opts = LoadOptions::cpu();
    let controlnet = load_controlnet_dir(&fixtures().join("tiny-controlnet"), &opts).unwrap();
    StableDiffusion::from_diffusers_dir(&tiny_sd(), &opts)
        .unwrap()
        .with_controlnet(controlnet)
}

#[test]
fn diffusers_folder_loads_with_its_scheduler_and_tokenizer() {
    let sd = StableDiffusion::from_diffusers_dir(&tiny_sd(), &LoadOptions::cpu()).unwrap();
    // The fixture's DDIM config holds SD 1.5's settings.
    assert_eq!(sd.scheduler_config, SchedulerConfig::sd15());
    assert_eq!(sd.tokenizer.pad_id(), sd.tokenizer.end_id());
    assert!(sd.controlnet.is_none());
    assert_eq!(sd.vae.config().scaling_factor, 0.18215);
    assert_eq!(run(&sd).dims(), [1, 3, 64, 64]);
}

#[test]
fn single_file_checkpoints_give_the_same_images() {
    let dir = tiny_sd();
    let unet_cfg = unet_config_from_diffusers_json(&read(&dir.join("unet/config.json"))).unwrap();
    let vae_cfg = vae_config_from_diffusers_json(&read(&dir.join("vae/config.json"))).unwrap();
    let clip_cfg =
        clip_config_from_transformers_json(&read(&dir.join("text_encoder/config.json"))).unwrap();
    let cn_dir = fixtures().join("tiny-controlnet");
    let cn_cfg = controlnet_config_from_diffusers_json(&read(&cn_dir.join("config.json"))).unwrap();

    let mut single = HashMap::new();
    for (map, file) in [
        (
            KeyMap::unet(&unet_cfg),
            "unet/diffusion_pytorch_model.safetensors",
        ),
        (
            KeyMap::vae(&vae_cfg),
            "vae/diffusion_pytorch_model.safetensors",
        ),
        (KeyMap::clip(&clip_cfg), "text_encoder/model.safetensors"),
    ] {
        let converted = map.to_ldm(&load(&dir.join(file))).unwrap();
        assert!(converted.unmapped.is_empty(), "{:?}", converted.unmapped);
        single.extend(converted.tensors);
    }
    let cn = KeyMap::controlnet(&cn_cfg)
        .to_ldm(&load(&cn_dir.join("diffusion_pytorch_model.safetensors")))
        .unwrap();
    assert!(cn.unmapped.is_empty(), "{:?}", cn.unmapped);

    let tmp = tempfile::tempdir().unwrap();
    let sd_file = tmp.path().join("tiny-sd.safetensors");
    let cn_file = tmp.path().join("tiny-control.safetensors");
    candle_core::safetensors::save(&single, &sd_file).unwrap();
    candle_core::safetensors::save(&cn.tensors, &cn_file).unwrap();

    let opts = LoadOptions::cpu();
    let configs = ModelConfigs {
        unet: unet_cfg,
        vae: vae_cfg,
        text_encoder: clip_cfg,
        scheduler: SchedulerConfig::sd15(),
    };
    let tokenizer = load_tokenizer_dir(&dir.join("tokenizer")).unwrap();
    let from_file = StableDiffusion::from_single_file(&sd_file, &configs, tokenizer, &opts)
        .unwrap()
        .with_controlnet(load_controlnet_single_file(&cn_file, &cn_cfg, &opts).unwrap());
    assert_eq!(max_abs_diff(&run(&from_file), &run(&folder_model())), 0.0);

    // A ControlNet file that kept diffusers' keys loads too.
    let renamed = tmp.path().join("diffusers-keys.safetensors");
    std::fs::copy(cn_dir.join("diffusion_pytorch_model.safetensors"), &renamed).unwrap();
    assert!(load_controlnet_single_file(&renamed, &cn_cfg, &opts).is_ok());
}

#[test]
fn fp16_variant_and_shards_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd");
    copy_dir(&tiny_sd(), &dir);
    for (folder, stem) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        let plain = dir.join(folder).join(format!("{stem}.safetensors"));
        let half: HashMap<String, Tensor> = load(&plain)
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
            .collect();
        let variant = dir.join(folder).join(format!("{stem}.fp16.safetensors"));
        candle_core::safetensors::save(&half, variant).unwrap();
        std::fs::remove_file(plain).unwrap();
    }
    let err = StableDiffusion::from_diffusers_dir(&dir, &LoadOptions::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no text_encoder weights") && err.contains("pass the variant"),
        "{err}"
    );
    let half = StableDiffusion::from_diffusers_dir(&dir, &LoadOptions::cpu().with_variant("fp16"))
        .unwrap();
    let full = StableDiffusion::from_diffusers_dir(&tiny_sd(), &LoadOptions::cpu()).unwrap();
    let (a, b) = (
        encode_prompt(&half, "a cat").unwrap(),
        encode_prompt(&full, "a cat").unwrap(),
    );
    let err = max_abs_diff(&a, &b);
    assert!(
        err < 1e-2,
        "fp16-rounded weights: text encoder max abs err {err}"
    );

    // The UNet split in two shards with an index.
    let unet = dir.join("unet");
    let tensors = load(&tiny_sd().join("unet/diffusion_pytorch_model.safetensors"));
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, keys) in [("a.safetensors", first), ("b.safetensors", second)] {
        let part: HashMap<String, Tensor> = keys
            .iter()
            .map(|k| ((*k).clone(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&part, unet.join(shard)).unwrap();
        for k in keys {
            weight_map.insert((*k).clone(), shard.into());
        }
    }
    std::fs::remove_file(unet.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        unet.join("diffusion_pytorch_model.safetensors.index.fp16.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded =
        StableDiffusion::from_diffusers_dir(&dir, &LoadOptions::cpu().with_variant("fp16"))
            .unwrap();
    assert_eq!(run(&sharded).dims(), [1, 3, 64, 64]);
}

#[test]
fn missing_or_misshaped_tensors_and_pickles_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let unet_file = |dir: &Path| dir.join("unet/diffusion_pytorch_model.safetensors");
    type Change = fn(&mut HashMap<String, Tensor>);
    let cases: [(&str, Change, &[&str]); 2] = [
        (
            "missing",
            |t| {
                t.remove("conv_in.weight");
            },
            &[
                "missing tensor 'conv_in.weight'",
                "diffusion_pytorch_model.safetensors",
            ],
        ),
        (
            "misshaped",
            |t| {
                let bad = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
                t.insert("conv_out.bias".into(), bad);
            },
            &["conv_out.bias", "expected shape [4], found [3]"],
        ),
    ];
    for (name, change, needles) in cases {
        let dir = tmp.path().join(name);
        copy_dir(&tiny_sd(), &dir);
        let mut tensors = load(&unet_file(&dir));
        change(&mut tensors);
        candle_core::safetensors::save(&tensors, unet_file(&dir)).unwrap();
        let err = StableDiffusion::from_diffusers_dir(&dir, &LoadOptions::cpu())
            .unwrap_err()
            .to_string();
        for needle in needles {
            assert!(
                err.contains(needle),
                "{name}: expected {needle:?} in: {err}"
            );
        }
    }

    // A pickle next to no safetensors file, and a pickle given as a single file.
    let dir = tmp.path().join("pickle");
    copy_dir(&tiny_sd(), &dir);
    std::fs::rename(
        unet_file(&dir),
        dir.join("unet/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let err = StableDiffusion::from_diffusers_dir(&dir, &LoadOptions::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no unet weights") && err.contains("found diffusion_pytorch_model.bin"),
        "{err}"
    );
    let ckpt = tmp.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 not really a zip").unwrap();
    let tokenizer = load_tokenizer_dir(&tiny_sd().join("tokenizer")).unwrap();
    let err = StableDiffusion::from_single_file(
        &ckpt,
        &ModelConfigs::sd15(),
        tokenizer,
        &LoadOptions::cpu(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pickle") && err.contains("model.ckpt"),
        "{err}"
    );

    let err = StableDiffusion::from_diffusers_dir(&tmp.path().join("nowhere"), &LoadOptions::cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json: file not found"), "{err}");
}

#[test]
fn half_precision_on_cpu_is_refused() {
    for dtype in [DType::F16, DType::BF16] {
        let err = LoadOptions::new(Device::Cpu, dtype)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("on CPU is not supported") && err.contains("--dtype f32"),
            "{err}"
        );
        let opts = LoadOptions {
            dtype,
            ..LoadOptions::cpu()
        };
        let err = StableDiffusion::from_diffusers_dir(&tiny_sd(), &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("on CPU is not supported"), "{err}");
    }
    assert!(LoadOptions::new(Device::Cpu, DType::U8).is_err());
}

#[test]
fn tokenizer_folder_reads_vocab_merges_and_pad_token() {
    let tmp = tempfile::tempdir().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&read(&tiny_sd().join("tokenizer/tokenizer.json"))).unwrap();
    let model = &json["model"];
    std::fs::write(tmp.path().join("vocab.json"), model["vocab"].to_string()).unwrap();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => {
                format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )
            }
            other => other.as_str().unwrap().to_string(),
        })
        .collect();
    std::fs::write(
        tmp.path().join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("special_tokens_map.json"),
        r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
    )
    .unwrap();
    let from_files = load_tokenizer_dir(tmp.path()).unwrap();
    let from_json = load_tokenizer_dir(&tiny_sd().join("tokenizer")).unwrap();
    for text in ["a painting of a cat, starry night", "blurry, ugly", ""] {
        assert_eq!(
            from_files.encode(text).unwrap(),
            from_json.encode(text).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(Some(from_files.pad_id()), from_files.token_id("!"));

    let err = load_tokenizer_dir(&tmp.path().join("none"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer.json"), "{err}");
}

#[test]
fn scheduler_config_json_is_parsed_with_class_defaults() {
    // SD 1.5's own scheduler/scheduler_config.json.
    let sd15 = r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
        "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
    assert_eq!(
        scheduler_config_from_diffusers_json(sd15).unwrap(),
        SchedulerConfig::sd15()
    );
    // Missing keys: the named class's defaults.
    let ddim = scheduler_config_from_diffusers_json(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    assert_eq!(
        (
            ddim.beta_schedule,
            ddim.clip_sample,
            ddim.set_alpha_to_one,
            ddim.steps_offset
        ),
        (BetaSchedule::Linear, true, true, 0)
    );
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    let euler = scheduler_config_from_diffusers_json(
        r#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "v_prediction"}"#,
    )
    .unwrap();
    assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
    assert!(!euler.clip_sample);

    let refused = [
        (r#"{"thresholding": true}"#, "thresholding"),
        (
            r#"{"rescale_betas_zero_snr": true}"#,
            "rescale_betas_zero_snr",
        ),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
        (r#"{"beta_schedule": "cosine"}"#, "unknown beta schedule"),
        (
            r#"{"timestep_spacing": "random"}"#,
            "unknown timestep spacing",
        ),
        (r#"{"steps_offset": -1}"#, "steps_offset"),
        (r#"{"beta_start": 2.0}"#, "beta_start"),
        ("[1, 2]", "not a JSON object"),
        ("{", "invalid JSON"),
    ];
    for (json, needle) in refused {
        let err = scheduler_config_from_diffusers_json(json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{json}: expected {needle:?} in: {err}"
        );
    }
}
