//! Replays every committed fuzz input (`fuzz/corpus/<target>/`, the campaign's minimised
//! corpus, and `fuzz/regressions/<target>/`, each crash the campaign found) through its target
//! on stable Rust: a panic names the file. Also checks that the targets in `fuzz/` and
//! [`easel_fuzz::TARGETS`] are the same set and that each has a corpus to replay.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none where it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn the_fuzz_crate_builds_exactly_the_library_targets() {
    let built: BTreeSet<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = easel_fuzz::TARGETS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(built, listed);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

#[test]
fn every_corpus_and_regression_input_is_handled_without_a_panic() {
    for (name, target) in easel_fuzz::TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "target {name} has no corpus to replay");
        let regressions = files_in(&fuzz_dir().join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("target {name} panicked on {}", file.display());
            }
        }
    }
}
