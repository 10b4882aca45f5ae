//! End-to-end tests of the `easel` binary: real example images in, files and exit codes out.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{assert_success, easel_command, s, stderr};

fn easel(args: &[&str]) -> Output {
    easel_command(args).output().expect("the easel binary runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A failed run exits non-zero with exactly one line on stderr, starting `error:` and containing
/// `expected`.
fn assert_fails_with(out: &Output, expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "easel succeeded, stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected '{expected}' in: {err}");
}

#[test]
fn stylize_with_a_painting_writes_png_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--style",
        &example("vangogh_starry_night.jpg"),
        "--max-size",
        "160",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]);
    assert_success(&run);
    let img = image::open(&out).unwrap().to_rgb8();
    // chelsea_cat.png is 451x300: the long side is capped at 160, the aspect ratio kept.
    assert_eq!(img.dimensions(), (160, 106));
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains("Method: arbitrary"), "{params}");
    // The painting by name and content, wherever it lies.
    let bytes = std::fs::read(example("vangogh_starry_night.jpg")).unwrap();
    let painting = format!(
        "Style: vangogh_starry_night.jpg (sha256 {})",
        easel_core::hash::sha256_hex(&bytes)
    );
    assert!(params.contains(&painting), "{params}");
    assert!(params.contains("Strength: 1"), "{params}");
}

#[test]
fn preset_at_zero_strength_returns_the_photo() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("same.png");
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--preset",
        "7",
        "--strength",
        "0",
        "--max-size",
        "451",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]);
    assert_success(&run);
    let photo = image::open(example("chelsea_cat.png")).unwrap().to_rgb8();
    let painted = image::open(&out).unwrap().to_rgb8();
    assert_eq!(photo.dimensions(), painted.dimensions());
    assert!(
        photo.pixels().zip(painted.pixels()).all(|(a, b)| a == b),
        "strength 0 must leave every pixel as it was"
    );
}

#[test]
fn batch_of_a_directory_with_json_summary_and_keep_colors() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::copy(example("chelsea_cat.png"), photos.join("a.png")).unwrap();
    std::fs::copy(
        example("kandinsky_composition_vii.jpg"),
        photos.join("b.jpg"),
    )
    .unwrap();
    let out_dir = dir.path().join("painted");
    let run = easel(&[
        "stylize",
        s(&photos),
        "--preset",
        "3:0.5,12:0.5",
        "--keep-colors",
        "--max-size",
        "96",
        "--device",
        "cpu",
        "--json",
        "-o",
        s(&out_dir),
    ]);
    assert_success(&run);
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["method"], "preset");
    let outputs = summary["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for (record, name) in outputs.iter().zip(["a.png", "b.png"]) {
        let path = PathBuf::from(record["output"].as_str().unwrap());
        assert_eq!(path, out_dir.join(name));
        let img = image::open(&path).unwrap();
        assert_eq!(record["width"], img.width());
        assert_eq!(record["height"], img.height());
        assert_eq!(img.width().max(img.height()), 96);
    }
}

#[test]
fn several_styles_mix_and_lower_strength_moves_towards_the_photo() {
    let dir = tempfile::tempdir().unwrap();
    let photo = example("chelsea_cat.png");
    let paint = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let mut args = vec!["stylize", &photo, "--max-size", "96", "--device", "cpu"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", s(&out)]);
        assert_success(&easel(&args));
        image::open(&out).unwrap().to_rgb8()
    };
    let starry = example("vangogh_starry_night.jpg");
    let kandinsky = example("kandinsky_composition_vii.jpg");
    let full = paint(&["--style", &starry], "full.png");
    let weak = paint(&["--style", &starry, "--strength", "0.3"], "weak.png");
    let mixed = paint(
        &[
            "--style",
            &format!("{starry}:0.5"),
            "--style",
            &format!("{kandinsky}:0.5"),
        ],
        "mixed.png",
    );
    let original = image::open(&photo)
        .unwrap()
        .resize(96, 96, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let distance = |a: &image::RgbImage, b: &image::RgbImage| -> f64 {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    assert!(
        distance(&weak, &original) < distance(&full, &original),
        "strength 0.3 should stay closer to the photo than strength 1"
    );
    assert!(
        distance(&mixed, &full) > 1.0,
        "mixing in a second style changes the result"
    );
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let missing = dir.path().join("nope.jpg");
    assert_fails_with(
        &easel(&["stylize", s(&missing), "--preset", "1", "-o", s(&out)]),
        "not found",
    );
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    assert_fails_with(
        &easel(&["stylize", s(&corrupt), "--preset", "1", "-o", s(&out)]),
        "corrupt.png",
    );
    assert_fails_with(
        &easel(&[
            "stylize",
            &example("chelsea_cat.png"),
            "--preset",
            "26",
            "-o",
            s(&out),
        ]),
        "26",
    );
    assert_fails_with(
        &easel(&[
            "stylize",
            &example("chelsea_cat.png"),
            "--preset",
            "1",
            "--strength",
            "1.5",
            "-o",
            s(&out),
        ]),
        "--strength 1.5 is outside 0..1",
    );
    // The output may never replace an input photo.
    let photo = dir.path().join("photo.png");
    std::fs::copy(example("chelsea_cat.png"), &photo).unwrap();
    let before = std::fs::read(&photo).unwrap();
    assert_fails_with(
        &easel(&[
            "stylize",
            s(&photo),
            "--preset",
            "1",
            "--max-size",
            "64",
            "-o",
            s(&photo),
        ]),
        "refusing to write",
    );
    assert_eq!(
        std::fs::read(&photo).unwrap(),
        before,
        "the input is untouched"
    );
}

#[test]
fn cuda_on_a_cpu_build_is_refused() {
    if cfg!(feature = "cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    assert_fails_with(
        &easel(&[
            "stylize",
            &example("chelsea_cat.png"),
            "--preset",
            "1",
            "--device",
            "cuda",
            "-o",
            s(&out),
        ]),
        "built without CUDA",
    );
}

#[test]
fn preset_contact_sheet_has_all_presets() {
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("sheet.png");
    let run = easel(&[
        "presets",
        "--sheet",
        s(&sheet),
        "--photo",
        &example("chelsea_cat.png"),
        "--tile-size",
        "48",
        "--device",
        "cpu",
    ]);
    assert_success(&run);
    let img = image::open(&sheet).unwrap().to_rgb8();
    // 48x32 tiles (451x300 scaled) under 20-pixel label strips, six columns, five rows.
    assert_eq!(img.dimensions(), (48 * 6, (20 + 32) * 5));
    // Presets 0 and 1 are different styles, so their tiles differ.
    let tile = |col: u32| image::imageops::crop_imm(&img, col * 48, 20, 48, 32).to_image();
    assert_ne!(tile(0), tile(1));
    // Every tile is labelled with its number: the strips hold dark text, each its own.
    let strip =
        |i: u32| image::imageops::crop_imm(&img, (i % 6) * 48, (i / 6) * 52, 48, 20).to_image();
    let strips: Vec<_> = (0..26).map(strip).collect();
    for (i, s) in strips.iter().enumerate() {
        assert!(s.pixels().any(|p| p.0[0] < 100), "tile {i} has no label");
        assert!(
            strips[..i].iter().all(|t| t != s),
            "tile {i}'s label repeats"
        );
    }
    // The strip of the empty cells after preset 25 stays blank.
    assert!(strip(26).pixels().all(|p| p.0 == [255, 255, 255]));
}

/// `--max-size` is bounded on both sides, for the fast methods, gatys and compare.
#[test]
fn max_size_outside_its_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let photo = example("chelsea_cat.png");
    let starry = example("vangogh_starry_night.jpg");
    for (method, size, expected) in [
        ("preset", "8", "--max-size 8 is outside 16..=16384"),
        ("preset", "20000", "--max-size 20000 is outside 16..=16384"),
        ("gatys", "70000", "--max-size 70000 is outside 16..=16384"),
    ] {
        let mut args = vec!["stylize", &photo, "--method", method, "--max-size", size];
        args.extend(["-o", s(&out)]);
        if method == "preset" {
            args.extend(["--preset", "3"]);
        } else {
            args.extend(["--style", &starry]);
        }
        let run = easel(&args);
        let err = stderr(&run);
        assert!(!run.status.success() && err.contains(expected), "{err}");
    }
    let report = dir.path().join("report");
    let run = easel(&[
        "compare",
        &photo,
        "--style",
        &starry,
        "--use",
        "arbitrary",
        "--max-size",
        "20000",
        "-o",
        s(&report),
    ]);
    let err = stderr(&run);
    assert!(
        !run.status.success() && err.contains("--max-size 20000 is outside 64..=16384"),
        "{err}"
    );
}
