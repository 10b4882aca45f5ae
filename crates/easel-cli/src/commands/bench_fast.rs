//! The fast stylizers' workloads of `easel bench`: one whole AdaIN or StyTr² stylization of a
//! square photo with a square painting of the same size, on seeded random weights of the
//! published networks (`--config sd15`) or of the test networks (`--config tiny`).

use anyhow::Result;
use candle_core::{DType, Device};
use easel_bench::{random_var_builder, seeded_unit, ModelPreset};
use easel_fast::adain::{self, AdaIN};
use easel_fast::stytr::{self, StyTr};

/// A fast-path workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastWorkload {
    /// AdaIN: VGG-19 to relu4_1 for the photo and the painting, AdaIN (alpha 1), decoder.
    Adain,
    /// StyTr²: patch embeddings, content and style encoders, decoder, CNN decoder (CAPE).
    Transformer,
}

impl FastWorkload {
    /// Every fast workload, in the order `all` runs them.
    pub const ALL: [FastWorkload; 2] = [Self::Adain, Self::Transformer];

    /// The name `--workload` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Adain => "adain",
            Self::Transformer => "transformer",
        }
    }

    /// The workload called `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The dtype the workload runs in: AdaIN in `requested`; StyTr² only in f32 (its layers
    /// take f32 inputs).
    pub fn dtype(self, requested: DType) -> DType {
        match self {
            Self::Adain => requested,
            Self::Transformer => DType::F32,
        }
    }
}

/// One timed call of a workload.
pub type Call = Box<dyn FnMut() -> candle_core::Result<()>>;

/// Builds `workload`'s network on random weights of `preset`'s sizes (seeded by `seed`) and
/// its `size`² photo and painting on `device`; returns one stylization as a call.
pub fn fast_workload(
    workload: FastWorkload,
    preset: ModelPreset,
    size: usize,
    dtype: DType,
    seed: u64,
    device: &Device,
) -> Result<Call> {
    let dtype = workload.dtype(dtype);
    let vb = random_var_builder(seed, dtype, device);
    let photo = seeded_unit(seed + 1, &[1, 3, size, size], dtype, device)?;
    let painting = seeded_unit(seed + 2, &[1, 3, size, size], dtype, device)?;
    Ok(match workload {
        FastWorkload::Adain => {
            let cfg = match preset {
                ModelPreset::Sd15 => adain::Config::original(),
                ModelPreset::Tiny => adain::Config::tiny(),
            };
            let net = AdaIN::new(vb.pp("vgg"), vb.pp("decoder"), &cfg)?;
            let styles = [(painting, 1.0)];
            Box::new(move || net.stylize(&photo, &styles, 1.0, None).map(|_| ()))
        }
        FastWorkload::Transformer => {
            let cfg = match preset {
                ModelPreset::Sd15 => stytr::Config::original(),
                ModelPreset::Tiny => stytr::Config::tiny(),
            };
            let net = StyTr::new(
                vb.pp("transformer"),
                vb.pp("embedding"),
                vb.pp("decoder"),
                &cfg,
            )?;
            Box::new(move || net.stylize(&photo, &painting).map(|_| ()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_transformer_runs_in_f32() {
        for w in FastWorkload::ALL {
            assert_eq!(FastWorkload::parse(w.name()), Some(w));
        }
        assert_eq!(FastWorkload::parse("unet-cfg"), None);
        assert_eq!(FastWorkload::Adain.dtype(DType::F16), DType::F16);
        assert_eq!(FastWorkload::Transformer.dtype(DType::F16), DType::F32);
    }
}
