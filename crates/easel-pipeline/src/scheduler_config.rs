//! [`SchedulerConfig`] from a diffusers `scheduler/scheduler_config.json`.
//!
//! Any diffusers scheduler class is accepted (SD 1.5 ships a `PNDMScheduler` config): only the
//! training schedule and the sampling options every easel scheduler shares are read. Missing
//! keys take diffusers' defaults of the named class (`DDIMScheduler`'s when the class is not
//! named); options that change the math in ways easel does not implement (thresholding,
//! zero-SNR rescaling, trained betas, Karras sigmas) must be off.

use candle_core::{bail, Result};
use easel_diffusion::schedulers::SchedulerConfig;
use serde_json::{Map, Value};

fn bad(key: &str, expected: &str, found: &Value) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "scheduler_config.json: \"{key}\" must be {expected}, found {found}"
    ))
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn f64_of(obj: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match get(obj, key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| bad(key, "a number", v)),
    }
}

fn usize_of(obj: &Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match get(obj, key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(key, "a non-negative integer", v)),
    }
}

fn bool_of(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match get(obj, key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| bad(key, "true or false", v)),
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, key: &str, default: &'a str) -> Result<&'a str> {
    match get(obj, key) {
        None => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| bad(key, "a string", v)),
    }
}

/// Parses a diffusers `scheduler_config.json` (see the module docs for defaults and refusals)
/// and validates the result.
pub fn scheduler_config_from_diffusers_json(json: &str) -> Result<SchedulerConfig> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        candle_core::Error::Msg(format!("scheduler_config.json: invalid JSON: {e}"))
    })?;
    let Some(obj) = value.as_object() else {
        bail!("scheduler_config.json: not a JSON object")
    };
    // Options that must stay off (absent, null or false).
    for key in [
        "thresholding",
        "rescale_betas_zero_snr",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
    ] {
        if let Some(v) = get(obj, key) {
            if v != &Value::Bool(false) {
                bail!(
                    "scheduler_config.json: unsupported \"{key}\": {v} (only false is implemented)"
                )
            }
        }
    }
    if let Some(v) = get(obj, "trained_betas") {
        bail!(
            "scheduler_config.json: unsupported \"trained_betas\": {v} (only null is implemented)"
        )
    }
    let class = str_of(obj, "_class_name", "DDIMScheduler")?;
    // DDIM and DDPM clip the predicted sample by default; DDIM uses alpha-bar 1 at the end by
    // default, PNDM does not (the other classes have neither option).
    let ddim = matches!(class, "DDIMScheduler" | "DDPMScheduler");
    let config = SchedulerConfig {
        num_train_timesteps: usize_of(obj, "num_train_timesteps", 1000)?,
        beta_start: f64_of(obj, "beta_start", 0.0001)?,
        beta_end: f64_of(obj, "beta_end", 0.02)?,
        beta_schedule: str_of(obj, "beta_schedule", "linear")?.parse()?,
        prediction_type: str_of(obj, "prediction_type", "epsilon")?.parse()?,
        clip_sample: bool_of(obj, "clip_sample", ddim)?,
        clip_sample_range: f64_of(obj, "clip_sample_range", 1.0)?,
        set_alpha_to_one: bool_of(obj, "set_alpha_to_one", class != "PNDMScheduler")?,
        steps_offset: usize_of(obj, "steps_offset", 0)?,
        timestep_spacing: str_of(obj, "timestep_spacing", default_spacing(class))?.parse()?,
    };
    config.validate()?;
    Ok(config)
}

/// diffusers' default `timestep_spacing` of a scheduler class: `leading` for the DDPM family
/// (DDPM, DDIM, PNDM), `linspace` for the others (Euler, DPM-Solver, LMS, UniPC, ...).
fn default_spacing(class: &str) -> &'static str {
    match class {
        "DDIMScheduler" | "DDPMScheduler" | "PNDMScheduler" | "DDIMInverseScheduler" => "leading",
        _ => "linspace",
    }
}
