//! `easel_fast::import::stytr`: the sizes read from the weights' shapes, the key and shape checks,
//! and the safetensors conversion of the tiny `torch.save` checkpoints of
//! `tools/ref/stytr_ref.py`, which must paint what PyTorch painted (`stytr_cases.safetensors`).

use candle_core::{DType, Device, Result, Tensor};
use easel_fast::import::adain::read_weights;
use easel_fast::import::stytr::{
    embedding_width, import_stytr, load_stytr, Part, PosShape, Settings, TransformerShapes,
};
use easel_fast::stytr::{Config, PositionalEncoding};
use std::collections::HashMap;

#[allow(dead_code)] // the AdaIN fixture loader in common is not used here
mod common;
use common::{image, max_abs_diff, TOLERANCE};

fn fixture_bytes(file: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn tensors(file: &str) -> HashMap<String, Tensor> {
    read_weights(&fixture_bytes(file), file).unwrap()
}

/// The tiny networks' settings: 4 heads, CAPE grid 6, pyramid windows 2/4/8.
fn tiny_settings() -> Settings {
    Settings {
        nhead: 4,
        cape_grid: 6,
        pyramid_windows: vec![2, 4, 8],
    }
}

#[test]
fn shapes_of_the_tiny_checkpoints_give_the_tiny_configs() -> Result<()> {
    for (file, want) in [
        ("stytr_transformer_cape_tiny.pth", Config::tiny()),
        ("stytr_transformer_ppe_tiny.pth", Config::tiny_pyramidal()),
    ] {
        let t = tensors(file);
        let shapes = TransformerShapes::infer(&t, file)?;
        shapes.check(&t, file)?;
        // Every tensor of the file is used (the reference module has no others).
        assert_eq!(shapes.expected().len(), t.len(), "{file}");
        assert_eq!(shapes.config(&tiny_settings(), [4, 8, 16, 32])?, want);
    }
    let ppe = tensors("stytr_transformer_ppe_tiny.pth");
    assert_eq!(
        TransformerShapes::infer(&ppe, "ppe")?.pos,
        PosShape::Pyramidal {
            scales: 3,
            branch_channels: 4
        }
    );
    assert_eq!(
        embedding_width(&tensors("stytr_embedding_tiny.pth"), "e")?,
        32
    );
    Ok(())
}

/// The published checkpoints' keys and shapes (`stytr_original_keys.json`): the inferred sizes
/// are the published ones, and the keys checked are exactly the file's.
#[test]
fn published_layout_infers_the_original_config() -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stytr_original_keys.json"
    );
    let keys: HashMap<String, HashMap<String, Vec<usize>>> =
        serde_json::from_str(&std::fs::read_to_string(path)?).map_err(candle_core::Error::wrap)?;
    let zeros = |part: &str| -> Result<HashMap<String, Tensor>> {
        keys[part]
            .iter()
            .map(|(k, shape)| {
                Ok((
                    k.clone(),
                    Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?,
                ))
            })
            .collect()
    };
    let transformer = zeros("transformer")?;
    let shapes = TransformerShapes::infer(&transformer, "t")?;
    let expected: HashMap<String, Vec<usize>> = shapes.expected().into_iter().collect();
    assert_eq!(expected, keys["transformer"]);
    let widths = easel_fast::import::stytr::decoder_widths(&zeros("decoder")?, "d")?;
    assert_eq!(
        shapes.config(&Settings::published(), widths)?,
        Config::original()
    );
    assert_eq!(embedding_width(&zeros("embedding")?, "e")?, 512);
    Ok(())
}

/// `import_stytr` of each tiny `.pth`, read back as safetensors: the network paints the golden
/// PyTorch outputs.
#[test]
fn imported_weights_paint_the_pytorch_output() -> Result<()> {
    let convert =
        |file: &str, part: Part| -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
            let extra = [("source".to_string(), file.to_string())];
            let bytes = import_stytr(&fixture_bytes(file), file, part, &extra)?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(candle_core::Error::wrap)?;
            let meta = meta.metadata().clone().unwrap_or_default();
            assert_eq!(meta["format"], "easel-stytr");
            assert_eq!(meta["kind"], part.kind());
            assert_eq!(meta["source"], file);
            Ok((read_weights(&bytes, file)?, meta))
        };
    let (embedding, meta) = convert("stytr_embedding_tiny.pth", Part::Embedding)?;
    assert_eq!(meta["d_model"], "32");
    let (decoder, meta) = convert("stytr_decoder_tiny.pth", Part::Decoder)?;
    assert_eq!(meta["widths"], "[4, 8, 16, 32]");
    let fx = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stytr_cases.safetensors"
        ),
        &Device::Cpu,
    )?;
    let content = image(&fx["image.content"])?;
    let style = image(&fx["image.style"])?;
    for (case, file, pos) in [
        ("cape", "stytr_transformer_cape_tiny.pth", "cape"),
        (
            "ppe",
            "stytr_transformer_ppe_tiny.pth",
            "pyramidal (3 scales, 4 channels per conv)",
        ),
    ] {
        let (transformer, meta) = convert(file, Part::Transformer)?;
        assert_eq!(meta["positional_encoding"], pos);
        assert_eq!(meta["d_model"], "32");
        assert_eq!(meta["dim_feedforward"], "64");
        assert_eq!(meta["encoder_layers"], "3");
        assert_eq!(meta["decoder_layers"], "3");
        let net = load_stytr(
            (transformer, file),
            (embedding.clone(), "embedding"),
            (decoder.clone(), "decoder"),
            &tiny_settings(),
            &Device::Cpu,
        )?;
        let err = max_abs_diff(
            &net.stylize(&content, &style)?,
            &fx[&format!("expected.{case}")],
        )?;
        println!("{case}: max abs err {err:.2e}");
        assert!(err <= TOLERANCE, "{case}: {err}");
    }
    // The published grid 18 (a setting, not in the weights) gives the cape18 case.
    let net = load_stytr(
        (tensors("stytr_transformer_cape_tiny.pth"), "t"),
        (embedding, "embedding"),
        (decoder, "decoder"),
        &Settings {
            cape_grid: 18,
            ..tiny_settings()
        },
        &Device::Cpu,
    )?;
    assert_eq!(net.config().pos, PositionalEncoding::Cape { grid: 18 });
    let err = max_abs_diff(&net.stylize(&content, &style)?, &fx["expected.cape18"])?;
    assert!(err <= TOLERANCE, "cape18: {err}");
    Ok(())
}

fn load_err(
    transformer: HashMap<String, Tensor>,
    embedding: HashMap<String, Tensor>,
    settings: &Settings,
) -> String {
    load_stytr(
        (transformer, "t.pth"),
        (embedding, "e.pth"),
        (tensors("stytr_decoder_tiny.pth"), "d.pth"),
        settings,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn wrong_weights_are_named_with_the_shape_expected() -> Result<()> {
    let cape = || tensors("stytr_transformer_cape_tiny.pth");
    let embedding = || tensors("stytr_embedding_tiny.pth");
    let settings = tiny_settings();

    // Another network's file given as the transformer.
    let err = load_err(tensors("stytr_decoder_tiny.pth"), embedding(), &settings);
    assert!(
        err.contains("t.pth: tensor decoder.norm.weight is missing (expected shape [d_model] ([512] published); is this StyTr²'s transformer_iter_160000.pth?)"),
        "{err}"
    );
    // One tensor missing, one misshapen.
    let mut t = cape();
    t.remove("decoder.layers.2.multihead_attn.out_proj.bias");
    let err = load_err(t, embedding(), &settings);
    assert!(
        err.contains(
            "tensor decoder.layers.2.multihead_attn.out_proj.bias is missing (expected shape [32]"
        ),
        "{err}"
    );
    let mut t = cape();
    t.insert(
        "new_ps.weight".into(),
        Tensor::zeros((32, 32, 3, 3), DType::F32, &Device::Cpu)?,
    );
    let err = load_err(t, embedding(), &settings);
    assert!(
        err.contains("tensor new_ps.weight has shape [32, 32, 3, 3], expected [32, 32, 1, 1]"),
        "{err}"
    );
    // The transformer given as the embedding.
    let err = load_err(cape(), cape(), &settings);
    assert!(
        err.contains("e.pth: tensor proj.weight is missing (expected shape [d_model, 3, 8, 8] ([512, 3, 8, 8] published)"),
        "{err}"
    );
    // An embedding of another width.
    let mut e = embedding();
    e.insert(
        "proj.weight".into(),
        Tensor::zeros((16, 3, 8, 8), DType::F32, &Device::Cpu)?,
    );
    e.insert(
        "proj.bias".into(),
        Tensor::zeros(16, DType::F32, &Device::Cpu)?,
    );
    let err = load_err(cape(), e, &settings);
    assert!(err.contains("the embedding e.pth 16"), "{err}");
    // Settings the shapes contradict.
    let err = load_err(
        cape(),
        embedding(),
        &Settings {
            nhead: 5,
            ..tiny_settings()
        },
    );
    assert!(
        err.contains("5 attention heads do not divide the transformer's d_model 32"),
        "{err}"
    );
    let err = load_err(
        tensors("stytr_transformer_ppe_tiny.pth"),
        embedding(),
        &Settings {
            pyramid_windows: vec![8, 16],
            ..tiny_settings()
        },
    );
    assert!(
        err.contains("pyramidal encoding has 3 scales but 2 window sizes were given"),
        "{err}"
    );
    // import_stytr refuses the wrong part too, naming the missing tensor.
    let err = import_stytr(
        &fixture_bytes("stytr_transformer_cape_tiny.pth"),
        "x.pth",
        Part::Decoder,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("x.pth: tensor 28.weight is missing"), "{err}");
    assert!(
        err.contains("StyTr²'s decoder_iter_160000.pth has the layout of AdaIN's decoder"),
        "{err}"
    );
    Ok(())
}
