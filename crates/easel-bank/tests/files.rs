//! Bank files (save → load, base-model checks, malformed metadata), the base-model hash, and
//! diffusers / A1111 embedding export → import.
//!
//! Banks are built on a tiny random CLIP (width 32, `common`) with the tokenizer fixture of
//! easel-diffusion (`tools/ref/tokenizer_ref.py`); no other fixture.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use easel_bank::bank::Bank;
use easel_bank::file::{
    base_model_hash, load_bank, read_bank, save_bank, BankMetadata, BaseModelInfo,
};
use easel_bank::interop::{
    export_a1111, export_diffusers, import_embedding, A1111Info, EmbeddingFormat,
};
use easel_bank::layout::Slot;
use easel_bank::preset::Preset;
use easel_bank::show::BankSummary;
use serde_json::Value;

use common::{bank, clip, values};

const HASH: &str = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d1a2b";

fn metadata() -> BankMetadata {
    BankMetadata {
        base_model: "runwayml/stable-diffusion-v1-5".to_string(),
        base_model_hash: HASH.to_string(),
        training: serde_json::json!({"steps": 500, "lr": 0.005}),
        collection_hash: "c0ffee".to_string(),
        created: "2024-05-01T12:00:00Z".to_string(),
    }
}

fn sd15() -> BaseModelInfo {
    BaseModelInfo {
        id: "runwayml/stable-diffusion-v1-5".to_string(),
        hash: HASH.to_string(),
        embedding_dim: 32,
    }
}

fn builtin(name: &str) -> Bank {
    bank(&Preset::builtin(name).unwrap(), &clip(32, 1))
}

/// Every saved tensor of a bank, as bits.
fn bits(b: &Bank) -> Vec<(String, Vec<u32>)> {
    b.params()
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, values(&t).iter().map(|x| x.to_bits()).collect()))
        .collect()
}

fn vector_bits(b: &Bank) -> Vec<u32> {
    values(&b.vectors().unwrap())
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Save → load keeps every parameter bitwise, the layout, prompt, init word and metadata;
/// for the four parameterisation/layout combinations of the built-in presets.
#[test]
fn save_load_round_trip_of_every_parameterisation() {
    let cases = [
        ("prospect", "direct"),
        ("p-plus", "direct"),
        ("lsast", "generated"),
        ("artbank", "implicit"),
    ];
    for (name, kind) in cases {
        let b = builtin(name);
        assert_eq!(b.params().spec().kind(), kind);
        let bytes = save_bank(&b, &metadata()).unwrap();
        let loaded = load_bank(&bytes, "x.bank", &sd15(), false, &Device::Cpu).unwrap();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.metadata, metadata(), "{name}");
        let l = &loaded.bank;
        assert_eq!(l.layout(), b.layout(), "{name}");
        assert_eq!(l.prompt(), b.prompt(), "{name}");
        assert_eq!(l.init_word(), "painting style");
        assert_eq!(l.params().spec(), b.params().spec(), "{name}");
        assert_eq!(bits(l), bits(&b), "{name}");
        assert_eq!(vector_bits(l), vector_bits(&b), "{name}");
        // Saving is deterministic.
        assert!(
            save_bank(l, &metadata()).unwrap() == bytes,
            "{name}: not deterministic"
        );
        let summary = BankSummary::new(l, Some(&loaded.metadata))
            .unwrap()
            .to_string();
        assert!(
            summary.contains(kind) && summary.contains("runwayml"),
            "{summary}"
        );
    }
}

/// A bank for another width fails naming both models; another hash fails unless forced.
#[test]
fn base_model_mismatches_are_explained() {
    let bytes = save_bank(&builtin("ti"), &metadata()).unwrap();
    let other = BaseModelInfo {
        id: "stabilityai/stable-diffusion-2-1".to_string(),
        hash: "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0".to_string(),
        embedding_dim: 64,
    };
    for force in [false, true] {
        let err = load_bank(&bytes, "vangogh.bank", &other, force, &Device::Cpu)
            .unwrap_err()
            .to_string();
        let expected = "bank vangogh.bank was learned on runwayml/stable-diffusion-v1-5 (text \
                        encoder+UNet hash 1a2b3c4d5e6f, 32-d embeddings) but the loaded model is \
                        stabilityai/stable-diffusion-2-1 (hash 9f8e7d6c5b4a, 64-d)";
        assert!(err.starts_with(expected), "{err}");
    }
    let same_dim = BaseModelInfo {
        embedding_dim: 32,
        ..other
    };
    let err = load_bank(&bytes, "vangogh.bank", &same_dim, false, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hash 9f8e7d6c5b4a, 32-d") && err.ends_with("may not transfer"),
        "{err}"
    );
    let forced = load_bank(&bytes, "vangogh.bank", &same_dim, true, &Device::Cpu).unwrap();
    assert!(forced.warning.unwrap().contains("forced"));
}

/// Rewrites the `__metadata__` of safetensors `bytes` with `edit`.
fn edit_metadata(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"].as_object_mut();
    edit(meta.expect("bank files have metadata"));
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    out
}

/// Malformed files fail with a message naming the problem.
#[test]
fn malformed_bank_files_name_the_problem() {
    let bytes = save_bank(&builtin("lsast"), &metadata()).unwrap();
    type Edit = fn(&mut serde_json::Map<String, Value>);
    let cases: [(&str, Edit, &str); 7] = [
        (
            "missing layout",
            |m| {
                m.remove("layout");
            },
            "metadata key \"layout\" is missing",
        ),
        (
            "bad layout JSON",
            |m| {
                m.insert("layout".into(), "{\"stages\": 10,".into());
            },
            "metadata \"layout\" is not valid",
        ),
        (
            "invalid layout",
            |m| {
                m.insert("layout".into(), "{\"stages\":0,\"groups\":\"single\",\"num_groups\":1,\"tokens_per_slot\":1,\"stage_map\":\"uniform\"}".into());
            },
            "stages must be at least 1",
        ),
        (
            "unknown parameterisation",
            |m| {
                m.insert("parameterisation".into(), "{\"kind\":\"lora\"}".into());
            },
            "metadata \"parameterisation\" is not valid",
        ),
        (
            "other format",
            |m| {
                m.insert("format".into(), "something".into());
            },
            "not an easel bank file",
        ),
        (
            "newer version",
            |m| {
                m.insert("format_version".into(), "2".into());
            },
            "format version \"2\" is not supported",
        ),
        (
            "bad time",
            |m| {
                m.insert("created".into(), "yesterday".into());
            },
            "not an RFC 3339 UTC time",
        ),
    ];
    for (what, edit, expected) in cases {
        let bad = edit_metadata(&bytes, edit);
        let err = load_bank(&bad, "x.bank", &sd15(), false, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bank x.bank: "), "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
    }
    // A tensor of the wrong shape for the layout.
    let ti = save_bank(&builtin("ti"), &metadata()).unwrap();
    let bad = edit_metadata(&ti, |m| {
        m.insert(
            "layout".into(),
            "{\"stages\":1,\"groups\":\"single\",\"num_groups\":1,\"tokens_per_slot\":3,\"stage_map\":\"uniform\"}".into(),
        );
    });
    let err = read_bank(&bad, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("bank.vectors has shape [4, 32], expected [3, 32]"),
        "{err}"
    );
    // An embedding without metadata, and a pickle.
    let plain = export_diffusers(&builtin("ti"), "x").unwrap().embeddings;
    let err = read_bank(&plain, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no metadata"), "{err}");
}

/// PyTorch pickles (zip `torch.save` and legacy pickle streams) are not bank files, pointing to
/// safetensors; as embeddings they are read only as data (official checkpoints, A1111 `.pt`:
/// `tests/official_import.rs`), and broken ones say why.
#[test]
fn pickles_are_refused() {
    // (bytes, what the import error says)
    let cases: [(&[u8], &str); 2] = [
        (
            b"PK\x03\x04archive/data.pkl....",
            "not a readable PyTorch zip checkpoint",
        ),
        (
            b"\x80\x02\x8a\x0alZ\xfc\x9c",
            "is a PyTorch pickle (.bin/.pt/.ckpt); easel does not load pickles",
        ),
    ];
    for (bytes, problem) in cases {
        let err = import_embedding(bytes, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(problem), "{err}");
        let err = read_bank(bytes, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("PyTorch pickle"), "{err}");
    }
}

/// A safetensors file whose header length's low bytes read like a pickle's PROTO opcode
/// (0x80, 2..=5: headers of 0x0280 to 0x05ff bytes, as larger banks have) is read, not refused.
#[test]
fn safetensors_with_a_pickle_like_length_are_read() {
    let values: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    for len in [0x0280usize, 0x0480, 0x0580] {
        let json = format!(
            r#"{{"<ink>":{{"dtype":"F32","shape":[1,8],"data_offsets":[0,{}]}}}}"#,
            values.len()
        );
        let mut bytes = (len as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(format!("{json:<len$}").as_bytes());
        bytes.extend_from_slice(&values);
        assert_eq!((bytes[0], bytes[1]), (0x80, (len >> 8) as u8));
        let imported = import_embedding(&bytes, None, &Device::Cpu).unwrap();
        assert_eq!(imported.name.as_deref(), Some("<ink>"));
    }
}

/// One-slot banks export to diffusers and A1111 and import back bitwise; the files have the
/// formats' keys and shapes.
#[test]
fn single_slot_export_import_round_trip() {
    let b = builtin("ti");
    let expected = values(&b.slot_vectors(Slot { stage: 0, group: 0 }).unwrap());
    let export = export_diffusers(&b, "vangogh").unwrap();
    assert!(export.sidecar.is_none());
    let raw = candle_core::safetensors::load_buffer(&export.embeddings, &Device::Cpu).unwrap();
    assert_eq!(raw["<vangogh>"].dims(), [4, 32]);
    let info = A1111Info {
        step: 500,
        base_model: "v1-5-pruned".to_string(),
        base_model_hash: "6ce0161689".to_string(),
    };
    let a1111 = export_a1111(&b, "vangogh", None, &info).unwrap();
    let raw = candle_core::safetensors::load_buffer(&a1111, &Device::Cpu).unwrap();
    assert_eq!(raw.keys().collect::<Vec<_>>(), ["string_to_param.*"]);
    for (bytes, format, name) in [
        (&export.embeddings, EmbeddingFormat::Diffusers, "<vangogh>"),
        (&a1111, EmbeddingFormat::A1111, "vangogh"),
    ] {
        let imported = import_embedding(bytes, None, &Device::Cpu).unwrap();
        assert_eq!(imported.format, format);
        assert_eq!(imported.name.as_deref(), Some(name));
        let l = imported.bank.layout();
        assert_eq!((l.stages(), l.num_groups(), l.tokens_per_slot()), (1, 1, 4));
        let got = values(&imported.bank.vectors().unwrap());
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{format:?}"
        );
    }
}

/// A multi-slot bank (LSAST: 10 stages × 3 groups, generated) exports one diffusers token
/// per slot plus a sidecar, which our importer turns back into a direct bank with the same
/// layout and bitwise the same vectors. A1111 refuses it unless a slot is chosen.
#[test]
fn multi_slot_export_import_round_trip() {
    let b = builtin("lsast");
    let export = export_diffusers(&b, "<vangogh>").unwrap();
    let sidecar = export.sidecar.clone().unwrap();
    let raw = candle_core::safetensors::load_buffer(&export.embeddings, &Device::Cpu).unwrap();
    assert_eq!(raw.len(), 30);
    assert_eq!(raw["<vangogh-s9-g2>"].dims(), [1, 32]);
    let json: Value = serde_json::from_str(&sidecar).unwrap();
    assert_eq!(json["slots"][5]["token"], "<vangogh-s1-g2>");
    assert_eq!(json["slots"][5]["layers"], "up");
    let imported = import_embedding(&export.embeddings, Some(&sidecar), &Device::Cpu).unwrap();
    assert_eq!(imported.format, EmbeddingFormat::DiffusersWithSidecar);
    assert_eq!(imported.bank.layout(), b.layout());
    assert_eq!(imported.bank.prompt().template, b.prompt().template);
    assert_eq!(vector_bits(&imported.bank), vector_bits(&b));
    // Without the sidecar the tokens are not one embedding.
    let err = import_embedding(&export.embeddings, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("30 tokens") && err.contains("sidecar"),
        "{err}"
    );
    // A1111: refused without a slot, one slot with it.
    let info = A1111Info {
        step: 1,
        base_model: "sd".to_string(),
        base_model_hash: "0".to_string(),
    };
    let err = export_a1111(&b, "v", None, &info).unwrap_err().to_string();
    assert!(
        err.contains("30 slots") && err.contains("diffusers"),
        "{err}"
    );
    let slot = Slot { stage: 3, group: 1 };
    let one = export_a1111(&b, "v", Some(slot), &info).unwrap();
    let imported = import_embedding(&one, None, &Device::Cpu).unwrap();
    assert_eq!(
        values(&imported.bank.vectors().unwrap()),
        values(&b.slot_vectors(slot).unwrap())
    );
}

/// Embeddings of other tools: a `[D]` diffusers token, kohya's `emb_params` in f16.
#[test]
fn foreign_embeddings_import() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let row = Tensor::from_vec(common::uniform(32, 3, 0.3), 32, &dev).unwrap();
    let path = dir.path().join("learned_embeds.safetensors");
    row.save_safetensors("<cat-toy>", &path).unwrap();
    let imported = import_embedding(&std::fs::read(&path).unwrap(), None, &dev).unwrap();
    assert_eq!(imported.name.as_deref(), Some("<cat-toy>"));
    assert_eq!(imported.bank.layout().tokens_per_slot(), 1);
    assert_eq!(values(&imported.bank.vectors().unwrap()), values(&row));
    let path = dir.path().join("kohya.safetensors");
    let half = Tensor::from_vec(common::uniform(64, 4, 0.3), (2, 32), &dev)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    half.save_safetensors("emb_params", &path).unwrap();
    let imported = import_embedding(&std::fs::read(&path).unwrap(), None, &dev).unwrap();
    assert_eq!(imported.format, EmbeddingFormat::A1111);
    assert_eq!(values(&imported.bank.vectors().unwrap()), values(&half));
}

/// The base-model hash: deterministic, equal for f32 and f16 copies, sensitive to the hashed
/// tensors only, and refusing UNet tensors without diffusers keys.
#[test]
fn base_model_hash_covers_the_documented_tensors() {
    let dev = Device::Cpu;
    let t = |seed: u64, dims: &[usize]| {
        let n = dims.iter().product();
        Tensor::from_vec(common::uniform(n, seed, 0.5), dims, &dev).unwrap()
    };
    let emb = t(1, &[50, 8]);
    let unet: HashMap<String, Tensor> = [
        ("conv_in.weight", t(2, &[4, 4, 3, 3])),
        ("conv_out.weight", t(3, &[4, 4, 3, 3])),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            t(4, &[4, 8]),
        ),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
            t(5, &[4, 8]),
        ),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
            t(6, &[4, 4]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let hash = |emb: &Tensor, unet: &HashMap<String, Tensor>| {
        base_model_hash(emb, unet.iter().map(|(k, v)| (k.as_str(), v))).unwrap()
    };
    let h = hash(&emb, &unet);
    assert_eq!(h.len(), 64);
    assert_eq!(hash(&emb, &unet), h);
    let half: HashMap<_, _> = unet
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    assert_eq!(hash(&emb.to_dtype(DType::F16).unwrap(), &half), h);
    let mut ignored = unet.clone();
    ignored.insert(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight".into(),
        t(7, &[4, 4]),
    );
    assert_eq!(hash(&emb, &ignored), h);
    let mut changed = unet.clone();
    changed.insert(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight".into(),
        t(8, &[4, 8]),
    );
    assert_ne!(hash(&emb, &changed), h);
    assert_ne!(hash(&t(9, &[50, 8]), &unet), h);
    let mut no_conv_in = unet.clone();
    no_conv_in.remove("conv_in.weight");
    let err = base_model_hash(&emb, no_conv_in.iter().map(|(k, v)| (k.as_str(), v)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv_in.weight"), "{err}");
}
