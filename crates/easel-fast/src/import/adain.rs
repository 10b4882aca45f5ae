//! AdaIN weights: naoto0804/pytorch-AdaIN's `vgg_normalised.pth` / `decoder.pth`, or easel's
//! safetensors conversion of them, read, checked and converted.
//!
//! Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
//! Normalization", 2017, <https://arxiv.org/abs/1703.06868>; network in [`crate::adain`].
//!
//! - [`read_weights`] reads either format (told apart by content, not by name); `.pth` files go
//!   through [`easel_core::torch_checkpoint`], which executes nothing.
//! - [`Part::widths`] reads the channel counts from the tensor shapes (`[64, 128, 256, 512]` for
//!   the published files, `[8, 16, 32, 64]` for the test fixtures), and [`Part::check`] checks
//!   every tensor the network needs, naming a missing or misshapen one with the shape expected.
//! - [`load_adain`] builds [`AdaIN`] from the two files' tensors, widths inferred.
//! - [`import_adain`] converts one checkpoint into a safetensors file (all its floating-point
//!   tensors, as f32) with metadata `format = easel-adain`, `kind = adain-vgg | adain-decoder`, `widths`
//!   and whatever the caller adds (the CLI adds the source file's sha256).

use crate::adain::{AdaIN, Config};
use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use easel_core::torch_checkpoint::read_torch_checkpoint;
use std::collections::HashMap;

/// `format` metadata of the files [`import_adain`] writes.
pub const FORMAT: &str = "easel-adain";

/// Which AdaIN network a weight file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The VGG-19 encoder (`vgg_normalised.pth`, keys `0.weight`, `2.weight`, … `51.bias`).
    Vgg,
    /// The decoder (`decoder.pth`, keys `1.weight`, `5.weight`, … `28.bias`).
    Decoder,
}

impl Part {
    /// The `kind` metadata and `easel import-torch --kind` name.
    pub fn kind(self) -> &'static str {
        match self {
            Part::Vgg => "adain-vgg",
            Part::Decoder => "adain-decoder",
        }
    }

    /// The upstream file name.
    pub fn upstream_file(self) -> &'static str {
        match self {
            Part::Vgg => "vgg_normalised.pth",
            Part::Decoder => "decoder.pth",
        }
    }

    /// Every conv the network uses, `(module index, [out, in, k, k])`: the encoder to relu4_1,
    /// the whole decoder.
    fn convs(self, cfg: &Config) -> Vec<(usize, [usize; 4])> {
        let [a, b, c, d] = cfg.widths;
        let plan: &[(usize, usize, usize, usize)] = match self {
            Part::Vgg => &[
                (0, 3, 3, 1),
                (2, a, 3, 3),
                (5, a, a, 3),
                (9, b, a, 3),
                (12, b, b, 3),
                (16, c, b, 3),
                (19, c, c, 3),
                (22, c, c, 3),
                (25, c, c, 3),
                (29, d, c, 3),
            ],
            Part::Decoder => &[
                (1, c, d, 3),
                (5, c, c, 3),
                (8, c, c, 3),
                (11, c, c, 3),
                (14, b, c, 3),
                (18, b, b, 3),
                (21, a, b, 3),
                (25, a, a, 3),
                (28, 3, a, 3),
            ],
        };
        plan.iter().map(|&(i, o, n, k)| (i, [o, n, k, k])).collect()
    }

    /// The widths `[a, b, c, d]` the tensors' shapes say (convs `2, 9, 16, 29` of the encoder;
    /// `28, 14, 1` of the decoder). Errors name the file and the tensor that is missing.
    pub fn widths(self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<Config> {
        let dim = |key: &str, axis: usize, expected: &str| -> Result<usize> {
            match tensors.get(key) {
                Some(t) if t.rank() == 4 => Ok(t.dims()[axis]),
                Some(t) => bail!(
                    "{source}: tensor {key} has shape {:?}, expected {expected} (is this AdaIN's {}?)",
                    t.dims(),
                    self.upstream_file()
                ),
                None => bail!(
                    "{source}: tensor {key} is missing (expected shape {expected}; is this AdaIN's {}?)",
                    self.upstream_file()
                ),
            }
        };
        let widths = match self {
            Part::Vgg => [
                dim("2.weight", 0, "[64, 3, 3, 3]")?,
                dim("9.weight", 0, "[128, 64, 3, 3]")?,
                dim("16.weight", 0, "[256, 128, 3, 3]")?,
                dim("29.weight", 0, "[512, 256, 3, 3]")?,
            ],
            Part::Decoder => [
                dim("28.weight", 1, "[3, 64, 3, 3]")?,
                dim("14.weight", 0, "[128, 256, 3, 3]")?,
                dim("1.weight", 0, "[256, 512, 3, 3]")?,
                dim("1.weight", 1, "[256, 512, 3, 3]")?,
            ],
        };
        if widths.contains(&0) {
            bail!("{source}: zero channels in widths {widths:?}")
        }
        Ok(Config { widths })
    }

    /// Checks that every tensor the network uses is there, floating point, with the shape `cfg`
    /// implies; the error names the first missing or misshapen tensor and the shape expected.
    pub fn check(
        self,
        tensors: &HashMap<String, Tensor>,
        cfg: &Config,
        source: &str,
    ) -> Result<()> {
        for (index, shape) in self.convs(cfg) {
            for (key, shape) in [
                (format!("{index}.weight"), shape.to_vec()),
                (format!("{index}.bias"), vec![shape[0]]),
            ] {
                match tensors.get(&key) {
                    None => bail!(
                        "{source}: tensor {key} is missing (expected shape {shape:?} for AdaIN's {} \
                         with widths {:?})",
                        self.upstream_file(),
                        cfg.widths
                    ),
                    Some(t) if t.dims() != shape.as_slice() => bail!(
                        "{source}: tensor {key} has shape {:?}, expected {shape:?} (AdaIN's {} with \
                         widths {:?})",
                        t.dims(),
                        self.upstream_file(),
                        cfg.widths
                    ),
                    Some(t) if !t.dtype().is_float() => bail!(
                        "{source}: tensor {key} is {:?}, expected floating point",
                        t.dtype()
                    ),
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// Reads a weight file: safetensors (an 8-byte header length, then `{`) or a PyTorch checkpoint
/// (zip or legacy pickle, read by [`read_torch_checkpoint`], which executes nothing). Tensors
/// are on the CPU. `source` names the file in errors.
pub fn read_weights(bytes: &[u8], source: &str) -> Result<HashMap<String, Tensor>> {
    if bytes.len() > 8 && bytes[8] == b'{' {
        return candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| candle_core::Error::msg(format!("{source}: {e}")));
    }
    Ok(read_torch_checkpoint(bytes, source)?.into_iter().collect())
}

/// Builds [`AdaIN`] on `device` from the encoder's and the decoder's tensors (as
/// [`read_weights`] returns them), with the widths their shapes say; both must agree.
pub fn load_adain(
    vgg: HashMap<String, Tensor>,
    vgg_source: &str,
    decoder: HashMap<String, Tensor>,
    decoder_source: &str,
    device: &Device,
) -> Result<AdaIN> {
    let cfg = Part::Vgg.widths(&vgg, vgg_source)?;
    let dec_cfg = Part::Decoder.widths(&decoder, decoder_source)?;
    if cfg != dec_cfg {
        bail!(
            "the AdaIN encoder {vgg_source} has widths {:?} but the decoder {decoder_source} has {:?}; \
             use a matching pair",
            cfg.widths,
            dec_cfg.widths
        )
    }
    Part::Vgg.check(&vgg, &cfg, vgg_source)?;
    Part::Decoder.check(&decoder, &cfg, decoder_source)?;
    AdaIN::new(
        VarBuilder::from_tensors(vgg, DType::F32, device),
        VarBuilder::from_tensors(decoder, DType::F32, device),
        &cfg,
    )
}

/// Converts one AdaIN checkpoint (`.pth` or safetensors bytes) into easel's safetensors: the
/// widths are inferred and every tensor the network uses is checked (see [`Part::check`]); all
/// the file's floating-point tensors are kept, as f32 (others are dropped). Metadata: `format`, `kind`, `widths`, then `extra`.
pub fn import_adain(
    bytes: &[u8],
    source: &str,
    part: Part,
    extra: &[(String, String)],
) -> Result<Vec<u8>> {
    let tensors = read_weights(bytes, source)?;
    let cfg = part.widths(&tensors, source)?;
    part.check(&tensors, &cfg, source)?;
    let mut metadata: std::collections::BTreeMap<String, String> = extra.iter().cloned().collect();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("kind".into(), part.kind().into());
    metadata.insert("widths".into(), format!("{:?}", cfg.widths));
    super::serialize_f32(&tensors, metadata, source)
}
