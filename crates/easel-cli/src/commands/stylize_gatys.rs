//! `easel stylize --method gatys`: the flags of optimisation-based style transfer (Gatys et
//! al. 2016, <https://arxiv.org/abs/1508.06576>; controls from Gatys et al. 2017,
//! <https://arxiv.org/abs/1611.07865>) on the embedded EfficientNet-Lite0 or the user's VGG-19,
//! and the printing of its progress and summary. Loading and optimising are `easel_host::gatys`'s.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use easel_host::gatys::{
    ColorControl, GatysNetwork, GatysOutput, Init, Layer, Losses, OptimizerKind, Progress, Settings,
};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The flags of the Gatys method (defaults: `easel_host::gatys::Settings::new`).
#[derive(Args, Debug, Clone, Default)]
pub struct GatysArgs {
    /// Gatys: the optimiser, `lbfgs` (default; L-BFGS as torch.optim.LBFGS, history 100, step
    /// 1) or `adam` (learning rate 0.02 on [0, 1] pixels).
    #[arg(long, value_enum, value_name = "OPT")]
    pub optimizer: Option<OptimizerArg>,

    /// Gatys: optimiser iterations per octave (default 300; 1 to 100000).
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,

    /// Gatys: weight of the content loss, the photo's features at --content-layers (default 1).
    #[arg(long, value_name = "W")]
    pub content_weight: Option<f64>,

    /// Gatys: weight of the style loss, the paintings' Gram matrices at --style-layers
    /// (default 1e5).
    #[arg(long, value_name = "W")]
    pub style_weight: Option<f64>,

    /// Gatys: weight of the total-variation loss, which smooths pixel noise (default 1).
    #[arg(long, value_name = "W")]
    pub tv_weight: Option<f64>,

    /// Gatys: the starting picture, `photo` (default) or `noise` (uniform, drawn from --seed,
    /// default 0).
    #[arg(long, value_enum, value_name = "FROM")]
    pub init: Option<InitArg>,

    /// Gatys: coarse-to-fine passes; octave k of N runs at 1/2^(N-1-k) of the photo's size from
    /// the previous one's result (default 1: the photo's size only; 1 to 8).
    #[arg(long, value_name = "N")]
    pub octaves: Option<usize>,

    /// Gatys, arbitrary and adain: brush strokes this many times their painted size; above 1
    /// larger, below 1 smaller (default 1; 0.05 to 8). Gatys and AdaIN resize the painting so
    /// its long side is this times the photo's; the arbitrary network's style predictor sees
    /// the centre 1/F of the painting, or the painting shrunk and tiled.
    #[arg(long, value_name = "F")]
    pub style_scale: Option<f64>,

    /// Gatys: before optimising, match each painting's colours to the photo's (`histogram`:
    /// the linear colour-histogram transfer of Gatys et al. 2017). See also --keep-colors.
    #[arg(long, value_enum, value_name = "HOW", conflicts_with = "keep_colors")]
    pub color_transfer: Option<ColorTransferArg>,

    /// Gatys: the layers whose Gram matrices carry the style, comma-separated. EfficientNet-Lite0:
    /// `stem`, `dwN` (after block N's depthwise convolution), `blockN` (block N's output),
    /// `head`; blocks 0 to 15 (default `stem,dw1,dw3,dw5,dw8`). VGG-19 (--vgg19): `reluB_I`
    /// (default `relu1_1,relu2_1,relu3_1,relu4_1,relu5_1`).
    #[arg(long, value_name = "LAYERS", value_parser = parse_layers)]
    pub style_layers: Option<Layers>,

    /// Gatys: the layers that carry the photo's content, as --style-layers (default `block5`;
    /// VGG-19: `relu4_2`).
    #[arg(long, value_name = "LAYERS", value_parser = parse_layers)]
    pub content_layers: Option<Layers>,

    /// Gatys: optimise on VGG-19 from this checkpoint instead of the embedded EfficientNet-Lite0:
    /// AdaIN's `vgg_normalised.pth` or torchvision's `vgg19-dcbb9e9d.pth` (or either as
    /// safetensors). Read without executing anything.
    #[arg(long, value_name = "FILE")]
    pub vgg19: Option<PathBuf>,

    /// Gatys: every N iterations, write the current picture next to the output as
    /// `<output stem>.preview.png` (at the octave's size, without --keep-colors).
    #[arg(long, value_name = "N")]
    pub preview_every: Option<usize>,
}

/// `--style-layers` / `--content-layers`: layers of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Layers(pub Vec<Layer>);

fn parse_layers(s: &str) -> std::result::Result<Layers, String> {
    Layer::parse_list(s).map(Layers).map_err(|e| e.to_string())
}

/// `--optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// L-BFGS.
    Lbfgs,
    /// Adam.
    Adam,
}

/// `--init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// The photo.
    Photo,
    /// Uniform noise.
    Noise,
}

/// `--color-transfer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorTransferArg {
    /// Linear colour-histogram matching (mean and covariance).
    Histogram,
}

impl GatysArgs {
    /// The network `--vgg19` names, else the embedded EfficientNet-Lite0.
    pub fn network(&self) -> GatysNetwork {
        match &self.vgg19 {
            Some(path) => GatysNetwork::Vgg19(path.clone()),
            None => GatysNetwork::EfficientNetLite0,
        }
    }

    /// The Gatys flags that were given (refused with the other methods, but `--style-scale`
    /// with arbitrary and adain).
    pub fn given_flags(&self) -> Vec<&'static str> {
        [
            ("--optimizer", self.optimizer.is_some()),
            ("--iterations", self.iterations.is_some()),
            ("--content-weight", self.content_weight.is_some()),
            ("--style-weight", self.style_weight.is_some()),
            ("--tv-weight", self.tv_weight.is_some()),
            ("--init", self.init.is_some()),
            ("--octaves", self.octaves.is_some()),
            ("--style-scale", self.style_scale.is_some()),
            ("--style-layers", self.style_layers.is_some()),
            ("--content-layers", self.content_layers.is_some()),
            ("--vgg19", self.vgg19.is_some()),
            ("--color-transfer", self.color_transfer.is_some()),
            ("--preview-every", self.preview_every.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(flag, _)| flag)
        .collect()
    }

    /// The library settings these flags (and `--keep-colors`, `--seed` for the noise start)
    /// describe; unset flags keep the library's defaults. Values are checked by
    /// `easel_host::gatys`.
    pub fn settings(&self, keep_colors: bool, seed: Option<u64>) -> Settings {
        let mut s = Settings::new();
        if let Some(o) = self.optimizer {
            s.optimizer = match o {
                OptimizerArg::Lbfgs => OptimizerKind::Lbfgs,
                OptimizerArg::Adam => OptimizerKind::Adam,
            };
        }
        if let Some(v) = self.iterations {
            s.iterations = v;
        }
        if let Some(v) = self.content_weight {
            s.content_weight = v;
        }
        if let Some(v) = self.style_weight {
            s.style_weight = v;
        }
        if let Some(v) = self.tv_weight {
            s.tv_weight = v;
        }
        if let Some(InitArg::Noise) = self.init {
            s.init = Init::Noise(seed.unwrap_or(0));
        }
        if let Some(v) = self.octaves {
            s.octaves = v;
        }
        if let Some(v) = self.style_scale {
            s.style_scale = v;
        }
        if let Some(Layers(layers)) = &self.style_layers {
            s.style_layers = Some(layers.clone());
        }
        if let Some(Layers(layers)) = &self.content_layers {
            s.content_layers = Some(layers.clone());
        }
        s.color = match (keep_colors, self.color_transfer) {
            (_, Some(ColorTransferArg::Histogram)) => ColorControl::Histogram,
            (true, None) => ColorControl::KeepColors,
            (false, None) => ColorControl::None,
        };
        s.preview_every = self.preview_every.unwrap_or(0);
        s
    }

    /// Applies one `--use gatys@KEY=VALUE` setting (keys: `easel_host::spec::GATYS_KEYS`, less
    /// `keep-colors` and `max-size`, which the caller applies).
    pub fn apply_setting(&mut self, key: &str, value: &str) -> Result<()> {
        let number = |what: &str| -> Result<f64> {
            value
                .parse()
                .map_err(|_| anyhow::anyhow!("--use gatys@{key}={value}: {what} must be a number"))
        };
        let count = || -> Result<usize> {
            value
                .parse()
                .map_err(|_| anyhow::anyhow!("--use gatys@{key}={value}: must be a whole number"))
        };
        let choice = |names: &str| anyhow::anyhow!("--use gatys@{key}={value}: expected {names}");
        match key {
            "iterations" => self.iterations = Some(count()?),
            "octaves" => self.octaves = Some(count()?),
            "optimizer" => {
                self.optimizer =
                    Some(OptimizerArg::from_str(value, true).map_err(|_| choice("lbfgs or adam"))?)
            }
            "init" => {
                self.init =
                    Some(InitArg::from_str(value, true).map_err(|_| choice("photo or noise"))?)
            }
            "color-transfer" => {
                self.color_transfer =
                    Some(ColorTransferArg::from_str(value, true).map_err(|_| choice("histogram"))?)
            }
            "content-weight" => self.content_weight = Some(number("the weight")?),
            "style-weight" => self.style_weight = Some(number("the weight")?),
            "tv-weight" => self.tv_weight = Some(number("the weight")?),
            "style-scale" => self.style_scale = Some(number("the scale")?),
            "vgg19" => self.vgg19 = Some(PathBuf::from(value)),
            "style-layers" | "content-layers" => {
                let layers = parse_layers(value)
                    .map_err(|e| anyhow::anyhow!("--use gatys@{key}={value}: {e}"))?;
                if key == "style-layers" {
                    self.style_layers = Some(layers);
                } else {
                    self.content_layers = Some(layers);
                }
            }
            other => bail!("--use gatys@{other}: not a setting of gatys"),
        }
        Ok(())
    }
}

/// Where `--preview-every` writes the current picture for the output `out`.
pub fn preview_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "easel".to_string());
    out.with_file_name(format!("{stem}.preview.png"))
}

/// Shows one progress report on `bar` (whose length is iterations × octaves).
pub fn show_progress(bar: &ProgressBar, p: &Progress) {
    bar.set_position((p.octave * p.iterations + p.iteration) as u64);
    let l = &p.losses;
    bar.set_message(format!(
        "octave {}/{} loss {:.4e} (content {:.3e} style {:.3e} tv {:.3e})",
        p.octave + 1,
        p.octaves,
        l.total,
        l.content,
        l.style,
        l.tv
    ));
}

/// One photo painted, for `--json`.
#[derive(Serialize)]
pub struct GatysRecord {
    input: PathBuf,
    output: PathBuf,
    width: u32,
    height: u32,
    seconds: f64,
    iterations: usize,
    cancelled: bool,
    initial_loss: LossRecord,
    final_loss: LossRecord,
}

/// Losses, for `--json`.
#[derive(Serialize)]
struct LossRecord {
    total: f64,
    content: f64,
    style: f64,
    tv: f64,
}

impl From<Losses> for LossRecord {
    fn from(l: Losses) -> Self {
        Self {
            total: l.total,
            content: l.content,
            style: l.style,
            tv: l.tv,
        }
    }
}

impl GatysRecord {
    /// The record of `out` painted from `input` into `output` (`width × height`).
    pub fn new(
        input: &Path,
        output: &Path,
        (width, height): (u32, u32),
        seconds: f64,
        out: &GatysOutput,
    ) -> Self {
        Self {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            width,
            height,
            seconds,
            iterations: out.iterations,
            cancelled: out.cancelled,
            initial_loss: out.initial.into(),
            final_loss: out.losses.into(),
        }
    }
}

/// What a Gatys run wrote, for `--json`.
#[derive(Serialize)]
struct GatysSummary<'a> {
    method: &'static str,
    device: String,
    outputs: &'a [GatysRecord],
}

/// Prints what was written: a JSON summary on stdout, or one line per output on stderr.
pub fn print_summary(records: &[GatysRecord], device: String, json: bool) -> Result<()> {
    if json {
        let summary = GatysSummary {
            method: "gatys",
            device,
            outputs: records,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    for r in records {
        let stopped = if r.cancelled {
            " (interrupted: the best picture so far)"
        } else {
            ""
        };
        eprintln!(
            "wrote {} ({}x{}), {} iterations, loss {:.4e} -> {:.4e}{stopped}",
            r.output.display(),
            r.width,
            r.height,
            r.iterations,
            r.initial_loss.total,
            r.final_loss.total
        );
    }
    Ok(())
}
