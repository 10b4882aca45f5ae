//! The methods of a comparison: each `--use` SPEC ([`easel_host::spec`]) resolved once into
//! what paints it — a host [`Style`] with its request, or a Gatys optimisation — with the label
//! its column carries and the slug its cell files carry.

use std::path::PathBuf;

use easel_host::fast::WeightedPath;
use easel_host::gatys::{GatysStyle, Settings};
use easel_host::sources::ModelSources;
use easel_host::spec::{StyleSpec, UseSpec};
use easel_host::{PaintRequest, Style};
use easel_styles::{PluginUse, Store};

use crate::error::{CompareError, Result};

/// What paints a method.
#[derive(Debug, Clone)]
pub enum Painter {
    /// Anything the host paints (fast methods, prompts, banks, plugins).
    Host {
        /// The style.
        style: Box<Style>,
        /// Its settings.
        request: PaintRequest,
    },
    /// An optimisation run per photo.
    Gatys {
        /// The paintings.
        style: GatysStyle,
        /// Its settings.
        settings: Settings,
    },
}

/// One column of the comparison.
#[derive(Debug, Clone)]
pub struct Method {
    /// The SPEC as parsed.
    pub spec: UseSpec,
    /// The column label: `method: key settings`.
    pub label: String,
    /// File-name-safe name for the cell files (`arbitrary`, `preset-7`, `vangogh`).
    pub slug: String,
    /// What paints it.
    pub painter: Painter,
}

/// What every method of one comparison shares.
pub struct MethodContext<'a> {
    /// The run's paintings (`--style`), for the methods that paint with paintings.
    pub paintings: &'a [WeightedPath],
    /// Where diffusion models come from.
    pub sources: &'a ModelSources,
    /// Never download.
    pub offline: bool,
    /// The settings every method starts from (size, seed, ...).
    pub base: &'a PaintRequest,
    /// The installed plugins, for SPECs naming one (`None`: plugin files only).
    pub store: Option<&'a Store>,
}

/// A file-name-safe form of `text`: ASCII letters, digits and `.`, runs of anything else as one
/// `-`, at most 40 characters.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(40).collect();
    if out.is_empty() {
        "style".to_string()
    } else {
        out
    }
}

impl Method {
    /// Resolves `spec` in `ctx`: built-in methods through [`UseSpec::resolve`], plugins through
    /// the store ([`Store::resolve`], [`PluginUse`]), Gatys with its settings.
    pub fn resolve(spec: UseSpec, ctx: &MethodContext) -> Result<Self> {
        let painter = match &spec.style {
            StyleSpec::Gatys => Painter::Gatys {
                style: GatysStyle {
                    network: spec.gatys_network()?,
                    paintings: ctx.paintings.iter().map(|p| p.path.clone()).collect(),
                    mask: None,
                },
                settings: {
                    let mut settings = spec.gatys_settings()?;
                    if let easel_host::gatys::Init::Noise(_) = settings.init {
                        settings.init =
                            easel_host::gatys::Init::Noise(ctx.base.diffusion.seed.unwrap_or(0));
                    }
                    settings
                },
            },
            StyleSpec::Plugin(name) => {
                let path = match ctx.store {
                    Some(store) => store.resolve(name)?,
                    None => plugin_file(name)?,
                };
                let plugin = PluginUse::of(&path)?;
                let style = plugin.style(ctx.paintings, ctx.sources)?;
                let request = spec.request(matches!(style, Style::Fast(_)), ctx.base)?;
                Painter::Host {
                    style: Box::new(style),
                    request,
                }
            }
            _ => {
                let (style, request) =
                    spec.resolve(ctx.paintings, ctx.sources, ctx.offline, ctx.base)?;
                Painter::Host {
                    style: Box::new(style),
                    request,
                }
            }
        };
        let label = spec.label();
        let slug = slug(&match &spec.style {
            StyleSpec::Preset(mix) => format!("preset-{mix}"),
            StyleSpec::Bank(path) => path
                .file_stem()
                .map(|s| format!("bank-{}", s.to_string_lossy()))
                .unwrap_or_else(|| "bank".to_string()),
            StyleSpec::Plugin(name) => PathBuf::from(name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone()),
            StyleSpec::Adain(_) => "adain".to_string(),
            StyleSpec::Transformer(_) => "transformer".to_string(),
            StyleSpec::Prompt(_) => "prompt".to_string(),
            StyleSpec::Arbitrary => "arbitrary".to_string(),
            StyleSpec::Gatys => "gatys".to_string(),
        });
        Ok(Self {
            spec,
            label,
            slug,
            painter,
        })
    }

    /// Whether the method paints with Stable Diffusion.
    pub fn is_diffusion(&self) -> bool {
        matches!(&self.painter, Painter::Host { style, .. } if !matches!(**style, Style::Fast(_)))
    }
}

/// `name` as a plugin file when there is no store to look it up in.
fn plugin_file(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(CompareError::UnknownStyle {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_name_safe() {
        let cases = [
            ("arbitrary", "arbitrary"),
            ("preset-3:0.5,12:0.5", "preset-3-0.5-12-0.5"),
            ("Van Gogh / Starry", "van-gogh-starry"),
            ("---", "style"),
            ("日本", "style"),
        ];
        for (text, expected) in cases {
            assert_eq!(slug(text), expected, "{text}");
        }
        assert_eq!(slug(&"x".repeat(100)).len(), 40);
    }
}
