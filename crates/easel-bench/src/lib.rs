//! easel-bench: what `easel bench` measures with: models of Stable Diffusion 1.5's shapes with seeded random
//! weights, the workloads' inputs, a device-synchronised timer with its statistics, and
//! peak-memory probes.
//!
//! - **Random weights** ([`random_models`]): every tensor a model asks for is drawn on the host
//!   from a SplitMix64 stream seeded by the run's seed and the tensor's name, so the same seed
//!   gives the same model on every device. Matrices and convolution kernels are uniform in
//!   `±1/√fan_in` (PyTorch's default initialisation bound), 1-D weights (norm scales)
//!   `1 ± 0.1`, biases `±0.02`: activations stay of order one through the whole UNet, as with
//!   trained weights, so f16 runs do not overflow. [`ModelPreset::Sd15`] has SD 1.5's shapes
//!   (UNet 860 M, ControlNet 361 M, VAE 84 M, CLIP 123 M parameters); [`ModelPreset::Tiny`] the
//!   tiny test models of `tests/fixtures/tiny-sd` (for CI). The tokenizer of random models
//!   knows only CLIP's 256 byte tokens (no merges): prompts become more tokens than with the
//!   real vocabulary, but the text encoder always runs on 77 positions, so the cost is the same.
//! - **Timing** ([`time_runs`]): `warmup` untimed calls, then `runs` calls each between two
//!   [`Device::synchronize`] calls (CUDA kernels are asynchronous: the clock is read only once
//!   the GPU is done); [`Stats`] gives median, minimum, 90th percentile and mean.
//! - **Memory** ([`MemoryProbe`]): on CUDA, the high-water mark of the bytes allocated from the
//!   device's memory pool (candle allocates through cudarc's stream-ordered `cuMemAllocAsync`;
//!   the mark is reset before the workload, so it is the workload's own peak including the
//!   weights, comparable to PyTorch's `torch.cuda.max_memory_allocated`) and, as a cross-check,
//!   the device's used memory (`total − free` of `cuMemGetInfo`, what `nvidia-smi` shows: CUDA
//!   context, cuBLAS workspaces and pool slack included) sampled every millisecond by a thread.
//!   On the CPU, the process's resident-set high-water mark (`VmHWM` of `/proc/self/status`),
//!   reset before the workload by writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0).

use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use easel_core::rng::SplitMix64;
pub use easel_core::stats::Stats;
use easel_diffusion::clip::{ClipTextConfig, ClipTextModel};
use easel_diffusion::controlnet::{ControlNetConfig, ControlNetModel};
use easel_diffusion::schedulers::SchedulerConfig;
use easel_diffusion::tokenizer::ClipTokenizer;
use easel_diffusion::unet::{UNet2DConditionModel, UNet2DConditionModelConfig};
use easel_diffusion::vae::{AutoencoderKL, AutoencoderKLConfig};

pub use easel_core::memory::{MemoryKind, MemoryProbe, PeakMemory};

use easel_pipeline::conditioning::Conditioning;
use easel_pipeline::models::{check_dtype, ControlNet, LoadOptions, ModelConfigs, StableDiffusion};

/// The shapes of the random models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPreset {
    /// Stable Diffusion 1.5 with an SD 1.5 ControlNet.
    Sd15,
    /// The tiny models of easel-pipeline's test fixtures (`tools/ref/pipeline_ref.py`): UNet and
    /// ControlNet of two levels (16, 32 channels), a four-level VAE of 8 to 16 channels (image
    /// to latent factor 8, like SD), a 2-layer CLIP of width 32.
    Tiny,
}

impl ModelPreset {
    /// The name `--config` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd15 => "sd15",
            Self::Tiny => "tiny",
        }
    }

    /// Parses `sd15` or `tiny`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sd15" => Ok(Self::Sd15),
            "tiny" => Ok(Self::Tiny),
            _ => bail!("unknown model configuration {s:?}: use sd15 or tiny"),
        }
    }

    /// The configurations of the preset's models.
    pub fn configs(self) -> (ModelConfigs, ControlNetConfig) {
        match self {
            Self::Sd15 => (ModelConfigs::sd15(), ControlNetConfig::sd15()),
            Self::Tiny => {
                let unet = UNet2DConditionModelConfig {
                    cross_attention_dim: 32,
                    ..UNet2DConditionModelConfig::tiny()
                };
                let controlnet = ControlNetConfig {
                    cross_attention_dim: 32,
                    ..ControlNetConfig::tiny()
                };
                let vae = AutoencoderKLConfig {
                    block_out_channels: vec![8, 16, 16, 16],
                    layers_per_block: 1,
                    norm_num_groups: 8,
                    sample_size: 64,
                    ..AutoencoderKLConfig::sd15()
                };
                let text_encoder = ClipTextConfig {
                    // The byte tokenizer's 514 ids.
                    vocab_size: BYTE_VOCAB,
                    eos_token_id: BYTE_VOCAB as u32 - 1,
                    ..ClipTextConfig::tiny()
                };
                let configs = ModelConfigs {
                    unet,
                    vae,
                    text_encoder,
                    scheduler: SchedulerConfig::sd15(),
                };
                (configs, controlnet)
            }
        }
    }
}

/// Ids of the byte tokenizer: 256 bytes, their end-of-word forms, start and end.
const BYTE_VOCAB: usize = 514;

/// Weight-like draws from easel's seeded generator.
trait WeightDraws {
    /// Uniform in `[-1, 1)` (24 bits).
    fn symmetric(&mut self) -> f32;
    /// Approximately standard normal: the sum of four uniforms, rescaled (variance 1).
    fn normalish(&mut self) -> f32;
}

impl WeightDraws for SplitMix64 {
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn normalish(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.symmetric()).sum();
        s * (3.0f32 / 4.0).sqrt()
    }
}

/// FNV-1a of a name, to derive a tensor's stream from it.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `VarBuilder` backend that makes up every tensor asked for (see the module doc).
#[derive(Debug, Clone, Copy)]
struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    fn tensor(&self, shape: &Shape, name: &str) -> Vec<f32> {
        let dims = shape.dims();
        let mut rng = SplitMix64::new(self.seed ^ name_hash(name));
        let n = shape.elem_count();
        let (offset, scale) = if name.ends_with("bias") {
            (0.0, 0.02)
        } else if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
        } else {
            (1.0, 0.1)
        };
        (0..n).map(|_| offset + scale * rng.symmetric()).collect()
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let values = self.tensor(&s, name);
        Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("random weights need the shape of '{name}'")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A `VarBuilder` whose tensors are seeded random values (see the module doc).
pub fn random_var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomWeights { seed }), dtype, device.clone())
}

/// A CLIP tokenizer of the 256 byte tokens, their end-of-word forms, `<|startoftext|>` and
/// `<|endoftext|>` (514 ids, no merges): every text tokenizes, into more ids than with CLIP's
/// merges.
pub fn byte_tokenizer() -> Result<ClipTokenizer> {
    // GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the others to
    // 256 + n in order.
    let mut chars = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        // Every value is below 0x180, a valid scalar value.
        chars.push(char::from_u32(c).unwrap_or('?'));
    }
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
        vocab.insert(format!("{c}</w>"), (i + 256).into());
    }
    vocab.insert("<|startoftext|>".into(), 512.into());
    vocab.insert("<|endoftext|>".into(), 513.into());
    ClipTokenizer::from_vocab_merges(
        &serde_json::Value::Object(vocab).to_string(),
        "#version: 0.2\n",
    )
}

/// Stable Diffusion and a ControlNet of `preset`'s shapes with random weights seeded by `seed`,
/// on `opts.device` in `opts.dtype` (UNet and ControlNet with `opts.attention_slicing`).
pub fn random_models(
    preset: ModelPreset,
    seed: u64,
    opts: &LoadOptions,
) -> Result<StableDiffusion> {
    check_dtype(&opts.device, opts.dtype)?;
    let (configs, controlnet) = preset.configs();
    let vb = random_var_builder(seed, opts.dtype, &opts.device);
    let unet_config = UNet2DConditionModelConfig {
        attention_slicing: opts.attention_slicing,
        ..configs.unet.clone()
    };
    let controlnet_config = ControlNetConfig {
        attention_slicing: opts.attention_slicing,
        ..controlnet
    };
    Ok(StableDiffusion {
        tokenizer: byte_tokenizer()?,
        text_encoder: ClipTextModel::new(vb.pp("text_encoder"), &configs.text_encoder)?,
        unet: UNet2DConditionModel::new(vb.pp("unet"), &unet_config)?,
        vae: AutoencoderKL::new(vb.pp("vae"), configs.vae.clone())?,
        vae_weights: None,
        controlnet: Some(ControlNet {
            model: ControlNetModel::new(vb.pp("controlnet"), &controlnet_config)?,
            config: controlnet_config,
        }),
        scheduler_config: configs.scheduler,
        device: opts.device.clone(),
        dtype: opts.dtype,
    })
}

/// A `dims`-shaped f32 tensor of approximately standard normal values seeded by `seed`, made
/// on the host (the same on every device), then moved to `device` in `dtype`.
pub fn seeded_normal(seed: u64, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let mut rng = SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.normalish()).collect();
    Tensor::from_vec(values, dims, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// A `dims`-shaped tensor uniform in `[0, 1)` seeded by `seed` (images, control images).
pub fn seeded_unit(seed: u64, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let mut rng = SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| 0.5 * (rng.symmetric() + 1.0)).collect();
    Tensor::from_vec(values, dims, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Runs `f` `warmup` times untimed, then `runs` times timed; returns the durations in
/// milliseconds. Each timed run starts and ends with a device synchronisation.
pub fn time_runs(
    device: &Device,
    warmup: usize,
    runs: usize,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        device.synchronize()?;
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One UNet step with classifier-free guidance: batch 2 (unconditional and conditional).
    UnetCfg,
    /// One ControlNet + UNet step with classifier-free guidance (batch 2).
    UnetControlnet,
    /// VAE encoding of one image.
    VaeEncode,
    /// VAE decoding of one latent.
    VaeDecode,
    /// A whole stylization: prompt encoding (CLIP), VAE encode, 35 DDIM steps (50 at strength
    /// 0.7) of ControlNet + UNet with guidance 7.5, VAE decode.
    Stylize,
    /// One prompt-bank training step (batch 1, gradients to the bank only); run by
    /// `easel-bank`'s trainer, not by [`model_workload`].
    Learn,
}

impl Workload {
    /// Every workload, in the order `all` runs them.
    pub const ALL: [Workload; 6] = [
        Self::UnetCfg,
        Self::UnetControlnet,
        Self::VaeEncode,
        Self::VaeDecode,
        Self::Stylize,
        Self::Learn,
    ];

    /// The name `--workload` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnetCfg => "unet-cfg",
            Self::UnetControlnet => "unet-controlnet",
            Self::VaeEncode => "vae-encode",
            Self::VaeDecode => "vae-decode",
            Self::Stylize => "stylize",
            Self::Learn => "learn",
        }
    }

    /// Parses a workload name.
    pub fn parse(s: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|w| w.name() == s) {
            Some(w) => Ok(w),
            None => bail!(
                "unknown workload {s:?}: use {} or all",
                Self::ALL.map(|w| w.name()).join(", ")
            ),
        }
    }
}

/// Settings shared by the workloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSettings {
    /// Image side in pixels (square images; latents are `size / 8`).
    pub size: usize,
    /// Tiled VAE encoding and decoding (the VAE's own tile size).
    pub vae_tiling: bool,
    /// Seed of the inputs and of the stylization's noise.
    pub seed: u64,
}

/// The timestep of the single-step workloads.
pub const BENCH_TIMESTEP: f64 = 500.0;
/// The prompt of the stylize workload.
pub const BENCH_PROMPT: &str = "a city street at dusk, oil painting in the style of van gogh";

/// Prepares `workload` on `sd` (inputs made once, outside the timed calls) and returns the
/// call to time. Fails for [`Workload::Learn`] (see its doc), for a size the VAE cannot take,
/// and for ControlNet workloads when `sd` has no ControlNet.
pub fn model_workload<'a>(
    sd: &'a StableDiffusion,
    workload: Workload,
    settings: &WorkloadSettings,
) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
    let (dev, dtype, seed) = (&sd.device, sd.dtype, settings.seed);
    let factor = sd.vae.config().downsampling_factor();
    let size = settings.size;
    if size == 0 || !size.is_multiple_of(factor) {
        bail!("size {size} must be a positive multiple of {factor}")
    }
    let latent = size / factor;
    let controlnet = || match &sd.controlnet {
        Some(c) => Ok(c),
        None => bail!("the {} workload needs a ControlNet", workload.name()),
    };
    let tiles = sd.vae.config().tiling();
    let tiling = settings.vae_tiling;
    Ok(match workload {
        Workload::UnetCfg | Workload::UnetControlnet => {
            let sample = seeded_normal(seed, &[2, 4, latent, latent], dtype, dev)?;
            // The prompt's contexts, as the pipeline makes them: [negative, prompt].
            let mut prompt =
                easel_pipeline::conditioning::PromptConditioning::new(sd, BENCH_PROMPT, "")?;
            let train_steps = sd.scheduler_config.num_train_timesteps;
            let guided = prompt.contexts(BENCH_TIMESTEP as usize, train_steps)?;
            let (uncond, cond) = (&guided.uncond.contexts()[0], &guided.cond.contexts()[0]);
            let context = Tensor::cat(&[uncond, cond], 0)?.to_dtype(dtype)?;
            let contexts = easel_diffusion::contexts::UNetContexts::single(context)?;
            if workload == Workload::UnetCfg {
                Box::new(move || {
                    sd.unet.forward(&sample, BENCH_TIMESTEP, &contexts, None)?;
                    Ok(())
                })
            } else {
                let controlnet = controlnet()?;
                let cond = seeded_unit(seed + 2, &[2, 3, size, size], dtype, dev)?;
                Box::new(move || {
                    let residuals = controlnet.model.forward(
                        &sample,
                        BENCH_TIMESTEP,
                        &contexts,
                        &cond,
                        1.0,
                        false,
                    )?;
                    sd.unet
                        .forward(&sample, BENCH_TIMESTEP, &contexts, Some(&residuals))?;
                    Ok(())
                })
            }
        }
        Workload::VaeEncode => {
            let image =
                seeded_unit(seed + 3, &[1, 3, size, size], dtype, dev)?.affine(2.0, -1.0)?;
            Box::new(move || {
                if tiling {
                    sd.vae.encode_tiled(&image, &tiles)?;
                } else {
                    sd.vae.encode(&image)?;
                }
                Ok(())
            })
        }
        Workload::VaeDecode => {
            let latents = seeded_normal(seed + 4, &[1, 4, latent, latent], dtype, dev)?;
            Box::new(move || {
                if tiling {
                    sd.vae.decode_tiled(&latents, &tiles)?;
                } else {
                    sd.vae.decode(&latents)?;
                }
                Ok(())
            })
        }
        Workload::Stylize => {
            controlnet()?;
            let photo = seeded_unit(seed + 5, &[1, 3, size, size], DType::F32, &Device::Cpu)?;
            let control = seeded_unit(seed + 6, &[1, 3, size, size], DType::F32, &Device::Cpu)?;
            let mut request = easel_pipeline::pipeline::StylizeRequest::new(photo);
            request.control_image = Some(control);
            request.seed = seed;
            request.vae_tiling = tiling;
            Box::new(move || {
                let mut conditioning =
                    easel_pipeline::conditioning::PromptConditioning::new(sd, BENCH_PROMPT, "")?;
                sd.stylize(&request, &mut conditioning, &mut |_, _| {})?;
                Ok(())
            })
        }
        Workload::Learn => bail!("the learn workload is run by easel-bank's trainer"),
    })
}

/// Runs the fixed-input parity outputs on `sd` from `inputs`: `sample` `[2, 4, h, w]`,
/// `timestep` `[1]` and `context` `[2, 77, D]` give `unet` (the UNet's noise prediction);
/// with `cond` `[2, 3, 8h, 8w]` and a ControlNet also `unet_controlnet` (the prediction with the
/// ControlNet's residuals at scale 1); with `latents` `[1, 4, h, w]` also `vae_decode`. Inputs
/// are converted to the models' dtype; outputs are f32 on the CPU.
pub fn parity_outputs(
    sd: &StableDiffusion,
    inputs: &std::collections::HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let (dev, dtype) = (&sd.device, sd.dtype);
    let get = |name: &str| match inputs.get(name) {
        Some(t) => t.to_dtype(dtype)?.to_device(dev),
        None => bail!("the parity file has no '{name}' tensor"),
    };
    let sample = get("sample")?;
    let timestep = f64::from(
        inputs
            .get("timestep")
            .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()?
            .and_then(|v| v.first().copied())
            .unwrap_or(BENCH_TIMESTEP as f32),
    );
    let contexts = easel_diffusion::contexts::UNetContexts::single(get("context")?)?;
    let host = |t: Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.to_device(&Device::Cpu) };
    let mut outputs = vec![(
        "unet".to_string(),
        host(sd.unet.forward(&sample, timestep, &contexts, None)?)?,
    )];
    if let (Some(controlnet), true) = (&sd.controlnet, inputs.contains_key("cond")) {
        let cond = get("cond")?;
        let residuals = controlnet
            .model
            .forward(&sample, timestep, &contexts, &cond, 1.0, false)?;
        outputs.push((
            "unet_controlnet".to_string(),
            host(
                sd.unet
                    .forward(&sample, timestep, &contexts, Some(&residuals))?,
            )?,
        ));
    }
    if inputs.contains_key("latents") {
        outputs.push((
            "vae_decode".to_string(),
            host(sd.vae.decode(&get("latents")?)?)?,
        ));
    }
    Ok(outputs)
}

/// `‖a − b‖∞ / ‖b‖∞` in f32 on the CPU; fails for different shapes.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        bail!(
            "shape {:?} differs from the reference's {:?}",
            a.dims(),
            b.dims()
        )
    }
    let a = a.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let b = b.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let max_abs = |t: &Tensor| -> Result<f64> {
        Ok(f64::from(
            t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?,
        ))
    };
    let err = max_abs(&(&a - &b)?)?;
    let scale = max_abs(&b)?;
    Ok(if scale > 0.0 { err / scale } else { err })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_seeded_and_scaled() {
        let dev = Device::Cpu;
        let a = random_var_builder(1, DType::F32, &dev);
        let b = random_var_builder(1, DType::F32, &dev);
        let c = random_var_builder(2, DType::F32, &dev);
        let w = |vb: &VarBuilder| vb.get((64, 16, 3, 3), "conv.weight").unwrap();
        let (wa, wb, wc) = (w(&a), w(&b), w(&c));
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&wa, &wb), 0.0);
        assert!(diff(&wa, &wc) > 0.0);
        let bound = 1.0 / (16.0f32 * 9.0).sqrt();
        let max = wa
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= bound && max > 0.9 * bound, "{max} vs {bound}");
        let scale = a.get(64, "norm.weight").unwrap();
        let mean = scale.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        // Another name, another stream.
        assert!(diff(&wa, &a.get((64, 16, 3, 3), "conv2.weight").unwrap()) > 0.0);
    }

    #[test]
    fn byte_tokenizer_covers_every_byte() {
        let tok = byte_tokenizer().unwrap();
        let ids = tok.encode("a café, 東京!").unwrap();
        assert!(ids.iter().all(|&id| (id as usize) < BYTE_VOCAB), "{ids:?}");
    }
}
