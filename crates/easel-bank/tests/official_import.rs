//! The official LSAST and ArtBank checkpoints (`embeddings_gs-*.pt`, pickled prompt
//! generators) import as banks holding the vectors the official code computes, and pickles
//! naming anything else are refused.
//!
//! Fixtures in `tests/fixtures/official/`, written by `tools/ref/official_ckpt_ref.py` (the
//! official classes under their module names, tiny random weights, width 16).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use easel_bank::file::{read_bank, save_bank};
use easel_bank::interop::{import_embedding, imported_metadata, EmbeddingFormat};
use easel_bank::layout::SlotMap;
use easel_bank::official::OfficialKind;
use easel_bank::preset::Preset;

mod common;

use common::{max_abs_diff, max_rel_diff};

fn fixture(path: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official");
    std::fs::read(dir.join(path)).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official");
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn official_checkpoints_import_with_the_official_vectors() {
    let expected = expected();
    // (file, kind, preset, stages, groups, expected vectors)
    let cases = [
        (
            "lsast/embeddings_gs-99.pt",
            OfficialKind::Lsast,
            "lsast-official",
            10,
            3,
            "lsast.vectors",
        ),
        (
            "artbank/embeddings_gs-99.pt",
            OfficialKind::ArtBank,
            "artbank",
            1,
            1,
            "artbank.vector",
        ),
    ];
    for (file, kind, preset, stages, groups, want) in cases {
        let imported = import_embedding(&fixture(file), None, &Device::Cpu).unwrap();
        assert_eq!(imported.format, EmbeddingFormat::Official(kind), "{file}");
        let bank = &imported.bank;
        let layout = bank.layout();
        assert_eq!((layout.stages(), layout.num_groups()), (stages, groups));
        assert_eq!(layout.tokens_per_slot(), 1);
        let preset = Preset::builtin(preset).unwrap();
        assert_eq!(bank.prompt(), &preset.prompt, "{file}: the preset's prompt");
        assert_eq!(imported.inference, preset.inference, "{file}");

        let vectors = bank.vectors().unwrap().reshape(((), 16)).unwrap();
        let err = max_rel_diff(&vectors, &expected[want]);
        println!("{file}: vectors max rel err {err:.2e}");
        assert!(err <= 1e-5, "{file}: vectors rel err {err}");

        // The bank file keeps the vectors and the preset's inference defaults.
        let meta = imported_metadata("embeddings_gs-99.pt", &imported);
        let (read, meta) = read_bank(&save_bank(bank, &meta).unwrap(), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&read.vectors().unwrap(), &bank.vectors().unwrap());
        assert_eq!(diff, 0.0, "{file}: the bank file holds the same vectors");
        assert_eq!(meta.inference_defaults().unwrap(), preset.inference);
        assert_eq!(read.layout(), layout);
    }
}

/// Stage k's layer group g reads generated vector k + g, as the official `cond[k:k+3]`.
#[test]
fn lsast_checkpoints_read_overlapping_windows() {
    let imported =
        import_embedding(&fixture("lsast/embeddings_gs-99.pt"), None, &Device::Cpu).unwrap();
    let bank = imported.bank;
    assert_eq!(bank.layout().slot_map(), SlotMap::Windows);
    let generated = &expected()["lsast.vectors"];
    for slot in bank.layout().slots() {
        let got = bank.slot_vectors(slot).unwrap();
        let want = generated.narrow(0, slot.stage + slot.group, 1).unwrap();
        assert!(max_rel_diff(&got, &want) <= 1e-5, "{slot:?}");
    }
}

#[test]
fn pickles_naming_other_globals_are_refused() {
    // (file, the global the refusal names)
    let cases = [
        ("evil/embeddings_gs-1.pt", "posix.system"),
        (
            "other/embeddings_gs-1.pt",
            "torch.nn.modules.activation.GELU",
        ),
    ];
    for (file, global) in cases {
        let err = import_embedding(&fixture(file), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("references {global}, which could run code")),
            "{file}: {err}"
        );
        assert!(
            err.contains("ldm.modules.embedding_manager.TransformerBlock"),
            "{file}: the refusal lists what is accepted: {err}"
        );
    }
}

/// AUTOMATIC1111's own `.pt` embeddings import as their safetensors form does.
#[test]
fn a1111_pt_embeddings_import_as_data() {
    let imported = import_embedding(&fixture("a1111/ink.pt"), None, &Device::Cpu).unwrap();
    assert_eq!(imported.format, EmbeddingFormat::A1111);
    let layout = imported.bank.layout();
    assert_eq!(
        (
            layout.stages(),
            layout.num_groups(),
            layout.tokens_per_slot()
        ),
        (1, 1, 2)
    );
    let rows = imported.bank.vectors().unwrap().reshape((2, 16)).unwrap();
    assert_eq!(max_rel_diff(&rows, &expected()["a1111.rows"]), 0.0);
    assert!(imported.inference.is_empty());
}
