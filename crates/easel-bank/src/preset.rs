//! Bank presets: TOML files naming a layout, a parameterisation and a prompt template.
//!
//! The built-in presets are the files of the repository's `prompts/` folder, embedded in the
//! binary: `lsast`, `prospect`, `p-plus`, `ti` and `artbank`. Each documents its fields in
//! comments; a user preset is a file of the same form, read by the caller and parsed with
//! [`Preset::parse`]. Unknown keys are refused (a typo would otherwise silently fall back to a
//! default).

use candle_core::{bail, Result};
use easel_diffusion::contexts::CrossAttentionLayout;
use serde::{Deserialize, Serialize};

use crate::layout::LayoutSpec;
use crate::params::ParamsSpec;

/// The default placeholder token the bank's vectors replace.
pub const DEFAULT_PLACEHOLDER: &str = "<easel-style>";

/// The built-in presets: (name, TOML text).
pub const BUILTIN_PRESETS: [(&str, &str); 5] = [
    ("lsast", include_str!("../../../prompts/lsast.toml")),
    ("prospect", include_str!("../../../prompts/prospect.toml")),
    ("p-plus", include_str!("../../../prompts/p-plus.toml")),
    ("ti", include_str!("../../../prompts/ti.toml")),
    ("artbank", include_str!("../../../prompts/artbank.toml")),
];

/// Where the bank's tokens go in the text encoder's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// The prompt, with `{}` (exactly once) where the placeholder goes, repeated `T` times
    /// (e.g. `"a painting in the style of {}"`).
    pub template: String,
    /// The placeholder token (e.g. `<easel-style>`), added to the tokenizer; no whitespace.
    #[serde(default = "default_placeholder")]
    pub placeholder: String,
}

fn default_placeholder() -> String {
    DEFAULT_PLACEHOLDER.to_string()
}

impl PromptSpec {
    /// Checks the template has exactly one `{}` and the placeholder is one non-blank word.
    pub fn validate(&self) -> Result<()> {
        if self.template.matches("{}").count() != 1 {
            bail!(
                "prompt template {:?} must contain {{}} exactly once (where the placeholder goes)",
                self.template
            )
        }
        if self.placeholder.is_empty() || self.placeholder.chars().any(char::is_whitespace) {
            bail!(
                "placeholder {:?} must be one word without whitespace",
                self.placeholder
            )
        }
        Ok(())
    }

    /// The prompt text with the placeholder repeated `tokens` times (space-separated).
    pub fn render(&self, tokens: usize) -> String {
        let run = vec![self.placeholder.as_str(); tokens].join(" ");
        self.template.replacen("{}", &run, 1)
    }
}

/// A parsed preset (see the module docs and the files in `prompts/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Short name (`lsast`, ...).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// The arrangement of the vectors.
    pub layout: LayoutSpec,
    /// The parameterisation.
    pub params: ParamsSpec,
    /// Where the tokens go in the prompt.
    pub prompt: PromptSpec,
}

impl Preset {
    /// Parses preset TOML; `origin` (a file path or `builtin:<name>`) names it in errors,
    /// which carry the TOML parser's line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let preset: Preset = match toml::from_str(text) {
            Ok(p) => p,
            Err(e) => bail!("preset {origin}: {}", e.to_string().trim_end()),
        };
        let check = || -> Result<()> {
            // Any model layout resolves a valid spec: this checks stages, tokens and boundaries.
            let one_layer = CrossAttentionLayout {
                down: 1,
                mid: 0,
                up: 0,
            };
            preset.layout.resolve(&one_layer)?;
            preset.prompt.validate()
        };
        if let Err(e) = check() {
            bail!("preset {origin}: {e}")
        }
        Ok(preset)
    }

    /// The built-in preset `name` (see [`BUILTIN_PRESETS`]).
    pub fn builtin(name: &str) -> Result<Self> {
        match BUILTIN_PRESETS.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::parse(text, &format!("builtin:{n}")),
            None => bail!(
                "unknown preset {name:?}; built-in presets: {}",
                BUILTIN_PRESETS.map(|(n, _)| n).join(", ")
            ),
        }
    }
}
