//! Painting and measuring a comparison: every method on every photo.
//!
//! Every photo is prepared once — downscaled to the plan's long side and centre-cropped to
//! multiples of 8, so that fast and diffusion methods paint exactly the same pixels (the
//! diffusion canvas of a photo whose sides are multiples of 8 is the photo) — and every method
//! paints with the same seed. Each method is loaded and warmed up on a small copy of the first
//! photo before it is timed, so cell times exclude loading (reported per method) and are warm.
//! A method that fails on a photo marks that cell failed with its one-line error; a method that
//! fails to load marks its whole column; everything else is still painted and written.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use easel_core::memory::MemoryProbe;
use easel_core::LoadOptions;
use easel_host::gatys::GatysPainter;
use easel_host::{Host, PaintRequest};
use easel_metrics::{Metric, PairMeter, Value};
use image::RgbImage;
use serde::Serialize;

use crate::error::{CompareError, Result};
use crate::method::{Method, Painter};

/// The short side of the warm-up copy of the first photo (the smallest diffusion canvas).
const WARM_UP_SHORT_SIDE: u32 = 64;
/// Style references are decoded at most this large (they are only shown and measured).
const STYLE_MAX_SIDE: u32 = 1024;

/// What to compare, checked by [`run`] before anything is written.
pub struct Plan {
    /// The photos, in row order.
    pub photos: Vec<PathBuf>,
    /// The style reference shown in the second column and measured against (the first
    /// painting of the run), if any.
    pub style: Option<PathBuf>,
    /// The methods, in column order.
    pub methods: Vec<Method>,
    /// The long side every photo is painted at (then cropped to multiples of 8).
    pub max_side: u32,
    /// The folder everything is written to.
    pub output: PathBuf,
}

/// A photo row.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoRow {
    /// The photo as given.
    pub path: PathBuf,
    /// Its file stem (cell files and labels).
    pub name: String,
    /// The prepared size.
    pub width: u32,
    /// The prepared size.
    pub height: u32,
    /// The prepared pixels every method painted.
    #[serde(skip)]
    pub image: RgbImage,
}

/// A method column.
#[derive(Debug, Clone, Serialize)]
pub struct MethodColumn {
    /// The SPEC as written.
    pub spec: String,
    /// The column label.
    pub label: String,
    /// Seconds spent loading and warming it up (not part of the cell times).
    pub load_seconds: f64,
    /// Why it could not be loaded, if it could not.
    pub load_error: Option<String>,
}

/// The style reference.
#[derive(Debug, Clone, Serialize)]
pub struct StyleReference {
    /// The painting as given.
    pub path: PathBuf,
    /// Its file name.
    pub name: String,
    /// Its pixels (long side at most 1024).
    #[serde(skip)]
    pub image: RgbImage,
}

/// How one cell came out.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Painted and measured.
    Painted {
        /// The cell file, relative to the output folder.
        file: String,
        /// Seconds spent painting (warm, loading excluded).
        seconds: f64,
        /// The peak memory of the call, when it can be measured.
        peak_memory_bytes: Option<u64>,
        /// The output's size.
        width: u32,
        /// The output's size.
        height: u32,
        /// The parameters chunk of the cell file.
        parameters: String,
        /// The metrics, in the order of [`Comparison::metrics`].
        values: Vec<Value>,
        /// The output pixels.
        image: RgbImage,
    },
    /// Not painted.
    Failed {
        /// Why, on one line.
        error: String,
    },
}

/// One photo × method.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Row index.
    pub photo: usize,
    /// Column index.
    pub method: usize,
    /// What came out.
    pub outcome: Outcome,
}

/// Everything a comparison painted and measured.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The device painted on.
    pub device: String,
    /// The rows.
    pub photos: Vec<PhotoRow>,
    /// The style reference.
    pub style: Option<StyleReference>,
    /// The columns.
    pub methods: Vec<MethodColumn>,
    /// The metric columns, each with its direction and network.
    pub metrics: Vec<Metric>,
    /// Row-major: photo 0's methods, then photo 1's, ...
    pub cells: Vec<Cell>,
}

impl Comparison {
    /// The cell of `photo` × `method`.
    pub fn cell(&self, photo: usize, method: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.photo == photo && c.method == method)
    }
}

/// What [`run`] reports as it goes.
pub enum Event<'a> {
    /// A method is being loaded and warmed up.
    Loading(&'a Method),
    /// A cell is done.
    Cell(&'a Cell, &'a Method, &'a PhotoRow),
}

/// One line of an error (its chain joined, line breaks folded).
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = cause_source(source);
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cause_source<'a>(
    err: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    err.and_then(|e| e.source())
}

/// `img` centre-cropped to multiples of 8 (at most 7 pixels off each side).
fn crop_to_eights(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (w - w % 8, h - h % 8);
    if (cw, ch) == (w, h) || cw == 0 || ch == 0 {
        return img;
    }
    image::imageops::crop_imm(&img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
}

/// The photo at `path` as every method of a comparison paints it: decoded with its long side
/// at most `max_side`, then centre-cropped to multiples of 8.
pub fn prepare_photo(path: &Path, max_side: u32) -> Result<RgbImage> {
    Ok(crop_to_eights(easel_core::load_rgb(
        path,
        &LoadOptions::with_max_side(max_side),
    )?))
}

/// Checks the plan and reads every input, before anything is written.
fn prepare(plan: &Plan) -> Result<(Vec<PhotoRow>, Option<StyleReference>)> {
    if plan.photos.is_empty() {
        return Err(CompareError::NoPhotos);
    }
    if plan.methods.is_empty() {
        return Err(CompareError::NoMethods);
    }
    if plan.output.exists() && !plan.output.is_dir() {
        return Err(CompareError::OutputNotFolder {
            path: plan.output.clone(),
        });
    }
    let mut rows: Vec<PhotoRow> = Vec::with_capacity(plan.photos.len());
    for path in &plan.photos {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "photo".to_string());
        if let Some(first) = rows.iter().find(|r| r.name == name) {
            return Err(CompareError::PhotoNameClash {
                first: first.path.clone(),
                second: path.clone(),
                name,
            });
        }
        let image = prepare_photo(path, plan.max_side)?;
        rows.push(PhotoRow {
            path: path.clone(),
            name,
            width: image.width(),
            height: image.height(),
            image,
        });
    }
    let style = match &plan.style {
        None => None,
        Some(path) => Some(StyleReference {
            path: path.clone(),
            name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            image: easel_core::load_rgb(path, &LoadOptions::with_max_side(STYLE_MAX_SIDE))?,
        }),
    };
    Ok((rows, style))
}

/// A method ready to paint.
enum Loaded<'m> {
    Host {
        style: &'m easel_host::Style,
        request: &'m PaintRequest,
    },
    Gatys(Box<GatysPainter>),
}

/// The request of a host method for `photo`: diffusion at the photo's short side unless the
/// SPEC set a size.
fn request_for(request: &PaintRequest, photo: &RgbImage) -> PaintRequest {
    let mut request = request.clone();
    if request.diffusion.size.is_none() {
        request.diffusion.size = Some(photo.width().min(photo.height()));
    }
    request
}

/// What one paint gave.
struct Painted {
    image: RgbImage,
    seconds: f64,
    peak_memory_bytes: Option<u64>,
    parameters: easel_core::Parameters,
}

fn paint(host: &mut Host, loaded: &Loaded, photo: &RgbImage) -> Result<Painted> {
    match loaded {
        Loaded::Host { style, request } => {
            let painting = host.paint(style, photo, &request_for(request, photo))?;
            let first = painting
                .images
                .first()
                .ok_or_else(|| CompareError::Painting {
                    what: "painting",
                    problem: "the painter returned no image".to_string(),
                })?;
            Ok(Painted {
                image: easel_core::tensor_to_rgb(first)?,
                seconds: painting.paint_seconds,
                peak_memory_bytes: painting.peak_memory_bytes,
                parameters: painting.parameters,
            })
        }
        Loaded::Gatys(painter) => {
            let probe = MemoryProbe::start(host.device()).ok();
            let started = Instant::now();
            let tensor = easel_core::rgb_to_tensor(photo, host.device())?;
            let never = AtomicBool::new(false);
            let out = painter.paint(&tensor, &never, &mut |_| Ok(()))?;
            let image = out
                .image
                .clamp(0f32, 1f32)
                .map_err(|e| CompareError::Painting {
                    what: "clamping the picture",
                    problem: e.to_string(),
                })?;
            let image = easel_core::tensor_to_rgb(&image)?;
            Ok(Painted {
                image,
                seconds: started.elapsed().as_secs_f64(),
                peak_memory_bytes: probe
                    .and_then(|p| p.finish().ok())
                    .and_then(|m| m.peak_bytes),
                parameters: painter.parameters(photo.width().max(photo.height())),
            })
        }
    }
}

/// Loads `method` and paints `warm_up` once with it (so the cell times are warm).
fn load<'m>(host: &mut Host, method: &'m Method, warm_up: &RgbImage) -> Result<Loaded<'m>> {
    let loaded = match &method.painter {
        Painter::Host { style, request } => Loaded::Host { style, request },
        Painter::Gatys { style, settings } => Loaded::Gatys(Box::new(GatysPainter::build(
            style,
            settings.clone(),
            host.device(),
        )?)),
    };
    paint(host, &loaded, warm_up)?;
    Ok(loaded)
}

/// The cell file of `row` × method `index`.
fn cell_file(row: &PhotoRow, index: usize, method: &Method) -> String {
    format!("cells/{}__{}-{}.png", row.name, index + 1, method.slug)
}

/// Paints every method of `plan` on every photo with `host`, measures the results with
/// `meter`, and writes the cells, `grid.png`, `report.html`, `metrics.json` and
/// `metrics.csv` into the output folder. Bad input (no photos, an unreadable photo, an output
/// that is a file) fails before anything is written.
pub fn run(
    plan: &Plan,
    host: &mut Host,
    meter: &PairMeter,
    on_event: &mut dyn FnMut(Event),
) -> Result<Comparison> {
    let (rows, style) = prepare(plan)?;
    let cells_dir = plan.output.join("cells");
    std::fs::create_dir_all(&cells_dir).map_err(|e| CompareError::Write {
        path: cells_dir.clone(),
        reason: e.to_string(),
    })?;
    let protected: Vec<PathBuf> = plan.photos.iter().chain(&plan.style).cloned().collect();
    let style_image = style.as_ref().map(|s| &s.image);
    let warm_up = {
        let first = &rows[0].image;
        let short = first.width().min(first.height()).max(1);
        let scale = f64::from(WARM_UP_SHORT_SIDE) / f64::from(short);
        let long = (f64::from(first.width().max(first.height())) * scale).round() as u32;
        crop_to_eights(easel_core::downscale_to_fit(first.clone(), long.max(8)))
    };

    let mut columns = Vec::with_capacity(plan.methods.len());
    let mut cells = Vec::with_capacity(rows.len() * plan.methods.len());
    for (index, method) in plan.methods.iter().enumerate() {
        on_event(Event::Loading(method));
        let started = Instant::now();
        let loaded = load(host, method, &warm_up);
        let load_seconds = started.elapsed().as_secs_f64();
        let load_error = loaded.as_ref().err().map(|e| one_line(e));
        columns.push(MethodColumn {
            spec: method.spec.text.clone(),
            label: method.label.clone(),
            load_seconds,
            load_error: load_error.clone(),
        });
        for (photo, row) in rows.iter().enumerate() {
            let outcome = match &loaded {
                Err(_) => Outcome::Failed {
                    error: load_error.clone().unwrap_or_default(),
                },
                Ok(loaded) => {
                    let file = cell_file(row, index, method);
                    let cell = CellJob {
                        loaded,
                        row,
                        file,
                        output: &plan.output,
                        protected: &protected,
                    };
                    match cell.paint(host, meter, style_image) {
                        Ok(outcome) => outcome,
                        Err(e) => Outcome::Failed {
                            error: one_line(&e),
                        },
                    }
                }
            };
            cells.push(Cell {
                photo,
                method: index,
                outcome,
            });
            if let Some(cell) = cells.last() {
                on_event(Event::Cell(cell, method, row));
            }
        }
    }
    cells.sort_by_key(|c| (c.photo, c.method));
    let comparison = Comparison {
        device: format!("{:?}", host.device()),
        photos: rows,
        style,
        methods: columns,
        metrics: meter.metrics(plan.style.is_some()),
        cells,
    };
    write_outputs(&comparison, &plan.output, &protected)?;
    Ok(comparison)
}

/// One cell to paint, measure and write.
struct CellJob<'a> {
    loaded: &'a Loaded<'a>,
    row: &'a PhotoRow,
    file: String,
    output: &'a Path,
    protected: &'a [PathBuf],
}

impl CellJob<'_> {
    fn paint(
        self,
        host: &mut Host,
        meter: &PairMeter,
        style: Option<&RgbImage>,
    ) -> Result<Outcome> {
        let painted = paint(host, self.loaded, &self.row.image)?;
        let values = meter.measure(&self.row.image, &painted.image, style)?;
        easel_core::save_image(
            &painted.image,
            &self.output.join(&self.file),
            Some(&painted.parameters),
            self.protected,
        )?;
        Ok(Outcome::Painted {
            file: self.file,
            seconds: painted.seconds,
            peak_memory_bytes: painted.peak_memory_bytes,
            width: painted.image.width(),
            height: painted.image.height(),
            parameters: painted.parameters.to_text(),
            values,
            image: painted.image,
        })
    }
}

/// Writes the grid, the report and the tables, each atomically.
fn write_outputs(comparison: &Comparison, output: &Path, protected: &[PathBuf]) -> Result<()> {
    let grid = crate::grid::render(comparison);
    easel_core::save_image(&grid, &output.join("grid.png"), None, protected)?;
    let files: [(&str, Vec<u8>); 3] = [
        ("report.html", crate::report::html(comparison).into_bytes()),
        ("metrics.json", crate::table::json(comparison).into_bytes()),
        ("metrics.csv", crate::table::csv(comparison).into_bytes()),
    ];
    for (name, bytes) in files {
        let path = output.join(name);
        let inputs: Vec<&Path> = protected.iter().map(PathBuf::as_path).collect();
        easel_core::write_output(&path, &bytes, &inputs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photos_are_cropped_to_multiples_of_eight_around_the_centre() {
        let mut img = RgbImage::new(21, 17);
        img.put_pixel(2, 0, image::Rgb([255, 0, 0]));
        let cropped = crop_to_eights(img);
        assert_eq!(cropped.dimensions(), (16, 16));
        // (21 - 16) / 2 = 2 columns and (17 - 16) / 2 = 0 rows cut: the marked pixel is first.
        assert_eq!(cropped.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(crop_to_eights(RgbImage::new(5, 5)).dimensions(), (5, 5));
    }
}
