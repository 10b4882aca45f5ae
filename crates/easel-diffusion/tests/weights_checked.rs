//! The checked `VarBuilder` backend (`CheckedTensors`) and the weight-file layout helpers.
//!
//! Weights: `tests/fixtures/unet_tiny.safetensors` (diffusers keys, written by
//! `tools/ref/unet_ref.py`); variants (f16, shards, single-file keys) are derived from it here.
//!
//! Checks: messages for a missing tensor (key, expected shape, source; a hint when the source
//! has single-file keys) and a wrong shape (expected and found); dtype conversion (an f16 file
//! into an f32 model gives exactly the model built from the f16 weights cast to f32; an f32
//! file into an f16 model); sharded buffers load like the single file (max abs err 0); unused
//! tensors are listed; pickle checkpoints are refused by name and by content; file names of
//! variants and shard indexes.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use easel_diffusion::contexts::UNetContexts;
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
use easel_diffusion::weights::{
    check_safetensors_bytes, check_weights_file_name, component_files, model_index, shard_files,
    CheckedTensors, Component, KeyMap, ModelIndexEntry,
};

use common::{load, max_abs_diff};

fn unet_weights() -> HashMap<String, Tensor> {
    load("unet_tiny.safetensors")
}

fn build(src: &CheckedTensors, dtype: DType) -> candle_core::Result<UNet2DConditionModel> {
    UNet2DConditionModel::new(
        src.var_builder(dtype, &Device::Cpu),
        &UNet2DConditionModelConfig::tiny(),
    )
}

/// The first line of the error of building the tiny UNet (a backtrace may follow).
fn error_of(src: &CheckedTensors) -> String {
    let err = build(src, DType::F32).unwrap_err().to_string();
    err.lines().next().unwrap_or_default().to_string()
}

/// Safetensors bytes of `tensors`.
fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    std::fs::read(&path).unwrap()
}

fn run(unet: &UNet2DConditionModel, dtype: DType) -> Tensor {
    let dev = Device::Cpu;
    let sample = (Tensor::arange(0f32, 256.0, &dev).unwrap() / 256.0)
        .unwrap()
        .reshape((1, 4, 8, 8))
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let ctx = (Tensor::arange(0f32, 77.0 * 16.0, &dev).unwrap() / 1000.0)
        .unwrap()
        .cos()
        .unwrap()
        .reshape((1, 77, 16))
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let contexts = UNetContexts::single(ctx).unwrap();
    unet.forward(&sample, 321.0, &contexts, None)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dev = Device::Cpu;
    let mut weights = unet_weights();
    weights.remove("down_blocks.0.resnets.0.conv1.weight");
    let err = error_of(&CheckedTensors::from_tensors(
        "unet_tiny.safetensors",
        weights,
    ));
    assert_eq!(
        err,
        "missing tensor 'down_blocks.0.resnets.0.conv1.weight' (expected shape [16, 16, 3, 3]) \
         in unet_tiny.safetensors"
    );

    let mut weights = unet_weights();
    weights.insert(
        "conv_in.weight".into(),
        Tensor::zeros((16, 4, 1, 1), DType::F32, &dev).unwrap(),
    );
    let err = error_of(&CheckedTensors::from_tensors("my unet", weights));
    assert_eq!(
        err,
        "tensor 'conv_in.weight' in my unet: expected shape [16, 4, 3, 3], found [16, 4, 1, 1]"
    );

    // A wrong config (more layers than the file has) names the first missing tensor.
    let cfg = UNet2DConditionModelConfig {
        layers_per_block: 3,
        ..UNet2DConditionModelConfig::tiny()
    };
    let src = CheckedTensors::from_tensors("unet_tiny.safetensors", unet_weights());
    let err = UNet2DConditionModel::new(src.var_builder(DType::F32, &dev), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("missing tensor 'down_blocks.0.resnets.2.norm1.weight'"),
        "{err}"
    );

    // Single-file keys handed over unconverted get a hint.
    let ldm = KeyMap::unet(&UNet2DConditionModelConfig::tiny())
        .to_ldm(&unet_weights())
        .unwrap();
    let err = error_of(&CheckedTensors::from_tensors("sd.safetensors", ldm.tensors));
    assert!(err.starts_with("missing tensor 'conv_in.weight'"), "{err}");
    assert!(err.contains("original single-file (LDM) keys"), "{err}");
}

#[test]
fn dtypes_are_converted() {
    let f32_src = CheckedTensors::from_tensors("f32", unet_weights());
    let reference = run(&build(&f32_src, DType::F32).unwrap(), DType::F32);

    // An f16 file into an f32 model: exactly the f16 weights, widened.
    let f16: HashMap<String, Tensor> = unet_weights()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    let widened: HashMap<String, Tensor> = f16
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
        .collect();
    let bytes = safetensors_bytes(&f16);
    let file = CheckedTensors::from_safetensors_buffers(
        "unet.fp16",
        vec![("diffusion_pytorch_model.fp16.safetensors".into(), bytes)],
    )
    .unwrap();
    let from_file = run(&build(&file, DType::F32).unwrap(), DType::F32);
    let widened = run(
        &build(&CheckedTensors::from_tensors("w", widened), DType::F32).unwrap(),
        DType::F32,
    );
    assert_eq!(max_abs_diff(&from_file, &widened), 0.0);
    // f16 rounding of the weights only.
    let err = max_abs_diff(&from_file, &reference);
    println!("f16 file into an f32 model vs f32: max abs err {err:e}");
    assert!(err < 1e-2, "f16 weights vs f32: {err}");

    // An f32 source into an f16 model.
    let half = run(&build(&f32_src, DType::F16).unwrap(), DType::F16);
    let err = max_abs_diff(&half, &reference);
    println!("f32 file into an f16 model vs f32: max abs err {err:e}");
    assert!(err < 2e-2, "f16 model vs f32: {err}");
}

#[test]
fn shards_load_like_one_file_and_unused_tensors_are_listed() {
    let weights = unet_weights();
    let reference = run(
        &build(
            &CheckedTensors::from_tensors("one", weights.clone()),
            DType::F32,
        )
        .unwrap(),
        DType::F32,
    );
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (k, v)) in weights.iter().enumerate() {
        let (shard, name) = if i % 2 == 0 {
            (
                &mut first,
                "diffusion_pytorch_model-00001-of-00002.safetensors",
            )
        } else {
            (
                &mut second,
                "diffusion_pytorch_model-00002-of-00002.safetensors",
            )
        };
        shard.insert(k.clone(), v.clone());
        weight_map.insert(k.clone(), name.into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let files = shard_files(&index.to_string()).unwrap();
    assert_eq!(
        files,
        [
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors"
        ]
    );
    let buffers = vec![
        (files[0].clone(), safetensors_bytes(&first)),
        (files[1].clone(), safetensors_bytes(&second)),
    ];
    let sharded = CheckedTensors::from_safetensors_buffers("unet (2 shards)", buffers).unwrap();
    assert_eq!(sharded.names().len(), weights.len());
    let out = run(&build(&sharded, DType::F32).unwrap(), DType::F32);
    assert_eq!(max_abs_diff(&out, &reference), 0.0);
    assert!(sharded.unused().is_empty(), "{:?}", sharded.unused());

    // The same tensor in two shards is refused.
    let err = CheckedTensors::from_safetensors_buffers(
        "dup",
        vec![
            ("a.safetensors".into(), safetensors_bytes(&first)),
            ("b.safetensors".into(), safetensors_bytes(&first)),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("appears in both a.safetensors and b.safetensors"),
        "{err}"
    );

    // Tensors the model does not read are reported.
    let mut extra = weights;
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    extra.insert("class_embedding.linear_1.weight".into(), t.clone());
    extra.insert("position_ids".into(), t);
    let src = CheckedTensors::from_tensors("extra", extra);
    assert_eq!(src.unused().len(), src.names().len());
    build(&src, DType::F32).unwrap();
    assert_eq!(
        src.unused(),
        ["class_embedding.linear_1.weight", "position_ids"]
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let safetensors = safetensors_bytes(&unet_weights());
    check_safetensors_bytes("diffusion_pytorch_model.safetensors", &safetensors).unwrap();
    check_safetensors_bytes("x.safetensors", &safetensors[..16]).unwrap();
    // By name (whatever the bytes).
    for name in [
        "v1-5-pruned.ckpt",
        "diffusion_pytorch_model.bin",
        "model.PT",
        "control_sd15_canny.pth",
        "x.pkl",
    ] {
        let err = check_weights_file_name(name).unwrap_err().to_string();
        assert!(
            err.contains("pickle") && err.contains("safetensors"),
            "{name}: {err}"
        );
        assert!(
            check_safetensors_bytes(name, &safetensors).is_err(),
            "{name}"
        );
    }
    // By content, even when named .safetensors.
    let cases: [(&str, &[u8]); 3] = [
        ("zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl"),
        ("pickle", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."),
        (
            "pickle v4",
            b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}",
        ),
    ];
    for (what, bytes) in cases {
        let err = check_safetensors_bytes("renamed.safetensors", bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pickle checkpoint"), "{what}: {err}");
        let err = CheckedTensors::from_safetensors_buffers(
            "renamed",
            vec![("renamed.safetensors".into(), bytes.to_vec())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pickle checkpoint"), "{what}: {err}");
    }
    for bytes in [&b"hello world, not weights"[..], &b"{}"[..], &[][..]] {
        let err = check_safetensors_bytes("x.safetensors", bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
    let err = check_weights_file_name("weights.onnx")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a .safetensors file"), "{err}");
}

#[test]
fn component_file_names() {
    let cases: [(Component, Option<&str>, [&str; 2]); 4] = [
        (
            Component::Unet,
            None,
            [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json",
            ],
        ),
        (
            Component::Vae,
            Some("fp16"),
            [
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors.index.fp16.json",
            ],
        ),
        (
            Component::TextEncoder,
            None,
            ["model.safetensors", "model.safetensors.index.json"],
        ),
        (
            Component::TextEncoder,
            Some("fp16"),
            [
                "model.fp16.safetensors",
                "model.safetensors.index.fp16.json",
            ],
        ),
    ];
    for (component, variant, expected) in cases {
        assert_eq!(
            component_files(component, variant).unwrap(),
            expected,
            "{component:?} {variant:?}"
        );
    }
    assert_eq!(Component::ControlNet.folder(), "controlnet");
    assert_eq!(Component::TextEncoder.folder(), "text_encoder");
    for bad in ["../fp16", "fp16.bin", ""] {
        assert!(
            component_files(Component::Unet, Some(bad)).is_err(),
            "{bad}"
        );
    }
    for (index, needle) in [
        (
            r#"{"weight_map": {"a": "../../etc/passwd.safetensors"}}"#,
            "not a .safetensors",
        ),
        (
            r#"{"weight_map": {"a": "model-00001.bin"}}"#,
            "not a .safetensors",
        ),
        (r#"{"weight_map": {}}"#, "empty"),
        (r#"{"metadata": {}}"#, "weight_map"),
        ("not json", "invalid JSON"),
    ] {
        let err = shard_files(index).unwrap_err().to_string();
        assert!(err.contains(needle), "{index}: {err}");
    }
    let (class, entries) = model_index(
        r#"{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": [null, null], "requires_safety_checker": false,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"]}"#,
    )
    .unwrap();
    assert_eq!(class, "StableDiffusionPipeline");
    let entry = |name: &str, library: &str, class: &str| ModelIndexEntry {
        name: name.into(),
        library: library.into(),
        class: class.into(),
    };
    assert_eq!(
        entries,
        [
            entry("feature_extractor", "transformers", "CLIPImageProcessor"),
            entry("text_encoder", "transformers", "CLIPTextModel"),
            entry("unet", "diffusers", "UNet2DConditionModel"),
        ]
    );
}
