//! Text on images: labels for grids and contact sheets, in the public-domain 8×8 bitmap font
//! of `font8x8` (ASCII and Latin-1) drawn at twice its size, so that it reads at 100 % with no
//! font file or renderer. Characters the font lacks are drawn as `?`.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// Glyph scale: 8×8 glyphs drawn as 16×16.
pub const SCALE: u32 = 2;
/// Width of one character, in pixels.
pub const CHAR_WIDTH: u32 = 8 * SCALE;
/// Height of one text line (glyph plus leading), in pixels.
pub const LINE_HEIGHT: u32 = 8 * SCALE + 4;

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

/// Draws `lines` one under the other from (`x`, `y`).
pub fn draw_lines(canvas: &mut RgbImage, x: u32, y: u32, lines: &[String], color: Rgb<u8>) {
    for (i, line) in lines.iter().enumerate() {
        draw_text(canvas, x, y + i as u32 * LINE_HEIGHT, line, color);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Rgb<u8> = Rgb([32, 32, 32]);
    const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

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
