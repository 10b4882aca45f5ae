//! Training the fast stylizers: `easel train-fast`'s trainer.
//!
//! AdaIN (Huang & Belongie 2017, <https://arxiv.org/abs/1703.06868>, §6, as naoto0804/
//! pytorch-AdaIN `train.py`): the VGG-19 encoder is frozen and only the decoder learns, from
//! random `crop × crop` windows of photos and paintings resized to short side `load_size`
//! ([`data`]), with the losses of [`crate::losses::adain_loss`] (content 1, style 10), Adam
//! (β 0.9, 0.999, ε 1e-8, no weight decay) and the repo's learning rate `lr / (1 + lr_decay ·
//! i)` at iteration `i` (1e-4 and 5e-5 by default).
//!
//! StyTr² (Deng et al. 2022, <https://arxiv.org/abs/2105.14576>, as diyiiyiii/StyTR-2
//! `train.py`): the patch embedding, the transformer and the CNN decoder of [`StyTr`] learn
//! together, with the losses of [`crate::losses::stytr_loss`] (content 7, style 10, identity 70
//! and 1), the same Adam and the repo's schedule ([`LrSchedule::Warmup`]: `lr · 0.1 · (1 + 3e-4
//! · i)` for the first 10 000 steps, then `2e-4 / (1 + 1e-5 · (i − 10 000))`, lr 5e-4). One
//! difference: the repo trains with dropout 0.1 in the transformer; easel has none (its forward
//! is the eval one), so a step is a deterministic function of the weights and the batch.
//!
//! A fresh network starts from PyTorch's default initialisation, drawn from easel's seeded
//! generator: convolutions and linear layers uniform in ±1/√fan_in (weights and biases); in the
//! StyTr² transformer, as its `_reset_parameters` does, every weight matrix Xavier-uniform
//! (±√(6 / (fan_in + fan_out))), the attention biases 0, the LayerNorms 1 and 0, and the
//! positional encoding's convs (`new_ps`, `ppe`, made after that reset) the conv default. Step
//! `s` draws its batch from a generator seeded by `(seed, s)`, so a checkpoint (parameters, Adam
//! moments, steps done: [`checkpoint`]) continues a run bit-exactly. Every `save_every` steps, at
//! the end and when stopped the checkpoint is rewritten atomically; every `sample_every` steps a
//! grid of a fixed set of photos × paintings stylized with the current weights is written to
//! `<run_dir>/samples/step_NNNNNN.png` (first row the paintings, first column the photos; the
//! first three of each folder, centre squares of side `crop`).
//!
//! The VGG weights are plain tensors, never [`Var`]s, so gradients reach only the trained
//! network.

pub mod checkpoint;
pub mod data;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::adain::{self, adaptive_instance_normalization, Decoder};
use crate::losses::{adain_loss, stytr_loss, LossTerms, LossWeights};
use crate::stytr::{self, StyTr};
use crate::vgg::{self, Layer, VggEncoder};
use checkpoint::{Checkpoint, Moments};
use data::{batch_tensor, center_square, core_err, ImageSet};
use easel_core::rng::SplitMix64;
use easel_core::training::{f32_bytes, safetensors_bytes, Adam};
use safetensors::Dtype;

/// Photos and paintings in a sample grid (at most; fewer when a folder has fewer).
pub const SAMPLE_COUNT: usize = 3;

/// The `format` metadata of the AdaIN decoder weights [`FastTrainer::weight_files`] writes.
pub const DECODER_FORMAT: &str = "easel-adain-decoder";

/// The parts of a StyTr² network, as [`FastTrainer::weight_files`] names them: the state dicts
/// of StyTR-2's `transformer_iter_*.pth`, `embedding_iter_*.pth` and `decoder_iter_*.pth`, in
/// [`StyTr::new`]'s order.
pub const STYTR_PARTS: [&str; 3] = ["transformer", "embedding", "decoder"];

/// Which network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// AdaIN's decoder.
    Adain,
    /// StyTr²: patch embedding, transformer and CNN decoder.
    Transformer,
}

/// How the learning rate moves with the step `i` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    /// pytorch-AdaIN: `lr / (1 + lr_decay · i)`.
    #[default]
    Inverse,
    /// StyTR-2 `train.py`: a linear warm-up `lr · 0.1 · (1 + 3 · i / steps)` from a tenth of
    /// `lr` to `0.4 · lr` for `i < steps`, then `0.4 · lr / (1 + lr_decay · (i − steps))`.
    /// With the repo's 10 000 steps and lr 5e-4 that is its `lr · 0.1 · (1 + 3e-4 · i)` and its
    /// constant `2e-4 / (1 + lr_decay · (i − 1e4))` (easel scales the second with `lr` too).
    Warmup {
        /// Warm-up steps (10 000 in the repo).
        steps: usize,
    },
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
    /// Channels of VGG blocks 1–4, as the VGG weights have them; AdaIN's decoder mirrors them.
    pub widths: [usize; 4],
    /// Optimizer steps of the run.
    pub steps: usize,
    /// Learning rate at step 0.
    pub lr: f64,
    /// Learning-rate decay (see [`Self::schedule`]).
    pub lr_decay: f64,
    /// The learning-rate schedule (absent in runs saved before it existed: the inverse decay).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// The StyTr² network's sizes (kind `transformer` only).
    #[serde(default)]
    pub transformer: Option<stytr::Config>,
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

/// Largest short side pictures are loaded at (a 4096² RGB picture is 48 MiB as f32).
pub const MAX_LOAD_SIZE: usize = 4096;
/// Largest training crop side (a batch of 2048² crops already needs tens of GiB of activations).
pub const MAX_CROP: usize = 2048;

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
            schedule: LrSchedule::Inverse,
            transformer: None,
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

    /// StyTR-2 `train.py`'s settings for the network `net`: 160 000 steps, lr 5e-4 with 10 000
    /// warm-up steps then decay 1e-5 ([`LrSchedule::Warmup`]), batch 8, 256 crops of
    /// 512-resized pictures, content 7 / style 10 / identity 70 and 1, Adam (0.9, 0.999, 1e-8);
    /// seed 0, checkpoints every 10 000 steps, samples every 1000; the original VGG widths.
    pub fn transformer(
        content_dir: PathBuf,
        style_dir: PathBuf,
        vgg: PathBuf,
        net: stytr::Config,
    ) -> Self {
        Self {
            kind: Kind::Transformer,
            lr: 5e-4,
            lr_decay: 1e-5,
            schedule: LrSchedule::Warmup { steps: 10_000 },
            transformer: Some(net),
            weights: LossWeights::stytr(),
            ..Self::adain(content_dir, style_dir, vgg)
        }
    }

    /// The StyTr² network of a `transformer` run.
    fn stytr_config(&self) -> Result<&stytr::Config> {
        match (&self.kind, &self.transformer) {
            (Kind::Transformer, Some(net)) => Ok(net),
            (Kind::Transformer, None) => {
                bail!("train-fast: a transformer run needs its network sizes")
            }
            (Kind::Adain, _) => bail!("train-fast: an AdaIN run has no transformer"),
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
        // relu5_1 of StyTr²'s losses needs 17 pixels, AdaIN's relu4_1 9 (and its decoder 16).
        let min_crop = match self.kind {
            Kind::Adain => 16,
            Kind::Transformer => 24,
        };
        if self.crop < min_crop || !self.crop.is_multiple_of(8) {
            bail!(
                "train-fast: crop {} must be a multiple of 8 and at least {min_crop}",
                self.crop
            )
        }
        match self.kind {
            Kind::Adain if self.transformer.is_some() => {
                bail!("train-fast: an AdaIN run takes no transformer settings")
            }
            Kind::Adain => {}
            Kind::Transformer => self.stytr_config()?.validate()?,
        }
        if self.schedule == (LrSchedule::Warmup { steps: 0 }) {
            bail!("train-fast: warm-up steps must be at least 1")
        }
        if self.load_size > MAX_LOAD_SIZE || self.crop > MAX_CROP {
            bail!(
                "train-fast: load size {} and crop {} must be at most {MAX_LOAD_SIZE} and {MAX_CROP}",
                self.load_size,
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

    /// The learning rate of the update made at step `step` (0-based; see [`LrSchedule`]).
    pub fn lr_at(&self, step: usize) -> f64 {
        match self.schedule {
            LrSchedule::Inverse => self.lr / (1.0 + self.lr_decay * step as f64),
            LrSchedule::Warmup { steps } if step < steps => {
                self.lr * 0.1 * (1.0 + 3.0 * step as f64 / steps as f64)
            }
            LrSchedule::Warmup { steps } => {
                0.4 * self.lr / (1.0 + self.lr_decay * (step - steps) as f64)
            }
        }
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
    /// The pixel and feature identity losses (unweighted; StyTr² only).
    pub identity: Option<(f32, f32)>,
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

/// The network being trained (its parameters are [`Var`]s).
#[derive(Debug)]
enum Network {
    Adain(Decoder),
    Transformer(Box<StyTr>),
}

/// A training run: the frozen encoder, the network being trained, Adam's state and the
/// pictures.
#[derive(Debug)]
pub struct FastTrainer {
    config: TrainFastConfig,
    encoder: VggEncoder,
    network: Network,
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
    /// `config.widths`), a network initialised from `config.seed`, the pictures of the config's
    /// folders; checkpoints and samples go to `run_dir`.
    pub fn new(
        vgg: HashMap<String, Tensor>,
        config: TrainFastConfig,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let (network, params) = build_network(&config, device)?;
        let mut rng = SplitMix64::new(config.seed);
        for (name, var) in &params {
            let value = initial_value(config.kind, name, var.as_tensor(), &params, &mut rng)?;
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
        Self::assemble(vgg, config, network, params, moments, 0, run_dir, device)
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
        let (network, params) = build_network(&ckpt.config, device)?;
        if params.len() != ckpt.params.len() {
            bail!(
                "the checkpoint holds {} parameters, the network has {}",
                ckpt.params.len(),
                params.len()
            )
        }
        let mut moments = Vec::with_capacity(params.len());
        for ((name, var), (cname, value, m)) in params.iter().zip(ckpt.params) {
            if *name != cname || var.dims() != value.dims() {
                bail!(
                    "the checkpoint's parameter {cname} {:?} does not fit the network's {name} {:?}",
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
            network,
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
        network: Network,
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
            depth: match config.kind {
                Kind::Adain => Layer::Relu4_1,
                Kind::Transformer => Layer::Relu5_1,
            },
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
            network,
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

    /// The (CNN) decoder being trained: AdaIN's, or StyTr²'s last stage (its weights are the
    /// current ones).
    pub fn decoder(&self) -> &Decoder {
        match &self.network {
            Network::Adain(decoder) => decoder,
            Network::Transformer(net) => net.decoder(),
        }
    }

    /// The StyTr² network being trained (kind `transformer`).
    pub fn stytr(&self) -> Option<&StyTr> {
        match &self.network {
            Network::Adain(_) => None,
            Network::Transformer(net) => Some(net),
        }
    }

    /// The trained parameters with their keys, in the run's order: AdaIN's decoder by
    /// state-dict key in module order; StyTr²'s as `<part>.<state-dict key>` for the parts of
    /// [`STYTR_PARTS`], by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The content and style batches of step `step`: `[batch, 3, crop, crop]` each.
    pub fn batch(&mut self, step: usize) -> Result<(Tensor, Tensor)> {
        let mut rng = SplitMix64::for_step(self.config.seed, step);
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
        let w = &self.config.weights;
        let terms: LossTerms = match &self.network {
            Network::Adain(decoder) => adain_loss(&self.encoder, decoder, &content, &style, w)?,
            Network::Transformer(net) => stytr_loss(&self.encoder, net, &content, &style, w)?,
        };
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
        let identity = match (&terms.identity_pixels, &terms.identity_features) {
            (Some(p), Some(f)) => Some((scalar(p)?, scalar(f)?)),
            _ => None,
        };
        Ok(StepReport {
            step: self.step,
            loss: scalar(&terms.total)?,
            content: scalar(&terms.content)?,
            style: scalar(&terms.style)?,
            identity,
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

    /// The trained network as safetensors files `(part, bytes)`, f32, each with metadata
    /// `format`, `steps` and `config` (JSON): for AdaIN one `decoder` with `decoder.pth`'s keys
    /// (`1.weight`, … `28.bias`; format [`DECODER_FORMAT`]), which `easel stylize --method
    /// adain` loads like a converted `decoder.pth`; for StyTr² the three [`STYTR_PARTS`] with the
    /// keys of StyTR-2's `transformer_iter_*.pth`, `embedding_iter_*.pth` and
    /// `decoder_iter_*.pth` (format `easel-stytr-<part>`), as [`StyTr::new`] reads them.
    pub fn weight_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let config = serde_json::to_string(&self.config).map_err(candle_core::Error::wrap)?;
        let file = |format: String, params: Vec<(&str, &Var)>| -> Result<Vec<u8>> {
            let data = params
                .into_iter()
                .map(|(key, var)| {
                    let bytes = f32_bytes(var)?;
                    Ok((key.to_string(), Dtype::F32, var.dims().to_vec(), bytes))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = BTreeMap::from([
                ("format".to_string(), format),
                ("steps".to_string(), self.step.to_string()),
                ("config".to_string(), config.clone()),
            ]);
            safetensors_bytes(&data, &meta)
        };
        match self.config.kind {
            Kind::Adain => {
                let params = self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
                Ok(vec![("decoder", file(DECODER_FORMAT.to_string(), params)?)])
            }
            Kind::Transformer => STYTR_PARTS
                .iter()
                .map(|&part| {
                    let params = self
                        .params
                        .iter()
                        .filter_map(|(name, var)| {
                            let (p, key) = name.split_once('.')?;
                            (p == part).then_some((key, var))
                        })
                        .collect();
                    Ok((part, file(format!("easel-stytr-{part}"), params)?))
                })
                .collect(),
        }
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
        let tensor = |img: &RgbImage| batch_tensor(std::slice::from_ref(img), &self.device);
        // AdaIN works on relu4_1 features, StyTr² on the pictures.
        let prepare = |img: &RgbImage| -> Result<Tensor> {
            match &self.network {
                Network::Adain(_) => self.encoder.forward_to(&tensor(img)?, Layer::Relu4_1),
                Network::Transformer(_) => tensor(img),
            }
        };
        let mut styles = Vec::with_capacity(cols);
        for (j, s) in self.samples.styles.iter().enumerate() {
            image::imageops::replace(&mut grid, s, at(j + 1), 0);
            styles.push(prepare(s)?);
        }
        for (i, c) in self.samples.contents.iter().enumerate() {
            image::imageops::replace(&mut grid, c, 0, at(i + 1));
            let content = prepare(c)?;
            for (j, style) in styles.iter().enumerate() {
                let out = match &self.network {
                    Network::Adain(decoder) => {
                        decoder.forward(&adaptive_instance_normalization(&content, style)?)?
                    }
                    Network::Transformer(net) => net.forward(&content, style)?,
                }
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
                    "the loss became {} at step {}; lower the learning rate",
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

/// The variables of `varmap` with their names (keys as built), sorted by `order`.
fn varmap_params(
    varmap: &VarMap,
    order: impl Fn(&str) -> (usize, bool, String),
) -> Result<Vec<(String, Var)>> {
    let mut params: Vec<(String, Var)> = match varmap.data().lock() {
        Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(_) => bail!("train-fast: the network's variables are unavailable (poisoned lock)"),
    };
    params.sort_by_key(|(name, _)| order(name));
    Ok(params)
}

/// The network of `config` whose parameters are [`Var`]s (values to be set), with its
/// parameters in the run's order ([`FastTrainer::params`]).
fn build_network(
    config: &TrainFastConfig,
    device: &Device,
) -> Result<(Network, Vec<(String, Var)>)> {
    let new_varmap = || {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        (varmap, vb)
    };
    // AdaIN decoder keys `<module index>.weight|bias`: by index, then weight before bias.
    let module_order = |name: &str| {
        let (index, kind) = name.split_once('.').unwrap_or((name, ""));
        (
            index.parse::<usize>().unwrap_or(usize::MAX),
            kind == "bias",
            name.to_string(),
        )
    };
    match config.kind {
        Kind::Adain => {
            let (varmap, vb) = new_varmap();
            let decoder = Decoder::new(
                vb,
                &adain::Config {
                    widths: config.widths,
                },
            )?;
            Ok((
                Network::Adain(decoder),
                varmap_params(&varmap, module_order)?,
            ))
        }
        Kind::Transformer => {
            let [(transformer, vb_t), (embedding, vb_e), (decoder, vb_d)] =
                [new_varmap(), new_varmap(), new_varmap()];
            let net = StyTr::new(vb_t, vb_e, vb_d, config.stytr_config()?)?;
            let mut params = Vec::new();
            for (part, varmap) in STYTR_PARTS.iter().zip([&transformer, &embedding, &decoder]) {
                let by_name = |name: &str| (0, false, name.to_string());
                let order: &dyn Fn(&str) -> (usize, bool, String) = if *part == "decoder" {
                    &module_order
                } else {
                    &by_name
                };
                for (key, var) in varmap_params(varmap, order)? {
                    params.push((format!("{part}.{key}"), var));
                }
            }
            Ok((Network::Transformer(Box::new(net)), params))
        }
    }
}

/// The initial value of parameter `name` (see the module documentation): PyTorch's default
/// initialisation of the module it belongs to, drawn from `rng`.
fn initial_value(
    kind: Kind,
    name: &str,
    value: &Tensor,
    params: &[(String, Var)],
    rng: &mut SplitMix64,
) -> Result<Tensor> {
    let transformer_key = match kind {
        Kind::Transformer => name.strip_prefix("transformer."),
        Kind::Adain => None,
    };
    let Some(key) = transformer_key else {
        return pytorch_conv_init(name, value, params, rng);
    };
    // The module's last path component: `norm1`, `out_proj`, `linear2`, …
    let (module, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let module_name = module.rsplit('.').next().unwrap_or(module);
    let positional = key.starts_with("new_ps.") || key.starts_with("ppe.");
    let constant = |v: f64| value.ones_like()?.affine(v, 0.0);
    if positional {
        pytorch_conv_init(name, value, params, rng)
    } else if leaf == "in_proj_bias" || (module_name == "out_proj" && leaf == "bias") {
        constant(0.0)
    } else if module_name.starts_with("norm") {
        constant(if leaf == "weight" { 1.0 } else { 0.0 })
    } else if value.rank() > 1 {
        // Xavier uniform: fan_in = dims[1]·receptive field, fan_out = dims[0]·receptive field.
        let dims = value.dims();
        let receptive: usize = dims.iter().skip(2).product();
        let fans = (dims[0] + dims[1]) * receptive;
        uniform(value, (6.0 / fans.max(1) as f64).sqrt(), rng)
    } else {
        pytorch_conv_init(name, value, params, rng)
    }
}

/// A tensor shaped like `value`, uniform in ±`bound`, drawn from `rng`.
fn uniform(value: &Tensor, bound: f64, rng: &mut SplitMix64) -> Result<Tensor> {
    let values: Vec<f32> = (0..value.elem_count())
        .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_vec(values, value.shape(), value.device())
}

/// PyTorch's default `nn.Conv2d` / `nn.Linear` initialisation of parameter `name`: uniform in
/// ±1/√fan_in, `fan_in` being its module's `in_channels · kh · kw` (the bias uses its weight's).
fn pytorch_conv_init(
    name: &str,
    value: &Tensor,
    params: &[(String, Var)],
    rng: &mut SplitMix64,
) -> Result<Tensor> {
    let weight_name = match name.strip_suffix(".bias") {
        Some(module) => format!("{module}.weight"),
        None => name.to_string(),
    };
    let Some((_, weight)) = params.iter().find(|(n, _)| *n == weight_name) else {
        bail!("train-fast: no weight {weight_name} for {name}")
    };
    let fan_in: usize = weight.dims().iter().skip(1).product();
    uniform(value, 1.0 / (fan_in.max(1) as f64).sqrt(), rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded() {
        let base = TrainFastConfig::adain("c".into(), "s".into(), "vgg.pth".into());
        assert!(base.validate().is_ok());
        let huge_crop = TrainFastConfig {
            crop: 1 << 40,
            load_size: 1 << 41,
            ..base.clone()
        };
        let err = huge_crop.validate().unwrap_err().to_string();
        assert!(err.contains("at most 4096 and 2048"), "{err}");
        let small_load = TrainFastConfig {
            load_size: 128,
            ..base
        };
        assert!(small_load
            .validate()
            .unwrap_err()
            .to_string()
            .contains("smaller than the crop"));
    }
}
