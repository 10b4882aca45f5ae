//! diffusers' pre-0.14 attention key names. VAE checkpoints saved by older diffusers (some
//! still published) name the mid-block attention's projections `query`, `key`, `value` and
//! `proj_attn`; current diffusers (and [`crate::vae`]) use `to_q`, `to_k`, `to_v` and
//! `to_out.0`. diffusers renames them at load time (`_convert_deprecated_attention_blocks`);
//! [`upgrade_legacy_attention_keys`] does the same.

use std::collections::HashMap;

use candle_core::Tensor;

/// (old, current) projection names of an attention block.
const LEGACY_ATTENTION: [(&str, &str); 4] = [
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// The current name of `key` when it is an old attention projection key
/// (`<...>.attentions.<i>.query.weight` → `<...>.attentions.<i>.to_q.weight`).
fn upgrade(key: &str) -> Option<String> {
    let (module, leaf) = key.rsplit_once('.')?;
    let (parent, name) = module.rsplit_once('.')?;
    let (_, index) = parent.rsplit_once(".attentions.")?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, new) = LEGACY_ATTENTION.iter().find(|(old, _)| *old == name)?;
    Some(format!("{parent}.{new}.{leaf}"))
}

/// Renames old attention keys (`query`, `key`, `value`, `proj_attn` under `attentions.<i>`) to
/// the current ones; other keys are kept. Returns the tensors and how many keys were renamed.
pub fn upgrade_legacy_attention_keys(
    tensors: HashMap<String, Tensor>,
) -> (HashMap<String, Tensor>, usize) {
    let mut renamed = 0;
    let tensors = tensors
        .into_iter()
        .map(|(key, tensor)| match upgrade(&key) {
            Some(new) => {
                renamed += 1;
                (new, tensor)
            }
            None => (key, tensor),
        })
        .collect();
    (tensors, renamed)
}
