//! The committed `weights/efficientnet-lite0.safetensors` is exactly what
//! `import_efficientnet_lite0` makes of the upstream checkpoint
//! (`shared/data/peers/efficientnet-lite0/efficientnet-lite0-57934424.pth`, beside the checkout),
//! and it holds the checkpoint's values rounded to f16.
//!
//! Regenerate the weights after changing the importer:
//! `EASEL_WRITE_WEIGHTS=1 cargo test -p easel-fast --test efficientnet_import`

use candle_core::{DType, Result};
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_fast::efficientnet::{Config, EMBEDDED_WEIGHTS};
use easel_fast::import::efficientnet::{expected_tensors, import_efficientnet_lite0};
use std::path::PathBuf;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SOURCE: &str = "efficientnet-lite0-57934424.pth";

fn pth_bytes() -> Vec<u8> {
    let path = manifest()
        .join("../../../shared/data/peers/efficientnet-lite0")
        .join(SOURCE);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A fresh import equals the committed file byte for byte, and the binary embeds that file.
#[test]
fn committed_weights_match_a_fresh_import() -> Result<()> {
    let imported = import_efficientnet_lite0(&pth_bytes(), SOURCE)?;
    let committed_path = manifest().join("weights/efficientnet-lite0.safetensors");
    if std::env::var_os("EASEL_WRITE_WEIGHTS").is_some() {
        std::fs::write(&committed_path, &imported)?;
    }
    let committed = std::fs::read(&committed_path)?;
    assert_eq!(
        committed.len(),
        imported.len(),
        "size of {}",
        committed_path.display()
    );
    assert!(
        committed == imported,
        "{} differs from a fresh import",
        committed_path.display()
    );
    assert!(
        EMBEDDED_WEIGHTS == committed.as_slice(),
        "EMBEDDED_WEIGHTS is stale: rebuild"
    );
    Ok(())
}

/// Every expected tensor is there with the checkpoint's value rounded to f16 (relative error
/// ≤ 2⁻¹¹), and nothing else is.
#[test]
fn import_keeps_the_checkpoint_values_in_f16() -> Result<()> {
    let pth = pth_bytes();
    let imported = import_efficientnet_lite0(&pth, SOURCE)?;
    let st = candle_core::safetensors::load_buffer(&imported, &candle_core::Device::Cpu)?;
    let expected = expected_tensors(&Config::lite0());
    assert_eq!(st.len(), expected.len());
    for (name, t) in read_torch_checkpoint(&pth, SOURCE)? {
        if name.ends_with("num_batches_tracked") {
            assert!(!st.contains_key(&name));
            continue;
        }
        let got = st[&name]
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let want = t.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(st[&name].dtype(), DType::F16, "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= w.abs() * 4.9e-4 + 6e-8,
                "{name}: {g} vs {w}"
            );
        }
    }
    Ok(())
}
