//! The ControlNet registry: the ControlNets the diffusion method knows by default, one TOML
//! file per entry in the repository's `controlnet/` folder (see `controlnet/README.md`),
//! embedded in the binary and parsed when used.

use serde::Deserialize;

use crate::error::HostError;

type Result<T> = std::result::Result<T, HostError>;

fn problem(name: &str, problem: impl Into<String>) -> HostError {
    HostError::Registry {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// `(name, TOML text)` of every entry.
const ENTRIES: &[(&str, &str)] = &[("canny", include_str!("../../../controlnet/canny.toml"))];

/// The entry used when no ControlNet is named.
pub const DEFAULT_ENTRY: &str = "canny";

/// The preprocessors easel implements.
const PREPROCESSORS: &[&str] = &["canny"];

/// One registry entry (`controlnet/<name>.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlNetEntry {
    /// The entry's name.
    pub name: String,
    /// Hugging Face repository id, `org/name`.
    pub repo: String,
    /// Branch, tag or commit hash.
    pub revision: String,
    /// Files that must all be present (`config.json`).
    pub files: Vec<String>,
    /// Weight file alternatives (the `.fp16.` one and the full-precision one).
    pub weights: Vec<String>,
    /// What makes the control image from the photo (`canny`).
    pub preprocessor: String,
    /// Default Canny low threshold.
    pub low_threshold: f32,
    /// Default Canny high threshold.
    pub high_threshold: f32,
    /// Default ControlNet conditioning scale.
    pub scale: f64,
}

impl ControlNetEntry {
    /// The weight alternatives in order of preference: the `.fp16.` file first when
    /// `prefer_fp16`, else the full-precision file first.
    pub fn weights_in_order(&self, prefer_fp16: bool) -> Vec<&str> {
        let (mut fp16, mut full): (Vec<&str>, Vec<&str>) = self
            .weights
            .iter()
            .map(String::as_str)
            .partition(|w| w.contains(".fp16."));
        if prefer_fp16 {
            fp16.append(&mut full);
            fp16
        } else {
            full.append(&mut fp16);
            full
        }
    }
}

/// Parses one entry's TOML and checks it.
fn parse(name: &str, text: &str) -> Result<ControlNetEntry> {
    let entry: ControlNetEntry = toml::from_str(text).map_err(|e| problem(name, e.to_string()))?;
    if entry.name != name {
        return Err(problem(name, format!("its name is {:?}", entry.name)));
    }
    if entry.weights.is_empty() {
        return Err(problem(name, "no weights listed"));
    }
    if !PREPROCESSORS.contains(&entry.preprocessor.as_str()) {
        return Err(problem(
            name,
            format!(
                "unknown preprocessor {:?} (known: {})",
                entry.preprocessor,
                PREPROCESSORS.join(", ")
            ),
        ));
    }
    if !(entry.scale.is_finite()
        && entry.low_threshold >= 0.0
        && entry.low_threshold <= entry.high_threshold)
    {
        return Err(problem(name, "bad default scale or thresholds"));
    }
    Ok(entry)
}

/// The registry entry `name`.
pub fn entry(name: &str) -> Result<ControlNetEntry> {
    match ENTRIES.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => parse(n, text),
        None => Err(problem(
            name,
            format!(
                "no such entry (known: {})",
                ENTRIES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_and_canny_has_the_issue_defaults() {
        for (name, text) in ENTRIES {
            parse(name, text).unwrap();
        }
        let canny = entry(DEFAULT_ENTRY).unwrap();
        assert_eq!(canny.repo, "lllyasviel/control_v11p_sd15_canny");
        assert_eq!(canny.revision, "main");
        assert_eq!(canny.files, ["config.json"]);
        assert_eq!(canny.preprocessor, "canny");
        assert_eq!((canny.low_threshold, canny.high_threshold), (100.0, 200.0));
        assert_eq!(canny.scale, 1.0);
        assert_eq!(
            canny.weights_in_order(true),
            [
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors"
            ]
        );
        assert_eq!(
            canny.weights_in_order(false),
            [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors"
            ]
        );
        let err = entry("depth").unwrap_err().to_string();
        assert!(err.contains("known: canny"), "{err}");
    }

    #[test]
    fn bad_entries_are_refused() {
        let good = ENTRIES[0].1;
        let unknown = format!("{good}\nextra = 1\n");
        assert!(parse("canny", &unknown).is_err());
        let other = good.replace("preprocessor = \"canny\"", "preprocessor = \"depth\"");
        let err = parse("canny", &other).unwrap_err().to_string();
        assert!(err.contains("unknown preprocessor \"depth\""), "{err}");
        let err = parse("lineart", good).unwrap_err().to_string();
        assert!(err.contains("its name is \"canny\""), "{err}");
    }
}
