//! `save_image`, `read_png_parameters`, `collect_images`.

mod common;

use std::path::{Path, PathBuf};

use common::rgb_diff;
use easel_core::{
    collect_images, load_rgb, read_png_parameters, save_image, Error, LoadOptions, Parameters,
};
use image::{Rgb, RgbImage};

fn sample() -> RgbImage {
    RgbImage::from_fn(24, 16, |x, y| {
        if x < 12 {
            Rgb([250, 20, (y * 10) as u8])
        } else {
            Rgb([10, 200, 90])
        }
    })
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn png_save_is_lossless_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    save_image(&sample(), &out, None, &[]).unwrap();
    assert_eq!(
        image::guess_format(&std::fs::read(&out).unwrap()).unwrap(),
        image::ImageFormat::Png
    );
    assert_eq!(load_rgb(&out, &LoadOptions::default()).unwrap(), sample());
    assert_eq!(read_png_parameters(&out).unwrap(), None);
}

#[test]
fn jpeg_save_is_readable_and_close() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.jpg", "out.JPEG"] {
        let out = dir.path().join(name);
        save_image(&sample(), &out, None, &[]).unwrap();
        assert_eq!(
            image::guess_format(&std::fs::read(&out).unwrap()).unwrap(),
            image::ImageFormat::Jpeg
        );
        let back = load_rgb(&out, &LoadOptions::default()).unwrap();
        assert_eq!(back.dimensions(), (24, 16));
        // Quality 95: block interiors come back within a few levels.
        assert!(
            rgb_diff(*back.get_pixel(18, 8), [10, 200, 90]) <= 6,
            "{:?}",
            back.get_pixel(18, 8)
        );
    }
}

#[test]
fn png_parameters_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("styled.png");
    let mut params = Parameters::new("fast");
    params.styles = vec!["candy.safetensors".to_string()];
    params.strength = Some(0.75);
    params.seed = Some(42);
    params.models = vec!["fast-neural-style/candy".to_string()];
    params
        .extra
        .push(("Max size".to_string(), "1024".to_string()));
    save_image(&sample(), &out, Some(&params), &[]).unwrap();

    let text = read_png_parameters(&out).unwrap().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        text,
        format!(
            "Method: fast, Style: candy.safetensors, Strength: 0.75, Seed: 42, \
             Model: fast-neural-style/candy, Max size: 1024, Easel version: {version}"
        )
    );
    assert_eq!(text, params.to_text());
    // Latin-1 text goes in a plain tEXt chunk, readable by every tool.
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.windows(14).any(|w| w == b"tEXtparameters"));
}

#[test]
fn non_latin1_parameters_use_itxt_and_quote_separators() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("styled.png");
    let mut params = Parameters::new("sd");
    params.prompt = Some("a cat, in the style of 葛飾北斎".to_string());
    params.negative_prompt = Some("blurry".to_string());
    params.styles = vec!["a.jpg".to_string(), "b, \"c\".jpg".to_string()];
    save_image(&sample(), &out, Some(&params), &[]).unwrap();

    let text = read_png_parameters(&out).unwrap().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        text,
        format!(
            "a cat, in the style of 葛飾北斎\nNegative prompt: blurry\n\
             Method: sd, Styles: \"a.jpg, b, \\\"c\\\".jpg\", Easel version: {version}"
        )
    );
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.windows(14).any(|w| w == b"iTXtparameters"));
}

#[test]
fn read_parameters_of_non_png_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.jpg");
    save_image(&sample(), &out, Some(&Parameters::new("fast")), &[]).unwrap();
    assert_eq!(read_png_parameters(&out).unwrap(), None);
    let missing = dir.path().join("missing.png");
    assert_eq!(
        read_png_parameters(&missing).unwrap_err().to_string(),
        format!("cannot read image {}: file not found", missing.display())
    );
}

#[test]
fn atomic_write_leaves_no_temp_file_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    std::fs::write(&out, b"old contents").unwrap();
    save_image(&sample(), &out, None, &[]).unwrap();
    assert_eq!(dir_entries(dir.path()), vec!["out.png".to_string()]);
    assert_eq!(load_rgb(&out, &LoadOptions::default()).unwrap(), sample());
}

#[test]
fn zero_size_image_is_refused_before_writing() {
    // (Cleanup of the temp file after a failure mid-write is covered by the
    // unit test in src/image_io.rs, which can inject the failure.)
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let err = save_image(&RgbImage::new(0, 5), &out, None, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot write {}: the image has zero size (0x5)",
            out.display()
        )
    );
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn refuses_to_overwrite_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("photos");
    std::fs::create_dir(&sub).unwrap();
    let input = sub.join("a.png");
    sample().save(&input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let inputs = vec![input.clone()];

    // Same spelling, and a different spelling of the same file.
    let respelled: PathBuf = sub.join("..").join("photos").join(".").join("a.png");
    for out in [input.clone(), respelled] {
        let err = save_image(&RgbImage::new(2, 2), &out, None, &inputs).unwrap_err();
        assert!(matches!(err, Error::OutputIsInput { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to write {}: it is one of the input images",
                out.display()
            )
        );
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);

    // (Unix paths: the spelling below starts from the root `/`.)
    if cfg!(unix) {
        // A relative spelling `./../../<tmp>/photos/../photos/a.png`, from the
        // working directory cargo gives tests (the package root).
        let cwd = std::env::current_dir().unwrap();
        let mut relative = PathBuf::from(".");
        for _ in cwd.components().skip(1) {
            relative.push("..");
        }
        relative.push(dir.path().strip_prefix("/").unwrap());
        relative.push("photos/../photos/a.png");
        assert!(relative.is_relative());
        let err = save_image(&RgbImage::new(2, 2), &relative, None, &inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to write {}: it is one of the input images",
                relative.display()
            )
        );
        // ...and the same with the odd spelling on the input side.
        let err = save_image(&RgbImage::new(2, 2), &input, None, &[relative]).unwrap_err();
        assert!(matches!(err, Error::OutputIsInput { .. }));
    }

    // An output that does not exist yet is compared by canonical parent.
    let new_out = sub.join("new.png");
    let err = save_image(
        &RgbImage::new(2, 2),
        &new_out,
        None,
        &[sub.join("../photos/new.png")],
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutputIsInput { .. }));

    // A different name in the same directory is fine.
    save_image(
        &RgbImage::new(2, 2),
        &sub.join("a_styled.png"),
        None,
        &inputs,
    )
    .unwrap();
}

#[test]
fn refuses_unsupported_output_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (name, ext) in [("out.webp", "webp"), ("out", "")] {
        let out = dir.path().join(name);
        let err = save_image(&sample(), &out, None, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot write {}: unsupported output extension {ext:?}; use one of .png, .jpg, .jpeg", out.display())
        );
    }
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn missing_parent_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("results");
    let out = parent.join("out.png");
    let err = save_image(&sample(), &out, None, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            parent.display()
        )
    );
    assert!(!parent.exists());
}

#[test]
fn output_that_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("looks_like.png");
    std::fs::create_dir(&out).unwrap();
    let err = save_image(&sample(), &out, None, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot write {}: it is a directory", out.display())
    );
}

#[test]
fn collect_expands_directories_sorted_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "b.JPG",
        "a.png",
        "c.tiff",
        "notes.txt",
        ".hidden.png",
        "d.WebP",
        "e.bmp",
        "f.jpeg",
        "g.tif",
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    std::fs::create_dir(dir.path().join("nested.png")).unwrap(); // a directory, skipped
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub").join("deep.png"), b"x").unwrap(); // not recursive

    let explicit = dir.path().join("notes.txt"); // files are taken as given
    let found = collect_images(&[explicit.clone(), dir.path().to_path_buf()]).unwrap();
    let names: Vec<String> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "notes.txt",
            "a.png",
            "b.JPG",
            "c.tiff",
            "d.WebP",
            "e.bmp",
            "f.jpeg",
            "g.tif"
        ]
    );
    assert_eq!(found[0], explicit);
    assert_eq!(found[1], dir.path().join("a.png"));
}

#[test]
fn collect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert_eq!(
        collect_images(std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string(),
        format!("cannot use input {}: file not found", missing.display())
    );
    std::fs::write(dir.path().join("readme.txt"), b"x").unwrap();
    assert_eq!(
        collect_images(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string(),
        format!(
            "no images found in {}; looked for .jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff",
            dir.path().display()
        )
    );
    assert!(collect_images(&[])
        .unwrap_err()
        .to_string()
        .starts_with("no images found in (no input paths given)"));
}
