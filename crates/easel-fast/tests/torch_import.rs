//! `easel_core::torch_checkpoint`: PyTorch checkpoints read without executing anything.
//!
//! Fixtures (`tests/fixtures/adain_*.pth`, expected values in `adain_cases.safetensors`) are
//! written by `tools/ref/adain_ref.py` with `torch.save` (zip and legacy formats); the malicious
//! ones are hand-assembled pickles that reference `os.system` / `builtins.eval` / INST.
//! The AdaIN parity test (`adain_parity.rs`) loads its weights through the same reader.

use candle_core::{DType, Device, Result, Tensor};
use easel_core::torch_checkpoint::{read_torch_checkpoint, torch_to_safetensors};
use std::collections::HashMap;

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn expected() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/adain_cases.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// `(name, dtype, shape)` of the tensors `adain_ref.py` puts in `adain_import_views*.pth`.
const VIEWS: &[(&str, DType, &[usize])] = &[
    ("f32", DType::F32, &[7]),
    ("transposed", DType::F32, &[6, 4]),
    ("slice", DType::F32, &[2, 3]),
    ("f16", DType::F16, &[2, 2]),
    ("bf16", DType::BF16, &[3]),
    ("f64", DType::F64, &[2]),
    ("i64", DType::I64, &[1, 3]),
    ("i32", DType::I32, &[2]),
    ("u8", DType::U8, &[3]),
    ("bool", DType::U8, &[3]),
    ("scalar", DType::F32, &[]),
    ("empty", DType::F32, &[0, 3]),
    ("param", DType::F32, &[3]),
];

fn check_views(tensors: &[(String, Tensor)], file: &str) -> Result<()> {
    let exp = expected()?;
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = VIEWS.iter().map(|v| v.0).collect();
    assert_eq!(names, want, "{file}: names in checkpoint order");
    for ((name, t), (_, dtype, shape)) in tensors.iter().zip(VIEWS) {
        assert_eq!(t.dtype(), *dtype, "{file}: {name} dtype");
        assert_eq!(t.dims(), *shape, "{file}: {name} shape");
        // All values are exactly representable in f64: compare exactly.
        let got = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let want = exp[&format!("views.{name}")]
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(got, want, "{file}: {name} values");
    }
    Ok(())
}

#[test]
fn views_dtypes_and_shared_storages_read_like_pytorch() -> Result<()> {
    for file in ["adain_import_views.pth", "adain_import_views_legacy.pth"] {
        check_views(&read_torch_checkpoint(&fixture_bytes(file), file)?, file)?;
    }
    Ok(())
}

#[test]
fn safetensors_conversion_keeps_names_dtypes_and_values() -> Result<()> {
    let file = "adain_import_views.pth";
    let st = torch_to_safetensors(&fixture_bytes(file), file)?;
    let loaded = candle_core::safetensors::load_buffer(&st, &Device::Cpu)?;
    // safetensors files are unordered: put them back in the expected order.
    let ordered: Vec<(String, Tensor)> = VIEWS
        .iter()
        .map(|(n, _, _)| (n.to_string(), loaded[*n].clone()))
        .collect();
    assert_eq!(loaded.len(), VIEWS.len());
    check_views(&ordered, "converted safetensors")
}

/// State-dict keys of naoto0804/pytorch-AdaIN `net.py`'s `decoder` Sequential.
const DECODER_CONVS: [usize; 9] = [1, 5, 8, 11, 14, 18, 21, 25, 28];

#[test]
fn zip_and_legacy_formats_give_the_same_decoder() -> Result<()> {
    let zip = read_torch_checkpoint(
        &fixture_bytes("adain_decoder_tiny.pth"),
        "adain_decoder_tiny.pth",
    )?;
    let legacy = read_torch_checkpoint(
        &fixture_bytes("adain_decoder_tiny_legacy.pth"),
        "adain_decoder_tiny_legacy.pth",
    )?;
    let want: Vec<String> = DECODER_CONVS
        .iter()
        .flat_map(|i| [format!("{i}.weight"), format!("{i}.bias")])
        .collect();
    let names: Vec<&String> = zip.iter().map(|(n, _)| n).collect();
    assert_eq!(names, want.iter().collect::<Vec<_>>());
    assert_eq!(zip[0].1.dims(), [32, 64, 3, 3]); // tiny widths: 512/8 → 256/8
    assert_eq!(zip[17].1.dims(), [3]);
    assert_eq!(zip.len(), legacy.len());
    for ((n1, t1), (n2, t2)) in zip.iter().zip(&legacy) {
        assert_eq!(n1, n2);
        assert_eq!(t1.dims(), t2.dims(), "{n1}");
        let diff = (t1 - t2)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{n1}");
    }
    Ok(())
}

#[test]
fn vgg_checkpoint_keeps_all_53_module_indices() -> Result<()> {
    let vgg = read_torch_checkpoint(&fixture_bytes("adain_vgg_tiny.pth"), "vgg")?;
    // 17 convs: the 1×1 preprocessing conv and the 16 3×3 convs up to conv5_4 (index 51).
    assert_eq!(vgg.len(), 34);
    assert_eq!(vgg[0].0, "0.weight");
    assert_eq!(vgg[0].1.dims(), [3, 3, 1, 1]);
    assert_eq!(vgg[2].0, "2.weight");
    assert_eq!(vgg[33].0, "51.bias");
    assert_eq!(vgg[33].1.dims(), [64]);
    Ok(())
}

#[test]
fn code_referencing_pickles_are_refused() {
    let cases = [
        ("adain_malicious_global.pth", "it references os.system, "),
        (
            "adain_malicious_stack_global.pth",
            "it references builtins.eval, ",
        ),
        ("adain_malicious_in_dict.pth", "it references os.system, "),
        (
            "adain_malicious_inst.pth",
            "it uses pickle opcode INST (0x69)",
        ),
    ];
    for (file, what) in cases {
        let err = read_torch_checkpoint(&fixture_bytes(file), file)
            .expect_err(file)
            .to_string();
        assert!(
            err.starts_with(&format!("refusing to load {file}: {what}")),
            "{file}: {err}"
        );
        assert!(
            err.ends_with("only plain tensor checkpoints are accepted"),
            "{file}: {err}"
        );
    }
    let err = read_torch_checkpoint(&fixture_bytes("adain_malicious_global.pth"), "x.pth")
        .expect_err("refused")
        .to_string();
    assert_eq!(
        err,
        "refusing to load x.pth: it references os.system, which could run code; only plain \
         tensor checkpoints are accepted"
    );
}

#[test]
fn corrupt_and_truncated_files_are_errors() {
    let vgg = fixture_bytes("adain_vgg_tiny.pth");
    let legacy = fixture_bytes("adain_decoder_tiny_legacy.pth");
    let mut flipped = vgg.clone();
    let mid = flipped.len() / 2; // inside a conv weight storage
    flipped[mid] ^= 0x55;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated zip",
            vgg[..vgg.len() / 2].to_vec(),
            "not a readable PyTorch zip checkpoint",
        ),
        ("flipped storage byte", flipped, "checksum"),
        (
            "truncated pickle",
            fixture_bytes("adain_corrupt_pkl.pth"),
            "corrupt pickle at byte 27: unterminated GLOBAL name",
        ),
        (
            "truncated legacy stream",
            legacy[..legacy.len() - 100].to_vec(),
            "truncated at storage",
        ),
        (
            "legacy stream cut in its pickle",
            legacy[..300].to_vec(),
            "unexpected end of data (legacy checkpoint, object)",
        ),
        (
            "not a checkpoint",
            b"GIF89a....".to_vec(),
            "not a PyTorch checkpoint",
        ),
        ("empty", Vec::new(), "not a PyTorch checkpoint"),
    ];
    for (what, bytes, msg) in cases {
        let err = read_torch_checkpoint(&bytes, "bad.pth")
            .expect_err(what)
            .to_string();
        assert!(err.contains(msg), "{what}: {err}");
        assert!(err.contains("bad.pth"), "{what}: {err}");
    }
}
