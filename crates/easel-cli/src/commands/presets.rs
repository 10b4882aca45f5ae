//! `easel presets`: list the built-in preset styles, or paint a contact sheet of all of them.

use crate::progress;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use easel_core::label::{self, LINE_HEIGHT};
use easel_core::{DeviceChoice, LoadOptions, Parameters};
use easel_fast::cin26::{self, PresetNet, NUM_PRESETS};
use std::path::PathBuf;

/// Columns of the contact sheet: 26 presets fill five rows of six (the last row has two).
const SHEET_COLUMNS: usize = 6;
/// Largest tile: the sheet is then 6144 pixels wide.
const MAX_TILE_SIZE: u32 = 1024;

#[derive(Args)]
#[command(
    about = "List the built-in preset styles, or paint a photo in all of them (--sheet)",
    long_about = "List the built-in preset styles usable with `easel stylize --preset N`.\n\n\
                  The 26 presets come without names upstream, so they are numbered 0-25. To see \
                  them, paint a contact sheet: `easel presets --sheet sheet.png --photo \
                  photo.jpg` draws preset 0 at the top left, then left to right, six a row, each \
                  tile under its number."
)]
pub struct PresetsArgs {
    /// Write a contact sheet of the photo painted in every preset to this PNG or JPEG file.
    #[arg(long, value_name = "OUT", requires = "photo")]
    sheet: Option<PathBuf>,

    /// The photo to paint on the contact sheet.
    #[arg(long, value_name = "PHOTO")]
    photo: Option<PathBuf>,

    /// Long side of each tile of the contact sheet, in pixels (at most 1024).
    #[arg(long, default_value_t = 256, value_name = "PIXELS")]
    tile_size: u32,

    /// Where to run: `auto` (CUDA if available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,

    /// Print the list as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PresetsArgs) -> Result<()> {
    match (&args.sheet, &args.photo) {
        (Some(sheet), Some(photo)) => paint_sheet(&args, sheet, photo),
        _ => {
            let presets: Vec<usize> = (0..NUM_PRESETS).collect();
            if args.json {
                println!("{}", serde_json::to_string(&presets)?);
            } else {
                println!(
                    "{NUM_PRESETS} presets, numbered 0-{} (upstream gives them no names).\n\
                     Use one with `easel stylize PHOTO --preset 7 -o OUT`, mix them with \
                     `--preset 3:0.5,12:0.5`,\nor see them all with `easel presets --sheet \
                     sheet.png --photo PHOTO`.",
                    NUM_PRESETS - 1
                );
            }
            Ok(())
        }
    }
}

fn paint_sheet(args: &PresetsArgs, sheet: &std::path::Path, photo: &std::path::Path) -> Result<()> {
    if args.tile_size < cin26::MIN_SIDE as u32 {
        bail!(
            "--tile-size {} is too small; use at least {}",
            args.tile_size,
            cin26::MIN_SIDE
        );
    }
    if args.tile_size > MAX_TILE_SIZE {
        bail!(
            "--tile-size {} is too large; use at most {MAX_TILE_SIZE}",
            args.tile_size
        );
    }
    let device = easel_core::select_device(args.device)?;
    let img = easel_core::load_rgb(photo, &LoadOptions::with_max_side(args.tile_size))?;
    let tile = easel_core::rgb_to_tensor(&img, &device)?;
    let net = PresetNet::embedded(&device).context("loading the embedded preset network")?;
    let (tile_w, tile_h) = (img.width(), img.height());
    let rows = NUM_PRESETS.div_ceil(SHEET_COLUMNS) as u32;
    // Each tile sits under a strip with its preset number.
    let cell_h = tile_h + LINE_HEIGHT;
    let mut canvas = image::RgbImage::from_pixel(
        tile_w * SHEET_COLUMNS as u32,
        cell_h * rows,
        image::Rgb([255, 255, 255]),
    );
    let bar = progress::bar(NUM_PRESETS as u64, "presets");
    for preset in 0..NUM_PRESETS {
        let weights = cin26::preset_weights(&[(preset, 1.0)])?;
        let weights = Tensor::new(weights.as_slice(), &device)?;
        let painted = easel_core::tensor_to_rgb(&net.forward(&tile, &weights)?)?;
        let (col, row) = (
            (preset % SHEET_COLUMNS) as u32,
            (preset / SHEET_COLUMNS) as u32,
        );
        label::draw_text(
            &mut canvas,
            col * tile_w + 2,
            row * cell_h + 2,
            &preset.to_string(),
            image::Rgb([32, 32, 32]),
        );
        image::imageops::replace(
            &mut canvas,
            &painted,
            i64::from(col * tile_w),
            i64::from(row * cell_h + LINE_HEIGHT),
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut params = Parameters::new("preset sheet");
    params.styles.push(format!("presets 0-{}", NUM_PRESETS - 1));
    params
        .models
        .push(easel_host::fast::PRESET_MODEL_ID.to_string());
    easel_core::save_image(&canvas, sheet, Some(&params), &[photo.to_path_buf()])?;
    eprintln!("wrote {}", sheet.display());
    Ok(())
}
