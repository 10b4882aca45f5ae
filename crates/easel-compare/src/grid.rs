//! `grid.png`: a row per photo; columns photo | style reference | one per method. Every image
//! is fitted into a square box; column labels (`method: key settings`) sit above the first
//! row and every cell is captioned with its time (or `failed`), in [`easel_core::label`]'s font.

use easel_core::label::{draw_lines, wrap, CHAR_WIDTH, LINE_HEIGHT as LINE};
use image::{Rgb, RgbImage};

use crate::run::{Comparison, Outcome};

/// The side of each image box, in pixels.
const BOX: u32 = 320;
/// Space around boxes.
const PAD: u32 = 8;
/// Lines of a column label.
const LABEL_LINES: u32 = 3;
/// Lines of a cell caption.
const CAPTION_LINES: u32 = 2;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const TEXT: Rgb<u8> = Rgb([32, 32, 32]);
const FAILED: Rgb<u8> = Rgb([176, 0, 32]);
const EMPTY: Rgb<u8> = Rgb([236, 236, 236]);

/// `img` fitted into the box (aspect kept, centred across, on the box's bottom edge so that the
/// caption sits right under it) at (`x`, `y`).
fn draw_fitted(canvas: &mut RgbImage, x: u32, y: u32, img: &RgbImage) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let scale = f64::from(BOX) / f64::from(w.max(h));
    let (fw, fh) = (
        ((f64::from(w) * scale).round() as u32).clamp(1, BOX),
        ((f64::from(h) * scale).round() as u32).clamp(1, BOX),
    );
    let fitted = image::imageops::resize(img, fw, fh, image::imageops::FilterType::Triangle);
    image::imageops::overlay(
        canvas,
        &fitted,
        i64::from(x + (BOX - fw) / 2),
        i64::from(y + (BOX - fh)),
    );
}

fn fill_box(canvas: &mut RgbImage, x: u32, y: u32) {
    for py in y..(y + BOX).min(canvas.height()) {
        for px in x..(x + BOX).min(canvas.width()) {
            canvas.put_pixel(px, py, EMPTY);
        }
    }
}

/// Renders the grid of `comparison`.
pub fn render(comparison: &Comparison) -> RgbImage {
    let columns = 2 + comparison.methods.len() as u32;
    let row_height = BOX + CAPTION_LINES * LINE + PAD;
    let header = LABEL_LINES * LINE + PAD;
    let width = PAD + columns * (BOX + PAD);
    let height = PAD + header + comparison.photos.len() as u32 * row_height;
    let mut canvas = RgbImage::from_pixel(width, height, BACKGROUND);
    let text_width = (BOX / CHAR_WIDTH) as usize;
    let column_x = |c: u32| PAD + c * (BOX + PAD);

    let mut labels = vec![
        "photo".to_string(),
        match &comparison.style {
            Some(s) => format!("style: {}", s.name),
            None => "style: none".to_string(),
        },
    ];
    labels.extend(comparison.methods.iter().map(|m| m.label.clone()));
    for (c, label) in labels.iter().enumerate() {
        let lines = wrap(label, text_width, LABEL_LINES as usize);
        draw_lines(&mut canvas, column_x(c as u32), PAD, &lines, TEXT);
    }

    for (r, row) in comparison.photos.iter().enumerate() {
        let y = PAD + header + r as u32 * row_height;
        let caption_y = y + BOX + 2;
        draw_fitted(&mut canvas, column_x(0), y, &row.image);
        let caption = format!("{} {}x{}", row.name, row.width, row.height);
        draw_lines(
            &mut canvas,
            column_x(0),
            caption_y,
            &wrap(&caption, text_width, CAPTION_LINES as usize),
            TEXT,
        );
        match &comparison.style {
            Some(style) => draw_fitted(&mut canvas, column_x(1), y, &style.image),
            None => fill_box(&mut canvas, column_x(1), y),
        }
        for m in 0..comparison.methods.len() {
            let x = column_x(2 + m as u32);
            let (text, color) = match comparison.cell(r, m).map(|c| &c.outcome) {
                Some(Outcome::Painted { image, seconds, .. }) => {
                    draw_fitted(&mut canvas, x, y, image);
                    (format!("{seconds:.2} s"), TEXT)
                }
                Some(Outcome::Failed { error }) => {
                    fill_box(&mut canvas, x, y);
                    (format!("failed: {error}"), FAILED)
                }
                None => {
                    fill_box(&mut canvas, x, y);
                    (String::from("not painted"), FAILED)
                }
            };
            let lines = wrap(&text, text_width, CAPTION_LINES as usize);
            draw_lines(&mut canvas, x, caption_y, &lines, color);
        }
    }
    canvas
}
