//! End-to-end tests of `easel stylize --method transformer` (StyTr²) and `easel import-torch
//! --kind stytr-*`, with the tiny random-weight StyTr² checkpoints of easel-fast's fixtures
//! (`tools/ref/stytr_ref.py`: d_model 32, 4 heads, CAPE grid 6 or pyramid windows 2/4/8; the
//! sizes are read from the files' shapes, heads and grid/windows given as flags). The CNN decoder
//! is `stytr_decoder_tiny_cli.pth` (`tools/ref/stytr_cli_ref.py`), whose output spans the 8-bit
//! range, so that the PNGs compared tell every setting apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use easel_core::LoadOptions;
use easel_fast::import::adain::read_weights;
use easel_fast::import::stytr::{load_stytr, Settings};

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

const CAPE: &str = "stytr_transformer_cape_tiny.pth";
const PYRAMIDAL: &str = "stytr_transformer_ppe_tiny.pth";
const EMBEDDING: &str = "stytr_embedding_tiny.pth";
const DECODER: &str = "stytr_decoder_tiny_cli.pth";

/// A folder holding the tiny checkpoints (with `transformer`) under the published names.
fn weights_dir(dir: &Path, transformer: &str) -> PathBuf {
    let weights = dir.join("stytr");
    std::fs::create_dir_all(&weights).unwrap();
    for (from, to) in [
        (transformer, "transformer_iter_160000.pth"),
        (EMBEDDING, "embedding_iter_160000.pth"),
        (DECODER, "decoder_iter_160000.pth"),
    ] {
        std::fs::copy(fast_fixture(from), weights.join(to)).unwrap();
    }
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

const MAX_SIZE: u32 = 100;
const STYLE: &str = "kandinsky_composition_vii.jpg";

/// What the library paints with the fixtures, as the CLI loads and saves it: `strength` blends
/// the painting with the photo.
fn library_paint(transformer: &str, settings: &Settings, strength: f64) -> image::RgbImage {
    let read = |f: &str| read_weights(&std::fs::read(fast_fixture(f)).unwrap(), f).unwrap();
    let net = load_stytr(
        (read(transformer), transformer),
        (read(EMBEDDING), EMBEDDING),
        (read(DECODER), DECODER),
        settings,
        &Device::Cpu,
    )
    .unwrap();
    let photo = load(&example("chelsea_cat.png"), MAX_SIZE);
    let style = load(&example(STYLE), MAX_SIZE);
    let mut out = net.stylize(&photo, &style).unwrap();
    if strength < 1.0 {
        out = ((out * strength).unwrap() + (photo * (1.0 - strength)).unwrap()).unwrap();
    }
    easel_core::tensor_to_rgb(&out).unwrap()
}

fn tiny_settings() -> Settings {
    Settings {
        nhead: 4,
        cape_grid: 6,
        pyramid_windows: vec![2, 4, 8],
    }
}

fn stylize(dir: &Path, extra: &[&str], name: &str) -> (Output, PathBuf) {
    let out = dir.join(name);
    let photo = example("chelsea_cat.png");
    let style = example(STYLE);
    let max = MAX_SIZE.to_string();
    let mut args = vec![
        "stylize",
        &photo,
        "--method",
        "transformer",
        "--style",
        &style,
        "--max-size",
        &max,
    ];
    args.extend_from_slice(&["--device", "cpu"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", s(&out)]);
    (easel(&args), out)
}

#[test]
fn transformer_writes_what_the_library_paints() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path(), CAPE);
    let tiny = ["--stytr-heads", "4", "--stytr-cape-grid", "6"];
    let mut args = vec!["--weights", s(&weights)];
    args.extend_from_slice(&tiny);
    let (run, out) = stylize(dir.path(), &args, "cape.png");
    assert_success(&run);
    let got = image::open(&out).unwrap().to_rgb8();
    // 451x300 scaled to a long side of 100: 100x67, not multiples of 8 (padded, then cropped).
    assert_eq!(got.dimensions(), (100, 67));
    assert!(
        got == library_paint(CAPE, &tiny_settings(), 1.0),
        "the CLI output differs from StyTr::stylize"
    );
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains("Method: transformer"), "{params}");
    assert!(
        params.contains("StyTr2: \"d_model 32, 4 heads, CAPE grid 6\""),
        "{params}"
    );

    // The settings matter: the published grid 18 paints another picture, which is the
    // library's with that grid.
    let (run, out18) = stylize(dir.path(), &[&args[..2], &tiny[..2]].concat(), "cape18.png");
    assert_success(&run);
    let got18 = image::open(&out18).unwrap().to_rgb8();
    let grid18 = Settings {
        cape_grid: 18,
        ..tiny_settings()
    };
    assert!(got18 == library_paint(CAPE, &grid18, 1.0));
    assert!(got18 != got);
    // The default heads (8, the published model's) also give another picture.
    let (run, out8) = stylize(dir.path(), &[&args[..2], &tiny[2..]].concat(), "heads8.png");
    assert_success(&run);
    let got8 = image::open(&out8).unwrap().to_rgb8();
    let heads8 = Settings {
        nhead: 8,
        ..tiny_settings()
    };
    assert!(got8 == library_paint(CAPE, &heads8, 1.0));
    assert!(got8 != got);

    // Per-file flags, --strength blends with the photo, and the output is as the library's.
    let [transformer, embedding, decoder] = [
        "transformer_iter_160000.pth",
        "embedding_iter_160000.pth",
        "decoder_iter_160000.pth",
    ]
    .map(|f| weights.join(f));
    let files = [
        "--stytr-transformer",
        s(&transformer),
        "--stytr-embedding",
        s(&embedding),
        "--stytr-decoder",
        s(&decoder),
        "--strength",
        "0.5",
    ];
    let (run, half) = stylize(dir.path(), &[&files[..], &tiny[..]].concat(), "half.png");
    assert_success(&run);
    let half = image::open(&half).unwrap().to_rgb8();
    assert!(half == library_paint(CAPE, &tiny_settings(), 0.5));
    assert!(half != got);
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
    let weights = weights_dir(dir.path(), PYRAMIDAL);
    let converted = dir.path().join("converted");
    std::fs::create_dir(&converted).unwrap();
    for (kind, name) in [
        ("stytr-transformer", "transformer_iter_160000"),
        ("stytr-embedding", "embedding_iter_160000"),
        ("stytr-decoder", "decoder_iter_160000"),
    ] {
        let from = format!("{name}.pth");
        let out = converted.join(format!("{name}.safetensors"));
        let run = easel(&[
            "import-torch",
            "--kind",
            kind,
            s(&weights.join(&from)),
            "-o",
            s(&out),
        ]);
        assert_success(&run);
        let meta = metadata(&out);
        assert_eq!(meta["format"], "easel-stytr");
        assert_eq!(meta["kind"], kind);
        assert_eq!(meta["source"], from);
        assert_eq!(meta["source_sha256"].len(), 64);
    }
    let meta = metadata(&converted.join("transformer_iter_160000.safetensors"));
    assert_eq!(
        meta["positional_encoding"],
        "pyramidal (3 scales, 4 channels per conv)"
    );
    let tiny = ["--stytr-heads", "4", "--stytr-windows", "2,4,8"];
    let (run, from_pth) = stylize(
        dir.path(),
        &[&["--weights", s(&weights)][..], &tiny[..]].concat(),
        "pth.png",
    );
    assert_success(&run);
    let (run, from_st) = stylize(
        dir.path(),
        &[&["--weights", s(&converted)][..], &tiny[..]].concat(),
        "st.png",
    );
    assert_success(&run);
    let from_pth = image::open(&from_pth).unwrap().to_rgb8();
    assert!(from_pth == image::open(&from_st).unwrap().to_rgb8());
    assert!(from_pth == library_paint(PYRAMIDAL, &tiny_settings(), 1.0));
    let params = easel_core::read_png_parameters(&from_st).unwrap().unwrap();
    assert!(params.contains("pyramidal windows [2, 4, 8]"), "{params}");
}

#[test]
fn missing_and_wrong_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (run, out) = stylize(dir.path(), &["--weights", s(&empty)], "a.png");
    fails_with(
        &run,
        &format!(
            "missing StyTr² weights in {}: need transformer_iter_160000.pth",
            empty.display()
        ),
    );
    fails_with(&run, "from https://github.com/diyiiyiii/StyTR-2");
    assert!(!out.exists());

    // One file missing: that one is named.
    let weights = weights_dir(dir.path(), CAPE);
    std::fs::remove_file(weights.join("embedding_iter_160000.pth")).unwrap();
    let (run, _) = stylize(dir.path(), &["--weights", s(&weights)], "b.png");
    fails_with(&run, "need embedding_iter_160000.pth");
    let nope = dir.path().join("nope.pth");
    let (run, _) = stylize(
        dir.path(),
        &["--weights", s(&weights), "--stytr-embedding", s(&nope)],
        "c.png",
    );
    fails_with(
        &run,
        &format!("cannot read StyTr² weights {}", nope.display()),
    );

    // The decoder given as the transformer: the missing key is named.
    let decoder = fast_fixture(DECODER);
    let (run, _) = stylize(
        dir.path(),
        &[
            "--weights",
            s(&weights),
            "--stytr-embedding",
            s(&fast_fixture(EMBEDDING)),
            "--stytr-transformer",
            s(&decoder),
        ],
        "d.png",
    );
    fails_with(
        &run,
        "stytr_decoder_tiny_cli.pth: tensor decoder.norm.weight is missing",
    );
    // Heads that do not divide the width.
    let (run, _) = stylize(
        dir.path(),
        &[
            "--weights",
            s(&weights),
            "--stytr-embedding",
            s(&fast_fixture(EMBEDDING)),
            "--stytr-heads",
            "5",
        ],
        "e.png",
    );
    fails_with(
        &run,
        "5 attention heads do not divide the transformer's d_model 32",
    );

    // No weights named: the error says where the public ones are published.
    let out = dir.path().join("f.png");
    let run = easel_command(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--method",
        "transformer",
        "--style",
        &example(STYLE),
        "-o",
        s(&out),
    ])
    .output()
    .unwrap();
    fails_with(&run, "StyTr² needs its weight files");
    fails_with(&run, "from https://github.com/diyiiyiii/StyTR-2");
    assert!(!out.exists());

    // import-torch checks the file against the kind.
    let converted = dir.path().join("x.safetensors");
    let run = easel(&[
        "import-torch",
        "--kind",
        "stytr-embedding",
        s(&decoder),
        "-o",
        s(&converted),
    ]);
    fails_with(
        &run,
        "tensor proj.weight is missing (expected shape [d_model, 3, 8, 8]",
    );
    let run = easel(&[
        "import-torch",
        "--kind",
        "stytr-transformer",
        s(&fast_fixture(EMBEDDING)),
        "-o",
        s(&converted),
    ]);
    fails_with(&run, "tensor decoder.norm.weight is missing");
    assert!(!converted.exists());
}

#[test]
fn flags_of_other_methods_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights_dir(dir.path(), CAPE);
    let second = format!("{}:0.5", example("vangogh_starry_night.jpg"));
    let (run, _) = stylize(
        dir.path(),
        &["--weights", s(&weights), "--style", &second],
        "a.png",
    );
    fails_with(&run, "--method transformer paints with one --style, got 2");
    let (run, _) = stylize(
        dir.path(),
        &["--weights", s(&weights), "--adain-vgg", "vgg.pth"],
        "b.png",
    );
    fails_with(
        &run,
        "--adain-vgg applies to --method adain only, not transformer",
    );
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--style",
        &example(STYLE),
        "--stytr-heads",
        "4",
        "-o",
        s(&dir.path().join("c.png")),
    ]);
    fails_with(
        &run,
        "--stytr-heads applies to --method transformer only, not arbitrary",
    );
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--style",
        &example(STYLE),
        "--weights",
        s(&weights),
        "-o",
        s(&dir.path().join("d.png")),
    ]);
    fails_with(
        &run,
        "--weights applies to --method adain or transformer only, not arbitrary",
    );
}
