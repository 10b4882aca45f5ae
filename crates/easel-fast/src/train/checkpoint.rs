//! Checkpoints of [`crate::train`]: everything needed to continue a run exactly, in one
//! safetensors file written atomically.
//!
//! `<run_dir>/checkpoint.safetensors` holds, for every trained parameter `<p>` (its state-dict
//! key, e.g. `decoder.1.weight`), f32 tensors `param.<p>` (the value), `adam.m.<p>` and
//! `adam.v.<p>` (Adam's moments), and the metadata `format` = [`CHECKPOINT_FORMAT`],
//! `format_version` = `1`, `step` (steps done, decimal) and `config` (the
//! [`TrainFastConfig`] as JSON). The random state needs no saving: the draws of step `s` come
//! from a generator seeded by `(seed, s)` ([`super::data::StepRng`]).
//!
//! The file is written to a temporary file beside the target, synced to disk and renamed over
//! it ([`easel_core::write_atomic`]): a crash or error mid-write leaves the previous checkpoint whole.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{bail, Device, Result, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::TrainFastConfig;

/// File name of the checkpoint in a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The `format` metadata value of checkpoints.
pub const CHECKPOINT_FORMAT: &str = "easel-train-fast-checkpoint";

/// Adam's moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    /// First moment (f32, the parameter's shape).
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
}

/// A training state: parameters, optimizer moments, steps done and settings.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Steps done (Adam's bias correction uses it).
    pub step: usize,
    /// The run's settings.
    pub config: TrainFastConfig,
    /// The trained parameters by name, in the trainer's order, with their moments.
    pub params: Vec<(String, Tensor, Moments)>,
}

impl Checkpoint {
    /// The checkpoint file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, value, moments) in &self.params {
            for (prefix, t) in [
                ("param", value),
                ("adam.m", &moments.m),
                ("adam.v", &moments.v),
            ] {
                data.push((format!("{prefix}.{name}"), t.dims().to_vec(), f32_bytes(t)?));
            }
        }
        let config = serde_json::to_string(&self.config).map_err(candle_core::Error::wrap)?;
        let order = self
            .params
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), config),
            ("params".to_string(), order),
        ]);
        serialize(&data, meta)
    }

    /// Reads checkpoint bytes; tensors go to `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let st = match SafeTensors::deserialize(bytes) {
            Ok(st) => st,
            Err(e) => bail!("not a train-fast checkpoint: {e}"),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(candle_core::Error::wrap)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| match meta.get(key) {
            Some(v) => Ok(v.as_str()),
            None => bail!("train-fast checkpoint: metadata {key:?} is missing"),
        };
        if get("format")? != CHECKPOINT_FORMAT || get("format_version")? != "1" {
            bail!(
                "not an easel train-fast checkpoint (format {:?} version {:?})",
                get("format")?,
                get("format_version")?
            )
        }
        let step: usize = match get("step")?.parse() {
            Ok(s) => s,
            Err(_) => bail!(
                "train-fast checkpoint: step {:?} is not a number",
                get("step")?
            ),
        };
        let config: TrainFastConfig = match serde_json::from_str(get("config")?) {
            Ok(c) => c,
            Err(e) => bail!("train-fast checkpoint: config is not valid: {e}"),
        };
        let tensor = |name: &str| -> Result<Tensor> {
            let t = match st.tensor(name) {
                Ok(t) if t.dtype() == Dtype::F32 => t,
                _ => bail!("train-fast checkpoint: no f32 tensor {name:?}"),
            };
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(values, t.shape(), device)
        };
        let params = get("params")?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|name| {
                let value = tensor(&format!("param.{name}"))?;
                let m = tensor(&format!("adam.m.{name}"))?;
                let v = tensor(&format!("adam.v.{name}"))?;
                if m.dims() != value.dims() || v.dims() != value.dims() {
                    bail!("train-fast checkpoint: the moments of {name} do not match its shape")
                }
                Ok((name.to_string(), value, Moments { m, v }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            step,
            config,
            params,
        })
    }

    /// Writes the checkpoint to `<run_dir>/checkpoint.safetensors` atomically (creating the
    /// folder); returns its path.
    pub fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", run_dir.display())))?;
        let bytes = self.to_bytes()?;
        let path = run_dir.join(CHECKPOINT_FILE);
        easel_core::write_atomic(&path, |f| f.write_all(&bytes))
            .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Reads `<run_dir>/checkpoint.safetensors`.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        let path = run_dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, device)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }
}

/// Safetensors bytes of f32 tensors `(name, shape, little-endian bytes)` with `meta`.
pub(crate) fn serialize(
    data: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(candle_core::Error::wrap)?;
            Ok((n.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta)).map_err(candle_core::Error::wrap)
}

/// The little-endian bytes of an f32 tensor's values (row-major).
pub(crate) fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let values = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}
