//! Helpers shared by the integration tests of the `easel` binary: running it, reading its
//! output, and the tiny models of easel-pipeline's fixtures in a Hugging Face cache layout.
//!
//! Every test binary compiles this module with `mod common;` and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod banks;

/// The `easel` binary with `args`, without the backtrace variables: candle appends a backtrace
/// to its errors when these are set; users who set them want that, but the one-line error
/// contract is about the default environment.
pub fn easel_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_easel"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "easel failed: {}", stderr(out));
}

pub fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// easel-pipeline's `tests/fixtures/` (the tiny random SD and ControlNet, written by
/// `tools/ref/pipeline_ref.py`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-pipeline/tests/fixtures")
}

/// Copies `src` (a diffusers folder) into `cache/models--org--name` as huggingface_hub lays it
/// out: the content in `blobs/`, `snapshots/<hash>/...` linking to it, `refs/main` naming the
/// hash.
pub fn add_to_cache(cache: &Path, repo: &str, src: &Path, hash: &str) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snapshot = repo_dir.join("snapshots").join(hash);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), hash).unwrap();
    let mut stack = vec![PathBuf::new()];
    let mut n = 0;
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(src.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(rel);
                continue;
            }
            n += 1;
            let blob = blobs.join(format!("blob{n:04}"));
            std::fs::copy(src.join(&rel), &blob).unwrap();
            let link = snapshot.join(&rel);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(&blob, &link).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, &link).unwrap();
        }
    }
}

/// A cache holding the tiny models as `org/tiny-sd` and `org/tiny-controlnet`.
pub fn tiny_cache(root: &Path) -> PathBuf {
    let cache = root.join("hub");
    add_to_cache(
        &cache,
        "org/tiny-sd",
        &fixtures().join("tiny-sd"),
        "0123456789abcdef0123456789abcdef01234567",
    );
    add_to_cache(
        &cache,
        "org/tiny-controlnet",
        &fixtures().join("tiny-controlnet"),
        "89abcdef0123456789abcdef0123456789abcdef",
    );
    cache
}

/// An example picture of the repository's `examples/`.
pub fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// easel-fast's `tests/fixtures/<name>` (tiny AdaIN and StyTr² checkpoints among them).
pub fn fast_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../easel-fast/tests/fixtures")
        .join(name)
}
