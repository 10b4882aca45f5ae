//! `easel_fast::import::adain` on the tiny checkpoints of `tools/ref/adain_ref.py`: widths read
//! from the shapes, checked loading with errors that name the tensor, and the safetensors
//! conversion (same tensors, metadata).

use candle_core::{DType, Device, Result, Tensor};
use easel_fast::adain::Config;
use easel_fast::import::adain::{import_adain, load_adain, read_weights, Part};
use std::collections::HashMap;

fn read(file: &str) -> Result<HashMap<String, Tensor>> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    read_weights(&std::fs::read(path)?, file)
}

#[test]
fn widths_come_from_the_shapes() -> Result<()> {
    assert_eq!(
        Part::Vgg.widths(&read("adain_vgg_tiny.pth")?, "v")?,
        Config::tiny()
    );
    assert_eq!(
        Part::Decoder.widths(&read("adain_decoder_tiny.pth")?, "d")?,
        Config::tiny()
    );
    let err = Part::Vgg
        .widths(&read("adain_decoder_tiny.pth")?, "decoder.pth")
        .expect_err("a decoder is not an encoder")
        .to_string();
    assert!(
        err.contains("decoder.pth: tensor 2.weight is missing (expected shape [64, 3, 3, 3]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn loading_checks_every_tensor_and_the_pair() -> Result<()> {
    let dev = Device::Cpu;
    let vgg = read("adain_vgg_tiny.pth")?;
    let mut decoder = read("adain_decoder_tiny.pth")?;
    decoder.remove("8.bias");
    let err = load_adain(vgg.clone(), "v", decoder, "d.pth", &dev)
        .expect_err("8.bias is missing")
        .to_string();
    assert!(
        err.contains("d.pth: tensor 8.bias is missing (expected shape [32] for AdaIN's decoder.pth with widths [8, 16, 32, 64])"),
        "{err}"
    );
    let mut wide = read("adain_decoder_tiny.pth")?;
    wide.insert(
        "1.weight".into(),
        Tensor::zeros((32, 128, 3, 3), DType::F32, &dev)?,
    );
    let err = load_adain(vgg, "v.pth", wide, "d.pth", &dev)
        .expect_err("widths differ")
        .to_string();
    assert!(
        err.contains("v.pth has widths [8, 16, 32, 64] but the decoder d.pth has [8, 16, 32, 128]"),
        "{err}"
    );
    Ok(())
}

#[test]
fn conversion_keeps_the_tensors_and_says_what_it_is() -> Result<()> {
    let path = format!(
        "{}/tests/fixtures/adain_decoder_tiny.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(path)?;
    let extra = [("source_sha256".to_string(), "abc".to_string())];
    let out = import_adain(&bytes, "decoder.pth", Part::Decoder, &extra)?;
    let original = read("adain_decoder_tiny.pth")?;
    let converted = read_weights(&out, "decoder.safetensors")?;
    assert_eq!(converted.len(), original.len());
    for (name, t) in &original {
        let c = &converted[name];
        assert_eq!(c.dims(), t.dims(), "{name}");
        let diff = (c - t)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name}");
    }
    let n = u64::from_le_bytes(out[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&out[8..8 + n]).expect("JSON header");
    for kv in [
        r#""format":"easel-adain""#,
        r#""kind":"adain-decoder""#,
        r#""widths":"[8, 16, 32, 64]""#,
        r#""source_sha256":"abc""#,
    ] {
        assert!(header.contains(kv), "{kv} in {header}");
    }
    Ok(())
}
