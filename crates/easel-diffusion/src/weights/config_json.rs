//! Model configurations from the `config.json` files of a diffusers folder (`unet/`, `vae/`,
//! `controlnet/`) and of transformers' `text_encoder/`.
//!
//! Missing keys take the defaults of the diffusers / transformers constructors, as
//! `from_pretrained` does; keys that do not change the architecture (`_diffusers_version`,
//! `dropout`, ...) are ignored. Keys that select architecture variants these models do not
//! implement (class embeddings, other block types, other activations, ...) must hold their
//! default value, else parsing fails naming the key and the value.

use candle_core::Result;
use serde_json::{Map, Value};

use crate::attention::AttentionSlicing;
use crate::clip::{ClipActivation, ClipTextConfig};
use crate::controlnet::ControlNetConfig;
use crate::unet::{
    with_encoder_fields, DownBlockType, EncoderConfig, UNet2DConditionModelConfig, UpBlockType,
};
use crate::vae::AutoencoderKLConfig;

/// A parsed `config.json` object, named for messages.
struct Json<'a> {
    what: &'static str,
    obj: &'a Map<String, Value>,
}

impl<'a> Json<'a> {
    fn parse(what: &'static str, value: &'a Value) -> Result<Self> {
        match value.as_object() {
            Some(obj) => Ok(Self { what, obj }),
            None => candle_core::bail!("{what} config.json: not a JSON object"),
        }
    }

    /// The value of `key`; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, expected: &str) -> candle_core::Error {
        let found = self.obj.get(key).map(Value::to_string).unwrap_or_default();
        candle_core::Error::Msg(format!(
            "{} config.json: \"{key}\" must be {expected}, found {found}",
            self.what
        ))
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number")),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    fn str(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, "a string")),
        }
    }

    fn usize_list(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad(key, "a list of non-negative integers")),
            Some(_) => Err(self.bad(key, "a list of non-negative integers")),
        }
    }

    /// An integer or a list of integers (diffusers accepts both for per-block settings).
    fn usize_or_list(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(key) {
            Some(v) if v.is_number() => Ok(vec![self.usize(key, 0)?]),
            _ => self.usize_list(key, default),
        }
    }

    fn str_list(&self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad(key, "a list of strings")),
            Some(_) => Err(self.bad(key, "a list of strings")),
        }
    }

    /// Fails unless `_class_name` is absent or one of `classes`.
    fn class(&self, classes: &[&str]) -> Result<()> {
        match self.get("_class_name").map(|v| v.as_str()) {
            None => Ok(()),
            Some(Some(c)) if classes.contains(&c) => Ok(()),
            Some(_) => Err(self.bad("_class_name", &format!("one of {classes:?}"))),
        }
    }

    /// Fails unless every `(key, value)` of `defaults` is absent or holds that value (`null`
    /// defaults: absent or `null`; a `false` default also accepts a list of `false`).
    fn require_defaults(&self, defaults: &[(&str, Value)]) -> Result<()> {
        for (key, default) in defaults {
            let Some(found) = self.obj.get(*key) else {
                continue;
            };
            let same = match (found, default) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (Value::Array(items), Value::Bool(false)) => {
                    items.iter().all(|v| v == &Value::Bool(false))
                }
                (a, b) => a == b,
            };
            if !same {
                candle_core::bail!(
                    "{} config.json: unsupported \"{key}\": {found} (only {default} is \
                     implemented)",
                    self.what
                )
            }
        }
        Ok(())
    }
}

fn parse_value(what: &str, json: &str) -> Result<Value> {
    serde_json::from_str(json)
        .map_err(|e| candle_core::Error::Msg(format!("{what} config.json: invalid JSON: {e}")))
}

const DOWN_BLOCKS: [(&str, DownBlockType); 2] = [
    ("CrossAttnDownBlock2D", DownBlockType::CrossAttnDownBlock2D),
    ("DownBlock2D", DownBlockType::DownBlock2D),
];

const UP_BLOCKS: [(&str, UpBlockType); 2] = [
    ("CrossAttnUpBlock2D", UpBlockType::CrossAttnUpBlock2D),
    ("UpBlock2D", UpBlockType::UpBlock2D),
];

/// Parses block type names with `table`, naming an unsupported one.
fn block_types<T: Copy>(
    json: &Json,
    key: &str,
    default: &[&str],
    table: &[(&str, T)],
) -> Result<Vec<T>> {
    json.str_list(key, default)?
        .iter()
        .map(|name| {
            table
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, t)| t)
                .ok_or_else(|| {
                    let supported: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
                    candle_core::Error::Msg(format!(
                        "{} config.json: unsupported block type \"{name}\" in \"{key}\" \
                         (supported: {})",
                        json.what,
                        supported.join(", ")
                    ))
                })
        })
        .collect()
}

/// Architecture switches of diffusers' UNet / ControlNet constructors that must keep their
/// defaults here.
fn encoder_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("mid_block_type", Value::from("UNetMidBlock2DCrossAttn")),
        ("only_cross_attention", Value::Bool(false)),
        ("act_fn", Value::from("silu")),
        ("resnet_time_scale_shift", Value::from("default")),
        ("class_embed_type", Value::Null),
        ("addition_embed_type", Value::Null),
        ("addition_time_embed_dim", Value::Null),
        ("num_class_embeds", Value::Null),
        ("encoder_hid_dim", Value::Null),
        ("encoder_hid_dim_type", Value::Null),
        ("projection_class_embeddings_input_dim", Value::Null),
    ]
}

/// The settings shared by the UNet and ControlNet configs (attention slicing: `Full`).
fn encoder_json(json: &Json) -> Result<EncoderConfig> {
    let sd = UNet2DConditionModelConfig::sd15();
    let down_names = ["CrossAttnDownBlock2D"; 3]
        .into_iter()
        .chain(["DownBlock2D"])
        .collect::<Vec<_>>();
    let down_block_types = block_types(json, "down_block_types", &down_names, &DOWN_BLOCKS)?;
    let transformer_layers = json.usize_or_list("transformer_layers_per_block", &[1])?;
    let transformer_layers_per_block = match transformer_layers.as_slice() {
        [n, rest @ ..] if rest.iter().all(|r| r == n) => *n,
        _ => {
            return Err(json.bad(
                "transformer_layers_per_block",
                "one value for all blocks (per-block values are not implemented)",
            ))
        }
    };
    if json.get("cross_attention_dim").is_some_and(Value::is_array) {
        return Err(json.bad(
            "cross_attention_dim",
            "one integer (per-block values are not implemented)",
        ));
    }
    // diffusers: `num_attention_heads or attention_head_dim` is the number of heads.
    let heads_key = if json.get("num_attention_heads").is_some() {
        "num_attention_heads"
    } else {
        "attention_head_dim"
    };
    Ok(EncoderConfig {
        in_channels: json.usize("in_channels", 4)?,
        flip_sin_to_cos: json.bool("flip_sin_to_cos", true)?,
        freq_shift: json.f64("freq_shift", 0.0)?,
        down_block_types,
        block_out_channels: json.usize_list("block_out_channels", &sd.block_out_channels)?,
        layers_per_block: json.usize("layers_per_block", 2)?,
        transformer_layers_per_block,
        downsample_padding: json.usize("downsample_padding", 1)?,
        mid_block_scale_factor: json.f64("mid_block_scale_factor", 1.0)?,
        norm_num_groups: json.usize("norm_num_groups", 32)?,
        norm_eps: json.f64("norm_eps", 1e-5)?,
        cross_attention_dim: json.usize("cross_attention_dim", 1280)?,
        attention_head_dim: json.usize_or_list(heads_key, &[8])?,
        use_linear_projection: json.bool("use_linear_projection", false)?,
        attention_slicing: AttentionSlicing::Full,
    })
}

/// A [`UNet2DConditionModelConfig`] from diffusers' `unet/config.json` (attention slicing:
/// `Full`). A missing or `null` `sample_size` becomes 64.
pub fn unet_config_from_diffusers_json(json: &str) -> Result<UNet2DConditionModelConfig> {
    let value = parse_value("UNet", json)?;
    let json = Json::parse("UNet", &value)?;
    json.class(&["UNet2DConditionModel"])?;
    let mut defaults = encoder_defaults();
    defaults.extend([
        ("center_input_sample", Value::Bool(false)),
        ("time_embedding_type", Value::from("positional")),
        ("time_embedding_dim", Value::Null),
        ("time_embedding_act_fn", Value::Null),
        ("timestep_post_act", Value::Null),
        ("time_cond_proj_dim", Value::Null),
        ("conv_in_kernel", Value::from(3)),
        ("conv_out_kernel", Value::from(3)),
        ("attention_type", Value::from("default")),
        ("class_embeddings_concat", Value::Bool(false)),
        ("mid_block_only_cross_attention", Value::Null),
        ("cross_attention_norm", Value::Null),
        ("dual_cross_attention", Value::Bool(false)),
        ("resnet_skip_time_act", Value::Bool(false)),
        ("resnet_out_scale_factor", Value::from(1.0)),
        ("reverse_transformer_layers_per_block", Value::Null),
    ]);
    json.require_defaults(&defaults)?;
    let enc = encoder_json(&json)?;
    let up_names = ["UpBlock2D"]
        .into_iter()
        .chain(["CrossAttnUpBlock2D"; 3])
        .collect::<Vec<_>>();
    Ok(with_encoder_fields!(
        UNet2DConditionModelConfig,
        enc,
        sample_size: json.usize("sample_size", 64)?,
        out_channels: json.usize("out_channels", 4)?,
        up_block_types: block_types(&json, "up_block_types", &up_names, &UP_BLOCKS)?,
    ))
}

/// A [`ControlNetConfig`] from diffusers' ControlNet `config.json` (attention slicing:
/// `Full`). Only RGB conditioning (`controlnet_conditioning_channel_order: "rgb"`) is read.
pub fn controlnet_config_from_diffusers_json(json: &str) -> Result<ControlNetConfig> {
    let value = parse_value("ControlNet", json)?;
    let json = Json::parse("ControlNet", &value)?;
    json.class(&["ControlNetModel"])?;
    let mut defaults = encoder_defaults();
    defaults.push(("controlnet_conditioning_channel_order", Value::from("rgb")));
    json.require_defaults(&defaults)?;
    let enc = encoder_json(&json)?;
    let sd = ControlNetConfig::sd15();
    Ok(with_encoder_fields!(
        ControlNetConfig,
        enc,
        conditioning_channels: json.usize("conditioning_channels", 3)?,
        conditioning_embedding_out_channels: json.usize_list(
            "conditioning_embedding_out_channels",
            &sd.conditioning_embedding_out_channels,
        )?,
        global_pool_conditions: json.bool("global_pool_conditions", false)?,
    ))
}

/// An [`AutoencoderKLConfig`] from diffusers' `vae/config.json`. The block types must be
/// `DownEncoderBlock2D` / `UpDecoderBlock2D`, one per entry of `block_out_channels`.
pub fn vae_config_from_diffusers_json(json: &str) -> Result<AutoencoderKLConfig> {
    let value = parse_value("VAE", json)?;
    let json = Json::parse("VAE", &value)?;
    json.class(&["AutoencoderKL"])?;
    json.require_defaults(&[
        ("act_fn", Value::from("silu")),
        ("shift_factor", Value::Null),
    ])?;
    let block_out_channels = json.usize_list("block_out_channels", &[64])?;
    let levels = block_out_channels.len();
    for (key, name) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        let default = vec![name; levels];
        let types = block_types(&json, key, &default, &[(name, ())])?;
        if types.len() != levels {
            return Err(json.bad(
                key,
                &format!("one entry per block_out_channels entry ({levels})"),
            ));
        }
    }
    Ok(AutoencoderKLConfig {
        in_channels: json.usize("in_channels", 3)?,
        out_channels: json.usize("out_channels", 3)?,
        block_out_channels,
        layers_per_block: json.usize("layers_per_block", 1)?,
        latent_channels: json.usize("latent_channels", 4)?,
        norm_num_groups: json.usize("norm_num_groups", 32)?,
        scaling_factor: json.f64("scaling_factor", 0.18215)?,
        sample_size: json.usize("sample_size", 32)?,
        use_quant_conv: json.bool("use_quant_conv", true)?,
        use_post_quant_conv: json.bool("use_post_quant_conv", true)?,
        mid_block_add_attention: json.bool("mid_block_add_attention", true)?,
    })
}

/// A [`ClipTextConfig`] from transformers' `text_encoder/config.json` (a `CLIPTextConfig`, or
/// a whole `CLIPConfig`, whose `text_config` is read). Missing keys take transformers'
/// `CLIPTextConfig` defaults (eos id 49407, width 512, ...).
pub fn clip_config_from_transformers_json(json: &str) -> Result<ClipTextConfig> {
    let value = parse_value("CLIP text encoder", json)?;
    let outer = Json::parse("CLIP text encoder", &value)?;
    if let Some(archs) = outer.get("architectures") {
        let known = ["CLIPTextModel", "CLIPTextModelWithProjection", "CLIPModel"];
        let ok = archs.as_array().is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str().is_some_and(|s| known.contains(&s)))
        });
        if !ok {
            return Err(outer.bad("architectures", &format!("a list with one of {known:?}")));
        }
    }
    let json = match outer.get("text_config") {
        Some(text) => Json::parse("CLIP text encoder", text)?,
        None => outer,
    };
    let hidden_act = match json.str("hidden_act", "quick_gelu")? {
        "quick_gelu" => ClipActivation::QuickGelu,
        "gelu" => ClipActivation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" => ClipActivation::GeluTanh,
        _ => {
            return Err(json.bad(
                "hidden_act",
                "one of \"quick_gelu\", \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\"",
            ))
        }
    };
    let eos = json.usize("eos_token_id", 49407)?;
    Ok(ClipTextConfig {
        vocab_size: json.usize("vocab_size", 49408)?,
        hidden_size: json.usize("hidden_size", 512)?,
        num_hidden_layers: json.usize("num_hidden_layers", 12)?,
        num_attention_heads: json.usize("num_attention_heads", 8)?,
        intermediate_size: json.usize("intermediate_size", 2048)?,
        max_position_embeddings: json.usize("max_position_embeddings", 77)?,
        hidden_act,
        layer_norm_eps: json.f64("layer_norm_eps", 1e-5)?,
        eos_token_id: u32::try_from(eos).map_err(|_| json.bad("eos_token_id", "a u32"))?,
    })
}
