//! Value parsers shared by several subcommands' flags, and the wording of the style host's
//! errors in terms of this CLI's flags.

use candle_core::DType;
use easel_diffusion::schedulers::SchedulerKind;
use easel_host::sources::SourceHints;
use easel_host::{HostError, ModelRole, Setting};

/// `--dtype`: f32, f16 or bf16 (also `fp16`, `float16`, ..., any case).
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(format!(
            "unknown dtype {s:?}, expected one of: f32, f16, bf16"
        )),
    }
}

/// `--scheduler`: ddim, dpm++2m or euler-a.
pub fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse::<SchedulerKind>().map_err(|e| e.to_string())
}

/// `--depth`: 8 or 16.
pub fn parse_depth(s: &str) -> Result<u8, String> {
    match s.trim() {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("PNG depth must be 8 or 16, got {s:?}")),
    }
}

/// The missing-files error's alternatives to the hub, in this CLI's flags.
pub fn source_hints() -> SourceHints {
    SourceHints {
        sd: "pass --sd DIR with a local diffusers folder (or --sd FILE.safetensors)".to_string(),
        tokenizer: "pass --sd DIR with a diffusers folder that has tokenizer/ (or --sd-config DIR)"
            .to_string(),
        controlnet: "pass --controlnet DIR with a local ControlNet folder".to_string(),
    }
}

/// The flag that sets `setting`.
fn setting_flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Size => "--size",
        Setting::Strength => "--strength",
        Setting::Steps => "--steps",
        Setting::Guidance => "--guidance",
        Setting::Eta => "--eta",
        Setting::Batch => "--batch",
        Setting::ControlScale => "--control-scale",
        Setting::ControlWindow => "--control-start/--control-end",
        Setting::Canny => "--canny",
        Setting::MaxSize => "--max-size",
        Setting::Style => "--style",
        Setting::Dtype => "--dtype",
        Setting::Heads => "--stytr-heads",
        Setting::CapeGrid => "--stytr-cape-grid",
        Setting::Windows => "--stytr-windows",
        Setting::Iterations => "--iterations",
        Setting::Octaves => "--octaves",
        Setting::StyleScale => "--style-scale",
        Setting::ContentWeight => "--content-weight",
        Setting::StyleWeight => "--style-weight",
        Setting::TvWeight => "--tv-weight",
        Setting::Mask => "--mask",
        Setting::Color => "--keep-colors/--color-transfer",
        Setting::VaeTiling => "--vae-tiling",
        Setting::StyleLayers => "--style-layers",
        Setting::ContentLayers => "--content-layers",
        Setting::Vgg19 => "--vgg19",
    }
}

/// The flag that names the model of `role`.
fn role_flag(role: ModelRole) -> &'static str {
    match role {
        ModelRole::StableDiffusion => "--sd",
        ModelRole::SdConfig => "--sd-config",
        ModelRole::ControlNet => "--controlnet",
        ModelRole::FastWeights => "--weights",
    }
}

/// `err` in this CLI's words: settings and model sources by the flag that sets them.
pub fn word(err: HostError) -> anyhow::Error {
    match err {
        HostError::Setting {
            setting: Setting::ControlWindow,
            value,
            problem,
        } => {
            let (start, end) = value.split_once("..").unwrap_or((&value, ""));
            anyhow::anyhow!("--control-start {start} and --control-end {end} {problem}")
        }
        HostError::Setting {
            setting,
            value,
            problem,
        } => anyhow::anyhow!("{} {value} {problem}", setting_flag(setting)),
        HostError::Source { role, problem } => anyhow::anyhow!("{}: {problem}", role_flag(role)),
        HostError::Memory { error, relief } => {
            let flags: Vec<&str> = relief.iter().map(|&s| setting_flag(s)).collect();
            anyhow::anyhow!("{error}; change {} to need less", or_list(&flags))
        }
        HostError::Bank(bank) => match *bank {
            easel_bank::conditioning::ConditioningError::Fit(
                e @ easel_bank::file::BankFitError::BaseModel { .. },
            ) => anyhow::anyhow!("{e}: use --force-bank to load it anyway"),
            easel_bank::conditioning::ConditioningError::Template { prompt, problem } => {
                anyhow::anyhow!("--prompt {prompt:?} {problem}")
            }
            other => anyhow::Error::new(other),
        },
        other => anyhow::Error::new(other),
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_dtypes_depths_and_schedulers() {
        assert_eq!(parse_dtype("f16"), Ok(DType::F16));
        assert_eq!(parse_dtype("fp16"), Ok(DType::F16));
        assert_eq!(parse_dtype("BF16"), Ok(DType::BF16));
        assert!(parse_dtype("f64").unwrap_err().contains("f32, f16, bf16"));
        assert_eq!(parse_depth("16"), Ok(16));
        assert!(parse_depth("12").is_err());
        assert_eq!(
            parse_scheduler("euler-a"),
            Ok(SchedulerKind::EulerAncestral)
        );
        assert!(parse_scheduler("pndm").unwrap_err().contains("ddim"));
    }
}
