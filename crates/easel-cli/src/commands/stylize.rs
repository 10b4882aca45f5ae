//! `easel stylize`: paint photos in a style with the fast networks (`--method arbitrary`,
//! `preset`, `adain` (in `stylize_adain.rs`), `transformer` (StyTr², in
//! `stylize_transformer.rs`)), by optimisation (`--method gatys`, in `stylize_gatys.rs`), or
//! with Stable Diffusion + ControlNet (`--prompt`, in `stylize_diffusion.rs`).

use crate::args::word;
use crate::progress;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use easel_core::DeviceChoice;
use easel_host::fast::{FastPainter, FastStyle, WeightedPath};
use easel_host::gatys::{GatysPainter, GatysStyle};
use easel_host::spec::{StyleSpec, UseSpec, DIFFUSION_KEYS, FAST_KEYS, GATYS_KEYS};
use easel_styles::{PluginError, PluginUse, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::stylize_adain::AdainArgs;
use super::stylize_diffusion::{self, DiffusionArgs};
use super::stylize_gatys::{self, GatysArgs, GatysRecord};
use super::stylize_transformer::TransformerArgs;

#[derive(Args)]
#[command(
    about = "Paint photos in the style of a painting (--style; the arbitrary network, or \
             --method adain or transformer, or optimised with --method gatys), of a built-in preset (--preset), or as a text prompt or a learned prompt bank describes with Stable Diffusion + ControlNet \
             (--prompt, --bank)",
    after_help = "Examples:\n  easel stylize photo.jpg --style starry_night.jpg -o out.png\n  \
                  easel stylize photos/ --style a.jpg:0.7 --style b.jpg:0.3 -o painted/\n  \
                  easel stylize photo.jpg --preset 3:0.5,12:0.5 --keep-colors -o out.jpg\n  \
                  easel stylize photo.jpg --method adain --weights adain/ --style a.jpg --strength 0.8 -o out.png\n  \
                  easel stylize photo.jpg --method adain --style a.jpg --style b.jpg --mask mask.png -o out.png\n  \
                  easel stylize photo.jpg --method transformer --weights stytr/ --style a.jpg -o out.png\n  \
                  easel stylize photo.jpg --method gatys --style a.jpg --iterations 200 --max-size 512 -o out.png\n  \
                  easel stylize photo.jpg --method gatys --style a.jpg --style b.jpg --mask mask.png --keep-colors -o out.png\n  \
                  easel stylize photo.jpg --prompt \"an oil painting, van gogh style\" --seed 7 -o out.png\n  \
                  easel stylize photo.jpg --bank style.bank --prompt \"a city at dusk in the style of {bank}\" -o out.png"
)]
pub struct StylizeArgs {
    /// Photos to paint: image files, or directories whose images are all painted.
    #[arg(required = true, value_name = "PHOTO")]
    pub(super) inputs: Vec<PathBuf>,

    /// Paint with this style: an installed plugin's name, a plugin file, or a built-in method
    /// with its settings: `arbitrary` (with --style), `preset:7`, `preset:3:0.5,12:0.5`,
    /// `adain:DIR`, `transformer:DIR` (with --style), `gatys` (with --style), `prompt:TEXT`,
    /// `bank:FILE`; settings follow as `@key=value` (`arbitrary@strength=0.6`,
    /// `gatys@iterations=100@optimizer=adam`, `prompt:a watercolor@steps=20@seed=7`; keys:
    /// strength, keep-colors, max-size, style-scale for the fast methods; iterations,
    /// optimizer, content-weight, style-weight, tv-weight, init, octaves, style-scale,
    /// style-layers, content-layers, vgg19, keep-colors, color-transfer, max-size for gatys;
    /// strength, size, steps, guidance, seed, scheduler, eta, negative-prompt, control-scale for
    /// prompts and banks).
    /// The same as the method's own flags.
    #[arg(long = "use", value_name = "SPEC", conflicts_with_all = ["method", "preset", "prompt", "bank"])]
    use_spec: Option<String>,

    /// The fast method: `arbitrary` (embedded network, --style), `preset` (embedded presets,
    /// --preset), `adain` (AdaIN with the pytorch-AdaIN weights, --style; see --weights) or
    /// `transformer` (StyTr² with the StyTR-2 weights, one --style; see --weights and the
    /// --stytr-* flags) or `gatys` (optimises the picture itself on the embedded
    /// EfficientNet-Lite0, or on VGG-19 with --vgg19: one --style, or one per --mask region;
    /// slow; see the Gatys flags).
    /// Default: arbitrary with --style, preset with --preset.
    #[arg(long, value_enum, value_name = "METHOD", conflicts_with_all = ["prompt", "bank"])]
    method: Option<MethodKind>,

    /// A painting whose style to use, optionally with a mixing weight (`IMG:WEIGHT`); repeat the
    /// flag to mix several styles (by their style codes; with adain, by their AdaIN features).
    #[arg(long = "style", value_name = "IMG[:WEIGHT]", conflicts_with = "preset")]
    styles: Vec<String>,

    /// A built-in preset style (0-25, see `easel presets`) or a mix such as `3:0.5,12:0.5`.
    #[arg(long, value_name = "N[:W],...", required_unless_present_any = ["styles", "prompt", "bank", "use_spec", "method"])]
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

    /// Keep the photo's colours: transfer only the painting's luminance (brush strokes, texture);
    /// with gatys the result's luminance is recombined with the photo's chroma.
    #[arg(long)]
    keep_colors: bool,

    /// Downscale photos so their long side is at most this many pixels, 16 to 16384 (the
    /// networks run at the photo's own resolution; larger means more detail and more time and
    /// memory).
    #[arg(long, default_value_t = 1024, value_name = "PIXELS")]
    max_size: u32,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub(super) device: DeviceChoice,

    /// Print a JSON summary of what was written on stdout.
    #[arg(long)]
    pub(super) json: bool,

    /// Where the method's weights are: a folder, or a Hugging Face hub repository
    /// ORG/NAME[@REV] that holds them. For adain: vgg_normalised.pth and decoder.pth (published
    /// at https://github.com/naoto0804/pytorch-AdaIN); for transformer:
    /// transformer_iter_160000.pth, embedding_iter_160000.pth and decoder_iter_160000.pth
    /// (published at https://github.com/diyiiyiii/StyTR-2); or their .safetensors conversions
    /// from `easel import-torch`.
    #[arg(long, value_name = "DIR|ORG/NAME[@REV]")]
    weights: Option<String>,

    #[command(flatten)]
    adain: AdainArgs,

    #[command(flatten)]
    transformer: TransformerArgs,

    #[command(flatten)]
    gatys: GatysArgs,

    #[command(flatten)]
    pub(super) diffusion: DiffusionArgs,

    /// A style-code plugin named by `--use` (set by `apply_use`, not a flag).
    #[arg(skip)]
    plugin_style: Option<FastStyle>,
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
    /// Optimisation-based style transfer (Gatys et al. 2016) on the embedded EfficientNet-Lite0.
    Gatys,
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
            if args.styles.is_empty() && args.plugin_style.is_none() {
                bail!("--method {name} needs at least one --style IMG[:WEIGHT]");
            }
        }
        if kind != MethodKind::Adain {
            let refused = args.adain.given_flags().into_iter().find(|f| {
                // Both methods split the photo between paintings with a mask.
                !(kind == MethodKind::Gatys && *f == "--mask")
            });
            if let Some(flag) = refused {
                let methods = if flag == "--mask" {
                    "adain or gatys"
                } else {
                    "adain"
                };
                bail!("{flag} applies to --method {methods} only, not {name}");
            }
        }
        if kind != MethodKind::Gatys {
            let scales = matches!(kind, MethodKind::Arbitrary | MethodKind::Adain);
            let refused = args
                .gatys
                .given_flags()
                .into_iter()
                .find(|f| !(scales && *f == "--style-scale"));
            if let Some(flag) = refused {
                let methods = if flag == "--style-scale" {
                    "gatys, arbitrary or adain"
                } else {
                    "gatys"
                };
                bail!("{flag} applies to --method {methods} only, not {name}");
            }
        }
        if kind == MethodKind::Gatys && args.strength.is_some() {
            bail!(
                "--strength does not apply to --method gatys; lower --style-weight (or raise \
                 --content-weight) for less style"
            );
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

/// `-` as a photo: standard input; as `-o`: standard output (PNG).
pub(super) const STDIO: &str = "-";

/// A photo to paint: a file, or the bytes read from standard input.
pub(super) enum PhotoInput {
    /// An image file.
    File(PathBuf),
    /// Standard input's bytes.
    Stdin(Vec<u8>),
}

impl PhotoInput {
    /// The photo's path as given (`-` for standard input).
    pub(super) fn path(&self) -> PathBuf {
        match self {
            PhotoInput::File(path) => path.clone(),
            PhotoInput::Stdin(_) => PathBuf::from(STDIO),
        }
    }

    /// Decodes the photo (see [`easel_core::load_rgb`]).
    pub(super) fn load(&self, opts: &easel_core::LoadOptions) -> Result<image::RgbImage> {
        Ok(match self {
            PhotoInput::File(path) => easel_core::load_rgb(path, opts)?,
            PhotoInput::Stdin(bytes) => easel_core::decode_rgb(bytes, Path::new("<stdin>"), opts)?,
        })
    }
}

/// The photos `inputs` name: `-` alone reads one photo from standard input; otherwise files
/// and directories of images.
pub(super) fn photo_inputs(inputs: &[PathBuf]) -> Result<Vec<PhotoInput>> {
    let stdin = Path::new(STDIO);
    if inputs.iter().any(|p| p == stdin) {
        if inputs.len() > 1 {
            bail!("- (standard input) is one photo; give it alone, not with other photos");
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .context("cannot read the photo from standard input")?;
        return Ok(vec![PhotoInput::Stdin(bytes)]);
    }
    Ok(easel_core::collect_images(inputs)?
        .into_iter()
        .map(PhotoInput::File)
        .collect())
}

/// Writes `img` to `out` with `params`: a PNG or JPEG file (never over one of `protected`),
/// or PNG bytes on standard output for `-`.
pub(super) fn save_output(
    img: &image::RgbImage,
    out: &Path,
    params: Option<&easel_core::Parameters>,
    protected: &[PathBuf],
) -> Result<()> {
    if out == Path::new(STDIO) {
        let bytes = easel_core::encode_png(img, params)?;
        let mut stdout = std::io::stdout().lock();
        std::io::Write::write_all(&mut stdout, &bytes)
            .and_then(|()| std::io::Write::flush(&mut stdout))
            .context("cannot write the PNG to standard output")?;
        return Ok(());
    }
    easel_core::save_image(img, out, params, protected)?;
    Ok(())
}

/// Decides where each photo's painting goes: a file for one photo, or `<dir>/<stem>.png`.
pub(super) fn output_paths(inputs: &[PathBuf], output: &Path) -> Result<Vec<PathBuf>> {
    if output == Path::new(STDIO) {
        if inputs.len() > 1 {
            bail!(
                "{} photos but -o - writes one image to standard output; give a directory",
                inputs.len()
            );
        }
        return Ok(vec![output.to_path_buf()]);
    }
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

/// Creates the folders an output needs: `output` itself when it is a directory target (no
/// extension), else the folder it goes in.
pub(super) fn create_output_dirs(output: &Path) -> Result<()> {
    if output == Path::new(STDIO) {
        return Ok(());
    }
    let dir = if output.extension().is_none() || output.is_dir() {
        output
    } else {
        match output.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => return Ok(()),
        }
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))
}

/// Turns `--use SPEC` into the flags it stands for, so that both paint the same bytes.
fn apply_use(args: &mut StylizeArgs) -> Result<()> {
    let Some(text) = args.use_spec.clone() else {
        return Ok(());
    };
    let spec = UseSpec::parse(&text).map_err(word)?;
    match &spec.style {
        StyleSpec::Arbitrary => args.method = Some(MethodKind::Arbitrary),
        StyleSpec::Gatys => {
            spec.check_keys(GATYS_KEYS).map_err(word)?;
            args.method = Some(MethodKind::Gatys);
            for (key, value) in &spec.settings {
                if !matches!(key.as_str(), "keep-colors" | "max-size") {
                    args.gatys.apply_setting(key, value)?;
                }
            }
        }
        StyleSpec::Preset(mix) => {
            args.method = Some(MethodKind::Preset);
            args.preset = Some(mix.clone());
        }
        StyleSpec::Adain(weights) => {
            args.method = Some(MethodKind::Adain);
            args.weights = Some(weights.clone());
        }
        StyleSpec::Transformer(weights) => {
            args.method = Some(MethodKind::Transformer);
            args.weights = Some(weights.clone());
        }
        StyleSpec::Prompt(_) | StyleSpec::Bank(_) if !args.styles.is_empty() => {
            bail!("--use {text} paints with Stable Diffusion; --style belongs to the fast methods")
        }
        StyleSpec::Prompt(prompt) => args.diffusion.prompt = Some(prompt.clone()),
        StyleSpec::Bank(path) => args.diffusion.bank = Some(path.clone()),
        StyleSpec::Plugin(name) => apply_plugin(args, name)?,
    }
    let fast = args.diffusion.prompt.is_none() && args.diffusion.bank.is_none();
    let keys = match args.method {
        Some(MethodKind::Gatys) => GATYS_KEYS,
        _ if fast => FAST_KEYS,
        _ => DIFFUSION_KEYS,
    };
    spec.check_keys(keys).map_err(word)?;
    let setting = |key| spec.setting::<String>(key).map_err(word);
    if let Some(v) = spec.setting::<f64>("strength").map_err(word)? {
        args.strength = Some(v);
    }
    if let Some(v) = spec.setting::<bool>("keep-colors").map_err(word)? {
        args.keep_colors = v;
    }
    if let Some(v) = spec.setting::<u32>("max-size").map_err(word)? {
        args.max_size = v;
    }
    if fast && args.method != Some(MethodKind::Gatys) {
        if let Some(v) = spec.setting::<f64>("style-scale").map_err(word)? {
            args.gatys.style_scale = Some(v);
        }
    }
    let d = &mut args.diffusion;
    if let Some(v) = spec.setting::<u32>("size").map_err(word)? {
        d.size = Some(v);
    }
    if let Some(v) = spec.setting::<usize>("steps").map_err(word)? {
        d.steps = Some(v);
    }
    if let Some(v) = spec.setting::<f64>("guidance").map_err(word)? {
        d.guidance = Some(v);
    }
    if let Some(v) = spec.setting::<u64>("seed").map_err(word)? {
        d.seed = Some(v);
    }
    if let Some(v) = setting("scheduler")? {
        d.scheduler = Some(crate::args::parse_scheduler(&v).map_err(anyhow::Error::msg)?);
    }
    if let Some(v) = spec.setting::<f64>("eta").map_err(word)? {
        d.eta = Some(v);
    }
    if let Some(v) = setting("negative-prompt")? {
        d.negative_prompt = Some(v);
    }
    if let Some(v) = spec.setting::<f64>("control-scale").map_err(word)? {
        d.control_scale = Some(v);
    }
    Ok(())
}

/// Turns `--use NAME` (an installed plugin, or a plugin file) into the flags it stands for.
fn apply_plugin(args: &mut StylizeArgs, name: &str) -> Result<()> {
    let store = Store::from_env()?;
    let path = store.resolve(name).map_err(|e| match e {
        PluginError::NotInstalled { .. } => anyhow::anyhow!(
            "--use {name}: {e}; nor is it a plugin file (built-in methods: arbitrary, \
             preset:MIX, adain:DIR, transformer:DIR, gatys, prompt:TEXT, bank:FILE)"
        ),
        other => other.into(),
    })?;
    let wants_painting = || -> Result<()> {
        if args.styles.is_empty() {
            bail!("--use {name} is a fast model that paints with a painting: add --style IMG");
        }
        Ok(())
    };
    match PluginUse::of(&path).with_context(|| format!("--use {name}"))? {
        PluginUse::Bank(_) | PluginUse::Preset(_) | PluginUse::StyleCode { .. }
            if !args.styles.is_empty() =>
        {
            bail!("--use {name} is a complete style; --style belongs to AdaIN and StyTr² plugins")
        }
        PluginUse::Bank(path) => args.diffusion.bank = Some(path),
        PluginUse::Preset(mix) => {
            args.method = Some(MethodKind::Preset);
            args.preset = Some(mix);
        }
        PluginUse::Adain(path) => {
            wants_painting()?;
            args.method = Some(MethodKind::Adain);
            args.weights = Some(path.display().to_string());
        }
        PluginUse::Stytr { path, settings } => {
            wants_painting()?;
            args.method = Some(MethodKind::Transformer);
            args.weights = Some(path.display().to_string());
            args.transformer.stytr_heads = Some(settings.nhead);
            args.transformer.stytr_cape_grid = Some(settings.cape_grid);
            args.transformer.stytr_windows = Some(settings.pyramid_windows);
        }
        PluginUse::StyleCode { code, shape, name } => {
            args.method = Some(MethodKind::Arbitrary);
            args.plugin_style = Some(FastStyle::StyleCode { code, shape, name });
        }
    }
    Ok(())
}

/// The style the flags describe for the fast method `kind`.
fn fast_style(args: &StylizeArgs, kind: MethodKind) -> Result<FastStyle> {
    let paintings = || -> Result<Vec<WeightedPath>> {
        args.styles
            .iter()
            .map(|s| WeightedPath::parse(s).map_err(word))
            .collect()
    };
    let offline = args.diffusion.offline;
    Ok(match kind {
        MethodKind::Preset => FastStyle::Preset {
            spec: args
                .preset
                .clone()
                .context("--method preset needs --preset N[:W],...")?,
        },
        MethodKind::Arbitrary if args.plugin_style.is_some() => {
            args.plugin_style.clone().context("checked just above")?
        }
        MethodKind::Arbitrary => FastStyle::Arbitrary {
            paintings: paintings()?,
        },
        MethodKind::Adain if args.adain.mask.is_some() && args.styles.len() != 2 => bail!(
            "--mask splits the photo between exactly two styles (light: the first --style, dark: \
             the second), got {}",
            args.styles.len()
        ),
        MethodKind::Adain => FastStyle::Adain {
            weights: args.adain.weight_files(args.weights.as_deref(), offline),
            paintings: paintings()?,
            mask: args.adain.mask.clone(),
        },
        MethodKind::Gatys => bail!("--method gatys optimises each photo; it has no fast network"),
        MethodKind::Transformer => {
            let painting = match paintings()?.as_slice() {
                [one] if one.weight == 1.0 => one.path.clone(),
                [_] => bail!(
                    "--style {}: a style weight mixes several styles; --method transformer \
                     paints with one",
                    args.styles[0]
                ),
                _ => bail!("--method transformer needs exactly one --style IMG"),
            };
            FastStyle::Transformer {
                weights: args
                    .transformer
                    .weight_files(args.weights.as_deref(), offline),
                settings: args.transformer.settings(),
                painting,
            }
        }
    })
}

/// The fast-method error in this CLI's words: missing weights say which flags give them.
fn word_fast(err: easel_host::HostError, kind: MethodKind) -> anyhow::Error {
    match err {
        easel_host::HostError::MissingWeights { problem, home, .. } => {
            let flags = match kind {
                MethodKind::Transformer => {
                    "--stytr-transformer FILE --stytr-embedding FILE --stytr-decoder FILE"
                }
                _ => "--adain-vgg FILE --adain-decoder FILE",
            };
            anyhow::anyhow!(
                "{problem}; {home}, and pass --weights DIR (the folder holding them) or {flags}"
            )
        }
        other => word(other),
    }
}

pub fn run(mut args: StylizeArgs) -> Result<()> {
    apply_use(&mut args)?;
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
        // Gatys' noise start is seeded.
        .filter(|f| !(kind == MethodKind::Gatys && *f == "--seed"))
        .collect();
    if let [flag, ..] = refused.as_slice() {
        bail!("{flag} applies to the diffusion method only: add --prompt TEXT or --bank FILE (and drop --style/--preset)");
    }
    if kind == MethodKind::Gatys {
        return run_gatys(&args);
    }
    let strength = args.strength.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&strength) {
        bail!("--strength {strength} is outside 0..1");
    }
    check_max_size(args.max_size)?;
    let photos = photo_inputs(&args.inputs)?;
    let inputs: Vec<PathBuf> = photos.iter().map(PhotoInput::path).collect();
    let outputs = output_paths(&inputs, &args.output)?;
    if args.json && args.output == Path::new(STDIO) {
        bail!("--json prints on standard output, where -o - writes the image; use one of them");
    }
    let device = easel_core::select_device(args.device)?;
    let style = fast_style(&args, kind)?;
    let painter = FastPainter::build_scaled(
        &style,
        &device,
        args.max_size,
        args.gatys.style_scale.unwrap_or(1.0),
    )
    .map_err(|e| word_fast(e, kind))?;
    let params = painter.parameters(strength, args.keep_colors, args.max_size);
    create_output_dirs(&args.output)?;

    // Every photo and painting read by this run; no output may replace one of them.
    let mut protected: Vec<PathBuf> = inputs.clone();
    protected.extend(painter.read_paths().iter().cloned());

    let bar = progress::bar(inputs.len() as u64, "painting");
    let mut records = Vec::with_capacity(inputs.len());
    for ((photo, input), output) in photos.iter().zip(&inputs).zip(&outputs) {
        bar.set_message(input.display().to_string());
        let started = Instant::now();
        let photo = photo.load(&easel_core::LoadOptions::with_max_side(args.max_size))?;
        let photo = easel_core::rgb_to_tensor(&photo, &device)?;
        let painted = painter
            .paint(&photo, strength, args.keep_colors)
            .map_err(word)
            .with_context(|| format!("painting {}", input.display()))?;
        let img = easel_core::tensor_to_rgb(&painted)?;
        save_output(&img, output, Some(&params), &protected)?;
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
            method: style.method(),
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

/// The range of `--max-size`: the networks need a few pixels, and beyond 16384 a photo's
/// tensors alone outgrow any machine (the memory check refuses most sizes well below).
const MAX_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=16384;

fn check_max_size(max_size: u32) -> Result<()> {
    if !MAX_SIZE_RANGE.contains(&max_size) {
        bail!(
            "--max-size {max_size} is outside {}..={}",
            MAX_SIZE_RANGE.start(),
            MAX_SIZE_RANGE.end()
        );
    }
    Ok(())
}

/// `--method gatys`: each photo optimised in turn with a progress bar of the losses; Ctrl-C
/// keeps the best picture so far (and paints no further photos).
fn run_gatys(args: &StylizeArgs) -> Result<()> {
    check_max_size(args.max_size)?;
    let paintings = args
        .styles
        .iter()
        .map(|s| match WeightedPath::parse(s).map_err(word)? {
            p if p.weight == 1.0 => Ok(p.path),
            _ => bail!(
                "--style {s}: --method gatys does not mix styles by weight; give one --style, \
                 or one per --mask region"
            ),
        })
        .collect::<Result<Vec<_>>>()?;
    let photos = photo_inputs(&args.inputs)?;
    let inputs: Vec<PathBuf> = photos.iter().map(PhotoInput::path).collect();
    let outputs = output_paths(&inputs, &args.output)?;
    if args.json && args.output == Path::new(STDIO) {
        bail!("--json prints on standard output, where -o - writes the image; use one of them");
    }
    if args.gatys.preview_every.is_some() && args.output == Path::new(STDIO) {
        bail!("--preview-every writes next to the output file; -o - has none, give a file");
    }
    let device = easel_core::select_device(args.device)?;
    let style = GatysStyle {
        network: args.gatys.network(),
        paintings,
        mask: args.adain.mask.clone(),
    };
    let settings = args.gatys.settings(args.keep_colors, args.diffusion.seed);
    let painter = GatysPainter::build(&style, settings, &device).map_err(word)?;
    let params = painter.parameters(args.max_size);
    create_output_dirs(&args.output)?;
    let mut protected: Vec<PathBuf> = inputs.clone();
    protected.extend(painter.read_paths().iter().cloned());

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        if let Err(e) = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst)) {
            eprintln!("warning: Ctrl-C will stop without keeping the picture: {e}");
        }
    }
    let s = painter.settings();
    let mut records = Vec::with_capacity(inputs.len());
    for ((photo, input), output) in photos.iter().zip(&inputs).zip(&outputs) {
        let started = Instant::now();
        let photo = photo.load(&easel_core::LoadOptions::with_max_side(args.max_size))?;
        let photo = easel_core::rgb_to_tensor(&photo, &device)?;
        let bar = progress::bar((s.iterations * s.octaves) as u64, "optimising");
        let preview = stylize_gatys::preview_path(output);
        let result = painter.paint(&photo, &cancel, &mut |event| match event {
            easel_host::gatys::Event::Progress(p) => {
                stylize_gatys::show_progress(&bar, &p);
                Ok(())
            }
            easel_host::gatys::Event::Preview(_, picture) => {
                let img = picture.clamp(0f32, 1f32).and_then(|t| {
                    easel_core::tensor_to_rgb(&t).map_err(candle_core::Error::wrap)
                })?;
                save_output(&img, &preview, Some(&params), &protected)
                    .map_err(|e| candle_core::Error::msg(format!("{e:#}")))
            }
        });
        bar.finish_and_clear();
        let out = result
            .map_err(word)
            .with_context(|| format!("painting {}", input.display()))?;
        let img = easel_core::tensor_to_rgb(&out.image)?;
        save_output(&img, output, Some(&params), &protected)?;
        records.push(GatysRecord::new(
            input,
            output,
            img.dimensions(),
            started.elapsed().as_secs_f64(),
            &out,
        ));
        if out.cancelled {
            break;
        }
    }
    stylize_gatys::print_summary(&records, format!("{device:?}"), args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

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
