//! The style-reference grammar shared by `stylize --use` and `compare --use`:
//!
//! ```text
//! SPEC     := METHOD ("@" KEY "=" VALUE)*
//! METHOD   := "arbitrary"                 the embedded network, with the run's paintings
//!           | "preset:" MIX               e.g. preset:7, preset:3:0.5,12:0.5
//!           | "adain:" DIR                AdaIN weights folder (or hub repo), the run's paintings
//!           | "transformer:" DIR          StyTr² weights folder (or hub repo), one painting
//!           | "gatys"                     optimisation (Gatys et al.), the run's paintings
//!           | "prompt:" TEXT              Stable Diffusion + ControlNet with this prompt
//!           | "bank:" FILE                a prompt bank file
//!           | PLUGIN                      an installed plugin's name, or a plugin file's path
//! ```
//!
//! Settings (`@strength=0.6`, `@steps=20`, `@seed=7`, ...) apply to that style only; a
//! trailing `@key=value` is a setting only when KEY is a lower-case word, so a prompt may still
//! contain `@`.

use std::path::PathBuf;

use crate::error::{HostError, Result, Setting};
use crate::fast::{FastStyle, WeightFiles, WeightedPath};
use crate::gatys::{ColorControl, GatysNetwork, Init, OptimizerKind, Settings};
use crate::host::{PaintRequest, Style};
use crate::sources::ModelSources;

/// What a SPEC names, before anything is resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum StyleSpec {
    /// The embedded arbitrary-style network.
    Arbitrary,
    /// The embedded presets with this mix.
    Preset(String),
    /// AdaIN with the weights in this folder or hub repository.
    Adain(String),
    /// StyTr² with the weights in this folder or hub repository.
    Transformer(String),
    /// Optimisation-based style transfer (Gatys et al.) with the run's paintings.
    Gatys,
    /// Stable Diffusion with this prompt.
    Prompt(String),
    /// A prompt bank file.
    Bank(PathBuf),
    /// An installed plugin's name or a plugin file.
    Plugin(String),
}

/// A parsed SPEC: the style and its settings, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct UseSpec {
    /// What to paint with.
    pub style: StyleSpec,
    /// `key=value` settings for it.
    pub settings: Vec<(String, String)>,
    /// The SPEC as written (for labels and messages).
    pub text: String,
}

/// Whether `key` may name a setting: a lower-case word with dashes or underscores.
fn is_setting_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl UseSpec {
    /// Parses a SPEC (see the module docs).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |problem: &str| HostError::setting(Setting::Style, format!("{text:?}"), problem);
        let mut rest = text;
        let mut settings = Vec::new();
        while let Some((head, tail)) = rest.rsplit_once('@') {
            match tail.split_once('=') {
                Some((key, value)) if is_setting_key(key) => {
                    settings.push((key.to_string(), value.to_string()));
                    rest = head;
                }
                _ => break,
            }
        }
        settings.reverse();
        let (method, argument) = match rest.split_once(':') {
            Some((m, a)) => (m, Some(a)),
            None => (rest, None),
        };
        let need = |what: &str| -> Result<String> {
            match argument {
                Some(a) if !a.is_empty() => Ok(a.to_string()),
                _ => Err(bad(&format!("names no {what} after {method}:"))),
            }
        };
        let style = match method {
            "arbitrary" if argument.is_none() => StyleSpec::Arbitrary,
            "arbitrary" => {
                return Err(bad(
                    "gives arbitrary an argument; its paintings are the run's styles",
                ))
            }
            "gatys" if argument.is_none() => StyleSpec::Gatys,
            "gatys" => {
                return Err(bad(
                    "gives gatys an argument; its paintings are the run's styles",
                ))
            }
            "preset" => StyleSpec::Preset(need("preset mix")?),
            "adain" => StyleSpec::Adain(need("weights folder")?),
            "transformer" => StyleSpec::Transformer(need("weights folder")?),
            "prompt" => StyleSpec::Prompt(need("prompt text")?),
            "bank" => StyleSpec::Bank(PathBuf::from(need("bank file")?)),
            _ if rest.is_empty() => return Err(bad("is empty")),
            // A plugin name or a path (which may itself contain ':').
            _ => StyleSpec::Plugin(rest.to_string()),
        };
        Ok(Self {
            style,
            settings,
            text: text.to_string(),
        })
    }

    /// The value of setting `key`, parsed; the last one given wins.
    pub fn setting<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.settings.iter().rev().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, value)) => value.parse().map(Some).map_err(|_| {
                HostError::setting(
                    Setting::Style,
                    format!("{key}={value}"),
                    format!("in {:?} is not a valid {key}", self.text),
                )
            }),
        }
    }

    /// Fails on a setting not among `known`, naming it and the known ones.
    pub fn check_keys(&self, known: &[&str]) -> Result<()> {
        match self
            .settings
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(HostError::setting(
                Setting::Style,
                format!("@{key}"),
                format!(
                    "in {:?} is not a setting of this style (known: {})",
                    self.text,
                    known.join(", ")
                ),
            )),
        }
    }

    /// A short label: the method and its settings (`arbitrary: strength=0.6`).
    pub fn label(&self) -> String {
        let method = match &self.style {
            StyleSpec::Arbitrary => "arbitrary".to_string(),
            StyleSpec::Preset(mix) => format!("preset {mix}"),
            StyleSpec::Adain(_) => "adain".to_string(),
            StyleSpec::Transformer(_) => "transformer".to_string(),
            StyleSpec::Gatys => "gatys".to_string(),
            StyleSpec::Prompt(_) => "prompt".to_string(),
            StyleSpec::Bank(path) => format!(
                "bank {}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            StyleSpec::Plugin(name) => name.clone(),
        };
        if self.settings.is_empty() {
            method
        } else {
            let settings: Vec<String> = self
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{method}: {}", settings.join(" "))
        }
    }
}

/// The settings a fast style takes.
pub const FAST_KEYS: &[&str] = &["strength", "keep-colors", "max-size", "style-scale"];
/// The settings a Gatys style takes (each as its flag: `@iterations=50@optimizer=adam`).
pub const GATYS_KEYS: &[&str] = &[
    "iterations",
    "optimizer",
    "content-weight",
    "style-weight",
    "tv-weight",
    "init",
    "octaves",
    "style-scale",
    "style-layers",
    "content-layers",
    "vgg19",
    "keep-colors",
    "color-transfer",
    "max-size",
];
/// The settings a diffusion style takes.
pub const DIFFUSION_KEYS: &[&str] = &[
    "strength",
    "size",
    "steps",
    "guidance",
    "seed",
    "scheduler",
    "eta",
    "negative-prompt",
    "control-scale",
    "noise-start",
    "control-cfg",
];

impl UseSpec {
    /// What this SPEC paints with and how, for a run whose paintings are `paintings`, whose
    /// diffusion models come from `sources` and whose other settings are `base`. Plugins are
    /// resolved by the caller (see [`StyleSpec::Plugin`]).
    pub fn resolve(
        &self,
        paintings: &[WeightedPath],
        sources: &ModelSources,
        offline: bool,
        base: &PaintRequest,
    ) -> Result<(Style, PaintRequest)> {
        let bad = |problem: String| {
            HostError::setting(Setting::Style, format!("{:?}", self.text), problem)
        };
        let weights = |source: &str, files: usize| WeightFiles {
            source: Some(source.to_string()),
            files: vec![None; files],
            offline,
        };
        let style = match &self.style {
            StyleSpec::Arbitrary => Style::Fast(FastStyle::Arbitrary {
                paintings: paintings.to_vec(),
            }),
            StyleSpec::Preset(mix) => Style::Fast(FastStyle::Preset { spec: mix.clone() }),
            StyleSpec::Adain(source) => Style::Fast(FastStyle::Adain {
                weights: weights(source, 2),
                paintings: paintings.to_vec(),
                mask: None,
            }),
            StyleSpec::Transformer(source) => {
                let painting = match paintings {
                    [one] => one.path.clone(),
                    _ => {
                        return Err(bad(format!(
                            "paints with one painting, {} given",
                            paintings.len()
                        )))
                    }
                };
                Style::Fast(FastStyle::Transformer {
                    weights: weights(source, 3),
                    settings: easel_fast::import::stytr::Settings::published(),
                    painting,
                })
            }
            StyleSpec::Prompt(prompt) => Style::Prompt {
                prompt: prompt.clone(),
                sources: sources.clone(),
            },
            StyleSpec::Bank(path) => Style::Bank {
                path: path.clone(),
                prompt: None,
                force: false,
                sources: sources.clone(),
            },
            StyleSpec::Plugin(name) => {
                return Err(bad(format!(
                    "names plugin {name}, which the caller resolves"
                )))
            }
            // An optimisation run per photo, with its own settings and progress; the caller
            // paints it with crate::gatys.
            StyleSpec::Gatys => {
                return Err(bad(
                    "is an optimisation run, which the caller paints with easel_host::gatys"
                        .to_string(),
                ))
            }
        };
        let request = self.request(matches!(style, Style::Fast(_)), base)?;
        Ok((style, request))
    }

    /// The request for this SPEC's settings on top of `base`, for a fast style (`fast`) or a
    /// diffusion one (each takes its own keys: [`FAST_KEYS`], [`DIFFUSION_KEYS`]).
    pub fn request(&self, fast: bool, base: &PaintRequest) -> Result<PaintRequest> {
        let bad = |problem: String| {
            HostError::setting(Setting::Style, format!("{:?}", self.text), problem)
        };
        self.check_keys(if fast { FAST_KEYS } else { DIFFUSION_KEYS })?;
        let mut request = base.clone();
        if let Some(v) = self.setting("strength")? {
            request.strength = Some(v);
        }
        if let Some(v) = self.setting("keep-colors")? {
            request.keep_colors = v;
        }
        if let Some(v) = self.setting("max-size")? {
            request.max_side = v;
        }
        if let Some(v) = self.setting("style-scale")? {
            request.style_scale = v;
        }
        let d = &mut request.diffusion;
        if let Some(v) = self.setting("size")? {
            d.size = Some(v);
        }
        if let Some(v) = self.setting("steps")? {
            d.steps = Some(v);
        }
        if let Some(v) = self.setting("guidance")? {
            d.guidance = Some(v);
        }
        if let Some(v) = self.setting("seed")? {
            d.seed = Some(v);
        }
        if let Some(v) = self.setting::<String>("scheduler")? {
            d.scheduler = Some(v.parse().map_err(|e| bad(format!("{e}")))?);
        }
        if let Some(v) = self.setting("eta")? {
            d.eta = Some(v);
        }
        if let Some(v) = self.setting::<String>("negative-prompt")? {
            d.negative_prompt = Some(v);
        }
        if let Some(v) = self.setting::<String>("noise-start")? {
            d.noise_start = Some(v.parse().map_err(bad)?);
        }
        if let Some(v) = self.setting("control-scale")? {
            if let Some(control) = &mut d.control {
                control.scale = Some(v);
            }
        }
        if let Some(v) = self.setting::<String>("control-cfg")? {
            let guidance = v.parse().map_err(bad)?;
            if let Some(control) = &mut d.control {
                control.guidance = Some(guidance);
            }
        }
        Ok(request)
    }
}

impl UseSpec {
    /// The network of a `gatys@key=value...` SPEC: VGG-19 from `vgg19=FILE`, else the embedded
    /// EfficientNet-Lite0.
    pub fn gatys_network(&self) -> Result<GatysNetwork> {
        self.check_keys(GATYS_KEYS)?;
        Ok(match self.setting::<PathBuf>("vgg19")? {
            Some(path) => GatysNetwork::Vgg19(path),
            None => GatysNetwork::EfficientNetLite0,
        })
    }

    /// The Gatys settings of a `gatys@key=value...` SPEC on top of the defaults
    /// ([`GATYS_KEYS`]; `max-size` is the caller's, like the fast methods' photo cap).
    pub fn gatys_settings(&self) -> Result<Settings> {
        self.check_keys(GATYS_KEYS)?;
        let mut s = Settings::new();
        if let Some(v) = self.setting("iterations")? {
            s.iterations = v;
        }
        if let Some(v) = self.setting("octaves")? {
            s.octaves = v;
        }
        if let Some(v) = self.setting("content-weight")? {
            s.content_weight = v;
        }
        if let Some(v) = self.setting("style-weight")? {
            s.style_weight = v;
        }
        if let Some(v) = self.setting("tv-weight")? {
            s.tv_weight = v;
        }
        if let Some(v) = self.setting("style-scale")? {
            s.style_scale = v;
        }
        for (key, setting) in [
            ("style-layers", Setting::StyleLayers),
            ("content-layers", Setting::ContentLayers),
        ] {
            if let Some(v) = self.setting::<String>(key)? {
                let layers = easel_fast::gatys::Layer::parse_list(&v).map_err(|e| {
                    HostError::setting(setting, &v, format!("is not a layer list: {e}"))
                })?;
                match setting {
                    Setting::StyleLayers => s.style_layers = Some(layers),
                    _ => s.content_layers = Some(layers),
                }
            }
        }
        let choice = |key: &str, value: &str, names: &str| {
            HostError::setting(
                Setting::Style,
                format!("{key}={value}"),
                format!("in {:?}: expected {names}", self.text),
            )
        };
        if let Some(v) = self.setting::<String>("optimizer")? {
            s.optimizer = match v.as_str() {
                "lbfgs" => OptimizerKind::Lbfgs,
                "adam" => OptimizerKind::Adam,
                _ => return Err(choice("optimizer", &v, "lbfgs or adam")),
            };
        }
        if let Some(v) = self.setting::<String>("init")? {
            s.init = match v.as_str() {
                "photo" => Init::Photo,
                "noise" => Init::Noise(0),
                _ => return Err(choice("init", &v, "photo or noise")),
            };
        }
        let keep_colors = self.setting::<bool>("keep-colors")?.unwrap_or(false);
        s.color = match self.setting::<String>("color-transfer")? {
            Some(v) if v == "histogram" => ColorControl::Histogram,
            Some(v) => return Err(choice("color-transfer", &v, "histogram")),
            None if keep_colors => ColorControl::KeepColors,
            None => ColorControl::None,
        };
        crate::gatys::check_settings(&s)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_methods_arguments_and_settings() {
        type Case<'a> = (&'a str, StyleSpec, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            ("arbitrary", StyleSpec::Arbitrary, &[]),
            (
                "arbitrary@strength=0.6",
                StyleSpec::Arbitrary,
                &[("strength", "0.6")],
            ),
            ("preset:7", StyleSpec::Preset("7".into()), &[]),
            (
                "preset:3:0.5,12:0.5@keep-colors=true",
                StyleSpec::Preset("3:0.5,12:0.5".into()),
                &[("keep-colors", "true")],
            ),
            ("adain:w/adain", StyleSpec::Adain("w/adain".into()), &[]),
            (
                "transformer:org/stytr@main",
                StyleSpec::Transformer("org/stytr@main".into()),
                &[],
            ),
            (
                "prompt:a cat, mail@home.org style@steps=20@seed=7",
                StyleSpec::Prompt("a cat, mail@home.org style".into()),
                &[("steps", "20"), ("seed", "7")],
            ),
            ("bank:v.bank", StyleSpec::Bank("v.bank".into()), &[]),
            (
                "gatys@iterations=50@optimizer=adam",
                StyleSpec::Gatys,
                &[("iterations", "50"), ("optimizer", "adam")],
            ),
            ("vangogh", StyleSpec::Plugin("vangogh".into()), &[]),
            (
                "c:/styles/x.safetensors",
                StyleSpec::Plugin("c:/styles/x.safetensors".into()),
                &[],
            ),
        ];
        for (text, style, settings) in cases {
            let spec = UseSpec::parse(text).unwrap();
            assert_eq!(&spec.style, style, "{text}");
            let expected: Vec<(String, String)> = settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(spec.settings, expected, "{text}");
        }
        let spec = UseSpec::parse("arbitrary@strength=0.6@strength=0.4").unwrap();
        assert_eq!(spec.setting::<f64>("strength").unwrap(), Some(0.4));
        assert_eq!(spec.label(), "arbitrary: strength=0.6 strength=0.4");
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let cases = [
            ("", "is empty"),
            ("preset:", "names no preset mix"),
            ("adain", "names no weights folder"),
            ("arbitrary:x.jpg", "gives arbitrary an argument"),
            ("gatys:x.jpg", "gives gatys an argument"),
        ];
        for (text, expected) in cases {
            let err = UseSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let spec = UseSpec::parse("arbitrary@strenght=0.5").unwrap();
        let err = spec.check_keys(&["strength"]).unwrap_err().to_string();
        assert!(
            err.contains("@strenght") && err.contains("known: strength"),
            "{err}"
        );
        let spec = UseSpec::parse("arbitrary@strength=lots").unwrap();
        let err = spec.setting::<f64>("strength").unwrap_err().to_string();
        assert!(err.contains("strength=lots"), "{err}");
    }
}
