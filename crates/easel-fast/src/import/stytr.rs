//! StyTr² weights: diyiiyiii/StyTR-2's `transformer_iter_*.pth`, `embedding_iter_*.pth` and
//! `decoder_iter_*.pth` (or easel's safetensors conversions of them), read, checked and
//! converted.
//!
//! Deng et al., "StyTr²: Image Style Transfer with Transformers", CVPR 2022,
//! <https://arxiv.org/abs/2105.14576>; network in [`crate::stytr`].
//!
//! - [`TransformerShapes::infer`] reads what the transformer's tensor shapes say (`d_model`, the
//!   feed-forward width, the layer counts, which positional encoding and its sizes), and
//!   [`TransformerShapes::check`] checks every tensor the network uses, naming a missing or
//!   misshapen one with the shape expected. [`embedding_width`] and [`decoder_widths`] do the
//!   same for the patch embedding and the CNN decoder (the AdaIN decoder's layout).
//! - What the shapes cannot say — the number of attention heads, the CAPE grid, the pyramid's
//!   window sizes — comes from [`Settings`] (published defaults: 8 heads, grid 18, windows
//!   8/16/32 tokens).
//! - [`load_stytr`] builds [`StyTr`] from the three files' tensors (as
//!   [`crate::import::adain::read_weights`] returns them, `.pth` or safetensors).
//! - [`import_stytr`] converts one checkpoint into a safetensors file (all its floating-point
//!   tensors, as f32) with metadata `format = easel-stytr`,
//!   `kind = stytr-transformer | stytr-embedding | stytr-decoder`, what the shapes say, and
//!   whatever the caller adds (the CLI adds the source file's sha256).

use crate::import::adain::{self, read_weights};
use crate::stytr::{Config, PositionalEncoding, StyTr, PATCH};
use crate::stytr_pe::PYRAMID_KERNELS;
use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;

/// `format` metadata of the files [`import_stytr`] writes.
pub const FORMAT: &str = "easel-stytr";

/// Which of the three StyTr² state dicts a weight file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The transformer (`transformer_iter_*.pth`: `encoder_c.*`, `encoder_s.*`, `decoder.*`,
    /// `new_ps.*` or easel's `ppe.*`).
    Transformer,
    /// The patch embedding (`embedding_iter_*.pth`: `proj.weight`, `proj.bias`).
    Embedding,
    /// The CNN decoder (`decoder_iter_*.pth`: `1.weight` … `28.bias`, AdaIN's decoder layout).
    Decoder,
}

impl Part {
    /// The `kind` metadata and `easel import-torch --kind` name.
    pub fn kind(self) -> &'static str {
        match self {
            Part::Transformer => "stytr-transformer",
            Part::Embedding => "stytr-embedding",
            Part::Decoder => "stytr-decoder",
        }
    }

    /// The file name of the published release.
    pub fn upstream_file(self) -> &'static str {
        match self {
            Part::Transformer => "transformer_iter_160000.pth",
            Part::Embedding => "embedding_iter_160000.pth",
            Part::Decoder => "decoder_iter_160000.pth",
        }
    }
}

/// The settings the weights do not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Attention heads (8 published); must divide `d_model`.
    pub nhead: usize,
    /// Side of CAPE's pooled grid (18 published); used with CAPE weights only.
    pub cape_grid: usize,
    /// Window sizes in tokens of the pyramidal encoding, one per scale (8, 16, 32 for the
    /// published sizes); used with pyramidal weights only.
    pub pyramid_windows: Vec<usize>,
}

impl Settings {
    /// The published network's: 8 heads, CAPE grid 18, pyramid windows 8/16/32 tokens.
    pub fn published() -> Self {
        let windows = match Config::original_pyramidal().pos {
            PositionalEncoding::Pyramidal { windows, .. } => windows,
            PositionalEncoding::Cape { .. } => Vec::new(),
        };
        let grid = match Config::original().pos {
            PositionalEncoding::Cape { grid } => grid,
            PositionalEncoding::Pyramidal { .. } => 0,
        };
        Self {
            nhead: Config::original().nhead,
            cape_grid: grid,
            pyramid_windows: windows,
        }
    }
}

/// Which positional encoding a transformer state dict holds, with the sizes its shapes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosShape {
    /// StyTr²'s CAPE (`new_ps.weight`, `new_ps.bias`).
    Cape,
    /// easel's pyramidal encoding (`ppe.branches.{scale}.{kernel}.*`, `ppe.fuse.*`).
    Pyramidal {
        /// Number of scales (`ppe.branches.{0..scales}`).
        scales: usize,
        /// Output channels of each conv (`ppe.branches.0.0.weight` dim 0).
        branch_channels: usize,
    },
}

/// What a transformer state dict's shapes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShapes {
    /// Token width (`decoder.norm.weight` length).
    pub d_model: usize,
    /// Feed-forward width (`encoder_c.layers.0.linear1.weight` rows).
    pub dim_feedforward: usize,
    /// Layers of each encoder (`encoder_c.layers.{i}`, `encoder_s.layers.{i}`).
    pub num_encoder_layers: usize,
    /// Layers of the decoder (`decoder.layers.{i}`).
    pub num_decoder_layers: usize,
    /// The positional encoding.
    pub pos: PosShape,
}

/// A tensor's shape, or an error naming the file, the key and what was expected.
fn shape_of<'a>(
    tensors: &'a HashMap<String, Tensor>,
    key: &str,
    rank: usize,
    expected: &str,
    source: &str,
    part: Part,
) -> Result<&'a [usize]> {
    match tensors.get(key) {
        Some(t) if t.rank() == rank => Ok(t.dims()),
        Some(t) => bail!(
            "{source}: tensor {key} has shape {:?}, expected {expected} (is this StyTr²'s {}?)",
            t.dims(),
            part.upstream_file()
        ),
        None => bail!(
            "{source}: tensor {key} is missing (expected shape {expected}; is this StyTr²'s {}?)",
            part.upstream_file()
        ),
    }
}

/// How many `{prefix}.{i}.{probe}` keys exist for `i = 0, 1, …` without a gap.
fn count_indexed(tensors: &HashMap<String, Tensor>, prefix: &str, probe: &str) -> usize {
    (0..)
        .take_while(|i| tensors.contains_key(&format!("{prefix}.{i}.{probe}")))
        .count()
}

/// Checks that every `(key, shape)` of `expected` is in `tensors`, floating point, with that
/// shape; the error names the first missing or misshapen tensor, the shape expected and `what`.
fn check_expected(
    tensors: &HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
    source: &str,
    what: &str,
) -> Result<()> {
    for (key, shape) in expected {
        match tensors.get(key) {
            None => {
                bail!("{source}: tensor {key} is missing (expected shape {shape:?} for {what})")
            }
            Some(t) if t.dims() != shape.as_slice() => bail!(
                "{source}: tensor {key} has shape {:?}, expected {shape:?} ({what})",
                t.dims()
            ),
            Some(t) if !t.dtype().is_float() => bail!(
                "{source}: tensor {key} is {:?}, expected floating point",
                t.dtype()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

impl TransformerShapes {
    /// Reads the sizes from a transformer state dict's shapes. Errors name the file and the
    /// tensor that is missing or does not fit.
    pub fn infer(tensors: &HashMap<String, Tensor>, source: &str) -> Result<Self> {
        let part = Part::Transformer;
        let d_model = shape_of(
            tensors,
            "decoder.norm.weight",
            1,
            "[d_model] ([512] published)",
            source,
            part,
        )?[0];
        let dim_feedforward = shape_of(
            tensors,
            "encoder_c.layers.0.linear1.weight",
            2,
            "[dim_feedforward, d_model] ([2048, 512] published)",
            source,
            part,
        )?[0];
        let num_encoder_layers = count_indexed(tensors, "encoder_c.layers", "linear1.weight");
        let style_layers = count_indexed(tensors, "encoder_s.layers", "linear1.weight");
        if style_layers != num_encoder_layers {
            bail!(
                "{source}: the content encoder has {num_encoder_layers} layers \
                 (encoder_c.layers.*) but the style encoder has {style_layers} (encoder_s.layers.*)"
            )
        }
        let num_decoder_layers = count_indexed(tensors, "decoder.layers", "linear1.weight");
        let cape = tensors.contains_key("new_ps.weight");
        let pyramidal = tensors.contains_key("ppe.fuse.weight");
        let pos = match (cape, pyramidal) {
            (true, false) => PosShape::Cape,
            (false, true) => {
                let branch_channels = shape_of(
                    tensors,
                    "ppe.branches.0.0.weight",
                    4,
                    "[branch_channels, d_model, 1, 1]",
                    source,
                    part,
                )?[0];
                PosShape::Pyramidal {
                    scales: count_indexed(tensors, "ppe.branches", "0.weight"),
                    branch_channels,
                }
            }
            (true, true) => bail!(
                "{source}: holds both new_ps.weight (CAPE) and ppe.fuse.weight (pyramidal \
                 encoding); a StyTr² transformer has one positional encoding"
            ),
            (false, false) => bail!(
                "{source}: neither new_ps.weight (StyTr²'s CAPE positional encoding) nor \
                 ppe.fuse.weight (easel's pyramidal encoding) is there; is this StyTr²'s {}?",
                part.upstream_file()
            ),
        };
        if [d_model, dim_feedforward].contains(&0) {
            bail!("{source}: zero width: d_model {d_model}, feed-forward {dim_feedforward}")
        }
        Ok(Self {
            d_model,
            dim_feedforward,
            num_encoder_layers,
            num_decoder_layers,
            pos,
        })
    }

    /// Every tensor the network uses, with its shape, in state-dict order.
    pub fn expected(&self) -> Vec<(String, Vec<usize>)> {
        type Keys = Vec<(String, Vec<usize>)>;
        let (d, ff) = (self.d_model, self.dim_feedforward);
        let attention = |out: &mut Keys, p: &str| {
            out.push((format!("{p}.in_proj_weight"), vec![3 * d, d]));
            out.push((format!("{p}.in_proj_bias"), vec![3 * d]));
            out.push((format!("{p}.out_proj.weight"), vec![d, d]));
            out.push((format!("{p}.out_proj.bias"), vec![d]));
        };
        let feed_forward_and_norms = |out: &mut Keys, p: &str, norms: usize| {
            out.push((format!("{p}.linear1.weight"), vec![ff, d]));
            out.push((format!("{p}.linear1.bias"), vec![ff]));
            out.push((format!("{p}.linear2.weight"), vec![d, ff]));
            out.push((format!("{p}.linear2.bias"), vec![d]));
            for i in 1..=norms {
                out.push((format!("{p}.norm{i}.weight"), vec![d]));
                out.push((format!("{p}.norm{i}.bias"), vec![d]));
            }
        };
        let mut out = Keys::new();
        for encoder in ["encoder_c", "encoder_s"] {
            for i in 0..self.num_encoder_layers {
                let p = format!("{encoder}.layers.{i}");
                attention(&mut out, &format!("{p}.self_attn"));
                feed_forward_and_norms(&mut out, &p, 2);
            }
        }
        for i in 0..self.num_decoder_layers {
            let p = format!("decoder.layers.{i}");
            attention(&mut out, &format!("{p}.self_attn"));
            attention(&mut out, &format!("{p}.multihead_attn"));
            feed_forward_and_norms(&mut out, &p, 3);
        }
        out.push(("decoder.norm.weight".into(), vec![d]));
        out.push(("decoder.norm.bias".into(), vec![d]));
        match self.pos {
            PosShape::Cape => {
                out.push(("new_ps.weight".into(), vec![d, d, 1, 1]));
                out.push(("new_ps.bias".into(), vec![d]));
            }
            PosShape::Pyramidal {
                scales,
                branch_channels: b,
            } => {
                for s in 0..scales {
                    for (i, &k) in PYRAMID_KERNELS.iter().enumerate() {
                        out.push((format!("ppe.branches.{s}.{i}.weight"), vec![b, d, k, k]));
                        out.push((format!("ppe.branches.{s}.{i}.bias"), vec![b]));
                    }
                }
                let fused = scales * PYRAMID_KERNELS.len() * b;
                out.push(("ppe.fuse.weight".into(), vec![d, fused, 1, 1]));
                out.push(("ppe.fuse.bias".into(), vec![d]));
            }
        }
        out
    }

    /// Checks that every tensor the network uses is there, floating point, with the shape these
    /// sizes imply; the error names the first missing or misshapen tensor and the shape expected.
    pub fn check(&self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        let what = format!(
            "a StyTr² transformer with d_model {}, feed-forward {}, {} encoder and {} decoder layers",
            self.d_model, self.dim_feedforward, self.num_encoder_layers, self.num_decoder_layers
        );
        check_expected(tensors, &self.expected(), source, &what)
    }

    /// The network's configuration: these sizes, `settings`, and the CNN decoder's widths.
    pub fn config(&self, settings: &Settings, decoder_widths: [usize; 4]) -> Result<Config> {
        let pos = match self.pos {
            PosShape::Cape => PositionalEncoding::Cape {
                grid: settings.cape_grid,
            },
            PosShape::Pyramidal {
                scales,
                branch_channels,
            } => {
                if settings.pyramid_windows.len() != scales {
                    bail!(
                        "the transformer's pyramidal encoding has {scales} scales but {} window \
                         sizes were given ({:?})",
                        settings.pyramid_windows.len(),
                        settings.pyramid_windows
                    )
                }
                PositionalEncoding::Pyramidal {
                    windows: settings.pyramid_windows.clone(),
                    branch_channels,
                }
            }
        };
        if settings.nhead == 0 || !self.d_model.is_multiple_of(settings.nhead) {
            bail!(
                "{} attention heads do not divide the transformer's d_model {}",
                settings.nhead,
                self.d_model
            )
        }
        Ok(Config {
            d_model: self.d_model,
            nhead: settings.nhead,
            num_encoder_layers: self.num_encoder_layers,
            num_decoder_layers: self.num_decoder_layers,
            dim_feedforward: self.dim_feedforward,
            decoder_widths,
            pos,
            ..Config::original()
        })
    }
}

/// The patch embedding's width `d` (`proj.weight` `[d, 3, 8, 8]`, `proj.bias` `[d]`), checked.
pub fn embedding_width(tensors: &HashMap<String, Tensor>, source: &str) -> Result<usize> {
    let d = shape_of(
        tensors,
        "proj.weight",
        4,
        "[d_model, 3, 8, 8] ([512, 3, 8, 8] published)",
        source,
        Part::Embedding,
    )?[0];
    let expected = [
        ("proj.weight".to_string(), vec![d, 3, PATCH, PATCH]),
        ("proj.bias".to_string(), vec![d]),
    ];
    check_expected(
        tensors,
        &expected,
        source,
        &format!("StyTr²'s patch embedding of width {d}"),
    )?;
    Ok(d)
}

/// The CNN decoder's widths (`decoder_iter_*.pth` has AdaIN's decoder layout), checked.
pub fn decoder_widths(tensors: &HashMap<String, Tensor>, source: &str) -> Result<[usize; 4]> {
    let note = |e: candle_core::Error| {
        candle_core::Error::msg(format!(
            "{e} (StyTr²'s {} has the layout of AdaIN's decoder)",
            Part::Decoder.upstream_file()
        ))
    };
    let cfg = adain::Part::Decoder.widths(tensors, source).map_err(note)?;
    adain::Part::Decoder
        .check(tensors, &cfg, source)
        .map_err(note)?;
    Ok(cfg.widths)
}

/// One weight file's tensors and the name errors give it.
pub type NamedTensors<'a> = (HashMap<String, Tensor>, &'a str);

/// Builds [`StyTr`] on `device` from the three state dicts (as
/// [`crate::import::adain::read_weights`] returns them), with the sizes their shapes say and
/// `settings` for the rest; every tensor is checked first, and the three must agree on `d_model`.
pub fn load_stytr(
    transformer: NamedTensors,
    embedding: NamedTensors,
    decoder: NamedTensors,
    settings: &Settings,
    device: &Device,
) -> Result<StyTr> {
    let (transformer, transformer_source) = transformer;
    let (embedding, embedding_source) = embedding;
    let (decoder, decoder_source) = decoder;
    let shapes = TransformerShapes::infer(&transformer, transformer_source)?;
    shapes.check(&transformer, transformer_source)?;
    let d = embedding_width(&embedding, embedding_source)?;
    let widths = decoder_widths(&decoder, decoder_source)?;
    if d != shapes.d_model || widths[3] != shapes.d_model {
        bail!(
            "the StyTr² files do not match: the transformer {transformer_source} has d_model {}, \
             the embedding {embedding_source} {d} and the decoder {decoder_source} takes {} \
             channels; use the three files of one checkpoint",
            shapes.d_model,
            widths[3]
        )
    }
    let cfg = shapes.config(settings, widths)?;
    let vb = |tensors| VarBuilder::from_tensors(tensors, DType::F32, device);
    StyTr::new(vb(transformer), vb(embedding), vb(decoder), &cfg)
}

/// Converts one StyTr² checkpoint (`.pth` or safetensors bytes) into easel's safetensors: the
/// sizes are inferred and every tensor the network uses is checked; all the file's
/// floating-point tensors are kept, as f32 (others are dropped). Metadata: `format`, `kind`,
/// what the shapes say (`d_model`, `dim_feedforward`, `encoder_layers`, `decoder_layers`,
/// `positional_encoding` for the transformer; `d_model` for the embedding; `widths` for the
/// decoder), then `extra`.
pub fn import_stytr(
    bytes: &[u8],
    source: &str,
    part: Part,
    extra: &[(String, String)],
) -> Result<Vec<u8>> {
    let tensors = read_weights(bytes, source)?;
    let mut metadata: std::collections::BTreeMap<String, String> = extra.iter().cloned().collect();
    match part {
        Part::Transformer => {
            let shapes = TransformerShapes::infer(&tensors, source)?;
            shapes.check(&tensors, source)?;
            let pos = match shapes.pos {
                PosShape::Cape => "cape".to_string(),
                PosShape::Pyramidal {
                    scales,
                    branch_channels,
                } => format!("pyramidal ({scales} scales, {branch_channels} channels per conv)"),
            };
            for (key, value) in [
                ("d_model", shapes.d_model.to_string()),
                ("dim_feedforward", shapes.dim_feedforward.to_string()),
                ("encoder_layers", shapes.num_encoder_layers.to_string()),
                ("decoder_layers", shapes.num_decoder_layers.to_string()),
                ("positional_encoding", pos),
            ] {
                metadata.insert(key.into(), value);
            }
        }
        Part::Embedding => {
            let d = embedding_width(&tensors, source)?;
            metadata.insert("d_model".into(), d.to_string());
        }
        Part::Decoder => {
            let widths = decoder_widths(&tensors, source)?;
            metadata.insert("widths".into(), format!("{widths:?}"));
        }
    }
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("kind".into(), part.kind().into());
    super::serialize_f32(&tensors, metadata, source)
}
