//! Training the fast stylizers: `easel train-fast`'s trainer.
//!
//! AdaIN (Huang & Belongie 2017, <https://arxiv.org/abs/1703.06868>, §6, as naoto0804/
//! pytorch-AdaIN `train.py`): the VGG-19 encoder is frozen and only the decoder learns, from
//! random `crop × crop` windows of photos and paintings resized to short side `load_size`
//! ([`data`]), with the losses of [`crate::losses::adain_loss`] (content 1, style 10), Adam
//! (β 0.9, 0.999, ε 1e-8, no weight decay) and the repo's learning rate `lr / (1 + lr_decay ·
//! i)` at iteration `i` (1e-4 and 5e-5 by default).
//!
//! A fresh decoder starts from PyTorch's default convolution initialisation (weights and biases
//! uniform in ±1/√fan_in), drawn from easel's seeded generator. Step `s` draws its batch from a
//! generator seeded by `(seed, s)`, so a checkpoint (parameters, Adam moments, steps done:
//! [`checkpoint`]) continues a run bit-exactly. Every `save_every` steps, at the end and when
//! stopped the checkpoint is rewritten atomically; every `sample_every` steps a grid of a fixed
//! set of photos × paintings stylized with the current weights is written to
//! `<run_dir>/samples/step_NNNNNN.png` (first row the paintings, first column the photos; the
//! first three of each folder, centre squares of side `crop`).
//!
//! The VGG weights are plain tensors, never [`Var`]s, so gradients reach only the decoder.

pub mod checkpoint;
pub mod data;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::adain::{self, adaptive_instance_normalization, Decoder};
use crate::losses::{adain_loss, LossWeights};
use crate::vgg::{self, Layer, VggEncoder};
use checkpoint::{Checkpoint, Moments};
use data::{batch_tensor, center_square, core_err, ImageSet, StepRng};
use easel_core::training::{f32_bytes, safetensors_bytes, Adam};
use safetensors::Dtype;

/// Photos and paintings in a sample grid (at most; fewer when a folder has fewer).
pub const SAMPLE_COUNT: usize = 3;

/// The `format` metadata of the decoder weights [`FastTrainer::weights_bytes`] writes.
pub const DECODER_FORMAT: &str = "easel-adain-decoder";

/// Which network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// AdaIN's decoder.
    Adain,
}

/// The settings of a training run (stored as JSON in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFastConfig {
    /// The network trained.
    pub kind: Kind,
    /// Folder of photos (content pictures).
    pub content_dir: PathBuf,
    /// Folder of paintings (style pictures).
    pub style_dir: PathBuf,
    /// The VGG weights file of the run (recorded so that a resumed run finds it).
    pub vgg: PathBuf,
    /// Channels of VGG blocks 1–4, as the VGG weights have them; the decoder mirrors them.
    pub widths: [usize; 4],
    /// Optimizer steps of the run.
    pub steps: usize,
    /// Learning rate at step 0.
    pub lr: f64,
    /// Learning-rate decay: the rate at step `i` is `lr / (1 + lr_decay · i)`.
    pub lr_decay: f64,
    /// Content and style pairs per step.
    pub batch: usize,
    /// Short side the pictures are resized to before cropping (512 in the papers).
    pub load_size: usize,
    /// Side of the square training crops (256 in the papers; a multiple of 8, at least 16).
    pub crop: usize,
    /// Seed of the initial weights and of every draw.
    pub seed: u64,
    /// Rewrite the checkpoint every this many steps (0: only when stopped and at the end).
    pub save_every: usize,
    /// Write a sample grid every this many steps (0: never).
    pub sample_every: usize,
    /// Loss weights.
    pub weights: LossWeights,
    /// Adam's moment decay rates `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// Adam's denominator epsilon.
    pub eps: f64,
}

impl TrainFastConfig {
    /// pytorch-AdaIN `train.py`'s settings: 160 000 steps, lr 1e-4 decaying by 5e-5, batch 8,
    /// 256 crops of 512-resized pictures, content 1 / style 10, Adam (0.9, 0.999, 1e-8); seed
    /// 0, checkpoints every 10 000 steps, samples every 1000; the original VGG widths.
    pub fn adain(content_dir: PathBuf, style_dir: PathBuf, vgg: PathBuf) -> Self {
        Self {
            kind: Kind::Adain,
            content_dir,
            style_dir,
            vgg,
            widths: vgg::Config::original().widths,
            steps: 160_000,
            lr: 1e-4,
            lr_decay: 5e-5,
            batch: 8,
            load_size: 512,
            crop: 256,
            seed: 0,
            save_every: 10_000,
            sample_every: 1000,
            weights: LossWeights::adain(),
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }

    /// Checks the settings; the error names the wrong one.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("steps", self.steps),
            ("batch", self.batch),
            ("load_size", self.load_size),
        ] {
            if v == 0 {
                bail!("train-fast: {name} must be at least 1")
            }
        }
        if let Some(w) = self.widths.iter().find(|&&w| w == 0) {
            bail!(
                "train-fast: widths must be positive, got {w} in {:?}",
                self.widths
            )
        }
        if self.crop < 16 || !self.crop.is_multiple_of(8) {
            bail!(
                "train-fast: crop {} must be a multiple of 8 and at least 16",
                self.crop
            )
        }
        if self.load_size < self.crop {
            bail!(
                "train-fast: load size {} is smaller than the crop {}",
                self.load_size,
                self.crop
            )
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("train-fast: lr must be positive, got {}", self.lr)
        }
        if !(self.lr_decay.is_finite() && self.lr_decay >= 0.0) {
            bail!("train-fast: lr_decay must be >= 0, got {}", self.lr_decay)
        }
        self.adam().validate("train-fast")?;
        self.weights.validate()
    }

    /// The optimizer: Adam, no weight decay.
    pub fn adam(&self) -> Adam {
        Adam {
            betas: self.betas,
            eps: self.eps,
            weight_decay: 0.0,
        }
    }

    /// The learning rate of the update made at step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr / (1.0 + self.lr_decay * step as f64)
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done after it (1-based number of the step).
    pub step: usize,
    /// The weighted total loss.
    pub loss: f32,
    /// The content loss (unweighted).
    pub content: f32,
    /// The style loss (unweighted).
    pub style: f32,
    /// The learning rate used.
    pub lr: f64,
}

/// How [`FastTrainer::train`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// All `steps` were done.
    Finished,
    /// The stop flag was raised; a checkpoint was written after the last finished step.
    Stopped,
}

/// The progress callback of [`Hooks`].
pub type StepHook<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// The sample-grid callback of [`Hooks`]: steps done and the grid's path.
pub type SampleHook<'a> = Box<dyn FnMut(usize, &Path) + 'a>;

/// Callbacks of [`FastTrainer::train`].
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every step.
    pub on_step: Option<StepHook<'a>>,
    /// Called after each sample grid is written.
    pub on_sample: Option<SampleHook<'a>>,
    /// Checked before every step: when set, the run checkpoints and returns
    /// [`TrainOutcome::Stopped`] (the CLI sets it on Ctrl-C).
    pub stop: Option<&'a AtomicBool>,
}

/// The fixed pictures of the sample grids.
#[derive(Debug)]
struct Samples {
    contents: Vec<RgbImage>,
    styles: Vec<RgbImage>,
}

/// A training run: the frozen encoder, the decoder being trained, Adam's state and the
/// pictures.
#[derive(Debug)]
pub struct FastTrainer {
    config: TrainFastConfig,
    encoder: VggEncoder,
    decoder: Decoder,
    params: Vec<(String, Var)>,
    moments: Vec<Moments>,
    step: usize,
    content: ImageSet,
    styles: ImageSet,
    samples: Samples,
    run_dir: PathBuf,
    device: Device,
}

/// The widths of a "vgg_normalised" state dict: output channels of its first conv of blocks
/// 1–4 (modules 2, 9, 16, 29).
pub fn vgg_widths(vgg: &HashMap<String, Tensor>) -> Result<[usize; 4]> {
    let mut widths = [0; 4];
    for (w, index) in widths.iter_mut().zip([2, 9, 16, 29]) {
        let key = format!("{index}.weight");
        match vgg.get(&key) {
            Some(t) if t.rank() == 4 => *w = t.dim(0)?,
            Some(t) => bail!(
                "VGG weights: {key} has shape {:?}, not a conv kernel",
                t.dims()
            ),
            None => bail!("VGG weights: {key} is missing (not a vgg_normalised state dict?)"),
        }
    }
    Ok(widths)
}

impl FastTrainer {
    /// A new run with `config`: the VGG state dict `vgg` (frozen; its widths must be
    /// `config.widths`), a decoder initialised from `config.seed`, the pictures of the config's
    /// folders; checkpoints and samples go to `run_dir`.
    pub fn new(
        vgg: HashMap<String, Tensor>,
        config: TrainFastConfig,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let (decoder, params) = build_decoder(&config, device)?;
        let mut rng = StepRng::new(config.seed);
        for (name, var) in &params {
            let value = pytorch_conv_init(name, var.as_tensor(), &params, &mut rng)?;
            var.set(&value)?;
        }
        let moments = params
            .iter()
            .map(|(_, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Moments {
                    m: zeros.clone(),
                    v: zeros,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(vgg, config, decoder, params, moments, 0, run_dir, device)
    }

    /// Continues the run checkpointed in `run_dir` (parameters, Adam moments, steps done,
    /// settings) with the VGG state dict `vgg` (the one the run started with).
    pub fn resume(vgg: HashMap<String, Tensor>, run_dir: &Path, device: &Device) -> Result<Self> {
        Self::from_checkpoint(vgg, Checkpoint::load(run_dir, device)?, run_dir, device)
    }

    /// Continues from `ckpt` (e.g. [`Checkpoint::load`] with its `steps` raised).
    pub fn from_checkpoint(
        vgg: HashMap<String, Tensor>,
        ckpt: Checkpoint,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        ckpt.config.validate()?;
        if ckpt.step > ckpt.config.steps {
            bail!(
                "the checkpoint has {} steps done, more than the run's {}",
                ckpt.step,
                ckpt.config.steps
            )
        }
        let (decoder, params) = build_decoder(&ckpt.config, device)?;
        if params.len() != ckpt.params.len() {
            bail!(
                "the checkpoint holds {} parameters, the decoder has {}",
                ckpt.params.len(),
                params.len()
            )
        }
        let mut moments = Vec::with_capacity(params.len());
        for ((name, var), (cname, value, m)) in params.iter().zip(ckpt.params) {
            if *name != cname || var.dims() != value.dims() {
                bail!(
                    "the checkpoint's parameter {cname} {:?} does not fit the decoder's {name} {:?}",
                    value.dims(),
                    var.dims()
                )
            }
            var.set(&value)?;
            moments.push(m);
        }
        Self::assemble(
            vgg,
            ckpt.config,
            decoder,
            params,
            moments,
            ckpt.step,
            run_dir,
            device,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        vgg: HashMap<String, Tensor>,
        config: TrainFastConfig,
        decoder: Decoder,
        params: Vec<(String, Var)>,
        moments: Vec<Moments>,
        step: usize,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let widths = vgg_widths(&vgg)?;
        if widths != config.widths {
            bail!(
                "the VGG weights have widths {widths:?} but the run uses {:?}",
                config.widths
            )
        }
        let vgg_cfg = vgg::Config {
            widths,
            depth: Layer::Relu4_1,
        };
        // Plain tensors: the encoder is frozen.
        let vgg = vgg
            .into_iter()
            .map(|(k, t)| Ok((k, t.detach().to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let encoder = VggEncoder::new(VarBuilder::from_tensors(vgg, DType::F32, device), &vgg_cfg)?;
        let mut content = ImageSet::from_dir(&config.content_dir, config.load_size)?;
        let mut styles = ImageSet::from_dir(&config.style_dir, config.load_size)?;
        let side = config.crop as u32;
        let pick = |set: &mut ImageSet| -> Result<Vec<RgbImage>> {
            (0..set.len().min(SAMPLE_COUNT))
                .map(|i| Ok(center_square(&set.get(i)?, side)))
                .collect()
        };
        let samples = Samples {
            contents: pick(&mut content)?,
            styles: pick(&mut styles)?,
        };
        Ok(Self {
            config,
            encoder,
            decoder,
            params,
            moments,
            step,
            content,
            styles,
            samples,
            run_dir: run_dir.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainFastConfig {
        &self.config
    }

    /// Steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The decoder being trained (its weights are the current ones).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The trained parameters with their state-dict keys, in module order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The content and style batches of step `step`: `[batch, 3, crop, crop]` each.
    pub fn batch(&mut self, step: usize) -> Result<(Tensor, Tensor)> {
        let mut rng = StepRng::for_step(self.config.seed, step);
        let crop = self.config.crop as u32;
        let mut contents = Vec::with_capacity(self.config.batch);
        let mut styles = Vec::with_capacity(self.config.batch);
        for _ in 0..self.config.batch {
            contents.push(self.content.random_crop(&mut rng, crop)?);
            styles.push(self.styles.random_crop(&mut rng, crop)?);
        }
        Ok((
            batch_tensor(&contents, &self.device)?,
            batch_tensor(&styles, &self.device)?,
        ))
    }

    /// One optimizer step: the losses of step [`Self::step`]'s batch, their gradients, Adam.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let step = self.step;
        let (content, style) = self.batch(step)?;
        let terms = adain_loss(
            &self.encoder,
            &self.decoder,
            &content,
            &style,
            &self.config.weights,
        )?;
        let grads = terms.total.backward()?;
        let lr = self.config.lr_at(step);
        let adam = self.config.adam();
        for ((name, var), moments) in self.params.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                bail!("train-fast: no gradient reached {name}")
            };
            adam.update(step + 1, lr, var, g, (&mut moments.m, &mut moments.v))?;
        }
        self.step += 1;
        let scalar = |t: &Tensor| t.to_dtype(DType::F32)?.to_scalar::<f32>();
        Ok(StepReport {
            step: self.step,
            loss: scalar(&terms.total)?,
            content: scalar(&terms.content)?,
            style: scalar(&terms.style)?,
            lr,
        })
    }

    /// The current state as a [`Checkpoint`] (copies, so it does not follow later updates).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let params = self
            .params
            .iter()
            .zip(&self.moments)
            .map(|((name, var), m)| Ok((name.clone(), var.as_tensor().copy()?, m.clone())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Checkpoint {
            step: self.step,
            config: self.config.clone(),
            params,
        })
    }

    /// Writes the checkpoint to the run folder atomically; returns its path.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.checkpoint()?.save(&self.run_dir)
    }

    /// The trained decoder as safetensors bytes: the `decoder.pth` state-dict keys (`1.weight`,
    /// … `28.bias`), f32, with metadata `format` = [`DECODER_FORMAT`], `steps`, `config` (JSON).
    /// `easel stylize --method adain` loads it like a converted `decoder.pth`.
    pub fn weights_bytes(&self) -> Result<Vec<u8>> {
        let data = self
            .params
            .iter()
            .map(|(name, var)| {
                let bytes = f32_bytes(var)?;
                Ok((name.clone(), Dtype::F32, var.dims().to_vec(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let config = serde_json::to_string(&self.config).map_err(candle_core::Error::wrap)?;
        let meta = HashMap::from([
            ("format".to_string(), DECODER_FORMAT.to_string()),
            ("steps".to_string(), self.step.to_string()),
            ("config".to_string(), config),
        ]);
        safetensors_bytes(&data, meta)
    }

    /// The sample grid with the current weights: `(1 + photos) × (1 + paintings)` cells of
    /// `crop × crop`, the paintings along the top, the photos down the left, each photo
    /// stylized with each painting in between (white corner).
    pub fn sample_grid(&self) -> Result<RgbImage> {
        let side = self.config.crop as u32;
        let (rows, cols) = (self.samples.contents.len(), self.samples.styles.len());
        let mut grid = RgbImage::from_pixel(
            (cols as u32 + 1) * side,
            (rows as u32 + 1) * side,
            image::Rgb([255, 255, 255]),
        );
        let at = |i: usize| i64::from(i as u32 * side);
        let mut style_feats = Vec::with_capacity(cols);
        for (j, s) in self.samples.styles.iter().enumerate() {
            image::imageops::replace(&mut grid, s, at(j + 1), 0);
            let t = batch_tensor(std::slice::from_ref(s), &self.device)?;
            style_feats.push(self.encoder.forward_to(&t, Layer::Relu4_1)?);
        }
        for (i, c) in self.samples.contents.iter().enumerate() {
            image::imageops::replace(&mut grid, c, 0, at(i + 1));
            let t = batch_tensor(std::slice::from_ref(c), &self.device)?;
            let cf = self.encoder.forward_to(&t, Layer::Relu4_1)?;
            for (j, sf) in style_feats.iter().enumerate() {
                let out = self
                    .decoder
                    .forward(&adaptive_instance_normalization(&cf, sf)?)?
                    .detach();
                let img = core_err(easel_core::tensor_to_rgb(&out))?;
                image::imageops::replace(&mut grid, &img, at(j + 1), at(i + 1));
            }
        }
        Ok(grid)
    }

    /// Writes [`Self::sample_grid`] to `<run_dir>/samples/step_NNNNNN.png` (steps done);
    /// returns its path.
    pub fn write_samples(&self) -> Result<PathBuf> {
        let dir = self.run_dir.join("samples");
        std::fs::create_dir_all(&dir)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?;
        let path = dir.join(format!("step_{:06}.png", self.step));
        core_err(easel_core::save_image(
            &self.sample_grid()?,
            &path,
            None,
            &[],
        ))?;
        Ok(path)
    }

    /// Trains until `steps` are done or `hooks.stop` is raised, calling the hooks, writing
    /// checkpoints every `save_every` steps and at the end (finished or stopped) and sample
    /// grids every `sample_every` steps.
    pub fn train(&mut self, hooks: &mut Hooks) -> Result<TrainOutcome> {
        while self.step < self.config.steps {
            if hooks.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                self.save_checkpoint()?;
                return Ok(TrainOutcome::Stopped);
            }
            let report = self.train_step()?;
            if !report.loss.is_finite() {
                bail!(
                    "train-fast: the loss became {} at step {}; lower --lr",
                    report.loss,
                    report.step
                )
            }
            if let Some(f) = hooks.on_step.as_mut() {
                f(&report);
            }
            let every = |n: usize| n > 0 && self.step.is_multiple_of(n);
            if every(self.config.save_every) {
                self.save_checkpoint()?;
            }
            if every(self.config.sample_every) {
                let path = self.write_samples()?;
                if let Some(f) = hooks.on_sample.as_mut() {
                    f(self.step, &path);
                }
            }
        }
        self.save_checkpoint()?;
        Ok(TrainOutcome::Finished)
    }
}

/// A decoder of `config.widths` whose parameters are [`Var`]s (values to be set), with its
/// parameters in module order.
fn build_decoder(
    config: &TrainFastConfig,
    device: &Device,
) -> Result<(Decoder, Vec<(String, Var)>)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let decoder = Decoder::new(
        vb,
        &adain::Config {
            widths: config.widths,
        },
    )?;
    let mut params: Vec<(String, Var)> = match varmap.data().lock() {
        Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(_) => bail!("train-fast: the decoder's variables are unavailable (poisoned lock)"),
    };
    // `<module index>.weight|bias`: by index, then weight before bias.
    let key = |name: &str| {
        let (index, kind) = name.split_once('.').unwrap_or((name, ""));
        (index.parse::<usize>().unwrap_or(usize::MAX), kind == "bias")
    };
    params.sort_by(|a, b| key(&a.0).cmp(&key(&b.0)).then(a.0.cmp(&b.0)));
    Ok((decoder, params))
}

/// PyTorch's default `nn.Conv2d` initialisation of parameter `name`: uniform in
/// ±1/√fan_in, `fan_in` being its module's `in_channels · kh · kw` (the bias uses its weight's).
fn pytorch_conv_init(
    name: &str,
    value: &Tensor,
    params: &[(String, Var)],
    rng: &mut StepRng,
) -> Result<Tensor> {
    let weight_name = match name.strip_suffix(".bias") {
        Some(module) => format!("{module}.weight"),
        None => name.to_string(),
    };
    let Some((_, weight)) = params.iter().find(|(n, _)| *n == weight_name) else {
        bail!("train-fast: no weight {weight_name} for {name}")
    };
    let fan_in: usize = weight.dims().iter().skip(1).product();
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let n = value.elem_count();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_vec(values, value.shape(), value.device())
}
