//! Training checkpoints: everything needed to continue a run exactly, in one file written
//! atomically.
//!
//! `<run_dir>/checkpoint.safetensors` holds
//!
//! - `bank_file`: u8 `[n]`, the bytes of the bank file ([`crate::file::save_bank`]; its
//!   `training` metadata is the [`TrainConfig`], its creation time fixed at
//!   [`CHECKPOINT_CREATED`], base model and collection hash empty),
//! - `adamw.m.<var>`, `adamw.v.<var>`: f32, the optimizer's first and second moments per bank
//!   variable (names of [`crate::params::BankParams::vars`]),
//!
//! and the metadata `format` = `easel-train-checkpoint`, `format_version` = `1`, `step` (steps
//! done, decimal), `config` (the [`TrainConfig`] as JSON). The random state needs no saving: the
//! draws of step `s` come from a generator seeded by `(seed, s)` (see [`crate::train`]).
//!
//! A checkpoint is written to a temporary file beside the target, flushed to disk and renamed
//! over it ([`easel_core::write_atomic`]): a crash or error mid-write leaves the previous checkpoint whole.

use std::path::Path;

use candle_core::{bail, Device, Result, Tensor};
use easel_core::training::{
    checkpoint_bytes, f32_bytes, load_checkpoint, save_checkpoint, CheckpointReader, Entry,
};
use safetensors::Dtype;

use crate::bank::Bank;
use crate::file::{read_bank, save_bank, BankMetadata};
use crate::train::TrainConfig;

pub use easel_core::training::CHECKPOINT_FILE;
/// The `format` metadata value of checkpoints.
pub const CHECKPOINT_FORMAT: &str = "easel-train-checkpoint";
/// The creation time recorded in a checkpoint's embedded bank file (fixed, so that equal
/// states give equal bytes).
pub const CHECKPOINT_CREATED: &str = "1970-01-01T00:00:00Z";

/// The optimizer moments of one bank variable.
#[derive(Debug, Clone)]
pub struct Moments {
    /// The variable's name.
    pub name: String,
    /// First moment (f32, the variable's shape).
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
}

/// A training state: the bank, the optimizer moments, the steps done and the settings.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Steps done (the optimizer's step count: bias correction uses it).
    pub step: usize,
    /// The run's settings.
    pub config: TrainConfig,
    /// The bank after `step` steps.
    pub bank: Bank,
    /// The AdamW moments, one entry per bank variable, sorted by name.
    pub moments: Vec<Moments>,
}

impl Checkpoint {
    /// The checkpoint file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let training = serde_json::to_value(&self.config).map_err(candle_core::Error::wrap)?;
        let bank_file = save_bank(
            &self.bank,
            &BankMetadata {
                base_model: String::new(),
                base_model_hash: String::new(),
                training,
                collection_hash: String::new(),
                created: CHECKPOINT_CREATED.to_string(),
            },
        )?;
        let mut data: Vec<Entry> = vec![(
            "bank_file".into(),
            Dtype::U8,
            vec![bank_file.len()],
            bank_file,
        )];
        for m in &self.moments {
            for (kind, t) in [("m", &m.m), ("v", &m.v)] {
                let name = format!("adamw.{kind}.{}", m.name);
                data.push((name, Dtype::F32, t.dims().to_vec(), f32_bytes(t)?));
            }
        }
        checkpoint_bytes(CHECKPOINT_FORMAT, self.step, &self.config, &[], &data)
    }

    /// Reads checkpoint bytes; the bank and moments go to `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let file = CheckpointReader::new(bytes, CHECKPOINT_FORMAT, "training checkpoint")?;
        let (bank, _) = read_bank(file.u8_bytes("bank_file")?, device)?;
        let moments = bank
            .params()
            .vars()
            .into_iter()
            .map(|(name, var)| {
                let m = file.f32_tensor(&format!("adamw.m.{name}"), device)?;
                let v = file.f32_tensor(&format!("adamw.v.{name}"), device)?;
                if m.dims() != var.dims() || v.dims() != var.dims() {
                    bail!("training checkpoint: moments of {name} do not match its shape")
                }
                Ok(Moments { name, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            step: file.step()?,
            config: file.config()?,
            bank,
            moments,
        })
    }

    /// Writes the checkpoint to `<run_dir>/checkpoint.safetensors` atomically (creating the
    /// folder).
    pub fn save(&self, run_dir: &Path) -> Result<std::path::PathBuf> {
        save_checkpoint(run_dir, &self.to_bytes()?)
    }

    /// Reads `<run_dir>/checkpoint.safetensors`.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        load_checkpoint(run_dir, |bytes| Self::from_bytes(bytes, device))
    }
}
