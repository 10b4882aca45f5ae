//! `easel compare` end to end: fast methods (arbitrary, a preset, AdaIN with random tiny
//! weights) and a prompt bank on the tiny random SD (offline Hugging Face cache, CPU), on two of
//! the shared photos; what it writes and that its numbers are the library's; bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::Device;
use easel_metrics::inception::FidInception;
use easel_metrics::lpips::Lpips;
use easel_metrics::perceptual::Perceptual;
use easel_metrics::vgg::VggLosses;
use easel_metrics::PairMeter;

mod common;

use common::banks::{lsast, save, tiny_hash, tiny_sd};
use common::{assert_success, easel_command, example, fast_fixture, s, stderr, tiny_cache};

/// A shared test photo (`../shared/data/images/content`).
fn shared_photo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/images/content")
        .join(name)
}

fn compare(args: &[&str], cache: &Path, home: &Path) -> Output {
    easel_command(&[&["compare"], args].concat())
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .env("EASEL_HOME", home)
        .output()
        .expect("the easel binary runs")
}

/// An AdaIN weights folder with the tiny random checkpoints.
fn adain_dir(root: &Path) -> PathBuf {
    let dir = root.join("adain");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fast_fixture("adain_vgg_tiny.pth"),
        dir.join("vgg_normalised.pth"),
    )
    .unwrap();
    std::fs::copy(
        fast_fixture("adain_decoder_tiny.pth"),
        dir.join("decoder.pth"),
    )
    .unwrap();
    dir
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
fn compare_writes_cells_grid_report_and_tables_with_the_librarys_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let home = tmp.path().join("home");
    let sd = tiny_sd();
    let bank = tmp.path().join("starry.bank");
    save(&lsast(&sd), &tiny_hash(&sd), &bank);
    let adain = adain_dir(tmp.path());
    // easel-metrics' tiny AlexNet and linear layers (tools/ref/lpips_ref.py), in one file.
    let lpips = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../easel-metrics/tests/fixtures/lpips_tiny.safetensors");
    let out = tmp.path().join("cmp");
    let style = example("vangogh_starry_night.jpg");
    let (cat, cup) = (
        shared_photo("chelsea_cat.png"),
        shared_photo("coffee_cup.png"),
    );
    let adain_spec = format!("adain:{}@strength=0.8", s(&adain));
    let bank_spec = format!("bank:{}", s(&bank));
    let run = compare(
        &[
            s(&cat),
            s(&cup),
            "--style",
            &style,
            "--use",
            "arbitrary",
            "--use",
            "preset:7",
            "--use",
            &adain_spec,
            "--use",
            &bank_spec,
            "--sd",
            "org/tiny-sd",
            "--controlnet",
            "org/tiny-controlnet",
            "--steps",
            "2",
            "--max-size",
            "96",
            "--device",
            "cpu",
            "--offline",
            "--vgg",
            s(&fast_fixture("adain_vgg_tiny.pth")),
            "--lpips",
            s(&lpips),
            "--lpips-lin",
            s(&lpips),
            "--json",
            "-o",
            s(&out),
        ],
        &cache,
        &home,
    );
    assert_success(&run);
    assert_eq!(
        files_under(&out),
        vec![
            "cells/chelsea_cat__1-arbitrary.png",
            "cells/chelsea_cat__2-preset-7.png",
            "cells/chelsea_cat__3-adain.png",
            "cells/chelsea_cat__4-bank-starry.png",
            "cells/coffee_cup__1-arbitrary.png",
            "cells/coffee_cup__2-preset-7.png",
            "cells/coffee_cup__3-adain.png",
            "cells/coffee_cup__4-bank-starry.png",
            "grid.png",
            "metrics.csv",
            "metrics.json",
            "report.html",
        ]
    );

    // metrics.json (also printed by --json): every row painted at the prepared size.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let printed: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("--json prints metrics.json");
    assert_eq!(printed, json);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    let keys: Vec<&str> = json["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "ssim",
            "edge_f1",
            "lab_mean_photo",
            "lab_std_photo",
            "histogan",
            "lab_mean_style",
            "lab_std_style",
            "content",
            "style",
            "adain_content",
            "stytr_content",
            "adain_style",
            "stytr_style",
            "lpips"
        ]
    );
    let network = json["metrics"][7]["network"].as_str().unwrap();
    assert!(network.starts_with("EfficientNet-Lite0"), "{network}");
    for row in rows {
        assert_eq!(row["status"], "painted", "{row}");
        // 451x300 and 600x400 at a 96-pixel long side, cropped to multiples of 8.
        assert_eq!(
            (row["width"].as_u64(), row["height"].as_u64()),
            (Some(96), Some(64))
        );
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
    }
    assert!(rows[3]["parameters"]
        .as_str()
        .unwrap()
        .contains("Bank: starry,"));

    // The numbers are the library's, measured on the files written.
    let meter = PairMeter::new(Some(Perceptual::embedded(&Device::Cpu).unwrap()))
        .with_vgg(VggLosses::from_file(&fast_fixture("adain_vgg_tiny.pth"), &Device::Cpu).unwrap())
        .with_lpips(Lpips::from_files(&lpips, &lpips, &Device::Cpu).unwrap());
    let style_img = easel_core::load_rgb(
        Path::new(&style),
        &easel_core::LoadOptions::with_max_side(1024),
    )
    .unwrap();
    for row in [&rows[0], &rows[7]] {
        let photo =
            easel_compare::run::prepare_photo(Path::new(row["photo_path"].as_str().unwrap()), 96)
                .unwrap();
        let cell = image::open(out.join(row["file"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let values = meter.measure(&photo, &cell, Some(&style_img)).unwrap();
        for v in values {
            assert_eq!(
                row["values"][v.metric.key].as_f64(),
                Some(v.value),
                "{} of {}",
                v.metric.key,
                row["file"]
            );
        }
    }

    // metrics.csv: a header and a row per cell, with the same numbers.
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 9);
    assert!(lines[0].starts_with(
        "photo,method,spec,status,seconds,load_seconds,peak_memory_mib,width,height,ssim,"
    ));
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        &first[..4],
        ["chelsea_cat", "arbitrary", "arbitrary", "painted"]
    );
    assert_eq!(
        first[9].parse::<f64>().unwrap(),
        rows[0]["values"]["ssim"].as_f64().unwrap()
    );

    // grid.png: 6 columns (photo, style, 4 methods) of 320-pixel boxes, 2 rows, labelled.
    let grid = image::open(out.join("grid.png")).unwrap().to_rgb8();
    assert_eq!(grid.width(), 8 + 6 * (320 + 8));
    assert_eq!(grid.height(), 8 + (3 * 20 + 8) + 2 * (320 + 2 * 20 + 8));

    // report.html: self-contained, every image inlined.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("src=\"file:") && !html.contains("url("));
    // Pane (2) + per row: photo, style, 4 cells.
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        2 + 2 * 6
    );
    assert_eq!(html.matches("class=\"best\"").count(), 2 * keys.len());
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let home = tmp.path().join("home");
    let style = example("vangogh_starry_night.jpg");
    let cat = shared_photo("chelsea_cat.png");
    let out = tmp.path().join("cmp");
    let error_of = |run: &Output| {
        assert!(!run.status.success(), "succeeded: {}", stderr(run));
        let err = stderr(run);
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let base = [
        "--style",
        style.as_str(),
        "--use",
        "arbitrary",
        "-o",
        s(&out),
    ];
    let err = error_of(&compare(&[&[s(&empty)], &base[..]].concat(), &cache, &home));
    assert!(err.contains("no image"), "{err}");
    assert!(!out.exists());

    let err = error_of(&compare(
        &[s(&cat), "--use", "nosuchstyle", "-o", s(&out)],
        &cache,
        &home,
    ));
    assert!(
        err.contains("--use nosuchstyle: no installed style is named \"nosuchstyle\""),
        "{err}"
    );
    assert!(!out.exists());

    let file = tmp.path().join("taken.txt");
    std::fs::write(&file, "keep me").unwrap();
    let err = error_of(&compare(
        &[
            s(&cat),
            "--style",
            &style,
            "--use",
            "arbitrary",
            "-o",
            s(&file),
        ],
        &cache,
        &home,
    ));
    assert!(err.contains("is not a folder"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A style that fails on one photo: diffusion needs a 64-pixel short side, this photo has 40.
    let small = tmp.path().join("small.png");
    image::imageops::resize(
        &image::open(&cat).unwrap().to_rgb8(),
        60,
        40,
        image::imageops::FilterType::Triangle,
    )
    .save(&small)
    .unwrap();
    let sd = tiny_sd();
    let bank = tmp.path().join("starry.bank");
    save(&lsast(&sd), &tiny_hash(&sd), &bank);
    let bank_spec = format!("bank:{}", s(&bank));
    let run = compare(
        &[
            s(&cat),
            s(&small),
            "--style",
            &style,
            "--use",
            "arbitrary",
            "--use",
            &bank_spec,
            "--use",
            "gatys@iterations=2@octaves=1",
            "--sd",
            "org/tiny-sd",
            "--no-control",
            "--steps",
            "2",
            "--max-size",
            "96",
            "--no-perceptual",
            "--device",
            "cpu",
            "-o",
            s(&out),
        ],
        &cache,
        &home,
    );
    assert_success(&run);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let status: Vec<(&str, &str, &str)> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["photo"].as_str().unwrap(),
                r["spec"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("chelsea_cat", "arbitrary", "painted"),
            ("chelsea_cat", bank_spec.as_str(), "painted"),
            ("chelsea_cat", "gatys@iterations=2@octaves=1", "painted"),
            ("small", "arbitrary", "painted"),
            ("small", bank_spec.as_str(), "failed"),
            ("small", "gatys@iterations=2@octaves=1", "painted"),
        ]
    );
    let error = json["rows"][4]["error"].as_str().unwrap();
    assert!(error.contains("40") && !error.contains('\n'), "{error}");
    assert!(stderr(&run).contains(&format!("failed: small × bank starry.bank: {error}")));
    assert!(!out.join("cells/small__2-bank-starry.png").exists());
    assert!(out.join("cells/small__1-arbitrary.png").exists());
    let gatys = easel_core::read_png_parameters(&out.join("cells/small__3-gatys.png"))
        .unwrap()
        .unwrap();
    assert!(gatys.contains("Iterations: 2"), "{gatys}");
}

#[test]
fn set_metrics_are_the_librarys_kid_and_refuse_fid_for_small_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-metrics/tests/fixtures");
    let (results, references) = (tmp.path().join("results"), tmp.path().join("refs"));
    std::fs::create_dir_all(&results).unwrap();
    std::fs::create_dir_all(&references).unwrap();
    let pairs = ["cat_blur", "coffee_noise", "hopper_scream", "moraine_wave"];
    for name in pairs {
        for (side, dir) in [("a", &references), ("b", &results)] {
            let file = format!("metrics_{name}_{side}.png");
            std::fs::copy(fixtures.join(&file), dir.join(&file)).unwrap();
        }
    }
    // easel-metrics' tiny random Inception archive (tools/ref/inception_ref.py).
    let inception = fixtures.join("inception_tiny.pt");
    let out = tmp.path().join("set");
    let run = easel_command(&[
        "compare",
        "--set",
        s(&results),
        "--references",
        s(&references),
        "--inception",
        s(&inception),
        "--device",
        "cpu",
        "--json",
        "-o",
        s(&out),
    ])
    .output()
    .unwrap();
    assert_success(&run);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("set_metrics.json")).unwrap()).unwrap();
    assert_eq!(
        report,
        serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()
    );
    assert_eq!(
        (report["results"].as_u64(), report["references"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(report["fid"], serde_json::Value::Null);
    assert!(report["fid_refused"]
        .as_str()
        .unwrap()
        .contains("at least 2048 images per set (results: 4, references: 4)"));
    assert!(report["network"]
        .as_str()
        .unwrap()
        .starts_with("Inception-v3 pool3 (FID) inception_tiny.pt sha256:"));

    let net = FidInception::from_torchscript_file(&inception, &Device::Cpu).unwrap();
    let features = |dir: &Path| {
        let images: Vec<image::RgbImage> = easel_core::collect_images(&[dir.to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| image::open(p).unwrap().to_rgb8())
            .collect();
        net.features(&images).unwrap()
    };
    let kid = easel_metrics::set::kid(&features(&results), &features(&references)).unwrap();
    assert_eq!(report["kid"].as_f64(), Some(kid));
}
