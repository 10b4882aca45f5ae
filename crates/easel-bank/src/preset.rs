//! Bank presets: TOML files naming a layout, a parameterisation and a prompt template.
//!
//! The built-in presets are the files of the repository's `prompts/` folder, embedded in the
//! binary: `lsast`, `lsast-official`, `prospect`, `p-plus`, `ti` and `artbank`. Each documents its fields in
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
pub const BUILTIN_PRESETS: [(&str, &str); 6] = [
    ("lsast", include_str!("../../../prompts/lsast.toml")),
    (
        "lsast-official",
        include_str!("../../../prompts/lsast-official.toml"),
    ),
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

/// How a preset's banks are learned by default (`None`: easel's [`crate::train::TrainConfig`]
/// default); `learn`'s flags override each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingDefaults {
    /// Optimizer steps.
    pub steps: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Samples per forward pass.
    pub batch: Option<usize>,
    /// Forward passes per step.
    pub grad_accumulation: Option<usize>,
    /// Side of the training views.
    pub resolution: Option<usize>,
    /// Train through the ControlNet ([`crate::train::TrainConfig::control`]).
    pub control: Option<bool>,
    /// The caption the artworks are learned under ([`crate::train::TrainConfig::caption`]).
    pub caption: Option<String>,
    /// The Stable Diffusion the official code learns on, as a hub id (ArtBank:
    /// `CompVis/stable-diffusion-v1-4`); loaded unless another model is named.
    pub base_model: Option<String>,
}

/// How a preset's banks paint by default (`None`: the painter's default); the bank file
/// carries them and `stylize`'s flags override each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceDefaults {
    /// Classifier-free guidance scale.
    pub guidance: Option<f64>,
    /// Fraction of the schedule run.
    pub strength: Option<f64>,
    /// Steps of the full schedule.
    pub steps: Option<usize>,
    /// The sampler (`ddim`, `dpm++2m`, `euler-a`).
    pub scheduler: Option<String>,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Paint through the ControlNet.
    pub control: Option<bool>,
    /// The ControlNet's conditioning scale.
    pub control_scale: Option<f64>,
    /// Which contexts the ControlNet sees under guidance (`batch`, `cond-only`).
    pub control_cfg: Option<String>,
    /// How the photo's latents start (`img2img`, `stochastic-inversion`).
    pub noise_start: Option<String>,
}

impl InferenceDefaults {
    /// Checks every named choice and number.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = &self.scheduler {
            s.parse::<easel_diffusion::schedulers::SchedulerKind>()
                .map_err(|e| candle_core::Error::Msg(format!("inference scheduler: {e}")))?;
        }
        if let Some(s) = &self.control_cfg {
            s.parse::<easel_pipeline::pipeline::ControlGuidance>()
                .map_err(|e| candle_core::Error::Msg(format!("inference control_cfg: {e}")))?;
        }
        if let Some(s) = &self.noise_start {
            s.parse::<easel_pipeline::pipeline::NoiseStart>()
                .map_err(|e| candle_core::Error::Msg(format!("inference noise_start: {e}")))?;
        }
        if let Some(g) = self.guidance {
            if !g.is_finite() {
                bail!("inference guidance {g} is not a finite number")
            }
        }
        if let Some(v) = self.strength {
            if !(v > 0.0 && v <= 1.0) {
                bail!("inference strength {v} is outside (0, 1]")
            }
        }
        if self.steps == Some(0) {
            bail!("inference steps must be at least 1")
        }
        if let Some(v) = self.control_scale {
            if !v.is_finite() {
                bail!("inference control_scale {v} is not a finite number")
            }
        }
        Ok(())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets `request`'s guidance, strength, sampler, noise start, control scale and ControlNet
    /// guidance to the values given here, leaving its steps (and everything else) alone;
    /// returns whether the bank paints through the ControlNet (`control`, default yes). The
    /// negative prompt is the conditioning's, not the request's.
    pub fn apply(&self, request: &mut easel_pipeline::pipeline::StylizeRequest) -> Result<bool> {
        self.validate()?;
        if let Some(g) = self.guidance {
            request.guidance_scale = g;
        }
        if let Some(v) = self.strength {
            request.strength = v;
        }
        if let Some(s) = &self.scheduler {
            request.scheduler = s
                .parse()
                .map_err(|e| candle_core::Error::Msg(format!("inference scheduler: {e}")))?;
        }
        if let Some(s) = &self.noise_start {
            request.noise_start = s
                .parse()
                .map_err(|e| candle_core::Error::Msg(format!("inference noise_start: {e}")))?;
        }
        if let Some(s) = &self.control_cfg {
            request.control.guidance = s
                .parse()
                .map_err(|e| candle_core::Error::Msg(format!("inference control_cfg: {e}")))?;
        }
        if let Some(v) = self.control_scale {
            request.control.scale = v;
        }
        Ok(self.control.unwrap_or(true))
    }
}

/// A parsed preset (see the module docs and the files in `prompts/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// How its banks are learned by default.
    #[serde(default)]
    pub training: TrainingDefaults,
    /// How its banks paint by default.
    #[serde(default)]
    pub inference: InferenceDefaults,
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
            preset.prompt.validate()?;
            if let Some(caption) = &preset.training.caption {
                crate::train::check_caption(caption)?;
            }
            preset.inference.validate()
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

#[cfg(test)]
mod tests {
    use super::*;
    use easel_diffusion::contexts::LayerGroups;

    const SD15: CrossAttentionLayout = CrossAttentionLayout {
        down: 6,
        mid: 1,
        up: 9,
    };

    /// Each preset's inference defaults set the request's fields and nothing else; an empty set
    /// leaves the request as it was.
    #[test]
    fn inference_defaults_apply_to_a_request() {
        use easel_pipeline::pipeline::{ControlGuidance, NoiseStart, StylizeRequest};
        let fresh = || {
            let photo = candle_core::Tensor::zeros(
                (1, 3, 8, 8),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let mut r = StylizeRequest::new(photo);
            r.steps = 7;
            r
        };
        // (preset, guidance, noise start, ControlNet guidance, through the ControlNet)
        let cases = [
            (
                "lsast",
                10.0,
                NoiseStart::LdmImg2Img,
                ControlGuidance::CondOnly,
                true,
            ),
            (
                "artbank",
                10.0,
                NoiseStart::StochasticInversion,
                ControlGuidance::Batch,
                false,
            ),
        ];
        for (name, guidance, start, guide, control) in cases {
            let mut r = fresh();
            let through = Preset::builtin(name)
                .unwrap()
                .inference
                .apply(&mut r)
                .unwrap();
            assert_eq!(through, control, "{name}");
            assert_eq!(r.guidance_scale, guidance, "{name}");
            assert_eq!(
                (r.noise_start, r.control.guidance),
                (start, guide),
                "{name}"
            );
            assert_eq!(
                (r.strength, r.steps),
                (0.7, 7),
                "{name}: steps stay the caller's"
            );
        }
        let mut r = fresh();
        assert!(InferenceDefaults::default().apply(&mut r).unwrap());
        let d = fresh();
        assert_eq!(
            (
                r.guidance_scale,
                r.strength,
                r.noise_start,
                r.control.guidance,
                r.scheduler
            ),
            (
                d.guidance_scale,
                d.strength,
                d.noise_start,
                d.control.guidance,
                d.scheduler
            )
        );
    }

    /// Every built-in preset parses and resolves for SD 1.5 to its documented shape
    /// (stages, groups, tokens per slot, parameterisation).
    #[test]
    fn builtin_presets_parse() {
        let cases = [
            ("lsast", 10, 3, 1, "generated"),
            ("lsast-official", 10, 3, 1, "generated"),
            ("prospect", 10, 1, 1, "direct"),
            ("p-plus", 1, 16, 1, "direct"),
            ("ti", 1, 1, 4, "direct"),
            ("artbank", 1, 1, 1, "implicit"),
        ];
        assert_eq!(cases.len(), BUILTIN_PRESETS.len());
        for (name, stages, groups, tokens, kind) in cases {
            let p = Preset::builtin(name).unwrap();
            assert_eq!(p.name, name);
            let l = p.layout.resolve(&SD15).unwrap();
            assert_eq!(
                (
                    l.stages(),
                    l.num_groups(),
                    l.tokens_per_slot(),
                    p.params.kind()
                ),
                (stages, groups, tokens, kind),
                "{name}"
            );
            assert_eq!(p.prompt.placeholder, DEFAULT_PLACEHOLDER);
            assert_eq!(
                p.prompt.render(2),
                "a painting in the style of <easel-style> <easel-style>"
            );
        }
        assert_eq!(
            Preset::builtin("lsast").unwrap().layout.groups,
            LayerGroups::DownMidUp
        );
        // The official indexing: stage 4's up group reads vector 6, stored at (2, 0).
        let official = Preset::builtin("lsast-official").unwrap();
        let l = official.layout.resolve(&SD15).unwrap();
        assert_eq!(l.slot_map(), crate::layout::SlotMap::Windows);
        let slot = |stage, group| crate::layout::Slot { stage, group };
        assert_eq!(l.storage_slot(slot(4, 2)).unwrap(), slot(2, 0));
        assert_eq!(l.storage_slot(slot(9, 2)).unwrap(), slot(3, 2));
        assert!(l.storage_slot(slot(10, 0)).is_err());
        let separate = Preset::builtin("lsast")
            .unwrap()
            .layout
            .resolve(&SD15)
            .unwrap();
        assert_eq!(separate.storage_slot(slot(4, 2)).unwrap(), slot(4, 2));
        let err = Preset::builtin("nope").unwrap_err().to_string();
        assert!(
            err.contains("lsast, lsast-official, prospect, p-plus, ti, artbank"),
            "{err}"
        );
    }

    /// A user preset with explicit stage boundaries parses.
    #[test]
    fn user_preset_with_boundaries() {
        let text = r#"
            name = "mine"
            description = "three stages"
            [layout]
            stages = 3
            groups = "down-mid-up"
            tokens_per_slot = 2
            stage_map = { boundaries = [300, 700] }
            [params]
            kind = "implicit"
            entries = 8
            [prompt]
            template = "{} style"
        "#;
        let p = Preset::parse(text, "mine.toml").unwrap();
        let l = p.layout.resolve(&SD15).unwrap();
        assert_eq!(l.stage_of(299, 1000).unwrap(), 0);
        assert_eq!(l.stage_of(700, 1000).unwrap(), 2);
        assert_eq!(p.params, ParamsSpec::Implicit { entries: 8 });
        assert_eq!(p.prompt.placeholder, DEFAULT_PLACEHOLDER);
    }

    /// Malformed presets fail naming the file and the problem.
    #[test]
    fn malformed_presets_are_explained() {
        let good = BUILTIN_PRESETS[0].1;
        let cases = [
            (good.replace("stages = 10", "stages = ten"), "line"),
            (
                good.replace("stages = 10", "stage = 10"),
                "unknown field `stage`",
            ),
            (
                good.replace("\"down-mid-up\"", "\"updown\""),
                "unknown layer groups \"updown\"",
            ),
            (
                good.replace("kind = \"generated\"", "kind = \"lora\""),
                "unknown variant `lora`",
            ),
            (
                good.replace("style of {}", "style of"),
                "must contain {} exactly once",
            ),
            (
                good.replace("tokens_per_slot = 1", "tokens_per_slot = 0"),
                "tokens_per_slot",
            ),
            (
                good.replace("\"uniform\"", "{ boundaries = [500] }"),
                "10 stages need 9 stage boundaries",
            ),
            (
                good.replace("[prompt]", "[prompts]"),
                "unknown field `prompts`",
            ),
        ];
        let direct = BUILTIN_PRESETS[2]
            .1
            .replace("kind = \"direct\"", "kind = \"direct\"\nheads = 8");
        let cases = cases.into_iter().chain([(direct, "unknown field `heads`")]);
        for (text, expected) in cases {
            let err = Preset::parse(&text, "bad.toml").unwrap_err().to_string();
            assert!(err.starts_with("preset bad.toml: "), "{err}");
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
        }
    }
}
