//! What `learn` and `train-fast` share to write their result as a style plugin: the run's
//! latest step picture (a validation image, a sample grid) as its thumbnail.

use std::path::{Path, PathBuf};

use anyhow::Result;
use image::RgbImage;

/// Whether `output` names a style plugin (`.safetensors`).
pub fn is_plugin(output: &Path) -> bool {
    output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The latest `step_NNNNNN.png` of `dir` (by name: the step numbers are zero-padded), read at
/// most 1024 px, if there is one.
pub fn latest_step_picture(dir: &Path) -> Result<Option<RgbImage>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let latest: Option<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("step_") && n.ends_with(".png"))
        })
        .max();
    latest
        .map(|p| easel_core::load_rgb(&p, &easel_core::LoadOptions::with_max_side(1024)))
        .transpose()
        .map_err(Into::into)
}
