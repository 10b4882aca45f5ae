//! `easel stylize --method adain`: AdaIN (Huang & Belongie 2017,
//! <https://arxiv.org/abs/1703.06868>) with the public pytorch-AdaIN weights
//! (`vgg_normalised.pth`, `decoder.pth`) or easel's safetensors conversions of them
//! (`easel import-torch`): weight resolution, style and mask loading, painting.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use easel_core::{HubResolver, LoadOptions, RepoFiles, WeightSource};
use easel_fast::adain::AdaIN;
use easel_fast::import::adain::{load_adain, read_weights};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The hub repository searched for the weights when neither `--weights` nor the per-file flags
/// are given. No repository of the AdaIN authors is known on the hub: the default names the
/// upstream project (naoto0804/pytorch-AdaIN, whose release the files are); `--weights` points
/// elsewhere (see docs/formats.md).
pub const DEFAULT_ADAIN_REPO: &str = "naoto0804/pytorch-AdaIN";

/// The encoder's file names in a weights folder or repository, preferred first: the upstream
/// checkpoint, then its `easel import-torch` conversion (the same tensors).
pub const VGG_FILES: [&str; 2] = ["vgg_normalised.pth", "vgg_normalised.safetensors"];
/// The decoder's file names in a weights folder or repository, preferred first.
pub const DECODER_FILES: [&str; 2] = ["decoder.pth", "decoder.safetensors"];

/// Where to get the files, for error messages.
const GET_THEM: &str = "get vgg_normalised.pth and decoder.pth from \
                        https://github.com/naoto0804/pytorch-AdaIN (README, \"Download models\")";

/// The flags of the AdaIN method.
#[derive(Args, Debug, Clone, Default)]
pub struct AdainArgs {
    /// AdaIN spatial control: a mask image at the photo's framing (resized to it); where it is
    /// light (≥ 50 %) the first --style paints, elsewhere the second. Needs exactly two styles.
    #[arg(long, value_name = "IMG")]
    pub mask: Option<PathBuf>,

    /// The AdaIN encoder weights file (vgg_normalised.pth, or its conversion); overrides
    /// --weights for this file.
    #[arg(long, value_name = "FILE")]
    pub adain_vgg: Option<PathBuf>,

    /// The AdaIN decoder weights file (decoder.pth, or its conversion); overrides --weights for
    /// this file.
    #[arg(long, value_name = "FILE")]
    pub adain_decoder: Option<PathBuf>,
}

impl AdainArgs {
    /// The AdaIN-only flags that were given (refused with the other methods).
    pub fn given_flags(&self) -> Vec<&'static str> {
        [
            ("--mask", self.mask.is_some()),
            ("--adain-vgg", self.adain_vgg.is_some()),
            ("--adain-decoder", self.adain_decoder.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(flag, _)| flag)
        .collect()
    }
}

/// The two weight files of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct AdainWeights {
    pub vgg: PathBuf,
    pub decoder: PathBuf,
}

/// Finds the encoder and decoder files: `--adain-vgg` / `--adain-decoder` as given, the rest
/// from `weights` (`--weights`: a folder, or a hub repository through the Hugging Face cache) or
/// the default repository. `offline`: never download.
pub fn resolve_weights(
    args: &AdainArgs,
    weights: Option<&str>,
    offline: bool,
) -> Result<AdainWeights> {
    if let (Some(vgg), Some(decoder)) = (&args.adain_vgg, &args.adain_decoder) {
        return Ok(AdainWeights {
            vgg: vgg.clone(),
            decoder: decoder.clone(),
        });
    }
    let source = WeightSource::parse(weights.unwrap_or(DEFAULT_ADAIN_REPO)).context("--weights")?;
    let (vgg, decoder) = match &source {
        WeightSource::LocalDir(dir) => (
            find_in_dir(dir, &VGG_FILES)?,
            find_in_dir(dir, &DECODER_FILES)?,
        ),
        WeightSource::SingleFile(file) => bail!(
            "--weights {} is a file; give the folder holding vgg_normalised.pth and decoder.pth, \
             or the files with --adain-vgg FILE --adain-decoder FILE",
            file.display()
        ),
        WeightSource::Hub { repo_id, revision } => {
            let mut resolver = HubResolver::from_env()?;
            if offline {
                resolver = resolver.with_offline(true);
            }
            let request = RepoFiles::new(repo_id.clone(), revision.clone(), &[])
                .with_one_of(&VGG_FILES)
                .with_one_of(&DECODER_FILES)
                .with_hint(format!(
                    "{GET_THEM} and pass --weights DIR (the folder holding them) or \
                     --adain-vgg FILE --adain-decoder FILE"
                ));
            let mut paths = resolver
                .resolve_many(std::slice::from_ref(&request))
                .with_context(|| {
                    format!(
                        "AdaIN weights from the hub repository {repo_id} (choose another with \
                         --weights; or {GET_THEM} and pass --weights DIR)"
                    )
                })?
                .pop()
                .unwrap_or_default();
            match (paths.pop(), paths.pop()) {
                (Some(decoder), Some(vgg)) => (vgg, decoder),
                _ => bail!("internal error: the hub resolver returned no AdaIN weight paths"),
            }
        }
    };
    Ok(AdainWeights {
        vgg: args.adain_vgg.clone().unwrap_or(vgg),
        decoder: args.adain_decoder.clone().unwrap_or(decoder),
    })
}

/// The first of `names` in `dir`; the error names both files of the pair and where to put them.
fn find_in_dir(dir: &Path, names: &[&str; 2]) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("--weights {}: no such folder", dir.display());
    }
    if let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Ok(path);
    }
    bail!(
        "missing AdaIN weights in {}: need {} (or {} from `easel import-torch`); {GET_THEM} and \
         put them in that folder, or pass --adain-vgg FILE --adain-decoder FILE",
        dir.display(),
        names[0],
        names[1]
    )
}

/// Reads both files (widths from their shapes) and builds the network on `device`.
pub fn load_model(weights: &AdainWeights, device: &Device) -> Result<AdaIN> {
    let read = |path: &Path| -> Result<_> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read AdaIN weights {}", path.display()))?;
        Ok(read_weights(&bytes, &path.display().to_string())?)
    };
    let vgg = read(&weights.vgg)?;
    let decoder = read(&weights.decoder)?;
    Ok(load_adain(
        vgg,
        &weights.vgg.display().to_string(),
        decoder,
        &weights.decoder.display().to_string(),
        device,
    )?)
}

/// Loads the `--mask` image as grey levels.
pub fn load_mask(path: &Path) -> Result<RgbImage> {
    easel_core::load_rgb(path, &LoadOptions::default()).context("--mask")
}

/// The mask at the photo's size (`[H, W]`, in [0, 1], the mean of R, G, B).
pub fn mask_tensor(mask: &RgbImage, photo: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = photo.dims4()?;
    let resized;
    let img = if mask.dimensions() == (w as u32, h as u32) {
        mask
    } else {
        resized = image::imageops::resize(
            mask,
            w as u32,
            h as u32,
            image::imageops::FilterType::Triangle,
        );
        &resized
    };
    let values: Vec<f32> = img
        .pixels()
        .map(|p| (f32::from(p[0]) + f32::from(p[1]) + f32::from(p[2])) / (3.0 * 255.0))
        .collect();
    Ok(Tensor::from_vec(values, (h, w), photo.device())?)
}
