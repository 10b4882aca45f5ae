//! `easel stylize --method transformer`: StyTr² (Deng et al., CVPR 2022,
//! <https://arxiv.org/abs/2105.14576>) with the public diyiiyiii/StyTR-2 weights
//! (`transformer_iter_160000.pth`, `embedding_iter_160000.pth`, `decoder_iter_160000.pth`), easel's
//! safetensors conversions of them (`easel import-torch`), or weights of the same layout trained
//! elsewhere: weight resolution, the settings the weights do not hold, loading.
//!
//! The network's sizes (`d_model`, feed-forward width, layer counts, the CNN decoder's widths,
//! CAPE or the pyramidal encoding and its channels) are read from the tensor shapes; the number
//! of attention heads, CAPE's grid and the pyramid's windows are flags with the published values
//! as defaults. VGG-19 (`vgg_normalised.pth`) is not needed: StyTr² uses it only for its training
//! losses.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use easel_core::{HubResolver, RepoFiles, WeightSource};
use easel_fast::import::adain::read_weights;
use easel_fast::import::stytr::{load_stytr, Settings};
use easel_fast::stytr::StyTr;
use std::path::{Path, PathBuf};

/// The hub repository searched for the weights when neither `--weights` nor the per-file flags
/// are given. The authors publish the files on Google Drive, not on the hub: the default names
/// the upstream project (diyiiyiii/StyTR-2); `--weights` points elsewhere (see docs/formats.md).
pub const DEFAULT_STYTR_REPO: &str = "diyiiyiii/StyTR-2";

/// The transformer's file names in a weights folder or repository, preferred first: the
/// published checkpoint, its `easel import-torch` conversion (the same tensors), then the file
/// `easel train-fast --kind transformer` writes.
pub const TRANSFORMER_FILES: [&str; 3] = [
    "transformer_iter_160000.pth",
    "transformer_iter_160000.safetensors",
    "transformer.safetensors",
];
/// The patch embedding's file names, preferred first.
pub const EMBEDDING_FILES: [&str; 3] = [
    "embedding_iter_160000.pth",
    "embedding_iter_160000.safetensors",
    "embedding.safetensors",
];
/// The CNN decoder's file names, preferred first.
pub const DECODER_FILES: [&str; 3] = [
    "decoder_iter_160000.pth",
    "decoder_iter_160000.safetensors",
    "decoder.safetensors",
];

/// Where to get the files, for error messages.
const GET_THEM: &str = "get transformer_iter_160000.pth, embedding_iter_160000.pth and \
                        decoder_iter_160000.pth (\"Transformer_module\", \"vit_embedding\", \
                        \"decoder\") from https://github.com/diyiiyiii/StyTR-2 (README, \"Testing\")";

/// The flags of the transformer method.
#[derive(Args, Debug, Clone, Default)]
pub struct TransformerArgs {
    /// The StyTr² transformer weights (transformer_iter_*.pth, or its conversion); overrides
    /// --weights for this file.
    #[arg(long, value_name = "FILE")]
    pub stytr_transformer: Option<PathBuf>,

    /// The StyTr² patch embedding weights (embedding_iter_*.pth, or its conversion); overrides
    /// --weights for this file.
    #[arg(long, value_name = "FILE")]
    pub stytr_embedding: Option<PathBuf>,

    /// The StyTr² CNN decoder weights (decoder_iter_*.pth, or its conversion); overrides
    /// --weights for this file.
    #[arg(long, value_name = "FILE")]
    pub stytr_decoder: Option<PathBuf>,

    /// Attention heads of the StyTr² transformer: not stored in the weights, must be what they
    /// were trained with (default 8, the published model's) and divide the token width.
    #[arg(long, value_name = "N")]
    pub stytr_heads: Option<usize>,

    /// Side of the pooled grid of StyTr²'s content-aware positional encoding (CAPE), for
    /// weights with CAPE (`new_ps.*`); not stored in the weights (default 18, the published
    /// model's).
    #[arg(long, value_name = "N")]
    pub stytr_cape_grid: Option<usize>,

    /// Window sizes in tokens (8 pixels each) of easel's pyramidal positional encoding, one per
    /// scale, for weights with it (`ppe.*`); not stored in the weights (default 8,16,32).
    #[arg(long, value_name = "T,T,...", value_delimiter = ',')]
    pub stytr_windows: Option<Vec<usize>>,
}

impl TransformerArgs {
    /// The transformer-only flags that were given (refused with the other methods).
    pub fn given_flags(&self) -> Vec<&'static str> {
        [
            ("--stytr-transformer", self.stytr_transformer.is_some()),
            ("--stytr-embedding", self.stytr_embedding.is_some()),
            ("--stytr-decoder", self.stytr_decoder.is_some()),
            ("--stytr-heads", self.stytr_heads.is_some()),
            ("--stytr-cape-grid", self.stytr_cape_grid.is_some()),
            ("--stytr-windows", self.stytr_windows.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(flag, _)| flag)
        .collect()
    }

    /// The settings the weights do not hold: the flags, else the published values.
    pub fn settings(&self) -> Result<Settings> {
        let published = Settings::published();
        let settings = Settings {
            nhead: self.stytr_heads.unwrap_or(published.nhead),
            cape_grid: self.stytr_cape_grid.unwrap_or(published.cape_grid),
            pyramid_windows: self
                .stytr_windows
                .clone()
                .unwrap_or(published.pyramid_windows),
        };
        if settings.nhead == 0 {
            bail!("--stytr-heads must be at least 1");
        }
        if settings.cape_grid == 0 {
            bail!("--stytr-cape-grid must be at least 1");
        }
        if settings.pyramid_windows.is_empty() || settings.pyramid_windows.contains(&0) {
            bail!(
                "--stytr-windows needs positive window sizes, got {:?}",
                settings.pyramid_windows
            );
        }
        Ok(settings)
    }
}

/// The three weight files of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StytrWeights {
    pub transformer: PathBuf,
    pub embedding: PathBuf,
    pub decoder: PathBuf,
}

impl StytrWeights {
    /// The files, for the outputs' protected paths.
    pub fn paths(&self) -> [PathBuf; 3] {
        [
            self.transformer.clone(),
            self.embedding.clone(),
            self.decoder.clone(),
        ]
    }
}

/// Finds the three files: the per-file flags as given, the others from `weights` (`--weights`:
/// a folder, or a hub repository through the Hugging Face cache) or the default repository.
/// `offline`: never download.
pub fn resolve_weights(
    args: &TransformerArgs,
    weights: Option<&str>,
    offline: bool,
) -> Result<StytrWeights> {
    let given = [
        args.stytr_transformer.clone(),
        args.stytr_embedding.clone(),
        args.stytr_decoder.clone(),
    ];
    let names = [&TRANSFORMER_FILES, &EMBEDDING_FILES, &DECODER_FILES];
    // The files no flag gives, by index into `given`.
    let wanted: Vec<usize> = (0..3).filter(|&i| given[i].is_none()).collect();
    let mut found = given;
    if !wanted.is_empty() {
        let source =
            WeightSource::parse(weights.unwrap_or(DEFAULT_STYTR_REPO)).context("--weights")?;
        match &source {
            WeightSource::LocalDir(dir) => {
                for &i in &wanted {
                    found[i] = Some(find_in_dir(dir, names[i])?);
                }
            }
            WeightSource::SingleFile(file) => bail!(
                "--weights {} is a file; give the folder holding the three StyTr² files, or the \
                 files with --stytr-transformer FILE --stytr-embedding FILE --stytr-decoder FILE",
                file.display()
            ),
            WeightSource::Hub { repo_id, revision } => {
                let mut resolver = HubResolver::from_env()?;
                if offline {
                    resolver = resolver.with_offline(true);
                }
                let request = wanted
                    .iter()
                    .fold(
                        RepoFiles::new(repo_id.clone(), revision.clone(), &[]),
                        |request, &i| request.with_one_of(names[i]),
                    )
                    .with_hint(format!(
                        "{GET_THEM} and pass --weights DIR (the folder holding them) or \
                         --stytr-transformer FILE --stytr-embedding FILE --stytr-decoder FILE"
                    ));
                let paths = resolver
                    .resolve_many(std::slice::from_ref(&request))
                    .with_context(|| {
                        format!(
                            "StyTr² weights from the hub repository {repo_id} (choose another \
                             with --weights; or {GET_THEM} and pass --weights DIR)"
                        )
                    })?
                    .pop()
                    .unwrap_or_default();
                if paths.len() != wanted.len() {
                    bail!("internal error: the hub resolver returned {} StyTr² weight paths for {} files", paths.len(), wanted.len());
                }
                for (&i, path) in wanted.iter().zip(paths) {
                    found[i] = Some(path);
                }
            }
        }
    }
    match found {
        [Some(transformer), Some(embedding), Some(decoder)] => Ok(StytrWeights {
            transformer,
            embedding,
            decoder,
        }),
        _ => bail!("internal error: a StyTr² weight file was not resolved"),
    }
}

/// The first of `names` in `dir`; the error names the file and where to get it.
fn find_in_dir(dir: &Path, names: &[&str; 3]) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("--weights {}: no such folder", dir.display());
    }
    if let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Ok(path);
    }
    bail!(
        "missing StyTr² weights in {}: need {} (or {} from `easel import-torch`, or {} from \
         `easel train-fast --kind transformer`); {GET_THEM} and put them in that folder, or pass \
         --stytr-transformer FILE --stytr-embedding FILE --stytr-decoder FILE",
        dir.display(),
        names[0],
        names[1],
        names[2]
    )
}

/// Reads the three files (sizes from their shapes, `settings` for the rest) and builds the
/// network on `device`.
pub fn load_model(weights: &StytrWeights, settings: &Settings, device: &Device) -> Result<StyTr> {
    let read = |path: &Path| -> Result<_> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read StyTr² weights {}", path.display()))?;
        Ok(read_weights(&bytes, &path.display().to_string())?)
    };
    let names = weights.paths().map(|p| p.display().to_string());
    Ok(load_stytr(
        (read(&weights.transformer)?, &names[0]),
        (read(&weights.embedding)?, &names[1]),
        (read(&weights.decoder)?, &names[2]),
        settings,
        device,
    )?)
}
