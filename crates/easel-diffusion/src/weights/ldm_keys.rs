//! Key maps between diffusers' state dicts and the original single-file checkpoints of Stable
//! Diffusion (the CompVis `ldm` code base: `model.diffusion_model.*` for the UNet,
//! `first_stage_model.*` for the VAE, `cond_stage_model.transformer.*` for CLIP).
//!
//! A [`KeyMap`] is a table of module pairs (a diffusers module path and its LDM path) built from
//! the model configuration, plus a small rule per pair for the names below the module (the
//! UNet resnets' `in_layers.0` ↔ `norm1`, ..., the VAE attention's `q` ↔ `to_q`, ...). The table
//! works both ways: [`KeyMap::ldm_to_diffusers`] / [`KeyMap::to_diffusers`] read single-file
//! checkpoints, [`KeyMap::diffusers_to_ldm`] / [`KeyMap::to_ldm`] export them. The ControlNet
//! map lives in [`super::controlnet_keys`].

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use crate::clip::ClipTextConfig;
use crate::unet::{DownBlockType, UNet2DConditionModelConfig, UpBlockType};
use crate::vae::AutoencoderKLConfig;

/// How the names below a mapped module translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafRule {
    /// Same names on both sides (convolutions, linears, norms, transformers).
    Same,
    /// A UNet `ResBlock` (`in_layers.0` ↔ `norm1`, ...): [`UNET_RESNET`].
    UNetResnet,
    /// A VAE `ResnetBlock` (`nin_shortcut` ↔ `conv_shortcut`): [`VAE_RESNET`].
    VaeResnet,
    /// The VAE's mid-block `AttnBlock` (`q` ↔ `to_q`, ...; 1×1 convolution weights ↔ linear
    /// weights): [`VAE_ATTENTION`].
    VaeAttention,
}

/// (diffusers, LDM) sub-module names of a UNet resnet.
const UNET_RESNET: &[(&str, &str)] = &[
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// (diffusers, LDM) sub-module names of a VAE resnet.
const VAE_RESNET: &[(&str, &str)] = &[
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("conv_shortcut", "nin_shortcut"),
];

/// (diffusers, LDM) sub-module names of the VAE mid-block attention.
const VAE_ATTENTION: &[(&str, &str)] = &[
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
];

/// Which side of a [`KeyMap`] a key is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Diffusers,
    Ldm,
}

impl LeafRule {
    fn table(self) -> Option<&'static [(&'static str, &'static str)]> {
        match self {
            Self::Same => None,
            Self::UNetResnet => Some(UNET_RESNET),
            Self::VaeResnet => Some(VAE_RESNET),
            Self::VaeAttention => Some(VAE_ATTENTION),
        }
    }

    /// Translates `rest` (the key below the module, e.g. `in_layers.0.weight`) from `from`.
    fn translate(self, rest: &str, from: Side) -> Option<String> {
        let Some(table) = self.table() else {
            return Some(rest.to_string());
        };
        let (module, leaf) = rest.rsplit_once('.')?;
        table.iter().find_map(|&(d, l)| {
            let (src, dst) = match from {
                Side::Diffusers => (d, l),
                Side::Ldm => (l, d),
            };
            (module == src).then(|| format!("{dst}.{leaf}"))
        })
    }

    /// Whether the tensor under `rest` (diffusers side) is a linear weight stored as a 1×1
    /// convolution on the LDM side.
    fn is_conv_linear(self, diffusers_rest: &str) -> bool {
        self == Self::VaeAttention
            && diffusers_rest.ends_with(".weight")
            && !diffusers_rest.starts_with("group_norm.")
    }
}

/// One module pair of a [`KeyMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModulePair {
    pub(crate) diffusers: String,
    pub(crate) ldm: String,
    pub(crate) rule: LeafRule,
}

/// Collects [`ModulePair`]s.
#[derive(Debug, Default)]
pub(crate) struct Pairs(pub(crate) Vec<ModulePair>);

impl Pairs {
    pub(crate) fn add(&mut self, diffusers: impl Into<String>, ldm: impl Into<String>) {
        self.add_rule(diffusers, ldm, LeafRule::Same)
    }

    pub(crate) fn add_rule(
        &mut self,
        diffusers: impl Into<String>,
        ldm: impl Into<String>,
        rule: LeafRule,
    ) {
        self.0.push(ModulePair {
            diffusers: diffusers.into(),
            ldm: ldm.into(),
            rule,
        })
    }
}

/// A bidirectional key map between a component's diffusers state dict and its keys in an
/// original (LDM) single-file checkpoint, built for one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMap {
    component: &'static str,
    /// Prefixes of this component's keys in a single file; the first is written on export.
    ldm_prefixes: &'static [&'static str],
    /// Also read keys that carry none of the prefixes (standalone ControlNet files).
    bare_ldm_keys: bool,
    /// A diffusers-side prefix that may be missing (`text_model.` in transformers 5.x files).
    optional_diffusers_prefix: Option<&'static str>,
    pairs: Vec<ModulePair>,
}

/// What [`KeyMap::to_diffusers`] / [`KeyMap::to_ldm`] return.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The converted tensors under their new keys.
    pub tensors: HashMap<String, Tensor>,
    /// Keys of this component the map does not know (sorted), left out of `tensors`: EMA
    /// copies, buffers, or the sign of a configuration that does not match the file.
    pub unmapped: Vec<String>,
}

/// The UNet-encoder part shared by the UNet and the ControlNet: time embedding, `conv_in`,
/// down blocks and mid block (LDM `time_embed`, `input_blocks`, `middle_block`).
pub(crate) fn encoder_pairs(
    pairs: &mut Pairs,
    down_block_types: &[DownBlockType],
    layers_per_block: usize,
) {
    pairs.add("time_embedding.linear_1", "time_embed.0");
    pairs.add("time_embedding.linear_2", "time_embed.2");
    pairs.add("conv_in", "input_blocks.0.0");
    let blocks = down_block_types.len();
    let per_block = layers_per_block + 1;
    for (b, &kind) in down_block_types.iter().enumerate() {
        for j in 0..layers_per_block {
            let n = 1 + b * per_block + j;
            pairs.add_rule(
                format!("down_blocks.{b}.resnets.{j}"),
                format!("input_blocks.{n}.0"),
                LeafRule::UNetResnet,
            );
            if kind == DownBlockType::CrossAttnDownBlock2D {
                pairs.add(
                    format!("down_blocks.{b}.attentions.{j}"),
                    format!("input_blocks.{n}.1"),
                );
            }
        }
        if b + 1 < blocks {
            let n = 1 + b * per_block + layers_per_block;
            pairs.add(
                format!("down_blocks.{b}.downsamplers.0.conv"),
                format!("input_blocks.{n}.0.op"),
            );
        }
    }
    pairs.add_rule(
        "mid_block.resnets.0",
        "middle_block.0",
        LeafRule::UNetResnet,
    );
    pairs.add("mid_block.attentions.0", "middle_block.1");
    pairs.add_rule(
        "mid_block.resnets.1",
        "middle_block.2",
        LeafRule::UNetResnet,
    );
}

/// Number of skip connections of a UNet encoder (`conv_in`, each resnet, each downsampler):
/// the ControlNet's zero convolutions.
pub(crate) fn num_skips(blocks: usize, layers_per_block: usize) -> usize {
    1 + blocks * layers_per_block + blocks.saturating_sub(1)
}

impl KeyMap {
    pub(crate) fn new(
        component: &'static str,
        ldm_prefixes: &'static [&'static str],
        bare_ldm_keys: bool,
        optional_diffusers_prefix: Option<&'static str>,
        pairs: Pairs,
    ) -> Self {
        Self {
            component,
            ldm_prefixes,
            bare_ldm_keys,
            optional_diffusers_prefix,
            pairs: pairs.0,
        }
    }

    /// The UNet (`model.diffusion_model.*`) of a single-file checkpoint.
    pub fn unet(cfg: &UNet2DConditionModelConfig) -> Self {
        let mut pairs = Pairs::default();
        encoder_pairs(&mut pairs, &cfg.down_block_types, cfg.layers_per_block);
        let blocks = cfg.up_block_types.len();
        let per_block = cfg.layers_per_block + 1;
        for (i, &kind) in cfg.up_block_types.iter().enumerate() {
            let attention = kind == UpBlockType::CrossAttnUpBlock2D;
            for j in 0..per_block {
                let n = i * per_block + j;
                pairs.add_rule(
                    format!("up_blocks.{i}.resnets.{j}"),
                    format!("output_blocks.{n}.0"),
                    LeafRule::UNetResnet,
                );
                if attention {
                    pairs.add(
                        format!("up_blocks.{i}.attentions.{j}"),
                        format!("output_blocks.{n}.1"),
                    );
                }
            }
            if i + 1 < blocks {
                let n = i * per_block + cfg.layers_per_block;
                let slot = if attention { 2 } else { 1 };
                pairs.add(
                    format!("up_blocks.{i}.upsamplers.0.conv"),
                    format!("output_blocks.{n}.{slot}.conv"),
                );
            }
        }
        pairs.add("conv_norm_out", "out.0");
        pairs.add("conv_out", "out.2");
        Self::new("UNet", &["model.diffusion_model."], false, None, pairs)
    }

    /// The VAE (`first_stage_model.*`, or `vae.*`) of a single-file checkpoint. The mid-block
    /// attention's `q`/`k`/`v`/`proj_out` are 1×1 convolutions there, linears in diffusers.
    pub fn vae(cfg: &AutoencoderKLConfig) -> Self {
        let mut pairs = Pairs::default();
        let levels = cfg.block_out_channels.len();
        let mid = |pairs: &mut Pairs, side: &str| {
            let d = format!("{side}.mid_block");
            let l = format!("{side}.mid");
            pairs.add_rule(
                format!("{d}.resnets.0"),
                format!("{l}.block_1"),
                LeafRule::VaeResnet,
            );
            if cfg.mid_block_add_attention {
                pairs.add_rule(
                    format!("{d}.attentions.0"),
                    format!("{l}.attn_1"),
                    LeafRule::VaeAttention,
                );
            }
            pairs.add_rule(
                format!("{d}.resnets.1"),
                format!("{l}.block_2"),
                LeafRule::VaeResnet,
            );
        };
        for side in ["encoder", "decoder"] {
            pairs.add(format!("{side}.conv_in"), format!("{side}.conv_in"));
            pairs.add(format!("{side}.conv_norm_out"), format!("{side}.norm_out"));
            pairs.add(format!("{side}.conv_out"), format!("{side}.conv_out"));
            mid(&mut pairs, side);
        }
        for i in 0..levels {
            for j in 0..cfg.layers_per_block {
                pairs.add_rule(
                    format!("encoder.down_blocks.{i}.resnets.{j}"),
                    format!("encoder.down.{i}.block.{j}"),
                    LeafRule::VaeResnet,
                );
            }
            if i + 1 < levels {
                pairs.add(
                    format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                    format!("encoder.down.{i}.downsample.conv"),
                );
            }
            // The decoder's levels are numbered from the lowest resolution in diffusers, from
            // the highest in LDM.
            let l = levels - 1 - i;
            for j in 0..=cfg.layers_per_block {
                pairs.add_rule(
                    format!("decoder.up_blocks.{i}.resnets.{j}"),
                    format!("decoder.up.{l}.block.{j}"),
                    LeafRule::VaeResnet,
                );
            }
            if i + 1 < levels {
                pairs.add(
                    format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                    format!("decoder.up.{l}.upsample.conv"),
                );
            }
        }
        if cfg.use_quant_conv {
            pairs.add("quant_conv", "quant_conv");
        }
        if cfg.use_post_quant_conv {
            pairs.add("post_quant_conv", "post_quant_conv");
        }
        Self::new("VAE", &["first_stage_model.", "vae."], false, None, pairs)
    }

    /// The CLIP text encoder (`cond_stage_model.transformer.*`, or SDXL's
    /// `conditioner.embedders.0.transformer.*`): transformers' keys under a prefix. The
    /// diffusers side is `text_model.*`; keys without `text_model.` (transformers 5.x files)
    /// are read too.
    pub fn clip(cfg: &ClipTextConfig) -> Self {
        let mut pairs = Pairs::default();
        for module in ["text_model.embeddings", "text_model.final_layer_norm"] {
            pairs.add(module, module);
        }
        for i in 0..cfg.num_hidden_layers {
            let module = format!("text_model.encoder.layers.{i}");
            pairs.add(module.clone(), module);
        }
        Self::new(
            "CLIP text encoder",
            &[
                "cond_stage_model.transformer.",
                "conditioner.embedders.0.transformer.",
            ],
            false,
            Some("text_model."),
            pairs,
        )
    }

    /// The component's name, for messages.
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The key prefix this component's keys get on export (`model.diffusion_model.`, ...).
    pub fn ldm_prefix(&self) -> &'static str {
        self.ldm_prefixes.first().copied().unwrap_or("")
    }

    /// The pair whose `side` module is a prefix of `key` (at a `.` boundary), with the rest.
    fn find<'k>(&self, key: &'k str, side: Side) -> Option<(&ModulePair, &'k str)> {
        self.pairs.iter().find_map(|pair| {
            let module = match side {
                Side::Diffusers => &pair.diffusers,
                Side::Ldm => &pair.ldm,
            };
            key.strip_prefix(module.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| (pair, rest))
        })
    }

    /// `key` without this component's LDM prefix, or `None` when it is not this component's.
    fn strip_ldm_prefix<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.ldm_prefixes
            .iter()
            .find_map(|p| key.strip_prefix(p))
            .or(self.bare_ldm_keys.then_some(key))
    }

    /// Maps a single-file key (with its prefix, e.g.
    /// `model.diffusion_model.input_blocks.1.0.in_layers.0.weight`) to the diffusers key
    /// (`down_blocks.0.resnets.0.norm1.weight`); `None` when the map does not know it.
    pub fn ldm_to_diffusers(&self, key: &str) -> Option<String> {
        self.ldm_to_diffusers_rule(key).map(|(k, _)| k)
    }

    fn ldm_to_diffusers_rule(&self, key: &str) -> Option<(String, bool)> {
        let key = self.strip_ldm_prefix(key)?;
        let (pair, rest) = self.find(key, Side::Ldm)?;
        let rest = pair.rule.translate(rest, Side::Ldm)?;
        let conv_linear = pair.rule.is_conv_linear(&rest);
        Some((format!("{}.{rest}", pair.diffusers), conv_linear))
    }

    /// Maps a diffusers key to its single-file key, prefix included (the inverse of
    /// [`KeyMap::ldm_to_diffusers`]).
    pub fn diffusers_to_ldm(&self, key: &str) -> Option<String> {
        self.diffusers_to_ldm_rule(key).map(|(k, _)| k)
    }

    fn diffusers_to_ldm_rule(&self, key: &str) -> Option<(String, bool)> {
        let key = match self.optional_diffusers_prefix {
            Some(prefix) if self.find(key, Side::Diffusers).is_none() => format!("{prefix}{key}"),
            _ => key.to_string(),
        };
        let (pair, rest) = self.find(&key, Side::Diffusers)?;
        let conv_linear = pair.rule.is_conv_linear(rest);
        let ldm_rest = pair.rule.translate(rest, Side::Diffusers)?;
        Some((
            format!("{}{}.{ldm_rest}", self.ldm_prefix(), pair.ldm),
            conv_linear,
        ))
    }

    /// Converts this component's tensors of a single-file checkpoint to diffusers keys (1×1
    /// convolution weights of the VAE attention become linear weights). Keys of other
    /// components are ignored; this component's unknown keys are listed in
    /// [`Converted::unmapped`]. Fails when the checkpoint has no key of this component, or
    /// when two keys land on the same diffusers key.
    pub fn to_diffusers(&self, tensors: &HashMap<String, Tensor>) -> Result<Converted> {
        // Read only one prefix, so that a file with both `first_stage_model.` and `vae.` keys
        // cannot mix them.
        let prefix = self
            .ldm_prefixes
            .iter()
            .find(|p| tensors.keys().any(|k| k.starts_with(*p)));
        let mut out = HashMap::new();
        let mut unmapped = Vec::new();
        for (key, tensor) in tensors {
            let mine = match prefix {
                Some(p) => key.starts_with(p),
                None => self.bare_ldm_keys,
            };
            if !mine {
                continue;
            }
            let Some((name, conv_linear)) = self.ldm_to_diffusers_rule(key) else {
                unmapped.push(key.clone());
                continue;
            };
            let tensor = if conv_linear {
                conv_to_linear(key, tensor)?
            } else {
                tensor.clone()
            };
            if out.insert(name.clone(), tensor).is_some() {
                candle_core::bail!(
                    "{}: two checkpoint keys map to diffusers key '{name}' (one is '{key}')",
                    self.component
                )
            }
        }
        if out.is_empty() {
            candle_core::bail!(
                "no {} tensors in the checkpoint (expected keys starting with {})",
                self.component,
                self.ldm_prefixes.join(" or ")
            )
        }
        unmapped.sort();
        Ok(Converted {
            tensors: out,
            unmapped,
        })
    }

    /// Converts a diffusers state dict of this component to single-file keys (with
    /// [`KeyMap::ldm_prefix`]; linear weights of the VAE attention become 1×1 convolutions).
    /// Unknown keys are listed in [`Converted::unmapped`].
    pub fn to_ldm(&self, tensors: &HashMap<String, Tensor>) -> Result<Converted> {
        let mut out = HashMap::new();
        let mut unmapped = Vec::new();
        for (key, tensor) in tensors {
            let Some((name, conv_linear)) = self.diffusers_to_ldm_rule(key) else {
                unmapped.push(key.clone());
                continue;
            };
            let tensor = if conv_linear {
                let (o, i) = tensor.dims2().map_err(|_| {
                    candle_core::Error::Msg(format!(
                        "{}: '{key}' should be a linear weight [out, in], found {:?}",
                        self.component,
                        tensor.dims()
                    ))
                })?;
                tensor.reshape((o, i, 1, 1))?
            } else {
                tensor.clone()
            };
            if out.insert(name.clone(), tensor).is_some() {
                candle_core::bail!(
                    "{}: two diffusers keys map to checkpoint key '{name}' (one is '{key}')",
                    self.component
                )
            }
        }
        unmapped.sort();
        Ok(Converted {
            tensors: out,
            unmapped,
        })
    }
}

/// A 1×1 convolution weight `[out, in, 1, 1]` (or a 1-wide 1-D one `[out, in, 1]`) as a
/// linear weight `[out, in]`; a linear weight is kept.
fn conv_to_linear(key: &str, tensor: &Tensor) -> Result<Tensor> {
    match tensor.dims() {
        [_, _] => Ok(tensor.clone()),
        [o, i, rest @ ..] if rest.iter().all(|&d| d == 1) => tensor.reshape((*o, *i)),
        dims => candle_core::bail!(
            "'{key}' should be a 1×1 convolution or linear weight, found shape {dims:?}"
        ),
    }
}

/// Whether `keys` look like an original single-file checkpoint (keys starting with
/// `model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.` or `control_model.`)
/// rather than a diffusers component.
pub fn is_ldm_checkpoint<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    const PREFIXES: [&str; 4] = [
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.",
        "control_model.",
    ];
    keys.into_iter()
        .any(|k| PREFIXES.iter().any(|p| k.starts_with(p)))
}
