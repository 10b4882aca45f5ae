//! `grid.png`: a row per photo; columns photo | style reference | one per method. Every image
//! is fitted into a square box; column labels (`method: key settings`) sit above the first
//! row and every cell is captioned with its time (or `failed`). Text is an 8×8 bitmap font drawn
//! at twice its size, so that it reads at 100 %.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::run::{Comparison, Outcome};

/// The side of each image box, in pixels.
const BOX: u32 = 320;
/// Space around boxes.
const PAD: u32 = 8;
/// Glyph scale: 8×8 glyphs drawn as 16×16.
const SCALE: u32 = 2;
/// Height of one text line (glyph plus leading).
const LINE: u32 = 8 * SCALE + 4;
/// Lines of a column label.
const LABEL_LINES: u32 = 3;
/// Lines of a cell caption.
const CAPTION_LINES: u32 = 2;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const TEXT: Rgb<u8> = Rgb([32, 32, 32]);
const FAILED: Rgb<u8> = Rgb([176, 0, 32]);
const EMPTY: Rgb<u8> = Rgb([236, 236, 236]);

/// Characters per line of a box-wide text.
fn columns_of_text() -> usize {
    (BOX / (8 * SCALE)) as usize
}

/// `text` broken into at most `lines` lines of `width` characters, at spaces where possible;
/// what does not fit ends in `...`. Characters the font lacks become `?`.
pub fn wrap(text: &str, width: usize, lines: usize) -> Vec<String> {
    let chars: Vec<char> = text
        .chars()
        .map(|c| if glyph(c).is_some() { c } else { '?' })
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut start = 0;
    while start < chars.len() && out.len() < lines {
        while start < chars.len() && chars[start] == ' ' {
            start += 1;
        }
        let end = (start + width).min(chars.len());
        let cut = if end < chars.len() {
            // Break after the last space in the line, if any.
            match chars[start..end].iter().rposition(|&c| c == ' ') {
                Some(i) if i > 0 => start + i,
                _ => end,
            }
        } else {
            end
        };
        out.push(chars[start..cut].iter().collect());
        start = cut;
    }
    if chars[start.min(chars.len())..].iter().any(|&c| c != ' ') {
        if let Some(last) = out.last_mut() {
            let keep = width.saturating_sub(3).min(last.chars().count());
            *last = last.chars().take(keep).collect::<String>() + "...";
        }
    }
    out
}

fn glyph(c: char) -> Option<[u8; 8]> {
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
}

/// Draws `text` with its top-left corner at (`x`, `y`), clipped to the canvas.
pub fn draw_text(canvas: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c).or_else(|| glyph('?')) else {
            continue;
        };
        let left = x + i as u32 * 8 * SCALE;
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..8u32 {
                // font8x8: bit 0 is the leftmost pixel.
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (left + col * SCALE + dx, y + row as u32 * SCALE + dy);
                        if px < canvas.width() && py < canvas.height() {
                            canvas.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

fn draw_lines(canvas: &mut RgbImage, x: u32, y: u32, lines: &[String], color: Rgb<u8>) {
    for (i, line) in lines.iter().enumerate() {
        draw_text(canvas, x, y + i as u32 * LINE, line, color);
    }
}

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
    let text_width = columns_of_text();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_wrap_at_spaces_and_end_in_dots_when_cut() {
        assert_eq!(wrap("arbitrary", 20, 3), vec!["arbitrary"]);
        assert_eq!(
            wrap("preset 7: strength=0.6 keep-colors=true", 12, 3),
            vec!["preset 7:", "strength=0.6", "keep-colo..."]
        );
        assert_eq!(wrap("日本 x", 10, 1), vec!["?? x"]);
    }

    #[test]
    fn text_is_drawn_as_doubled_glyph_pixels() {
        let mut canvas = RgbImage::from_pixel(32, 16, BACKGROUND);
        draw_text(&mut canvas, 0, 0, "I", TEXT);
        let dark = canvas.pixels().filter(|p| **p == TEXT).count();
        let bits: u32 = glyph('I').unwrap().iter().map(|b| b.count_ones()).sum();
        assert!(bits > 0);
        assert_eq!(dark as u32, bits * SCALE * SCALE);
        // A glyph drawn past the edge is clipped, not a panic.
        draw_text(&mut canvas, 30, 14, "W", TEXT);
    }
}
