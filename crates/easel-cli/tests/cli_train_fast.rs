//! `easel train-fast` end to end on the tiny random VGG of `tools/ref/adain_ref.py` and a few of
//! the shared test pictures: the decoder file loads as an AdaIN decoder and paints through
//! `easel stylize --method adain`, sample grids and the
//! checkpoint are written, `--resume` finishes with the same file as a straight run, bad input
//! is a one-line error.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use easel_core::torch_checkpoint::read_torch_checkpoint;
use easel_core::LoadOptions;
use easel_fast::import::adain::{load_adain, read_weights};
use easel_fast::import::stytr::{load_stytr, Settings};

mod common;
use common::{assert_success, easel_command, s, stderr};

fn vgg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-fast/tests/fixtures/adain_vgg_tiny.pth")
}

/// A picture of `../shared/data/images`.
fn shared_image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/images")
        .join(name)
}

/// Folders with two small photos and two small paintings from `../shared/data/images`.
fn data(root: &Path) -> (PathBuf, PathBuf) {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/images");
    assert!(
        shared.is_dir(),
        "{}: the shared test pictures",
        shared.display()
    );
    let (content, styles) = (root.join("photos"), root.join("paintings"));
    for (dir, files) in [
        (
            &content,
            [
                "content/chelsea_cat.png",
                "content/grace_hopper_small_128.jpg",
            ],
        ),
        (
            &styles,
            [
                "style/vandoesburg_composition_xiii_small.jpg",
                "style/gauguin_te_fare.jpg",
            ],
        ),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            let src = shared.join(f);
            std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
        }
    }
    (content, styles)
}

const TINY: &[&str] = &[
    "--batch",
    "1",
    "--load-size",
    "72",
    "--crop",
    "64",
    "--lr",
    "1e-3",
    "--seed",
    "3",
    "--save-every",
    "2",
    "--sample-every",
    "2",
    "--device",
    "cpu",
];

/// `--plugin` wrote `root/NAME.safetensors`: it installs (a store in `root/home`), its
/// thumbnail is the run's latest sample grid `grid`, and `stylize --use NAME` paints the cat in
/// Te Fare at 64 px as the weights did with the old flags (`painted`).
fn plugin_paints_as(root: &Path, name: &str, grid: &Path, painted: &image::RgbImage) {
    let home = root.join("home");
    let easel = |args: &[&str]| {
        let out = easel_command(args)
            .env("EASEL_HOME", &home)
            .output()
            .unwrap();
        assert_success(&out);
        out
    };
    let plugin = root.join(format!("{name}.safetensors"));
    easel(&["styles", "install", s(&plugin)]);
    let thumb = root.join(format!("{name}.thumb.png"));
    easel(&["styles", "show", name, "--preview", s(&thumb)]);
    assert_eq!(
        image::open(&thumb).unwrap().to_rgb8(),
        image::open(grid).unwrap().to_rgb8()
    );
    let out = root.join(format!("{name}.png"));
    let photo = shared_image("content/chelsea_cat.png");
    let style = shared_image("style/gauguin_te_fare.jpg");
    easel(&[
        "stylize",
        s(&photo),
        "--use",
        name,
        "--style",
        s(&style),
        "--max-size",
        "64",
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]);
    assert!(
        &image::open(&out).unwrap().to_rgb8() == painted,
        "--use {name} paints other pixels than the weights' own flags"
    );
}

#[test]
fn train_fast_writes_a_decoder_and_resumes_bit_exactly() {
    let root = tempfile::tempdir().unwrap();
    let (content, styles) = data(root.path());
    let vgg = vgg();
    let new_run = |out: &Path, steps: &str| {
        let mut args = vec![
            "train-fast",
            "--kind",
            "adain",
            "--content",
            s(&content),
            "--styles",
            s(&styles),
            "--vgg",
            s(&vgg),
            "-o",
            s(out),
            "--steps",
            steps,
        ];
        args.extend_from_slice(TINY);
        easel_command(&args).output().unwrap()
    };

    let straight = root.path().join("straight.safetensors");
    let out = new_run(&straight, "4");
    assert_success(&out);
    let run = root.path().join("straight.run");
    assert!(run.join("checkpoint.safetensors").is_file());
    for step in [2, 4] {
        let grid = image::open(run.join(format!("samples/step_{step:06}.png"))).unwrap();
        // 2 photos × 2 paintings of 64 pixels plus the header row and column.
        assert_eq!((grid.width(), grid.height()), (3 * 64, 3 * 64));
    }

    // The file has exactly the keys and shapes of a decoder.pth of the VGG's widths.
    let tensors = candle_core::safetensors::load(&straight, &Device::Cpu).unwrap();
    let reference = vgg.with_file_name("adain_decoder_tiny.pth");
    let reference = read_torch_checkpoint(&std::fs::read(&reference).unwrap(), "decoder").unwrap();
    assert_eq!(tensors.len(), reference.len());
    for (key, t) in &reference {
        assert_eq!(tensors[key].dims(), t.dims(), "{key}");
        assert_eq!(tensors[key].dtype(), DType::F32);
    }

    // The decoder paints through `easel stylize --method adain`, as the library paints with it.
    let painted = root.path().join("painted.png");
    let photo = shared_image("content/chelsea_cat.png");
    let style = shared_image("style/gauguin_te_fare.jpg");
    let out = easel_command(&[
        "stylize",
        s(&photo),
        "--method",
        "adain",
        "--adain-vgg",
        s(&vgg),
        "--adain-decoder",
        s(&straight),
        "--style",
        s(&style),
        "--max-size",
        "64",
        "--device",
        "cpu",
        "-o",
        s(&painted),
    ])
    .output()
    .unwrap();
    assert_success(&out);
    let got = image::open(&painted).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), (64, 43));
    let read = |p: &Path| read_weights(&std::fs::read(p).unwrap(), "w").unwrap();
    let net = load_adain(read(&vgg), "vgg", read(&straight), "decoder", &Device::Cpu).unwrap();
    let load = |p: &Path| {
        let img = easel_core::load_rgb(p, &LoadOptions::with_max_side(64)).unwrap();
        easel_core::rgb_to_tensor(&img, &Device::Cpu).unwrap()
    };
    let want = net
        .stylize(&load(&photo), &[(load(&style), 1.0)], 1.0, None)
        .unwrap();
    assert!(got == easel_core::tensor_to_rgb(&want).unwrap());

    // 2 steps, then --resume to 4: the same file.
    let part = root.path().join("part.safetensors");
    assert_success(&new_run(&part, "2"));
    let out = easel_command(&[
        "train-fast",
        "--resume",
        s(&root.path().join("part.run")),
        "--steps",
        "4",
        "-o",
        s(&part),
        "--plugin",
        s(&root.path().join("adain_plugin.safetensors")),
        "--device",
        "cpu",
        "--json",
    ])
    .output()
    .unwrap();
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&summary["kind"], &summary["steps"]),
        (&"adain".into(), &4.into())
    );
    let plugin = root.path().join("adain_plugin.safetensors");
    assert_eq!(summary["plugin"], s(&plugin));
    assert!(stderr(&out).contains("4 steps"), "{}", stderr(&out));
    plugin_paints_as(
        root.path(),
        "adain_plugin",
        &root.path().join("part.run/samples/step_000004.png"),
        &got,
    );
    let (a, b) = (
        candle_core::safetensors::load(&part, &Device::Cpu).unwrap(),
        candle_core::safetensors::load(&straight, &Device::Cpu).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (key, t) in &a {
        let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(t), values(&b[key]), "{key}");
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let root = tempfile::tempdir().unwrap();
    let (content, styles) = data(root.path());
    let out_file = root.path().join("out.safetensors");
    let run = |args: &[&str]| {
        let out = easel_command(args).output().unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    let missing = root.path().join("missing_vgg.pth");
    let err = run(&[
        "train-fast",
        "--content",
        s(&content),
        "--styles",
        s(&styles),
        "--vgg",
        s(&missing),
        "-o",
        s(&out_file),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("missing_vgg.pth"), "{err}");
    let err = run(&[
        "train-fast",
        "--content",
        s(&content),
        "--styles",
        s(&root.path().join("nowhere")),
        "--vgg",
        s(&vgg()),
        "-o",
        s(&out_file),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("nowhere"), "{err}");
    let err = run(&[
        "train-fast",
        "--resume",
        s(&root.path().join("no.run")),
        "-o",
        s(&out_file),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--resume"), "{err}");
    // A huge crop (or load size) is refused before anything is read or allocated.
    let err = run(&[
        "train-fast",
        "--content",
        s(&content),
        "--styles",
        s(&styles),
        "--vgg",
        s(&vgg()),
        "--crop",
        "4000000000",
        "--load-size",
        "4000000000",
        "-o",
        s(&out_file),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("must be at most 4096 and 2048"), "{err}");
    assert!(!out_file.exists());
}

#[test]
fn train_fast_transformer_writes_three_stytr_files_and_resumes_bit_exactly() {
    let root = tempfile::tempdir().unwrap();
    let (content, styles) = data(root.path());
    let vgg = vgg();
    let new_run = |out: &Path, steps: &str| {
        let mut args = vec![
            "train-fast",
            "--kind",
            "transformer",
            "--preset",
            "tiny",
            "--warmup-steps",
            "2",
            "--content",
            s(&content),
            "--styles",
            s(&styles),
            "--vgg",
            s(&vgg),
            "-o",
            s(out),
            "--steps",
            steps,
        ];
        args.extend_from_slice(TINY);
        easel_command(&args).output().unwrap()
    };
    let straight = root.path().join("stytr");
    let out = new_run(&straight, "2");
    assert_success(&out);
    let grid = image::open(root.path().join("stytr.run/samples/step_000002.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (3 * 64, 3 * 64));
    // The three files have the keys and shapes of the tiny StyTR-2 state dicts.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-fast/tests/fixtures");
    for (part, fixture) in [
        ("transformer", "stytr_transformer_cape_tiny.pth"),
        ("embedding", "stytr_embedding_tiny.pth"),
        ("decoder", "stytr_decoder_tiny.pth"),
    ] {
        let file = straight.join(format!("{part}.safetensors"));
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let reference =
            read_torch_checkpoint(&std::fs::read(fixtures.join(fixture)).unwrap(), fixture)
                .unwrap();
        assert_eq!(tensors.len(), reference.len(), "{part}");
        for (key, t) in &reference {
            assert_eq!(tensors[key].dims(), t.dims(), "{part} {key}");
        }
    }

    // The folder paints through `easel stylize --method transformer --weights DIR` as the
    // library paints with the three files.
    let painted = root.path().join("stytr.png");
    let photo = shared_image("content/chelsea_cat.png");
    let style = shared_image("style/gauguin_te_fare.jpg");
    let out = easel_command(&[
        "stylize",
        s(&photo),
        "--method",
        "transformer",
        "--weights",
        s(&straight),
        "--stytr-heads",
        "4",
        "--stytr-cape-grid",
        "6",
        "--style",
        s(&style),
        "--max-size",
        "64",
        "--device",
        "cpu",
        "-o",
        s(&painted),
    ])
    .output()
    .unwrap();
    assert_success(&out);
    let got = image::open(&painted).unwrap().to_rgb8();
    let read = |part: &'static str| {
        let p = straight.join(format!("{part}.safetensors"));
        (
            read_weights(&std::fs::read(&p).unwrap(), part).unwrap(),
            part,
        )
    };
    let settings = Settings {
        nhead: 4,
        cape_grid: 6,
        pyramid_windows: vec![2, 4, 8],
    };
    let net = load_stytr(
        read("transformer"),
        read("embedding"),
        read("decoder"),
        &settings,
        &Device::Cpu,
    )
    .unwrap();
    let load = |p: &Path| {
        let img = easel_core::load_rgb(p, &LoadOptions::with_max_side(64)).unwrap();
        easel_core::rgb_to_tensor(&img, &Device::Cpu).unwrap()
    };
    let want = net.stylize(&load(&photo), &load(&style)).unwrap();
    assert!(got == easel_core::tensor_to_rgb(&want).unwrap());

    // 1 step, then --resume to 2: the same files.
    let part = root.path().join("part");
    assert_success(&new_run(&part, "1"));
    let out = easel_command(&[
        "train-fast",
        "--resume",
        s(&root.path().join("part.run")),
        "--steps",
        "2",
        "-o",
        s(&part),
        "--plugin",
        s(&root.path().join("stytr_plugin.safetensors")),
        "--device",
        "cpu",
    ])
    .output()
    .unwrap();
    assert_success(&out);
    // The plugin records the tiny preset's 4 heads and CAPE grid 6.
    plugin_paints_as(
        root.path(),
        "stytr_plugin",
        &root.path().join("part.run/samples/step_000002.png"),
        &got,
    );
    for name in ["transformer", "embedding", "decoder"] {
        let file = format!("{name}.safetensors");
        let (a, b) = (
            candle_core::safetensors::load(part.join(&file), &Device::Cpu).unwrap(),
            candle_core::safetensors::load(straight.join(&file), &Device::Cpu).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (key, t) in &a {
            let values =
                |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(t), values(&b[key]), "{name} {key}");
        }
    }

    // Transformer flags with --kind adain are refused.
    let out = easel_command(&[
        "train-fast",
        "--content",
        s(&content),
        "--styles",
        s(&styles),
        "--vgg",
        s(&vgg),
        "--heads",
        "2",
        "-o",
        s(&root.path().join("x.safetensors")),
        "--device",
        "cpu",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--heads applies to --kind transformer only"),
        "{}",
        stderr(&out)
    );
}
