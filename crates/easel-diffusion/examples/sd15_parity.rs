//! Full-scale parity of the UNet, ControlNet and CLIP text encoder with diffusers / transformers.
//!
//! ```text
//! cargo run --release -p easel-diffusion --example sd15_parity -- \
//!     --dir DIR [--dtype f16|bf16|f32] [--device cpu|cuda] [--tol 1e-2]
//! ```
//!
//! DIR is written by `tools/ref/sd15_parity.py` (random SD1.5-sized weights in diffusers' folder
//! layout plus `reference.safetensors`; `--tiny` there gives the small test configs, which this
//! example reads from the same `config.json` files). The models are built from those configs
//! through [`easel_diffusion::weights`] (config parsers, [`CheckedTensors`] over memory-mapped
//! safetensors, failing on any unused tensor), run on the reference inputs in `--dtype` on
//! `--device` (`cuda` needs `--features cuda`), and compared with the reference outputs:
//! `rel_err = ‖ours − ref‖∞ / ‖ref‖∞` per output (the 12 + 1 ControlNet residuals, the UNet noise
//! prediction with those residuals, the CLIP last hidden state). Prints one JSON object; exits
//! with status 1 if any `rel_err` exceeds `--tol`, 2 on a usage or loading error.
//!
//! When the reference also holds f32 outputs (`f32/<name>`, written for `--dtype fp16`), the JSON
//! adds `rel_err_vs_f32` (ours against torch's f32) and `torch_rel_err_vs_f32` (torch's f16
//! against its own f32: the floor any f16 implementation is measured against).
// This file memory-maps the reference weights: each block has its SAFETY comment.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Tensor};
use easel_diffusion::clip::ClipTextModel;
use easel_diffusion::contexts::UNetContexts;
use easel_diffusion::controlnet::ControlNetModel;
use easel_diffusion::unet::UNet2DConditionModel;
use easel_diffusion::weights::{
    check_safetensors_bytes, clip_config_from_transformers_json, component_files,
    controlnet_config_from_diffusers_json, shard_files, unet_config_from_diffusers_json,
    CheckedTensors, Component,
};
use serde_json::{json, Value};

struct Args {
    dir: PathBuf,
    dtype: DType,
    device: Device,
    tol: f64,
}

const USAGE: &str = "usage: sd15_parity --dir DIR [--dtype f16|bf16|f32] [--device cpu|cuda] \
                     [--tol 1e-2]";

fn parse_args() -> Result<Args> {
    let mut dir = None;
    let mut dtype = DType::F32;
    let mut device = Device::Cpu;
    let mut tol = 1e-2;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            candle_core::bail!("{flag} needs a value\n{USAGE}")
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--dtype" => {
                dtype = match value.as_str() {
                    "f16" | "fp16" => DType::F16,
                    "bf16" => DType::BF16,
                    "f32" | "fp32" => DType::F32,
                    _ => candle_core::bail!("--dtype must be f16, bf16 or f32, got {value}"),
                }
            }
            "--device" => {
                device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::new_cuda(0)?,
                    _ => candle_core::bail!("--device must be cpu or cuda, got {value}"),
                }
            }
            "--tol" => {
                tol = value
                    .parse()
                    .map_err(|e| candle_core::Error::Msg(format!("--tol {value}: {e}")))?
            }
            _ => candle_core::bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    let Some(dir) = dir else {
        candle_core::bail!("--dir is required\n{USAGE}")
    };
    Ok(Args {
        dir,
        dtype,
        device,
        tol,
    })
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

/// Memory-maps a component's weights (single file or shards), refusing non-safetensors data.
fn open_component(dir: &Path, component: Component) -> Result<CheckedTensors> {
    let folder = dir.join(component.folder());
    let candidates = component_files(component, None)?;
    let (single, index) = (folder.join(&candidates[0]), folder.join(&candidates[1]));
    let paths = if single.exists() {
        vec![single]
    } else if index.exists() {
        shard_files(&read_to_string(&index)?)?
            .into_iter()
            .map(|name| folder.join(name))
            .collect()
    } else {
        candle_core::bail!(
            "{}: neither {} nor {} exists",
            folder.display(),
            candidates[0],
            candidates[1]
        )
    };
    for path in &paths {
        let mut head = Vec::with_capacity(16);
        File::open(path)
            .and_then(|f| f.take(16).read_to_end(&mut head))
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        check_safetensors_bytes(&path.display().to_string(), &head)?;
    }
    // SAFETY: a mapping is sound only while nobody writes the file; the reference files are
    // written once by the Python script before this runs, and nothing here writes them (another
    // process writing them meanwhile is on whoever runs the two at once).
    let tensors = unsafe { MmapedSafetensors::multi(&paths)? };
    Ok(CheckedTensors::from_mmaped(
        folder.display().to_string(),
        tensors,
    ))
}

/// Fails if the model left tensors of the file unread (a config that does not match it).
fn check_all_used(weights: &CheckedTensors) -> Result<()> {
    let unused = weights.unused();
    if !unused.is_empty() {
        candle_core::bail!(
            "{}: {} tensors unused by the model, e.g. {:?}",
            weights.source(),
            unused.len(),
            &unused[..unused.len().min(5)]
        )
    }
    Ok(())
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(f64::from(
        t.to_dtype(DType::F32)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?,
    ))
}

/// `‖a − b‖∞ / ‖b‖∞`, computed in f32 on the CPU.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    if a.dims() != b.dims() {
        candle_core::bail!("shape {:?} != reference shape {:?}", a.shape(), b.shape())
    }
    Ok(max_abs(&(a - &b)?)? / max_abs(&b)?)
}

fn run(args: &Args) -> Result<Value> {
    let (dir, dtype, dev) = (&args.dir, args.dtype, &args.device);
    let t0 = Instant::now();
    let unet_cfg =
        unet_config_from_diffusers_json(&read_to_string(&dir.join("unet/config.json"))?)?;
    let cn_cfg = controlnet_config_from_diffusers_json(&read_to_string(
        &dir.join("controlnet/config.json"),
    )?)?;
    let clip_cfg = clip_config_from_transformers_json(&read_to_string(
        &dir.join("text_encoder/config.json"),
    )?)?;
    let unet_w = open_component(dir, Component::Unet)?;
    let unet = UNet2DConditionModel::new(unet_w.var_builder(dtype, dev), &unet_cfg)?;
    check_all_used(&unet_w)?;
    let cn_w = open_component(dir, Component::ControlNet)?;
    let controlnet = ControlNetModel::new(cn_w.var_builder(dtype, dev), &cn_cfg)?;
    check_all_used(&cn_w)?;
    let clip_w = open_component(dir, Component::TextEncoder)?;
    let clip = ClipTextModel::new(clip_w.var_builder(dtype, dev), &clip_cfg)?;
    check_all_used(&clip_w)?;
    let load_s = t0.elapsed().as_secs_f64();

    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let get = |k: &str| match reference.get(k) {
        Some(t) => Ok(t.clone()),
        None => candle_core::bail!("reference.safetensors has no '{k}'"),
    };
    let input = |k: &str| get(k)?.to_dtype(dtype)?.to_device(dev);
    let (sample, context, cond) = (input("sample")?, input("context")?, input("cond")?);
    let timestep = f64::from(get("timestep")?.to_vec1::<f32>()?[0]);
    let ids = get("ids")?.to_device(dev)?;
    let contexts = UNetContexts::single(context)?;

    let forward = || -> Result<(Vec<(String, Tensor)>, f64)> {
        dev.synchronize()?;
        let t = Instant::now();
        let res = controlnet.forward(&sample, timestep, &contexts, &cond, 1.0, false)?;
        let out = unet.forward(&sample, timestep, &contexts, Some(&res))?;
        dev.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        let mut outputs: Vec<(String, Tensor)> = res
            .down
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("controlnet.down.{i}"), r.clone()))
            .collect();
        outputs.push(("controlnet.mid".into(), res.mid));
        outputs.push(("unet".into(), out));
        Ok((outputs, secs))
    };
    let (mut outputs, first_s) = forward()?;
    // A second run times the steady state (kernels loaded, allocator warm) on a GPU.
    let second_s = if dev.is_cpu() {
        None
    } else {
        Some(forward()?.1)
    };
    outputs.push(("clip".into(), clip.forward(&ids)?));

    let mut report = BTreeMap::new();
    let mut worst: f64 = 0.0;
    for (name, ours) in &outputs {
        let reference = get(name)?;
        let err = rel_err(ours, &reference)
            .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
        worst = worst.max(if err.is_nan() { f64::INFINITY } else { err });
        let mut entry = json!({ "rel_err": err, "max_abs_ref": max_abs(&reference)? });
        if let Ok(f32_ref) = get(&format!("f32/{name}")) {
            entry["rel_err_vs_f32"] = json!(rel_err(ours, &f32_ref)?);
            entry["torch_rel_err_vs_f32"] = json!(rel_err(&reference, &f32_ref)?);
        }
        report.insert(name.clone(), entry);
    }
    Ok(json!({
        "dir": dir.display().to_string(),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "device": if dev.is_cpu() { "cpu" } else { "cuda" },
        "sample_shape": sample.dims(),
        "load_s": load_s,
        "unet_controlnet_forward_s": { "first": first_s, "second": second_s },
        "outputs": report,
        "max_rel_err": worst,
        "tol": args.tol,
        "pass": worst <= args.tol,
    }))
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sd15_parity: {e}");
            std::process::exit(2)
        }
    };
    match run(&args) {
        Ok(report) => {
            println!("{report:#}");
            if report["pass"] != json!(true) {
                std::process::exit(1)
            }
        }
        Err(e) => {
            eprintln!("sd15_parity: {e}");
            std::process::exit(2)
        }
    }
}
