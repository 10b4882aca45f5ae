//! `easel stylize --method adain`: the flags of AdaIN (Huang & Belongie 2017,
//! <https://arxiv.org/abs/1703.06868>) with the public pytorch-AdaIN weights
//! (`vgg_normalised.pth`, `decoder.pth`) or easel's safetensors conversions of them
//! (`easel import-torch`). Resolution, loading and painting are `easel_host::fast`'s.

use clap::Args;
use easel_host::fast::WeightFiles;
use std::path::PathBuf;

/// The flags of the AdaIN method.
#[derive(Args, Debug, Clone, Default)]
pub struct AdainArgs {
    /// Spatial control: a mask image at the photo's framing (resized to it). With adain: where
    /// it is light (≥ 50 %) the first --style paints, elsewhere the second (exactly two
    /// styles). With gatys: its grey range is split into one equal band per --style, lightest
    /// for the first (two styles: as adain), each band needing some pixels.
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
    /// The weight files these flags and `weights` (`--weights`) name.
    pub fn weight_files(&self, weights: Option<&str>, offline: bool) -> WeightFiles {
        WeightFiles {
            source: weights.map(str::to_string),
            files: vec![self.adain_vgg.clone(), self.adain_decoder.clone()],
            offline,
        }
    }

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
