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

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{bail, Device, Result, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::bank::Bank;
use crate::file::{f32_bytes, read_bank, save_bank, BankMetadata};
use crate::train::TrainConfig;

/// File name of the checkpoint in a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
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
        let mut data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = vec![(
            "bank_file".into(),
            vec![bank_file.len()],
            Dtype::U8,
            bank_file,
        )];
        for m in &self.moments {
            for (kind, t) in [("m", &m.m), ("v", &m.v)] {
                data.push((
                    format!("adamw.{kind}.{}", m.name),
                    t.dims().to_vec(),
                    Dtype::F32,
                    f32_bytes(t)?,
                ));
            }
        }
        let views = data
            .iter()
            .map(|(n, shape, dtype, bytes)| {
                let view = TensorView::new(*dtype, shape.clone(), bytes)
                    .map_err(candle_core::Error::wrap)?;
                Ok((n.as_str(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let config = serde_json::to_string(&self.config).map_err(candle_core::Error::wrap)?;
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), config),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(candle_core::Error::wrap)
    }

    /// Reads checkpoint bytes; the bank and moments go to `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let st = match SafeTensors::deserialize(bytes) {
            Ok(st) => st,
            Err(e) => bail!("not a training checkpoint: {e}"),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(candle_core::Error::wrap)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| match meta.get(key) {
            Some(v) => Ok(v.as_str()),
            None => bail!("training checkpoint: metadata {key:?} is missing"),
        };
        if get("format")? != CHECKPOINT_FORMAT || get("format_version")? != "1" {
            bail!(
                "not an easel training checkpoint (format {:?} version {:?})",
                get("format")?,
                get("format_version")?
            )
        }
        let step: usize = match get("step")?.parse() {
            Ok(s) => s,
            Err(_) => bail!(
                "training checkpoint: step {:?} is not a number",
                get("step")?
            ),
        };
        let config: TrainConfig = match serde_json::from_str(get("config")?) {
            Ok(c) => c,
            Err(e) => bail!("training checkpoint: config is not valid: {e}"),
        };
        let bank_file = match st.tensor("bank_file") {
            Ok(t) if t.dtype() == Dtype::U8 => t.data().to_vec(),
            _ => bail!("training checkpoint: no u8 tensor \"bank_file\""),
        };
        let (bank, _) = read_bank(&bank_file, device)?;
        let f32_tensor = |name: &str| -> Result<Tensor> {
            let t = match st.tensor(name) {
                Ok(t) if t.dtype() == Dtype::F32 => t,
                _ => bail!("training checkpoint: no f32 tensor {name:?}"),
            };
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(values, t.shape(), device)
        };
        let moments = bank
            .params()
            .vars()
            .into_iter()
            .map(|(name, var)| {
                let m = f32_tensor(&format!("adamw.m.{name}"))?;
                let v = f32_tensor(&format!("adamw.v.{name}"))?;
                if m.dims() != var.dims() || v.dims() != var.dims() {
                    bail!("training checkpoint: moments of {name} do not match its shape")
                }
                Ok(Moments { name, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            step,
            config,
            bank,
            moments,
        })
    }

    /// Writes the checkpoint to `<run_dir>/checkpoint.safetensors` atomically (creating the
    /// folder).
    pub fn save(&self, run_dir: &Path) -> Result<std::path::PathBuf> {
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
