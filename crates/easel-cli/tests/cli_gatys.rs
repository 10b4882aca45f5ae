//! `easel stylize --method gatys` on the shared photos at a tiny size: the PNG's size, the loss
//! going down, a mask with two styles, `--use gatys`, previews, Ctrl-C keeping the best picture,
//! and bad inputs refused with nothing written.

mod common;

use common::{assert_success, easel_command, s, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/images")
}

fn photo() -> String {
    images()
        .join("content/chelsea_cat.png")
        .display()
        .to_string()
}

fn painting(name: &str) -> String {
    images().join("style").join(name).display().to_string()
}

/// `stylize PHOTO --method gatys` at 48 px, 4 iterations, CPU, JSON summary, with `extra`.
fn gatys(out: &Path, extra: &[&str]) -> Output {
    let photo = photo();
    let mut args = vec![
        "stylize",
        &photo,
        "--max-size",
        "48",
        "--device",
        "cpu",
        "--json",
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    easel_command(&args).output().unwrap()
}

/// The torchvision-layout VGG-19 test checkpoint (eight times narrower, random weights) of
/// `tools/ref/vgg19_ref.py`.
fn vgg19_fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../easel-fast/tests/fixtures/vgg19_torchvision_tiny.pth")
        .display()
        .to_string()
}

fn summary(out: &Output) -> serde_json::Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails_with(out: &Output, expected: &str, dir: &Path) {
    assert!(!out.status.success(), "expected failure");
    let err = stderr(out);
    assert!(err.contains(expected), "{err}");
    let written: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(written.is_empty(), "wrote {written:?}");
}

#[test]
fn paints_a_png_of_the_photos_size_and_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let starry = painting("vangogh_starry_night.jpg");
    let run = gatys(
        &out,
        &[
            "--method",
            "gatys",
            "--style",
            &starry,
            "--iterations",
            "4",
            "--preview-every",
            "2",
        ],
    );
    let json = summary(&run);
    let record = &json["outputs"][0];
    // chelsea_cat is 451x300: capped at 48 px on the long side.
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (48, 32));
    assert_eq!(
        (record["width"].as_u64(), record["height"].as_u64()),
        (Some(48), Some(32))
    );
    assert_eq!(record["iterations"].as_u64(), Some(4));
    assert_eq!(record["cancelled"].as_bool(), Some(false));
    let first = record["initial_loss"]["total"].as_f64().unwrap();
    let last = record["final_loss"]["total"].as_f64().unwrap();
    assert!(first > 0.0 && last < 0.95 * first, "loss {first} -> {last}");
    // From the photo: no content loss at the start.
    assert_eq!(record["initial_loss"]["content"].as_f64(), Some(0.0));
    let preview = image::open(dir.path().join("cat.preview.png")).unwrap();
    assert_eq!((preview.width(), preview.height()), (48, 32));

    // --use gatys with settings paints the same bytes as the flags.
    let out_use = dir.path().join("use.png");
    let run = gatys(
        &out_use,
        &["--use", "gatys@iterations=4", "--style", &starry],
    );
    summary(&run);
    let a = image::open(&out).unwrap().to_rgb8();
    let b = image::open(&out_use).unwrap().to_rgb8();
    assert_eq!(
        a.as_raw(),
        b.as_raw(),
        "--use gatys differs from --method gatys"
    );
}

#[test]
fn a_mask_splits_the_photo_between_two_paintings() {
    let dir = tempfile::tempdir().unwrap();
    let mask = image::RgbImage::from_fn(48, 32, |x, _| {
        if x < 24 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mask_path = dir.path().join("mask.png");
    mask.save(&mask_path).unwrap();
    let out = dir.path().join("masked.png");
    let (starry, wave) = (
        painting("vangogh_starry_night.jpg"),
        painting("hokusai_great_wave_large.jpg"),
    );
    let run = gatys(
        &out,
        &[
            "--method",
            "gatys",
            "--style",
            &starry,
            "--style",
            &wave,
            "--mask",
            s(&mask_path),
            "--optimizer",
            "adam",
            "--iterations",
            "3",
            "--keep-colors",
        ],
    );
    let json = summary(&run);
    let record = &json["outputs"][0];
    assert_eq!(record["iterations"].as_u64(), Some(3));
    let first = record["initial_loss"]["total"].as_f64().unwrap();
    let last = record["final_loss"]["total"].as_f64().unwrap();
    assert!(last < first, "loss {first} -> {last}");
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (48, 32));
}

#[test]
fn bad_inputs_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let starry = painting("vangogh_starry_night.jpg");
    let wave = painting("hokusai_great_wave_large.jpg");
    let grey = image::RgbImage::from_pixel(8, 8, image::Rgb([255, 255, 255]));
    let one_level = work.path().join("white.png");
    grey.save(&one_level).unwrap();
    let vgg = vgg19_fixture();
    let gatys_args = ["--method", "gatys"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--style", &starry, "--iterations", "0"],
            "--iterations 0 is outside 1..=100000",
        ),
        (vec![], "--method gatys needs at least one --style"),
        (
            vec!["--style", &starry, "--style", &wave],
            "need a mask to say where each paints",
        ),
        (
            vec!["--style", &starry, "--mask", s(&one_level)],
            "splits the photo between several paintings, but one was given",
        ),
        (
            vec![
                "--style",
                &starry,
                "--style",
                &wave,
                "--mask",
                s(&one_level),
            ],
            "has no pixels in grey band 2 of 2",
        ),
        (
            vec!["--style", "/nonexistent/painting.jpg"],
            "/nonexistent/painting.jpg",
        ),
        (
            vec!["--style", &starry, "--style-scale", "0"],
            "--style-scale 0 is outside 0.05..=8",
        ),
        (
            vec!["--style", &starry, "--style-weight=-1"],
            "--style-weight -1 must be a finite number >= 0",
        ),
        (
            vec!["--style", &starry, "--strength", "0.5"],
            "--strength does not apply to --method gatys",
        ),
        (
            vec!["--style", &starry, "--style-layers", "dw99"],
            "--style-layers dw99 is not a layer: layer dw99 does not exist: the network has \
             blocks 0 to 15",
        ),
        (
            vec!["--style", &starry, "--content-layers", "stem,relu4_1"],
            "--content-layers relu4_1 is not a layer: relu4_1 is a VGG-19 layer; \
             EfficientNet-Lite0's are stem, dwN, blockN and head",
        ),
        (
            vec!["--style", &starry, "--content-layers", "relu9_1"],
            "\"relu9_1\" is not a VGG-19 layer",
        ),
        (
            vec!["--style", &starry, "--vgg19", &wave],
            "cannot be used: ",
        ),
        (
            vec!["--style", &starry, "--vgg19", &vgg, "--style-layers", "dw1"],
            "--style-layers dw1 is not a layer: dw1 is an EfficientNet-Lite0 layer",
        ),
    ];
    for (extra, expected) in cases {
        let mut args: Vec<&str> = gatys_args.to_vec();
        args.extend(extra);
        fails_with(&gatys(&out, &args), expected, dir.path());
    }
    // Gatys flags belong to gatys.
    let run = gatys(&out, &["--style", &starry, "--iterations", "3"]);
    fails_with(
        &run,
        "--iterations applies to --method gatys only, not arbitrary",
        dir.path(),
    );
    let run = gatys(
        &out,
        &["--use", "gatys@iterations=many", "--style", &starry],
    );
    fails_with(&run, "gatys@iterations=many", dir.path());
}

#[test]
fn a_noise_start_is_drawn_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let starry = painting("vangogh_starry_night.jpg");
    let paint = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        let run = gatys(
            &out,
            &[
                "--method",
                "gatys",
                "--style",
                &starry,
                "--iterations",
                "1",
                "--init",
                "noise",
                "--seed",
                seed,
            ],
        );
        assert_success(&run);
        let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
        assert!(params.contains(&format!("Seed: {seed}")), "{params}");
        image::open(&out).unwrap().to_rgb8()
    };
    let (a, again, b) = (
        paint("5", "a.png"),
        paint("5", "a2.png"),
        paint("6", "b.png"),
    );
    assert_eq!(a, again, "the same seed paints the same picture");
    assert_ne!(a, b, "another seed starts from other noise");
}

/// Ctrl-C (SIGINT) during a long optimisation stops it at the next iteration and still writes
/// the best picture so far, a complete PNG, and says so; the exit status is success.
#[test]
fn ctrl_c_keeps_the_best_picture_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let preview = dir.path().join("cat.preview.png");
    let (photo, starry) = (photo(), painting("vangogh_starry_night.jpg"));
    let mut child = easel_command(&[
        "stylize",
        &photo,
        "--method",
        "gatys",
        "--style",
        &starry,
        "--max-size",
        "48",
        "--iterations",
        "100000",
        "--preview-every",
        "1",
        "--device",
        "cpu",
        "--json",
        "-o",
        s(&out),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The first preview means the optimisation is under way (the handler is set before it).
    let started = std::time::Instant::now();
    while !preview.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let run = child.wait_with_output().unwrap();
            panic!(
                "exited with {status} before its first preview: {}",
                stderr(&run)
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no preview after two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = child.wait_with_output().unwrap();
    let record = &summary(&run)["outputs"][0];
    assert_eq!(record["cancelled"], true, "{record}");
    let iterations = record["iterations"].as_u64().unwrap();
    assert!((1..100_000).contains(&iterations), "{record}");
    assert!(
        record["final_loss"]["total"].as_f64().unwrap()
            <= record["initial_loss"]["total"].as_f64().unwrap(),
        "{record}"
    );
    let img = image::open(&out).unwrap();
    assert_eq!(img.width().max(img.height()), 48);
}

/// `--style-layers` / `--content-layers` (and their `--use` keys) choose the network's layers:
/// recorded in the PNG, another picture than the defaults, the same by flag and by SPEC.
#[test]
fn layer_sets_are_chosen_by_flag_or_spec() {
    let dir = tempfile::tempdir().unwrap();
    let starry = painting("vangogh_starry_night.jpg");
    let base = ["--method", "gatys", "--style", &starry, "--iterations", "2"];
    let paint = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        summary(&gatys(&out, &args));
        let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
        (image::open(&out).unwrap().to_rgb8(), params)
    };
    let (default, default_params) = paint(&[], "default.png");
    assert!(
        default_params.contains("Layers: \"style stem,dw1,dw3,dw5,dw8; content block5\""),
        "{default_params}"
    );
    let chosen = ["--style-layers", "stem,dw1", "--content-layers", "block3"];
    let (flags, params) = paint(&chosen, "flags.png");
    assert!(
        params.contains("Layers: \"style stem,dw1; content block3\""),
        "{params}"
    );
    assert!(flags != default);
    let out = dir.path().join("spec.png");
    let run = gatys(
        &out,
        &[
            "--use",
            "gatys@iterations=2@style-layers=stem,dw1@content-layers=block3",
            "--style",
            &starry,
        ],
    );
    summary(&run);
    assert!(image::open(&out).unwrap().to_rgb8() == flags);
}

/// `--vgg19 FILE` (or `gatys@vgg19=FILE`) optimises on VGG-19 with its own default layers
/// (Gatys et al.'s relu1_1 … relu5_1 and relu4_2), names the network in the PNG's parameters,
/// and lowers the loss; the flag and the spec paint the same bytes.
#[test]
fn vgg19_weights_are_used_by_flag_or_spec() {
    let dir = tempfile::tempdir().unwrap();
    let starry = painting("vangogh_starry_night.jpg");
    let vgg = vgg19_fixture();
    let out = dir.path().join("vgg.png");
    let run = gatys(
        &out,
        &[
            "--method",
            "gatys",
            "--style",
            &starry,
            "--iterations",
            "3",
            "--vgg19",
            &vgg,
        ],
    );
    let json = summary(&run);
    let record = &json["outputs"][0];
    let first = record["initial_loss"]["total"].as_f64().unwrap();
    let last = record["final_loss"]["total"].as_f64().unwrap();
    assert!(first > 0.0 && last < first, "loss {first} -> {last}");
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(
        params
            .contains("Layers: \"style relu1_1,relu2_1,relu3_1,relu4_1,relu5_1; content relu4_2\""),
        "{params}"
    );
    assert!(
        params.contains("VGG-19 (torchvision layout, vgg19_torchvision_tiny.pth (sha256 "),
        "{params}"
    );
    let out_use = dir.path().join("use.png");
    let spec = format!("gatys@iterations=3@vgg19={vgg}");
    summary(&gatys(&out_use, &["--use", &spec, "--style", &starry]));
    assert!(
        image::open(&out).unwrap().to_rgb8() == image::open(&out_use).unwrap().to_rgb8(),
        "--use gatys@vgg19 differs from --vgg19"
    );
}
