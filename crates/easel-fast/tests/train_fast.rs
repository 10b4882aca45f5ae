//! The trainer of the fast stylizers (`easel_fast::train`), AdaIN and StyTr², on the tiny random
//! VGG of `tools/ref/adain_ref.py` (widths 8, 16, 32, 64), the tiny StyTr² network of
//! `tools/ref/stytr_ref.py` and a few of the shared test pictures (`../shared/data/images`,
//! beside the checkout as CI has it): the loss drops, a resumed run equals a straight one bit
//! for bit, checkpoints, sample grids and weight files are written, bad settings are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_fast::stytr::{self, StyTr};
use easel_fast::train::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use easel_fast::train::{
    vgg_widths, FastTrainer, Hooks, LrSchedule, TrainFastConfig, TrainOutcome, STYTR_PARTS,
};

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

/// Runs `cfg` (6 steps) straight and as 3 steps + a resume from the checkpoint: the losses,
/// parameters and checkpoints (moments included) agree bit for bit.
fn assert_resume_is_exact(root: &Path, cfg: TrainFastConfig) -> Result<()> {
    assert_eq!(cfg.steps, 6);
    let dev = Device::Cpu;

    let mut straight = FastTrainer::new(vgg()?, cfg.clone(), &root.join("a"), &dev)?;
    let mut straight_losses = Vec::new();
    straight.train(&mut Hooks {
        on_step: Some(Box::new(|r| straight_losses.push(r.loss))),
        ..Hooks::default()
    })?;

    let mut half = cfg.clone();
    half.steps = 3;
    let run_b = root.join("b");
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
    let a = Checkpoint::load(&root.join("a"), &dev)?;
    let b = Checkpoint::load(&run_b, &dev)?;
    assert_eq!((a.step, &a.config), (b.step, &b.config));
    assert_eq!(flat(a)?, flat(b)?);
    Ok(())
}

#[test]
fn resumed_run_equals_straight_run_bit_for_bit() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cfg = config(root.path(), 6);
    assert_resume_is_exact(root.path(), cfg)
}

#[test]
fn resumed_transformer_run_equals_straight_run_bit_for_bit() -> Result<()> {
    let root = tempfile::tempdir()?;
    // The pyramidal encoding, so that its parameters are checkpointed too; the warm-up ends
    // inside the resumed half.
    let mut cfg = transformer_config(root.path(), 6, stytr::Config::tiny_pyramidal());
    cfg.schedule = LrSchedule::Warmup { steps: 4 };
    assert_resume_is_exact(root.path(), cfg)
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
    let files = trainer.weight_files()?;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "decoder");
    let st = safetensors::SafeTensors::deserialize(&files[0].1)
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
    let t = transformer_config(root.path(), 2, stytr::Config::tiny());
    let mut c = t.clone();
    c.crop = 16;
    assert!(err(c).contains("at least 24"));
    let mut c = t.clone();
    c.schedule = LrSchedule::Warmup { steps: 0 };
    assert!(err(c).contains("warm-up"));
    let mut c = t.clone();
    c.transformer = None;
    assert!(err(c).contains("network sizes"));
    let mut c = t.clone();
    c.transformer.as_mut().unwrap().nhead = 5;
    assert!(err(c).contains("nhead 5"));
    let e = FastTrainer::resume(vgg()?, &root.path().join("nowhere"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains(CHECKPOINT_FILE), "{e}");
    Ok(())
}

/// Tiny StyTr² settings: the network of `tools/ref/stytr_ref.py` (`Config::tiny`, or its
/// pyramidal variant), 64-pixel crops of 80-pixel pictures, batch 2, 5 warm-up steps.
fn transformer_config(root: &Path, steps: usize, net: stytr::Config) -> TrainFastConfig {
    let (content, style) = data(root);
    let mut c =
        TrainFastConfig::transformer(content, style, PathBuf::from("adain_vgg_tiny.pth"), net);
    c.widths = [8, 16, 32, 64];
    c.steps = steps;
    c.batch = 2;
    c.load_size = 80;
    c.crop = 64;
    c.lr = 2e-3;
    c.schedule = LrSchedule::Warmup { steps: 5 };
    c.seed = 11;
    c.save_every = 0;
    c.sample_every = 0;
    c
}

/// Measured: the mean of the last 5 of 30 losses is 0.47× the first 5's (46.6 → 21.9).
#[test]
fn transformer_loss_drops_over_30_steps() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cfg = transformer_config(root.path(), 30, stytr::Config::tiny());
    let mut trainer = FastTrainer::new(vgg()?, cfg, &root.path().join("run"), &Device::Cpu)?;
    // Transformer, embedding and CNN decoder all train.
    let parts: Vec<&str> = trainer
        .params()
        .iter()
        .map(|(n, _)| n.split('.').next().unwrap())
        .collect();
    for part in STYTR_PARTS {
        assert!(parts.contains(&part), "no {part} parameter");
    }
    let mut reports = Vec::new();
    let outcome = trainer.train(&mut Hooks {
        on_step: Some(Box::new(|r| reports.push(r.clone()))),
        ..Hooks::default()
    })?;
    assert_eq!(outcome, TrainOutcome::Finished);
    let losses: Vec<f32> = reports.iter().map(|r| r.loss).collect();
    assert_eq!(losses.len(), 30);
    assert!(reports.iter().all(|r| r.identity.is_some()));
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    eprintln!(
        "losses: {losses:?}\nfirst 5 {first}, last 5 {last}, ratio {}",
        last / first
    );
    assert!(
        last < 0.6 * first,
        "mean of the last 5 losses {last} is not below 0.6× the first 5's {first}"
    );
    Ok(())
}

#[test]
fn transformer_weights_load_as_stytr_and_samples_are_written() -> Result<()> {
    let root = tempfile::tempdir()?;
    let mut cfg = transformer_config(root.path(), 2, stytr::Config::tiny());
    cfg.sample_every = 2;
    let run = root.path().join("run");
    let dev = Device::Cpu;
    let mut trainer = FastTrainer::new(vgg()?, cfg, &run, &dev)?;
    assert_eq!(
        trainer.train(&mut Hooks::default())?,
        TrainOutcome::Finished
    );
    let grid = image::open(run.join("samples/step_000002.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 64, 4 * 64));

    // The three files hold the published checkpoints' keys (as the tiny fixtures have them) and
    // build a StyTr² network that paints as the trained one does.
    let files = trainer.weight_files()?;
    let names: Vec<&str> = files.iter().map(|(part, _)| *part).collect();
    assert_eq!(names, STYTR_PARTS);
    let fixtures = [
        "stytr_transformer_cape_tiny.pth",
        "stytr_embedding_tiny.pth",
        "stytr_decoder_tiny.pth",
    ];
    let mut loaded = Vec::new();
    for ((part, bytes), fixture) in files.iter().zip(fixtures) {
        let tensors = candle_core::safetensors::load_buffer(bytes, &dev)?;
        let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
        let reference = read_torch_checkpoint(&std::fs::read(path)?, fixture)?;
        assert_eq!(tensors.len(), reference.len(), "{part}");
        for (key, t) in &reference {
            assert_eq!(tensors[key].dims(), t.dims(), "{part} {key}");
        }
        let meta = safetensors::SafeTensors::read_metadata(bytes).unwrap().1;
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], format!("easel-stytr-{part}"));
        assert_eq!(meta["steps"], "2");
        loaded.push(candle_nn::VarBuilder::from_tensors(
            tensors,
            candle_core::DType::F32,
            &dev,
        ));
    }
    let Ok::<[candle_nn::VarBuilder; 3], _>([t, e, d]) = loaded.try_into() else {
        panic!("three weight files")
    };
    let net = StyTr::new(t, e, d, &stytr::Config::tiny())?;
    let (content, style) = trainer.batch(0)?;
    let (content, style) = (content.narrow(0, 0, 1)?, style.narrow(0, 0, 1)?);
    let want = trainer.stytr().unwrap().forward(&content, &style)?.detach();
    let got = net.forward(&content, &style)?;
    let diff = (got - &want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(diff <= 1e-4, "loaded network differs by {diff}");
    Ok(())
}
