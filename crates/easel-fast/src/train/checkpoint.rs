//! Checkpoints of [`crate::train`]: everything needed to continue a run exactly, in one
//! safetensors file written atomically.
//!
//! `<run_dir>/checkpoint.safetensors` holds, for every trained parameter `<p>` (its state-dict
//! key, e.g. `decoder.1.weight`), f32 tensors `param.<p>` (the value), `adam.m.<p>` and
//! `adam.v.<p>` (Adam's moments), and the metadata `format` = [`CHECKPOINT_FORMAT`],
//! `format_version` = `1`, `step` (steps done, decimal) and `config` (the
//! [`TrainFastConfig`] as JSON). The random state needs no saving: the draws of step `s` come
//! from a generator seeded by `(seed, s)` ([`easel_core::rng::SplitMix64::for_step`]).
//!
//! The file is written to a temporary file beside the target, synced to disk and renamed over
//! it ([`easel_core::write_atomic`]): a crash or error mid-write leaves the previous checkpoint whole.

use std::path::{Path, PathBuf};

use candle_core::{bail, Device, Result, Tensor};
use easel_core::training::{
    checkpoint_bytes, f32_bytes, load_checkpoint, save_checkpoint, CheckpointReader,
};
use safetensors::Dtype;

use super::TrainFastConfig;

pub use easel_core::training::CHECKPOINT_FILE;
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
        let mut data = Vec::new();
        for (name, value, moments) in &self.params {
            for (prefix, t) in [
                ("param", value),
                ("adam.m", &moments.m),
                ("adam.v", &moments.v),
            ] {
                let bytes = f32_bytes(t)?;
                data.push((
                    format!("{prefix}.{name}"),
                    Dtype::F32,
                    t.dims().to_vec(),
                    bytes,
                ));
            }
        }
        let order = self
            .params
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let extra = [("params", order)];
        checkpoint_bytes(CHECKPOINT_FORMAT, self.step, &self.config, &extra, &data)
    }

    /// Reads checkpoint bytes; tensors go to `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let file = CheckpointReader::new(bytes, CHECKPOINT_FORMAT, "train-fast checkpoint")?;
        let params = file
            .meta("params")?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|name| {
                let value = file.f32_tensor(&format!("param.{name}"), device)?;
                let m = file.f32_tensor(&format!("adam.m.{name}"), device)?;
                let v = file.f32_tensor(&format!("adam.v.{name}"), device)?;
                if m.dims() != value.dims() || v.dims() != value.dims() {
                    bail!("train-fast checkpoint: the moments of {name} do not match its shape")
                }
                Ok((name.to_string(), value, Moments { m, v }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            step: file.step()?,
            config: file.config()?,
            params,
        })
    }

    /// Writes the checkpoint to `<run_dir>/checkpoint.safetensors` atomically (creating the
    /// folder); returns its path.
    pub fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        save_checkpoint(run_dir, &self.to_bytes()?)
    }

    /// Reads `<run_dir>/checkpoint.safetensors`.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        load_checkpoint(run_dir, |bytes| Self::from_bytes(bytes, device))
    }
}
