//! `load_rgb`: one test per kind of input, good and bad.
//!
//! Fixtures are written into temp dirs here, except the CMYK JPEG, WebP and
//! the EXIF-oriented files, which come from `tools/ref/make_image_fixtures.py`
//! (committed under `tests/data/`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{crafted_png, data_dir, rgb_diff, write_png};
use easel_core::{load_rgb, Error, LoadOptions};
use image::{Rgb, RgbImage};

fn load(path: &Path) -> easel_core::Result<RgbImage> {
    load_rgb(path, &LoadOptions::default())
}

fn err_text(path: &Path) -> String {
    match load(path) {
        Ok(img) => panic!(
            "{} loaded ({}x{}) but should fail",
            path.display(),
            img.width(),
            img.height()
        ),
        Err(e) => {
            eprintln!("MSG: {e}");
            e.to_string()
        }
    }
}

/// A 32x16 JPEG with 8x8-aligned colour blocks, written by `image`.
fn write_test_jpeg(path: &Path) -> RgbImage {
    let img = RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([200, 30, 30])
        } else {
            Rgb([30, 30, 200])
        }
    });
    img.save(path).unwrap();
    img
}

#[test]
fn jpeg_png_bmp_tiff_load_and_format_comes_from_content() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(8, 4, |x, y| Rgb([(x * 30) as u8, (y * 60) as u8, 7]));
    for (name, format) in [
        ("a.png", image::ImageFormat::Png),
        ("b.bmp", image::ImageFormat::Bmp),
        ("c.tiff", image::ImageFormat::Tiff),
    ] {
        let path = dir.path().join(name);
        img.save_with_format(&path, format).unwrap();
        assert_eq!(load(&path).unwrap(), img, "{name}");
        // Same bytes under a misleading name: detection is by content.
        let renamed = dir.path().join(format!("{name}.jpg"));
        std::fs::copy(&path, &renamed).unwrap();
        assert_eq!(load(&renamed).unwrap(), img, "{name} renamed");
    }
    let jpeg = dir.path().join("photo.png"); // a JPEG with a PNG name
    let original = write_test_jpeg(&dir.path().join("photo.jpg"));
    std::fs::rename(dir.path().join("photo.jpg"), &jpeg).unwrap();
    let loaded = load(&jpeg).unwrap();
    assert_eq!(loaded.dimensions(), (32, 16));
    assert!(rgb_diff(*loaded.get_pixel(4, 4), original.get_pixel(4, 4).0) <= 4);
    assert!(rgb_diff(*loaded.get_pixel(28, 12), original.get_pixel(28, 12).0) <= 4);
}

#[test]
fn webp_loads() {
    // From tools/ref/make_image_fixtures.py: lossless 16x16 quadrants.
    let img = load(&data_dir().join("webp_quadrants.webp")).unwrap();
    assert_eq!(img.dimensions(), (16, 16));
    assert_eq!(*img.get_pixel(2, 2), Rgb([255, 0, 0]));
    assert_eq!(*img.get_pixel(13, 2), Rgb([0, 255, 0]));
    assert_eq!(*img.get_pixel(2, 13), Rgb([0, 0, 255]));
    assert_eq!(*img.get_pixel(13, 13), Rgb([255, 255, 255]));
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jpg");
    let text = err_text(&path);
    assert_eq!(
        text,
        format!("cannot read image {}: file not found", path.display())
    );
}

#[test]
fn directory_given_as_image() {
    let dir = tempfile::tempdir().unwrap();
    let text = err_text(dir.path());
    assert_eq!(
        text,
        format!("cannot read image {}: is a directory", dir.path().display())
    );
}

#[test]
fn empty_file() {
    // The 0-byte file case; the zero-width header case is `zero_size_header`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    assert_eq!(
        err_text(&path),
        format!("image {} is empty (0 bytes)", path.display())
    );
}

#[test]
fn corrupt_bytes_unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.jpg");
    std::fs::write(&path, b"this is not an image at all, just some text").unwrap();
    assert_eq!(
        err_text(&path),
        format!(
            "image {} is not a supported image format (supported: JPEG, PNG, WebP, BMP, TIFF)",
            path.display()
        )
    );
}

#[test]
fn corrupt_png_body() {
    // A real PNG header followed by garbage instead of chunks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let mut bytes = crafted_png(4, 4)[..33].to_vec(); // signature + IHDR
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef].repeat(16));
    std::fs::write(&path, bytes).unwrap();
    let text = err_text(&path);
    assert!(
        text.starts_with(&format!(
            "image {} is truncated or corrupt: ",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn truncated_png() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.png");
    let img = RgbImage::from_fn(64, 64, |x, y| {
        Rgb([(x * 4) as u8, (y * 4) as u8, ((x ^ y) * 4) as u8])
    });
    img.save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let path = dir.path().join("cut.png");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let text = err_text(&path);
    assert!(
        text.starts_with(&format!(
            "image {} is truncated or corrupt: ",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn truncated_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jpg");
    write_test_jpeg(&full);
    let bytes = std::fs::read(&full).unwrap();
    let path = dir.path().join("cut.jpg");
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let text = err_text(&path);
    assert!(
        text.starts_with(&format!(
            "image {} is truncated or corrupt: ",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn zero_size_header() {
    // A crafted PNG whose IHDR says width 0, height 10 (valid CRCs).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    std::fs::write(&path, crafted_png(0, 10)).unwrap();
    assert_eq!(
        err_text(&path),
        format!("image {} has zero size (0x10)", path.display())
    );
}

#[test]
fn huge_png_header_refused_before_decoding() {
    // 100000 x 100000 RGB would be 30 GB; the file is 60 bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, crafted_png(100_000, 100_000)).unwrap();
    let start = Instant::now();
    let text = err_text(&path);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        text,
        format!(
            "image {} is 100000x100000 = 10000.0 MP, over the 64 MP limit; \
             even downscaled on load at most 256 MP can be decoded; use a smaller image",
            path.display()
        )
    );
}

#[test]
fn over_limit_suggests_downscaling_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, crafted_png(12_000, 9_000)).unwrap();
    assert_eq!(
        err_text(&path),
        format!(
            "image {} is 12000x9000 = 108.0 MP, over the 64 MP limit; \
             downscale it on load, or use a smaller image",
            path.display()
        )
    );
    // With --max-size the decode budget is larger: the limit is passed and
    // the decoder gets to see (and reject) the empty pixel data.
    let err = load_rgb(&path, &LoadOptions::with_max_side(1024)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn pixel_limit_checked_for_jpeg_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.jpg");
    write_test_jpeg(&path);
    let opts = LoadOptions {
        max_side: None,
        max_pixels: 100,
    };
    let err = load_rgb(&path, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 32,
                height: 16,
                max_pixels: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is 32x16 = 0.000512 MP, over the 0.0001 MP limit"),
        "{err}"
    );
}

#[test]
fn cmyk_jpeg_converted_to_rgb() {
    // From tools/ref/make_image_fixtures.py: Adobe (inverted) CMYK, the way
    // Photoshop writes it. Quadrants: red, green / blue, white.
    let img = load(&data_dir().join("cmyk_quadrants.jpg")).unwrap();
    assert_eq!(img.dimensions(), (16, 16));
    for (x, y, want) in [
        (3, 3, [255, 0, 0]),
        (12, 3, [0, 255, 0]),
        (3, 12, [0, 0, 255]),
        (12, 12, [255, 255, 255]),
    ] {
        let got = *img.get_pixel(x, y);
        assert!(
            rgb_diff(got, want) <= 6,
            "({x},{y}): got {got:?}, want {want:?}"
        );
    }
}

#[test]
fn sixteen_bit_png_rounds_to_eight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    // One RGB16 pixel per column: 0xffff, 0x8080 (=128*257), 100*257, 0.
    let values: [u16; 12] = [
        65535, 32896, 25700, 0, 65535, 32896, 25700, 0, 65535, 1000, 200, 128,
    ];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(
        &path,
        4,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &bytes,
    );
    let img = load(&path).unwrap();
    assert_eq!(img.dimensions(), (4, 1));
    assert_eq!(*img.get_pixel(0, 0), Rgb([255, 128, 100]));
    assert_eq!(*img.get_pixel(1, 0), Rgb([0, 255, 128]));
    assert_eq!(*img.get_pixel(2, 0), Rgb([100, 0, 255]));
    // 1000/257 = 3.9 -> 4, 200/257 = 0.78 -> 1, 128/257 = 0.498 -> 0
    assert_eq!(*img.get_pixel(3, 0), Rgb([4, 1, 0]));
}

#[test]
fn rgba_png_composited_over_white() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alpha.png");
    // Half-transparent black, fully transparent black, opaque red, 25% blue.
    let bytes = [0, 0, 0, 128, 0, 0, 0, 0, 255, 0, 0, 255, 0, 0, 255, 64];
    write_png(
        &path,
        4,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &bytes,
    );
    let img = load(&path).unwrap();
    let grey = img.get_pixel(0, 0);
    assert!(rgb_diff(*grey, [128, 128, 128]) <= 1, "{grey:?}");
    assert_eq!(*img.get_pixel(1, 0), Rgb([255, 255, 255])); // not black
    assert_eq!(*img.get_pixel(2, 0), Rgb([255, 0, 0]));
    // 255 * (1 - 64/255) = 191
    assert_eq!(*img.get_pixel(3, 0), Rgb([191, 191, 255]));
}

#[test]
fn sixteen_bit_rgba_png_composited_over_white() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alpha16.png");
    let values: [u16; 4] = [0, 0, 0, 32768];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(
        &path,
        1,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Sixteen,
        &bytes,
    );
    let px = *load(&path).unwrap().get_pixel(0, 0);
    assert!(rgb_diff(px, [128, 128, 128]) <= 1, "{px:?}");
}

#[test]
fn greyscale_and_grey_alpha_png() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("grey.png");
    write_png(
        &grey,
        3,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 77, 255],
    );
    let img = load(&grey).unwrap();
    assert_eq!(img.as_raw(), &vec![0, 0, 0, 77, 77, 77, 255, 255, 255]);

    let grey_alpha = dir.path().join("grey_alpha.png");
    write_png(
        &grey_alpha,
        2,
        1,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &[0, 0, 100, 255],
    );
    let img = load(&grey_alpha).unwrap();
    assert_eq!(img.as_raw(), &vec![255, 255, 255, 100, 100, 100]);
}

/// The displayed 4x2 grid of 16x16 blocks, as in make_image_fixtures.py.
const GRID_COLOURS: [[u8; 3]; 8] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [0, 255, 255],
    [255, 0, 255],
    [255, 255, 255],
    [0, 0, 0],
];

fn assert_upright_grid(path: &Path, tolerance: u8) {
    let img = load(path).unwrap();
    assert_eq!(img.dimensions(), (64, 32), "{}", path.display());
    for (i, want) in GRID_COLOURS.iter().enumerate() {
        let (x, y) = ((i % 4) as u32 * 16 + 8, (i / 4) as u32 * 16 + 8);
        let got = *img.get_pixel(x, y);
        assert!(
            rgb_diff(got, *want) <= tolerance,
            "{} block {i}: got {got:?}, want {want:?}",
            path.display()
        );
    }
}

#[test]
fn exif_orientation_all_eight_jpeg() {
    // From tools/ref/make_image_fixtures.py: orient{1..8}.jpg all display as
    // the same 64x32 grid; 5..8 are stored 32x64.
    for orientation in 1..=8 {
        let path = data_dir().join(format!("orient{orientation}.jpg"));
        let stored = image::image_dimensions(&path).unwrap();
        let expected_stored = if orientation >= 5 { (32, 64) } else { (64, 32) };
        assert_eq!(stored, expected_stored, "orientation {orientation}");
        assert_upright_grid(&path, 12);
    }
}

#[test]
fn exif_orientation_png_and_tiff() {
    // From tools/ref/make_image_fixtures.py: eXIf chunk / TIFF tag 274 = 6.
    assert_upright_grid(&data_dir().join("orient6.png"), 0);
    assert_upright_grid(&data_dir().join("orient6.tif"), 0);
}

#[test]
fn max_side_downscales_keeping_aspect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.png");
    RgbImage::from_pixel(300, 100, Rgb([10, 120, 230]))
        .save(&path)
        .unwrap();

    let small = load_rgb(&path, &LoadOptions::with_max_side(150)).unwrap();
    assert_eq!(small.dimensions(), (150, 50));
    assert!(rgb_diff(*small.get_pixel(75, 25), [10, 120, 230]) <= 1);

    // Under the limit: untouched, never upscaled.
    let same = load_rgb(&path, &LoadOptions::with_max_side(300)).unwrap();
    assert_eq!(same.dimensions(), (300, 100));

    // A big reduction (box-average then Lanczos3) keeps the aspect ratio
    // and does not alias: a 1-pixel checkerboard becomes flat mid-grey.
    let checker = dir.path().join("checker.png");
    RgbImage::from_fn(900, 300, |x, y| {
        if (x + y) % 2 == 0 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    })
    .save(&checker)
    .unwrap();
    let flat = load_rgb(&checker, &LoadOptions::with_max_side(90)).unwrap();
    assert_eq!(flat.dimensions(), (90, 30));
    assert!(
        flat.pixels().all(|p| rgb_diff(*p, [128, 128, 128]) <= 3),
        "not flat grey"
    );

    // Orientation is applied before the long side is measured.
    let rotated = load_rgb(
        &data_dir().join("orient6.png"),
        &LoadOptions::with_max_side(16),
    )
    .unwrap();
    assert_eq!(rotated.dimensions(), (16, 8));

    let err = load_rgb(
        &path,
        &LoadOptions {
            max_side: Some(0),
            max_pixels: 1 << 30,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 1 pixel"), "{err}");
}

#[test]
fn unsupported_known_format() {
    // GIF is recognised by content but not decoded by this build.
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("anim.gif");
    std::fs::write(&path, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let text = err_text(&path);
    assert!(
        text.starts_with(&format!(
            "image {} is not a supported image format (supported: JPEG, PNG, WebP, BMP, TIFF)",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn jpeg_cut_inside_scan_data_is_an_error() {
    // The JPEG decoder alone would fill the missing part with grey and
    // succeed; easel refuses instead. Cut at several points of the scan.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jpg");
    let img = RgbImage::from_fn(256, 256, |x, y| {
        Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8])
    });
    img.save(&full).unwrap();
    assert_eq!(load(&full).unwrap().dimensions(), (256, 256));
    let bytes = std::fs::read(&full).unwrap();
    let path = dir.path().join("cut.jpg");
    for keep in [
        bytes.len() / 2,
        bytes.len() * 9 / 10,
        bytes.len() - 2,
        bytes.len() - 1,
    ] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        assert_eq!(
            err_text(&path),
            format!(
                "image {} is truncated or corrupt: the file ends before the JPEG \
                 end-of-image marker (truncated download or copy?)",
                path.display()
            ),
            "kept {keep} of {} bytes",
            bytes.len()
        );
    }
    // Trailing bytes after the end-of-image marker are tolerated.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"trailing camera data");
    std::fs::write(&path, &padded).unwrap();
    assert_eq!(load(&path).unwrap().dimensions(), (256, 256));
}

#[test]
fn progressive_and_restart_marker_jpegs_load() {
    // From tools/ref/make_image_fixtures.py: the two JPEG layouts the
    // truncation check's marker walk must get through (10 scans; RST0..7).
    assert_upright_grid(&data_dir().join("progressive.jpg"), 12);
    assert_upright_grid(&data_dir().join("restart.jpg"), 12);
    // And the walk still catches a cut in them.
    let dir = tempfile::tempdir().unwrap();
    for name in ["progressive.jpg", "restart.jpg"] {
        let bytes = std::fs::read(data_dir().join(name)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        assert!(err_text(&path).contains("end-of-image marker"), "{name}");
    }
}
