//! What `easel learn` (prompt banks) and `easel train-fast` (feed-forward stylizers) share:
//! the Adam / AdamW update and the checkpoint file plumbing (safetensors with a `format`,
//! `format_version`, `step` and JSON `config` header, written atomically into a run folder).
//!
//! Errors are `candle_core` errors: the callers are model crates whose functions return
//! `candle_core::Result`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::safetensors_writer::TensorBytes;

/// File name of the checkpoint in a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Adam (Kingma & Ba 2015, <https://arxiv.org/abs/1412.6980>) with PyTorch's update rules;
/// with `weight_decay > 0` it is AdamW (Loshchilov & Hutter 2019,
/// <https://arxiv.org/abs/1711.05101>): decoupled weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    /// Moment decay rates `(β₁, β₂)`, each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Denominator epsilon (> 0).
    pub eps: f64,
    /// Decoupled weight decay (≥ 0; 0 = plain Adam).
    pub weight_decay: f64,
}

impl Adam {
    /// Fails naming the first setting out of range; `what` prefixes the message.
    pub fn validate(&self, what: &str) -> Result<()> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            bail!("{what}: betas must be in [0, 1), got ({b1}, {b2})")
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("{what}: eps must be positive, got {}", self.eps)
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "{what}: weight decay must be ≥ 0, got {}",
                self.weight_decay
            )
        }
        Ok(())
    }

    /// One update of `param` with gradient `grad` at 1-based step `t`, learning rate `lr`:
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p·(1 − lr·wd) − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + eps)`.
    /// `moments` are `(m, v)` (f32, the parameter's shape) and are replaced by the new ones.
    pub fn update(
        &self,
        t: usize,
        lr: f64,
        param: &Var,
        grad: &Tensor,
        moments: (&mut Tensor, &mut Tensor),
    ) -> Result<()> {
        let (b1, b2) = self.betas;
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let correct1 = 1.0 - b1.powi(t);
        let correct2 = 1.0 - b2.powi(t);
        let (m, v) = moments;
        let g = grad.to_dtype(DType::F32)?;
        let new_m = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
        let new_v = (v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
        let denom = new_v
            .affine(1.0 / correct2, 0.0)?
            .sqrt()?
            .affine(1.0, self.eps)?;
        let step = (new_m.affine(1.0 / correct1, 0.0)? / denom)?.affine(lr, 0.0)?;
        let p = param.as_tensor().detach();
        let p = if self.weight_decay > 0.0 {
            p.affine(1.0 - lr * self.weight_decay, 0.0)?
        } else {
            p
        };
        param.set(&(p - step)?)?;
        *m = new_m;
        *v = new_v;
        Ok(())
    }
}

/// The little-endian bytes of a tensor's values as f32 (row-major).
pub fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// One tensor of a checkpoint: name, dtype, shape and little-endian bytes.
pub type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// The bytes of a checkpoint: `entries` and the metadata `format`, `format_version` = `1`,
/// `step` (decimal), `config` (`config` as JSON) and `extra`.
pub fn checkpoint_bytes(
    format: &str,
    step: usize,
    config: &impl Serialize,
    extra: &[(&str, String)],
    entries: &[Entry],
) -> Result<Vec<u8>> {
    let config = serde_json::to_string(config).map_err(candle_core::Error::wrap)?;
    let mut meta = BTreeMap::from([
        ("format".to_string(), format.to_string()),
        ("format_version".to_string(), "1".to_string()),
        ("step".to_string(), step.to_string()),
        ("config".to_string(), config),
    ]);
    meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    safetensors_bytes(entries, &meta)
}

/// The bytes of a safetensors file of `entries` with the metadata `meta`, written by
/// [`crate::safetensors_writer`] (the same bytes for the same contents).
pub fn safetensors_bytes(entries: &[Entry], meta: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<TensorBytes<'_>> = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| TensorBytes {
            name,
            dtype: *dtype,
            shape,
            data: Cow::Borrowed(bytes),
        })
        .collect();
    crate::safetensors_writer::safetensors_bytes(&views, meta).map_err(candle_core::Error::wrap)
}

/// A checkpoint's bytes, read: its header checked against the expected `format`.
pub struct CheckpointReader<'a> {
    tensors: SafeTensors<'a>,
    meta: HashMap<String, String>,
    /// Names the kind of checkpoint in messages ("training checkpoint").
    what: &'static str,
}

impl<'a> CheckpointReader<'a> {
    /// Parses `bytes`; fails unless they are safetensors whose `format` is `format` at
    /// version 1. `what` names the checkpoint kind in messages.
    pub fn new(bytes: &'a [u8], format: &str, what: &'static str) -> Result<Self> {
        let tensors = match SafeTensors::deserialize(bytes) {
            Ok(st) => st,
            Err(e) => bail!("not a {what}: {e}"),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(candle_core::Error::wrap)?;
        let reader = Self {
            tensors,
            meta: header.metadata().clone().unwrap_or_default(),
            what,
        };
        let (found, version) = (reader.meta("format")?, reader.meta("format_version")?);
        if found != format || version != "1" {
            bail!("not an easel {what} (format {found:?} version {version:?})")
        }
        Ok(reader)
    }

    /// The metadata value of `key`.
    pub fn meta(&self, key: &str) -> Result<&str> {
        match self.meta.get(key) {
            Some(v) => Ok(v.as_str()),
            None => bail!("{}: metadata {key:?} is missing", self.what),
        }
    }

    /// The steps done (`step`).
    pub fn step(&self) -> Result<usize> {
        let step = self.meta("step")?;
        match step.parse() {
            Ok(s) => Ok(s),
            Err(_) => bail!("{}: step {step:?} is not a number", self.what),
        }
    }

    /// The run's settings (`config`, JSON).
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        match serde_json::from_str(self.meta("config")?) {
            Ok(c) => Ok(c),
            Err(e) => bail!("{}: config is not valid: {e}", self.what),
        }
    }

    /// The f32 tensor `name`, on `device`.
    pub fn f32_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = match self.tensors.tensor(name) {
            Ok(t) if t.dtype() == Dtype::F32 => t,
            _ => bail!("{}: no f32 tensor {name:?}", self.what),
        };
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_vec(values, t.shape(), device)
    }

    /// The bytes of the u8 tensor `name`.
    pub fn u8_bytes(&self, name: &str) -> Result<&'a [u8]> {
        match self.tensors.tensor(name) {
            Ok(t) if t.dtype() == Dtype::U8 => Ok(t.data()),
            _ => bail!("{}: no u8 tensor {name:?}", self.what),
        }
    }
}

/// Writes checkpoint `bytes` to `<run_dir>/checkpoint.safetensors` atomically (creating the
/// folder; [`crate::write_atomic`]: an interrupted write leaves the previous file whole);
/// returns its path.
pub fn save_checkpoint(run_dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(run_dir)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", run_dir.display())))?;
    let path = run_dir.join(CHECKPOINT_FILE);
    crate::write_atomic(&path, |f| f.write_all(bytes))
        .map_err(|e| candle_core::Error::Msg(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

/// Reads `<run_dir>/checkpoint.safetensors` and parses it with `parse`; errors name the file.
pub fn load_checkpoint<T>(run_dir: &Path, parse: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let path = run_dir.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Adam steps against values computed by hand from PyTorch's formulas.
    #[test]
    fn adam_follows_pytorch_formulas() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::from_slice(&[1.0f32, -2.0], 2, &dev)?;
        let mut m = Tensor::zeros(2, DType::F32, &dev)?;
        let mut v = Tensor::zeros(2, DType::F32, &dev)?;
        let adam = Adam {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let g = Tensor::from_slice(&[0.5f32, -4.0], 2, &dev)?;
        // Step 1: m̂ = g, v̂ = g², so the step is lr · sign(g) (eps aside).
        adam.update(1, 0.1, &p, &g, (&mut m, &mut v))?;
        let got = p.as_tensor().to_vec1::<f32>()?;
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
        // AdamW decays the weights by lr · wd first.
        let adamw = Adam {
            weight_decay: 0.5,
            ..adam
        };
        let q = Var::from_slice(&[2.0f32], 1, &dev)?;
        let (mut m1, mut v1) = (
            Tensor::zeros(1, DType::F32, &dev)?,
            Tensor::zeros(1, DType::F32, &dev)?,
        );
        let g1 = Tensor::from_slice(&[1.0f32], 1, &dev)?;
        adamw.update(1, 0.1, &q, &g1, (&mut m1, &mut v1))?;
        let got = q.as_tensor().to_vec1::<f32>()?[0];
        assert!((got - (2.0 * 0.95 - 0.1)).abs() < 1e-6, "{got}");
        assert!(Adam {
            betas: (1.0, 0.9),
            ..adam
        }
        .validate("x")
        .is_err());
        assert!(Adam { eps: 0.0, ..adam }.validate("x").is_err());
        Ok(())
    }

    #[test]
    fn checkpoints_round_trip_and_refuse_other_formats() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25], (3, 1), &dev)?;
        let entries = vec![
            ("a".to_string(), Dtype::F32, vec![3, 1], f32_bytes(&t)?),
            ("b".to_string(), Dtype::U8, vec![2], vec![7, 9]),
        ];
        let config = serde_json::json!({"lr": 0.5});
        let bytes = checkpoint_bytes("fmt", 12, &config, &[("order", "a".into())], &entries)?;
        let r = CheckpointReader::new(&bytes, "fmt", "test checkpoint")?;
        assert_eq!(r.step()?, 12);
        assert_eq!(r.config::<serde_json::Value>()?, config);
        assert_eq!(r.meta("order")?, "a");
        assert_eq!(
            r.f32_tensor("a", &dev)?.to_vec2::<f32>()?,
            t.to_vec2::<f32>()?
        );
        assert_eq!(r.u8_bytes("b")?, &[7, 9]);
        let err = r.f32_tensor("b", &dev).unwrap_err().to_string();
        assert!(
            err.contains("test checkpoint: no f32 tensor \"b\""),
            "{err}"
        );
        let err = CheckpointReader::new(&bytes, "other", "test checkpoint")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("not an easel test checkpoint (format \"fmt\""),
            "{err}"
        );
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let path = save_checkpoint(&dir.path().join("run"), &bytes)?;
        assert!(path.ends_with(CHECKPOINT_FILE));
        let step = load_checkpoint(&dir.path().join("run"), |b| {
            CheckpointReader::new(b, "fmt", "test checkpoint")?.step()
        })?;
        assert_eq!(step, 12);
        Ok(())
    }
}
