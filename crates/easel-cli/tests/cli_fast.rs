//! End-to-end tests of `easel stylize --method adain` and `easel import-torch`, with the tiny
//! random-weight AdaIN checkpoints of easel-fast's fixtures (`tools/ref/adain_ref.py`; widths
//! [8, 16, 32, 64], read from the files' shapes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use easel_core::LoadOptions;
use easel_fast::import::adain::{load_adain, read_weights};

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

fn fast_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../easel-fast/tests/fixtures")
        .join(name)
}

/// A folder holding the tiny checkpoints under the upstream names.
fn weights_dir(dir: &Path) -> PathBuf {
    let weights = dir.join("adain");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::copy(
        fast_fixture("adain_vgg_tiny.pth"),
        weights.join("vgg_normalised.pth"),
    )
    .unwrap();
    std::fs::copy(
        fast_fixture("adain_decoder_tiny.pth"),
        weights.join("decoder.pth"),
    )
    .unwrap();
    weights
}

fn fails_with(out: &Output, expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "easel succeeded, stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected '{expected}' in: {err}");
}

fn load(path: &str, max_side: u32) -> Tensor {
    let img = easel_core::load_rgb(Path::new(path), &LoadOptions::with_max_side(max_side)).unwrap();
    easel_core::rgb_to_tensor(&img, &Device::Cpu).unwrap()
}

/// What the library paints with the fixtures, as the CLI loads and saves it.
fn library_paint(styles: &[(&str, f64)], alpha: f64, mask: Option<&Tensor>) -> image::RgbImage {
    let read = |f: &str| read_weights(&std::fs::read(fast_fixture(f)).unwrap(), f).unwrap();
    let net = load_adain(
        read("adain_vgg_tiny.pth"),
        "vgg",
        read("adain_decoder_tiny.pth"),
        "decoder",
        &Device::Cpu,
    )
    .unwrap();
    let photo = load(&example("chelsea_cat.png"), 96);
    let styles: Vec<(Tensor, f64)> = styles.iter().map(|(p, w)| (load(p, 96), *w)).collect();
    let out = net.stylize(&photo, &styles, alpha, mask).unwrap();
    easel_core::tensor_to_rgb(&out).unwrap()
}

fn stylize(dir: &Path, extra: &[&str], name: &str) -> (Output, PathBuf) {
    let out = dir.join(name);
    let photo = example("chelsea_cat.png");
    let mut args = vec!["stylize", &photo, "--method", "adain", "--max-size", "96"];
    args.extend_from_slice(&["--device", "cpu"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", s(&out)]);
    (easel(&args), out)
}

#[test]
fn adain_writes_what_the_library_paints() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path());
    let (starry, kandinsky) = (
        example("vangogh_starry_night.jpg"),
        example("kandinsky_composition_vii.jpg"),
    );
    let starry_w = format!("{starry}:0.7");
    let kandinsky_w = format!("{kandinsky}:0.3");
    let (run, out) = stylize(
        dir.path(),
        &[
            "--weights",
            s(&weights),
            "--style",
            &starry_w,
            "--style",
            &kandinsky_w,
            "--strength",
            "0.8",
        ],
        "mix.png",
    );
    assert_success(&run);
    let got = image::open(&out).unwrap().to_rgb8();
    let want = library_paint(&[(&starry, 0.7), (&kandinsky, 0.3)], 0.8, None);
    assert_eq!(got.dimensions(), (96, 64));
    assert!(got == want, "the CLI output differs from AdaIN::stylize");
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains("Method: adain"), "{params}");
    assert!(params.contains("Strength: 0.8"), "{params}");

    // The per-file flags give the same picture.
    let vgg = weights.join("vgg_normalised.pth");
    let decoder = weights.join("decoder.pth");
    let (run, out2) = stylize(
        dir.path(),
        &[
            "--adain-vgg",
            s(&vgg),
            "--adain-decoder",
            s(&decoder),
            "--style",
            &starry_w,
            "--style",
            &kandinsky_w,
            "--strength",
            "0.8",
        ],
        "mix2.png",
    );
    assert_success(&run);
    assert!(image::open(&out2).unwrap().to_rgb8() == got);
}

#[test]
fn adain_mask_splits_two_styles() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path());
    let (starry, kandinsky) = (
        example("vangogh_starry_night.jpg"),
        example("kandinsky_composition_vii.jpg"),
    );
    // Left half light (first style), right half dark, at the photo's 96x64.
    let mask = image::RgbImage::from_fn(96, 64, |x, _| {
        if x < 48 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mask_path = dir.path().join("mask.png");
    mask.save(&mask_path).unwrap();
    let (run, out) = stylize(
        dir.path(),
        &[
            "--weights",
            s(&weights),
            "--style",
            &starry,
            "--style",
            &kandinsky,
            "--mask",
            s(&mask_path),
        ],
        "masked.png",
    );
    assert_success(&run);
    let got = image::open(&out).unwrap().to_rgb8();
    let values: Vec<f32> = mask.pixels().map(|p| f32::from(p[0]) / 255.0).collect();
    let m = Tensor::from_vec(values, (64, 96), &Device::Cpu).unwrap();
    let want = library_paint(&[(&starry, 1.0), (&kandinsky, 1.0)], 1.0, Some(&m));
    assert!(
        got == want,
        "the masked CLI output differs from AdaIN::stylize"
    );
    assert!(got != library_paint(&[(&starry, 1.0)], 1.0, None));
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains("Mask: "), "{params}");

    let (run, _) = stylize(
        dir.path(),
        &[
            "--weights",
            s(&weights),
            "--style",
            &starry,
            "--mask",
            s(&mask_path),
        ],
        "one.png",
    );
    fails_with(&run, "--mask splits the photo between exactly two styles");
    // AdaIN-only flags are refused with the other methods.
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--style",
        &starry,
        "--mask",
        s(&mask_path),
        "-o",
        s(&dir.path().join("x.png")),
    ]);
    fails_with(
        &run,
        "--mask applies to --method adain or gatys only, not arbitrary",
    );
}

#[test]
fn missing_adain_weights_say_what_to_get_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let starry = example("vangogh_starry_night.jpg");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (run, _) = stylize(
        dir.path(),
        &["--weights", s(&empty), "--style", &starry],
        "a.png",
    );
    fails_with(
        &run,
        &format!(
            "missing AdaIN weights in {}: need vgg_normalised.pth",
            empty.display()
        ),
    );
    fails_with(
        &run,
        "decoder.pth from https://github.com/naoto0804/pytorch-AdaIN",
    );

    // No weights named: the error says where the public ones are published.
    let out = dir.path().join("b.png");
    let run = easel_command(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--method",
        "adain",
        "--style",
        &starry,
        "-o",
        s(&out),
    ])
    .output()
    .unwrap();
    fails_with(&run, "AdaIN needs its weight files");
    fails_with(
        &run,
        "decoder.pth from https://github.com/naoto0804/pytorch-AdaIN",
    );
    fails_with(&run, "pass --weights DIR");
    assert!(!out.exists());
}

/// The `__metadata__` of a safetensors file.
fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

#[test]
fn import_torch_round_trip_gives_the_same_painting() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path());
    let converted = dir.path().join("converted");
    std::fs::create_dir(&converted).unwrap();
    for (kind, from, to) in [
        (
            "adain-vgg",
            "vgg_normalised.pth",
            "vgg_normalised.safetensors",
        ),
        ("adain-decoder", "decoder.pth", "decoder.safetensors"),
    ] {
        let out = converted.join(to);
        let run = easel(&[
            "import-torch",
            "--kind",
            kind,
            s(&weights.join(from)),
            "-o",
            s(&out),
        ]);
        assert_success(&run);
        let meta = metadata(&out);
        assert_eq!(meta["format"], "easel-adain");
        assert_eq!(meta["kind"], kind);
        assert_eq!(meta["widths"], "[8, 16, 32, 64]");
        assert_eq!(meta["source"], from);
        assert_eq!(meta["source_sha256"].len(), 64);
    }
    let starry = example("vangogh_starry_night.jpg");
    let (run, from_pth) = stylize(
        dir.path(),
        &["--weights", s(&weights), "--style", &starry],
        "pth.png",
    );
    assert_success(&run);
    let (run, from_st) = stylize(
        dir.path(),
        &["--weights", s(&converted), "--style", &starry],
        "st.png",
    );
    assert_success(&run);
    assert!(image::open(&from_pth).unwrap().to_rgb8() == image::open(&from_st).unwrap().to_rgb8());
}

#[test]
fn import_torch_refuses_code_and_wrong_networks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let malicious = fast_fixture("adain_malicious_global.pth");
    let run = easel(&[
        "import-torch",
        "--kind",
        "adain-vgg",
        s(&malicious),
        "-o",
        s(&out),
    ]);
    fails_with(&run, "it references os.system, which could run code");
    assert!(!out.exists());

    let decoder = fast_fixture("adain_decoder_tiny.pth");
    let run = easel(&[
        "import-torch",
        "--kind",
        "adain-vgg",
        s(&decoder),
        "-o",
        s(&out),
    ]);
    fails_with(
        &run,
        "tensor 2.weight is missing (expected shape [64, 3, 3, 3]",
    );
    assert!(!out.exists());
}

/// `--style-scale` changes the brush strokes of the arbitrary network and AdaIN (another
/// picture, the scale in the PNG's parameters; 1 is the painting as given), and is refused by
/// the presets.
#[test]
fn style_scale_changes_the_strokes_of_arbitrary_and_adain() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path());
    let starry = example("vangogh_starry_night.jpg");
    let photo = example("chelsea_cat.png");
    let paint = |method: &str, scale: Option<&str>, name: &str| {
        let out = dir.path().join(name);
        let mut args = vec!["stylize", &photo, "--method", method, "--style", &starry];
        args.extend(["--max-size", "96", "--device", "cpu", "-o", s(&out)]);
        if method == "adain" {
            args.extend(["--weights", s(&weights)]);
        }
        if let Some(scale) = scale {
            args.extend(["--style-scale", scale]);
        }
        assert_success(&easel(&args));
        let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
        (image::open(&out).unwrap().to_rgb8(), params)
    };
    for method in ["arbitrary", "adain"] {
        let (plain, plain_params) = paint(method, None, &format!("{method}.png"));
        let (one, _) = paint(method, Some("1"), &format!("{method}-1.png"));
        assert!(plain == one, "{method}: scale 1 is the painting as given");
        assert!(!plain_params.contains("Style scale"), "{plain_params}");
        for scale in ["2", "0.5"] {
            let (scaled, params) = paint(method, Some(scale), &format!("{method}-{scale}.png"));
            assert_eq!(scaled.dimensions(), plain.dimensions());
            assert!(
                scaled != plain,
                "{method}: scale {scale} paints the same picture"
            );
            assert!(
                params.contains(&format!("Style scale: {scale}")),
                "{params}"
            );
        }
    }
    // The `--use` key says the same as the flag.
    let (flag, _) = paint("arbitrary", Some("2"), "flag.png");
    let out = dir.path().join("use.png");
    assert_success(&easel(&[
        "stylize",
        &photo,
        "--use",
        "arbitrary@style-scale=2",
        "--style",
        &starry,
        "--max-size",
        "96",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]));
    assert!(image::open(&out).unwrap().to_rgb8() == flag);

    let out = dir.path().join("preset.png");
    let run = easel(&[
        "stylize",
        &photo,
        "--preset",
        "3",
        "--style-scale",
        "2",
        "-o",
        s(&out),
    ]);
    fails_with(
        &run,
        "--style-scale applies to --method gatys, arbitrary or adain only, not preset",
    );
}
