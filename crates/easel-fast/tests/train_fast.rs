//! The AdaIN trainer (`easel_fast::train`) on the tiny random VGG of `tools/ref/adain_ref.py`
//! (widths 8, 16, 32, 64) and a few of the shared test pictures (`../shared/data/images`, beside
//! the checkout as CI has it): the loss drops, a resumed run equals a straight one bit for bit,
//! checkpoints and sample grids are written, bad settings are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};
use easel_fast::import::torch_zip::read_torch_checkpoint;
use easel_fast::train::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use easel_fast::train::{vgg_widths, FastTrainer, Hooks, TrainFastConfig, TrainOutcome};

fn vgg() -> Result<HashMap<String, Tensor>> {
    let path = format!(
        "{}/tests/fixtures/adain_vgg_tiny.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(
        read_torch_checkpoint(&std::fs::read(path)?, "adain_vgg_tiny.pth")?
            .into_iter()
            .collect(),
    )
}

fn shared_images() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/images");
    assert!(
        dir.is_dir(),
        "{}: the shared test pictures live beside the checkout",
        dir.display()
    );
    dir
}

/// A folder with copies of three small photos and one with three small paintings.
fn data(root: &Path) -> (PathBuf, PathBuf) {
    let shared = shared_images();
    let content = root.join("content");
    let style = root.join("style");
    for (dir, files) in [
        (
            &content,
            [
                "content/chelsea_cat.png",
                "content/coffee_cup.png",
                "content/grace_hopper_small_128.jpg",
            ],
        ),
        (
            &style,
            [
                "style/vandoesburg_composition_xiii_small.jpg",
                "style/gauguin_te_fare.jpg",
                "style/toulouse_lautrec_in_bed.png",
            ],
        ),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            let src = shared.join(f);
            std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
        }
    }
    (content, style)
}

/// Tiny settings: 64-pixel crops of 80-pixel pictures, batch 2.
fn config(root: &Path, steps: usize) -> TrainFastConfig {
    let (content, style) = data(root);
    let mut c = TrainFastConfig::adain(content, style, PathBuf::from("adain_vgg_tiny.pth"));
    c.widths = [8, 16, 32, 64];
    c.steps = steps;
    c.batch = 2;
    c.load_size = 80;
    c.crop = 64;
    c.lr = 1e-3;
    c.seed = 7;
    c.save_every = 0;
    c.sample_every = 0;
    c
}

fn param_values(t: &FastTrainer) -> Result<Vec<(String, Vec<f32>)>> {
    t.params()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

#[test]
fn loss_drops_over_30_steps() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), 30);
    assert_eq!(vgg_widths(&vgg()?)?, cfg.widths);
    let mut trainer = FastTrainer::new(vgg()?, cfg, &root.path().join("run"), &Device::Cpu)?;
    let mut losses = Vec::new();
    let outcome = trainer.train(&mut Hooks {
        on_step: Some(Box::new(|r| losses.push(r.loss))),
        ..Hooks::default()
    })?;
    assert_eq!(outcome, TrainOutcome::Finished);
    assert_eq!(losses.len(), 30);
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    eprintln!(
        "losses: {losses:?}\nfirst 5 {first}, last 5 {last}, ratio {}",
        last / first
    );
    assert!(
        last < 0.5 * first,
        "mean of the last 5 losses {last} is not below half the first 5's {first}"
    );
    assert!(root.path().join("run").join(CHECKPOINT_FILE).is_file());
    Ok(())
}

#[test]
fn resumed_run_equals_straight_run_bit_for_bit() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), 6);
    let dev = Device::Cpu;

    let mut straight = FastTrainer::new(vgg()?, cfg.clone(), &root.path().join("a"), &dev)?;
    let mut straight_losses = Vec::new();
    straight.train(&mut Hooks {
        on_step: Some(Box::new(|r| straight_losses.push(r.loss))),
        ..Hooks::default()
    })?;

    let mut half = cfg.clone();
    half.steps = 3;
    let run_b = root.path().join("b");
    let mut first = FastTrainer::new(vgg()?, half, &run_b, &dev)?;
    let mut losses = Vec::new();
    first.train(&mut Hooks {
        on_step: Some(Box::new(|r| losses.push(r.loss))),
        ..Hooks::default()
    })?;
    drop(first);
    let mut ckpt = Checkpoint::load(&run_b, &dev)?;
    assert_eq!(ckpt.step, 3);
    ckpt.config.steps = 6;
    let mut resumed = FastTrainer::from_checkpoint(vgg()?, ckpt, &run_b, &dev)?;
    resumed.train(&mut Hooks {
        on_step: Some(Box::new(|r| losses.push(r.loss))),
        ..Hooks::default()
    })?;
    assert_eq!(resumed.step(), 6);
    assert_eq!(losses, straight_losses);
    assert_eq!(param_values(&resumed)?, param_values(&straight)?);
    // The checkpoints agree too (moments included).
    let flat = |c: Checkpoint| -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for (_, p, m) in c.params {
            for t in [p, m.m, m.v] {
                out.push(t.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(out)
    };
    let a = Checkpoint::load(&root.path().join("a"), &dev)?;
    let b = Checkpoint::load(&run_b, &dev)?;
    assert_eq!((a.step, &a.config), (b.step, &b.config));
    assert_eq!(flat(a)?, flat(b)?);
    Ok(())
}

#[test]
fn stop_flag_checkpoints_and_samples_are_written() -> Result<()> {
    let root = tempfile::tempdir()?;
    let mut cfg = config(root.path(), 4);
    cfg.sample_every = 2;
    cfg.save_every = 1;
    let run = root.path().join("run");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut trainer = FastTrainer::new(vgg()?, cfg, &run, &Device::Cpu)?;
    let mut samples = Vec::new();
    let outcome = trainer.train(&mut Hooks {
        on_step: Some(Box::new(|r| {
            if r.step == 3 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst)
            }
        })),
        on_sample: Some(Box::new(|step, path| {
            samples.push((step, path.to_path_buf()))
        })),
        stop: Some(&stop),
    })?;
    assert_eq!(outcome, TrainOutcome::Stopped);
    assert_eq!(trainer.step(), 3);
    assert_eq!(Checkpoint::load(&run, &Device::Cpu)?.step, 3);
    assert_eq!(samples, [(2, run.join("samples/step_000002.png"))]);
    // 3 photos × 3 paintings of 64 pixels, plus the header row and column.
    let grid = image::open(&samples[0].1).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 64, 4 * 64));
    // The decoder weights load back as a decoder state dict.
    let st = safetensors::SafeTensors::deserialize(&trainer.weights_bytes()?)
        .map(|s| s.names().len())
        .unwrap();
    assert_eq!(st, 18);
    Ok(())
}

#[test]
fn bad_settings_and_inputs_are_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let cfg = config(root.path(), 2);
    let err = |c: TrainFastConfig| {
        FastTrainer::new(vgg().unwrap(), c, &root.path().join("run"), &dev)
            .unwrap_err()
            .to_string()
    };
    let mut c = cfg.clone();
    c.crop = 60;
    assert!(err(c).contains("crop 60"));
    let mut c = cfg.clone();
    c.load_size = 32;
    assert!(err(c).contains("load size 32"));
    let mut c = cfg.clone();
    c.widths = [64, 128, 256, 512];
    assert!(err(c).contains("widths [8, 16, 32, 64]"));
    let mut c = cfg.clone();
    c.content_dir = root.path().join("nowhere");
    assert!(err(c).contains("nowhere"));
    let mut c = cfg.clone();
    c.lr = -1.0;
    assert!(err(c).contains("lr"));
    let e = FastTrainer::resume(vgg()?, &root.path().join("nowhere"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains(CHECKPOINT_FILE), "{e}");
    Ok(())
}
