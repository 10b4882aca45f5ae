//! `easel stylize --method transformer`: StyTr² (Deng et al., CVPR 2022,
//! <https://arxiv.org/abs/2105.14576>) with the public diyiiyiii/StyTR-2 weights
//! (`transformer_iter_160000.pth`, `embedding_iter_160000.pth`, `decoder_iter_160000.pth`), easel's
//! safetensors conversions of them (`easel import-torch`), or weights of the same layout trained
//! elsewhere: the flags, and the settings the weights do not hold. Resolution, loading and
//! painting are `easel_host::fast`'s.
//!
//! The network's sizes (`d_model`, feed-forward width, layer counts, the CNN decoder's widths,
//! CAPE or the pyramidal encoding and its channels) are read from the tensor shapes; the number
//! of attention heads, CAPE's grid and the pyramid's windows are flags with the published values
//! as defaults. VGG-19 (`vgg_normalised.pth`) is not needed: StyTr² uses it only for its training
//! losses.

use clap::Args;
use easel_fast::import::stytr::Settings;
use easel_host::fast::WeightFiles;
use std::path::PathBuf;

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

    /// The settings the weights do not hold: the flags, else the published values (checked
    /// by the host).
    pub fn settings(&self) -> Settings {
        let published = Settings::published();
        Settings {
            nhead: self.stytr_heads.unwrap_or(published.nhead),
            cape_grid: self.stytr_cape_grid.unwrap_or(published.cape_grid),
            pyramid_windows: self
                .stytr_windows
                .clone()
                .unwrap_or(published.pyramid_windows),
        }
    }

    /// The weight files these flags and `weights` (`--weights`) name.
    pub fn weight_files(&self, weights: Option<&str>, offline: bool) -> WeightFiles {
        WeightFiles {
            source: weights.map(str::to_string),
            files: vec![
                self.stytr_transformer.clone(),
                self.stytr_embedding.clone(),
                self.stytr_decoder.clone(),
            ],
            offline,
        }
    }
}
