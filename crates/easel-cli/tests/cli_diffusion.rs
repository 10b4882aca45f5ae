//! End-to-end tests of `easel stylize --prompt` on the tiny random SD + ControlNet of
//! easel-pipeline's fixtures: diffusers parity through the binary (weights from a Hugging Face
//! cache layout, replayed noise, 16-bit PNG; diffusers' pipelines and the official LSAST /
//! ArtBank inference logic), the offline missing-files error, refusals, the
//! saved control image and seed determinism. No network is used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

mod common;

use common::{add_to_cache, assert_success, easel_command, fixtures, s, stderr, tiny_cache};

/// Diffusers' stored image vs ours, as in easel-pipeline's parity test (the 16-bit PNG adds at
/// most 1/131070 of quantization).
const TOLERANCE: f32 = 1e-3;

fn easel(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = easel_command(args);
    cmd.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the easel binary runs")
}

struct Cases {
    tensors: HashMap<String, Tensor>,
    json: Value,
}

fn cases() -> Cases {
    cases_named("pipeline_cases")
}

/// `tools/ref/pipeline_ref.py`'s cases (`pipeline_cases`) or `official_ref.py`'s
/// (`official_cases`: the LSAST / ArtBank inference logic).
fn cases_named(stem: &str) -> Cases {
    let dir = fixtures();
    Cases {
        tensors: candle_core::safetensors::load(
            dir.join(format!("{stem}.safetensors")),
            &Device::Cpu,
        )
        .unwrap(),
        json: serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap(),
    }
}

/// Writes a stored `[H, W, 3]` u8 tensor as a PNG.
fn write_u8_png(tensor: &Tensor, path: &Path) {
    let (h, w, c) = tensor.dims3().unwrap();
    assert_eq!(c, 3);
    let raw = tensor.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, raw)
        .unwrap()
        .save(path)
        .unwrap();
}

/// 16-bit PNG → `[H, W, 3]` f32 in [0, 1].
fn read_png16(path: &Path) -> Tensor {
    let img = image::open(path).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb16, "{}", path.display());
    let img = img.into_rgb16();
    let (w, h) = img.dimensions();
    let values: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 65535.0)
        .collect();
    Tensor::from_vec(values, (h as usize, w as usize, 3), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn prompt_mode_matches_diffusers_through_the_hub_cache() {
    let cases = cases();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let photo = tmp.path().join("photo.png");
    let control = tmp.path().join("control.png");
    write_u8_png(&cases.tensors["image_u8"], &photo);
    write_u8_png(&cases.tensors["control_u8"], &control);

    let official = cases_named("official_cases");
    let table = [
        (&cases, "ddim"),
        (&cases, "euler_a_batch2"),
        (&cases, "dpmpp2m_guess"),
        (&cases, "ddim_no_cfg_window"),
        (&cases, "img2img_ddim_eta"),
        (&official, "artbank_inversion"),
        (&official, "lsast_cond_only"),
        (&official, "inversion_cond_only_dpm"),
        (&official, "lsast_ldm_start"),
    ];
    for (cases, name) in table {
        let case = &cases.json[name];
        let num = |k: &str| case[k].as_f64().unwrap().to_string();
        let noise: HashMap<String, Tensor> = (0..)
            .map_while(|k| {
                cases
                    .tensors
                    .get(&format!("{name}/noise.{k}"))
                    .map(|t| (format!("noise.{k}"), t.to_dtype(DType::F32).unwrap()))
            })
            .collect();
        assert!(noise.len() >= 2, "{name}: recorded noise");
        let noise_file = tmp.path().join(format!("{name}-noise.safetensors"));
        candle_core::safetensors::save(&noise, &noise_file).unwrap();
        let out = tmp.path().join(format!("{name}.png"));

        let batch = case["batch"].as_u64().unwrap().to_string();
        let steps = case["steps"].as_u64().unwrap().to_string();
        let (strength, guidance, eta) = (num("strength"), num("guidance"), num("eta"));
        let (scale, start, end) = (
            num("control_scale"),
            num("control_start"),
            num("control_end"),
        );
        let mut args: Vec<&str> = vec![
            "stylize",
            s(&photo),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--negative-prompt",
            case["negative_prompt"].as_str().unwrap(),
            "--sd",
            "org/tiny-sd",
            "--scheduler",
            case["scheduler"].as_str().unwrap(),
            "--steps",
            &steps,
            "--strength",
            &strength,
            "--guidance",
            &guidance,
            "--eta",
            &eta,
            "--batch",
            &batch,
            "--size",
            "64",
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--depth",
            "16",
            "--noise-file",
            s(&noise_file),
            "--json",
            "-o",
            s(&out),
        ];
        if case["controlnet"].as_bool().unwrap() {
            args.extend([
                "--controlnet",
                "org/tiny-controlnet",
                "--control-image",
                s(&control),
                "--control-scale",
                &scale,
                "--control-start",
                &start,
                "--control-end",
                &end,
            ]);
            if case["guess_mode"].as_bool().unwrap() {
                args.push("--guess-mode");
            }
            if let Some(mode) = case["control_guidance"].as_str() {
                args.extend(["--control-cfg", mode]);
            }
        } else {
            args.push("--no-control");
        }
        if let Some(start) = case["noise_start"].as_str() {
            args.extend(["--noise-start", start]);
        }
        let run = easel(
            &args,
            &[
                ("HF_HUB_CACHE", cache.as_path()),
                ("HF_HUB_OFFLINE", Path::new("1")),
            ],
        );
        assert_success(&run);
        let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
        let outputs = summary["outputs"].as_array().unwrap();
        let expected = &cases.tensors[&format!("{name}/image")];
        let n = expected.dim(0).unwrap();
        assert_eq!(outputs.len(), n, "{name}");
        assert_eq!(summary["dtype"], "f32");
        assert_eq!(summary["seed"], Value::Null, "{name}: noise file, no seed");
        for (b, record) in outputs.iter().enumerate() {
            let path = PathBuf::from(record["output"].as_str().unwrap());
            let got = read_png16(&path);
            let err = max_abs_diff(&got, &expected.get(b).unwrap());
            println!("{name}[{b}]: max abs err {err:.3e}");
            assert!(err <= TOLERANCE, "{name}[{b}]: max abs err {err}");
            let params = easel_core::read_png_parameters(&path).unwrap().unwrap();
            assert!(
                params.starts_with(case["prompt"].as_str().unwrap()),
                "{params}"
            );
            assert!(
                params.contains("org/tiny-sd@0123456789abcdef0123456789abcdef01234567"),
                "{params}"
            );
            assert!(params.contains(&format!("Steps: {steps}")), "{params}");
            assert!(params.contains("Noise file"), "{params}");
            // Non-default starts and ControlNet guidance are recorded.
            let start = case["noise_start"].as_str().unwrap_or("img2img");
            assert_eq!(
                params.contains(&format!("Noise start: {start}")),
                start != "img2img",
                "{params}"
            );
            let mode = case["control_guidance"].as_str().unwrap_or("batch");
            assert_eq!(
                params.contains("Control guidance: cond-only"),
                mode == "cond-only",
                "{params}"
            );
        }
    }
}

#[test]
fn offline_with_an_empty_cache_lists_every_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("empty-hub");
    std::fs::create_dir_all(&cache).unwrap();
    let cases = cases();
    let photo = tmp.path().join("photo.png");
    write_u8_png(&cases.tensors["image_u8"], &photo);
    let out = tmp.path().join("out.png");
    let run = easel(
        &[
            "stylize",
            s(&photo),
            "--prompt",
            "a cat",
            "--device",
            "cpu",
            "-o",
            s(&out),
        ],
        &[
            ("HF_HUB_CACHE", cache.as_path()),
            ("HF_HUB_OFFLINE", Path::new("1")),
        ],
    );
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.starts_with("error: missing model files (offline: HF_HUB_OFFLINE=1)"),
        "{err}"
    );
    for needle in [
        "stable-diffusion-v1-5/stable-diffusion-v1-5 @ main: model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
        "lllyasviel/control_v11p_sd15_canny @ main: config.json, diffusion_pytorch_model.safetensors",
        "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json",
        "huggingface-cli download lllyasviel/control_v11p_sd15_canny config.json",
        "--sd DIR",
        "--controlnet DIR",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(!out.exists());
}

/// One-line errors for bad values, before any model is looked for.
#[test]
fn refusals_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 100, 50]))
        .save(&small)
        .unwrap();
    let out = tmp.path().join("out.png");
    let empty = tmp.path().join("no-hub");
    let env = [
        ("HF_HUB_CACHE", empty.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let base = ["stylize", s(&small), "--prompt", "a cat", "-o", s(&out)];
    let cases: [(&[&str], &str); 5] = [
        (
            &["--size", "32", "--device", "cpu"],
            "--size 32 is too small",
        ),
        (
            &["--dtype", "f16", "--device", "cpu"],
            "f16 on CPU is not supported",
        ),
        (&["--strength", "0", "--device", "cpu"], "--strength 0"),
        (
            &[
                "--control-start",
                "0.6",
                "--control-end",
                "0.5",
                "--device",
                "cpu",
            ],
            "--control-start 0.6 and --control-end 0.5",
        ),
        (
            &["--canny", "200:100", "--device", "cpu"],
            "--canny 200:100",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let run = easel(&args, &env);
        let err = stderr(&run);
        assert!(!run.status.success(), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{needle:?} in: {err}"
        );
    }
    // Clap refuses mixing the methods and contradictory control flags.
    let (small, out) = (s(&small), s(&out));
    for args in [
        ["--prompt", "x", "--preset", "3"],
        ["--prompt", "x", "--style", small],
        ["--prompt", "x", "--keep-colors", "--no-control"],
        ["--prompt", "x", "--no-control", "--canny=1:2"],
    ] {
        let mut all = vec!["stylize", small, "-o", out];
        all.extend(args);
        let run = easel(&all, &env);
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(2), "{all:?}: {err}");
        assert!(err.contains("cannot be used with"), "{all:?}: {err}");
    }
    // Diffusion flags on the fast path.
    let run = easel(
        &["stylize", small, "--preset", "3", "--seed", "1", "-o", out],
        &env,
    );
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.starts_with("error: --seed applies to the diffusion method only"),
        "{err}"
    );
    assert!(!Path::new(out).exists());
}

/// Local folders for --sd / --controlnet; a few cheap denoising steps.
fn tiny_local_args<'a>(photo: &'a str, out: &'a str, sd: &'a str, cn: &'a str) -> Vec<&'a str> {
    vec![
        "stylize",
        photo,
        "--prompt",
        "a cat",
        "--sd",
        sd,
        "--controlnet",
        cn,
        "--device",
        "cpu",
        "--steps",
        "4",
        "--strength",
        "0.5",
        "--scheduler",
        "euler-a",
        "-o",
        out,
    ]
}

#[test]
fn save_control_writes_the_canny_edges_of_the_resized_photo() {
    let tmp = tempfile::tempdir().unwrap();
    // 96x80 with --size 64: resized to 80x64 (short side 64, multiples of 8).
    let photo = image::RgbImage::from_fn(96, 80, |x, y| {
        let inside = (20..70).contains(&x) && (15..60).contains(&y);
        let v = if inside { 230 } else { 20 };
        image::Rgb([v, ((x * 3 + y) % 256) as u8, 255 - v])
    });
    let photo_path = tmp.path().join("photo.png");
    photo.save(&photo_path).unwrap();
    let out = tmp.path().join("out.png");
    let edges_path = tmp.path().join("edges.png");
    let (sd, cn) = (
        fixtures().join("tiny-sd"),
        fixtures().join("tiny-controlnet"),
    );
    let mut args = tiny_local_args(s(&photo_path), s(&out), s(&sd), s(&cn));
    args.extend([
        "--size",
        "64",
        "--canny",
        "50:150",
        "--save-control",
        s(&edges_path),
    ]);
    let run = easel(&args, &[]);
    assert_success(&run);

    let resized = image::imageops::resize(&photo, 80, 64, image::imageops::FilterType::Lanczos3);
    let opts = easel_pipeline::canny::CannyOptions::with_thresholds(50.0, 150.0);
    let edges = easel_pipeline::canny::canny(&resized, &opts).unwrap();
    let expected = easel_pipeline::canny::control_image(&edges);
    let saved = image::open(&edges_path).unwrap().to_rgb8();
    assert_eq!(saved.dimensions(), (80, 64));
    let edge_pixels = edges.pixels().filter(|p| p.0[0] > 0).count();
    assert!(
        edge_pixels > 50,
        "the square's outline is found: {edge_pixels}"
    );
    assert!(
        saved == expected,
        "saved control image differs from canny()"
    );
    let painted = image::open(&out).unwrap().to_rgb8();
    assert_eq!(painted.dimensions(), (80, 64));
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains("Control: \"canny 50:150\""), "{params}");
}

#[test]
fn the_same_seed_gives_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    let photo = tmp.path().join("photo.png");
    write_u8_png(&cases.tensors["image_u8"], &photo);
    let (sd, cn) = (
        fixtures().join("tiny-sd"),
        fixtures().join("tiny-controlnet"),
    );
    let run_seed = |seed: &str, name: &str| -> (Vec<u8>, Value) {
        let out = tmp.path().join(name);
        let mut args = tiny_local_args(s(&photo), s(&out), s(&sd), s(&cn));
        args.extend(["--size", "64", "--json"]);
        if !seed.is_empty() {
            args.extend(["--seed", seed]);
        }
        let run = easel(&args, &[]);
        assert_success(&run);
        let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
        (std::fs::read(&out).unwrap(), summary)
    };
    let (a, summary) = run_seed("7", "a.png");
    let (b, _) = run_seed("7", "b.png");
    let (c, _) = run_seed("8", "c.png");
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["dtype"], "f32");
    assert_eq!(summary["outputs"][0]["width"], 64);
    assert!(a == b, "same seed, different files");
    assert!(a != c, "different seeds, same file");
    let params = easel_core::read_png_parameters(&tmp.path().join("a.png"))
        .unwrap()
        .unwrap();
    assert!(params.contains("Seed: 7"), "{params}");
    assert!(params.contains("Scheduler: euler-a"), "{params}");

    // No --seed: a random one, reported in the summary and the file.
    let (_, summary) = run_seed("", "r.png");
    let seed = summary["seed"].as_u64().expect("a seed is reported");
    let params = easel_core::read_png_parameters(&tmp.path().join("r.png"))
        .unwrap()
        .unwrap();
    assert!(params.contains(&format!("Seed: {seed}")), "{params}");
}

/// Copies a diffusers folder, renaming every `X.safetensors` to `X.fp16.safetensors` (the
/// tensors stay f32; loading converts whatever is stored).
fn copy_as_fp16_variant(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            copy_as_fp16_variant(&entry.path(), &dst.join(&name));
            continue;
        }
        std::fs::create_dir_all(dst).unwrap();
        let name = match name.strip_suffix(".safetensors") {
            Some(stem) => format!("{stem}.fp16.safetensors"),
            None => name,
        };
        std::fs::copy(entry.path(), dst.join(name)).unwrap();
    }
}

#[test]
fn a_cache_with_only_fp16_files_serves_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    let photo = tmp.path().join("photo.png");
    write_u8_png(&cases.tensors["image_u8"], &photo);
    let plain_cache = tiny_cache(&tmp.path().join("plain"));
    let variant_src = tmp.path().join("variant-src");
    copy_as_fp16_variant(&fixtures().join("tiny-sd"), &variant_src.join("sd"));
    copy_as_fp16_variant(&fixtures().join("tiny-controlnet"), &variant_src.join("cn"));
    let fp16_cache = tmp.path().join("fp16").join("hub");
    add_to_cache(
        &fp16_cache,
        "org/tiny-sd",
        &variant_src.join("sd"),
        "0123456789abcdef0123456789abcdef01234567",
    );
    add_to_cache(
        &fp16_cache,
        "org/tiny-controlnet",
        &variant_src.join("cn"),
        "89abcdef0123456789abcdef0123456789abcdef",
    );
    let run = |cache: &Path, name: &str| -> Vec<u8> {
        let out = tmp.path().join(name);
        let args = [
            "stylize",
            s(&photo),
            "--prompt",
            "a cat",
            "--sd",
            "org/tiny-sd",
            "--controlnet",
            "org/tiny-controlnet",
            "--device",
            "cpu",
            "--size",
            "64",
            "--steps",
            "4",
            "--strength",
            "0.5",
            "--seed",
            "3",
            "-o",
            s(&out),
        ];
        let run = easel(
            &args,
            &[("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", Path::new("1"))],
        );
        assert_success(&run);
        std::fs::read(&out).unwrap()
    };
    let plain = run(&plain_cache, "plain.png");
    let fp16 = run(&fp16_cache, "fp16.png");
    assert!(plain == fp16, "the fp16-named files give another image");
}

/// The tiny SD folder as one original (ldm-keyed) .safetensors checkpoint.
fn tiny_single_file(path: &Path) {
    use easel_diffusion::weights::{
        clip_config_from_transformers_json, unet_config_from_diffusers_json,
        vae_config_from_diffusers_json, KeyMap,
    };
    let dir = fixtures().join("tiny-sd");
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let unet = unet_config_from_diffusers_json(&read("unet/config.json")).unwrap();
    let vae = vae_config_from_diffusers_json(&read("vae/config.json")).unwrap();
    let clip = clip_config_from_transformers_json(&read("text_encoder/config.json")).unwrap();
    let mut single = HashMap::new();
    for (map, file) in [
        (
            KeyMap::unet(&unet),
            "unet/diffusion_pytorch_model.safetensors",
        ),
        (KeyMap::vae(&vae), "vae/diffusion_pytorch_model.safetensors"),
        (KeyMap::clip(&clip), "text_encoder/model.safetensors"),
    ] {
        let tensors = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
        let converted = map.to_ldm(&tensors).unwrap();
        assert!(converted.unmapped.is_empty(), "{:?}", converted.unmapped);
        single.extend(converted.tensors);
    }
    candle_core::safetensors::save(&single, path).unwrap();
}

/// `--sd FILE.safetensors` (with `--sd-config` for the tiny shapes and tokenizer) paints the
/// same file as the diffusers folder it was made from; without a tokenizer anywhere, offline,
/// single files and folders lacking tokenizer/ name the openai/clip-vit-large-patch14 files.
#[test]
fn single_file_checkpoints_paint_like_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    let photo = tmp.path().join("photo.png");
    write_u8_png(&cases.tensors["image_u8"], &photo);
    let sd_file = tmp.path().join("tiny-sd.safetensors");
    tiny_single_file(&sd_file);
    let (sd_dir, cn) = (
        fixtures().join("tiny-sd"),
        fixtures().join("tiny-controlnet"),
    );
    let empty = tmp.path().join("empty-hub");
    std::fs::create_dir_all(&empty).unwrap();
    let offline = [
        ("HF_HUB_CACHE", empty.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let paint = |sd: &str, extra: &[&str], name: &str| -> Output {
        let out = tmp.path().join(name);
        let mut args = tiny_local_args(s(&photo), s(&out), sd, s(&cn));
        args.extend(["--size", "64", "--seed", "5"]);
        args.extend_from_slice(extra);
        easel(&args, &offline)
    };
    let run = paint(s(&sd_dir), &[], "folder.png");
    assert_success(&run);
    let run = paint(s(&sd_file), &["--sd-config", s(&sd_dir)], "file.png");
    assert_success(&run);
    let folder = std::fs::read(tmp.path().join("folder.png")).unwrap();
    let file = std::fs::read(tmp.path().join("file.png")).unwrap();
    let (a, b) = (
        image::load_from_memory(&folder).unwrap().to_rgb8(),
        image::load_from_memory(&file).unwrap().to_rgb8(),
    );
    assert!(
        a == b,
        "the single file paints another image than its folder"
    );
    let params = easel_core::read_png_parameters(&tmp.path().join("file.png"))
        .unwrap()
        .unwrap();
    assert!(params.contains("tiny-sd.safetensors"), "{params}");

    // No tokenizer: the fallback repository's files are listed, offline.
    let run = paint(s(&sd_file), &[], "none.png");
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("openai/clip-vit-large-patch14") && err.contains("vocab.json"),
        "{err}"
    );
    let no_tokenizer = tmp.path().join("no-tokenizer");
    for sub in ["unet", "vae", "text_encoder", "scheduler"] {
        let (from, to) = (sd_dir.join(sub), no_tokenizer.join(sub));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(
        sd_dir.join("model_index.json"),
        no_tokenizer.join("model_index.json"),
    )
    .unwrap();
    let run = paint(s(&no_tokenizer), &[], "no-tok.png");
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("openai/clip-vit-large-patch14") && err.contains("merges.txt"),
        "{err}"
    );
    // --sd-config belongs to single files.
    let run = paint(s(&sd_dir), &["--sd-config", s(&sd_dir)], "x.png");
    let err = stderr(&run);
    assert!(
        !run.status.success() && err.contains("--sd-config"),
        "{err}"
    );
}

/// Photos whose canvas would overflow or explode the latent (an 8.4-megapixel × 1 PNG, which
/// the 256 MP decode limit lets through, and a 100:1 strip) are refused before any model loads,
/// with the fix, and nothing is written.
#[test]
fn extreme_aspect_photos_are_refused_through_stylize_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let (sd, cn) = (
        fixtures().join("tiny-sd"),
        fixtures().join("tiny-controlnet"),
    );
    for (w, h) in [(8_400_000u32, 1u32), (1, 8_400_000), (6400, 64)] {
        let photo = tmp.path().join(format!("strip_{w}x{h}.png"));
        image::RgbImage::from_pixel(w, h, image::Rgb([120, 60, 200]))
            .save(&photo)
            .unwrap();
        let out = tmp.path().join(format!("out_{w}x{h}.png"));
        let run = easel(&tiny_local_args(s(&photo), s(&out), s(&sd), s(&cn)), &[]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{w}x{h}: {err}");
        assert!(
            err.contains(&format!("cannot paint a {w}x{h} photo"))
                && err.contains("more elongated than 8:1; crop it first"),
            "{w}x{h}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}

/// A canvas whose estimated activations exceed the machine's available memory is refused
/// before the first step, with both figures and the flags that lower the need, and nothing is
/// written. (The tiny model keeps every attention score: 4096² pixels are ~4 M latent tokens.)
#[test]
fn canvases_beyond_the_available_memory_are_refused_with_the_flags_that_help() {
    let tmp = tempfile::tempdir().unwrap();
    let (sd, cn) = (
        fixtures().join("tiny-sd"),
        fixtures().join("tiny-controlnet"),
    );
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([120, 60, 200]))
        .save(&photo)
        .unwrap();
    let out = tmp.path().join("out.png");
    let mut args = tiny_local_args(s(&photo), s(&out), s(&sd), s(&cn));
    args.extend(["--size", "4096"]);
    let run = easel(&args, &[]);
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("painting 1 image of 4096×4096 pixels needs about ")
            && err.contains(
                "is available on the CPU; change --size, --batch or --vae-tiling to need less"
            ),
        "{err}"
    );
    assert!(!out.exists());
}
