//! End-to-end tests of `easel learn` on the tiny random SD + ControlNet of easel-pipeline's
//! fixtures (a Hugging Face cache layout, offline, CPU).

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::Device;
use easel_bank::file::read_bank;

mod common;

use common::{assert_success, easel_command, s, stderr, tiny_cache};

fn easel(args: &[&str], cache: &Path) -> Output {
    easel_command(args)
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .expect("the easel binary runs")
}

/// Three artworks of easel-bank's fixture collection in `root/collection`.
fn collection(root: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../easel-bank/tests/fixtures/collection");
    let dir = root.join("collection");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "starry_night_over_the_rhone.png",
        "sunflowers_1888.png",
        "the_night_cafe.png",
    ] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    dir
}

fn learn(cache: &Path, coll: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "learn",
        s(coll),
        "-o",
        s(out),
        "--sd",
        "org/tiny-sd",
        "--controlnet",
        "org/tiny-controlnet",
        "--device",
        "cpu",
        "--offline",
    ];
    args.extend(extra);
    easel(&args, cache)
}

/// The bank's vectors as bits and its `training` metadata.
fn contents(path: &Path) -> (Vec<u32>, serde_json::Value, String) {
    let (bank, meta) = read_bank(&std::fs::read(path).unwrap(), &Device::Cpu).unwrap();
    let bits = common::banks::vector_bits(&bank);
    (bits, meta.training, meta.collection_hash)
}

#[test]
fn learn_writes_a_bank_and_resumes_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let train = [
        "--layout",
        "lsast",
        "--resolution",
        "64",
        "--checkpoint-every",
        "3",
        "--seed",
        "1",
        "--batch",
        "1",
        "--grad-accumulation",
        "1",
    ];

    let straight = tmp.path().join("straight.bank");
    let mut args = train.to_vec();
    args.extend(["--steps", "6"]);
    let out = learn(&cache, &coll, &straight, &args);
    assert_success(&out);
    assert!(tmp
        .path()
        .join("straight.run/checkpoint.safetensors")
        .is_file());

    let show = easel(&["bank", "show", s(&straight)], &cache);
    assert_success(&show);
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        text.contains(
            "layout: 10 stages x 3 groups (down-mid-up) x 1 tokens = 30 vectors of 32 dims"
        ),
        "{text}"
    );
    assert!(text.contains("steps_done"), "{text}");

    let resumed = tmp.path().join("resumed.bank");
    let mut args = train.to_vec();
    args.extend(["--steps", "3"]);
    assert_success(&learn(&cache, &coll, &resumed, &args));
    assert_eq!(contents(&resumed).1["steps_done"], 3);
    let out = learn(&cache, &coll, &resumed, &["--resume", "--steps", "6"]);
    assert_success(&out);

    let (a_bits, a_training, a_hash) = contents(&straight);
    let (b_bits, b_training, b_hash) = contents(&resumed);
    assert_eq!(a_training["steps_done"], 6);
    assert_eq!(a_training["steps"], 6);
    assert_eq!(a_training["resolution"], 64);
    assert_eq!(a_training, b_training);
    assert_eq!(a_hash.len(), 64);
    assert_eq!(a_hash, b_hash);
    assert_eq!(a_bits.len(), 30 * 32);
    assert_eq!(a_bits, b_bits);
}

/// `--validate-every 2` writes `validation/step_000002.png` (the first artwork through the
/// current bank, 2 denoising steps, with a parameters chunk); a resumed run goes on numbering
/// from the checkpoint's step; an unreadable `--validation-photo` is a one-line error.
#[test]
fn validation_images_every_n_steps_continue_after_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let out = tmp.path().join("v.bank");
    let flags = [
        "--resolution",
        "64",
        "--batch",
        "1",
        "--grad-accumulation",
        "1",
        "--validate-every",
        "2",
        "--validation-steps",
        "2",
    ];
    let mut args = flags.to_vec();
    args.extend(["--steps", "3"]);
    assert_success(&learn(&cache, &coll, &out, &args));
    let dir = tmp.path().join("v.run/validation");
    let names = |dir: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&dir), ["step_000002.png"]);
    let first = dir.join("step_000002.png");
    let img = image::open(&first).unwrap();
    // The first artwork (starry_night_over_the_rhone, 88×72) at a 64 px short side.
    assert_eq!((img.width(), img.height()), (80, 64));
    let params = easel_core::read_png_parameters(&first).unwrap().unwrap();
    assert!(params.contains("Training step: 2"), "{params}");
    assert!(params.contains("Steps: 2"), "{params}");
    assert!(params.contains("sd-controlnet"), "{params}");

    let resumed = learn(&cache, &coll, &out, &["--resume", "--steps", "4"]);
    assert_success(&resumed);
    assert_eq!(names(&dir), ["step_000002.png", "step_000004.png"]);

    let mut args = flags.to_vec();
    let missing = tmp.path().join("missing.png");
    args.extend(["--steps", "2", "--validation-photo", s(&missing)]);
    let out = learn(&cache, &coll, &tmp.path().join("w.bank"), &args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--validation-photo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `-o NAME.safetensors` writes a style plugin: the bank the same run writes as a `.bank` (a
/// bank plugin is a bank file), with the latest validation image as its thumbnail; it installs
/// and shows that thumbnail.
#[test]
fn learn_writes_a_plugin_with_the_validation_image_as_thumbnail() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let flags = [
        "--resolution",
        "64",
        "--batch",
        "1",
        "--grad-accumulation",
        "1",
        "--steps",
        "2",
        "--validate-every",
        "2",
        "--validation-steps",
        "2",
    ];
    let bank = tmp.path().join("plain.bank");
    assert_success(&learn(&cache, &coll, &bank, &flags));
    let plugin = tmp.path().join("rhone.safetensors");
    let mut with_json = flags.to_vec();
    with_json.push("--json");
    let run = learn(&cache, &coll, &plugin, &with_json);
    assert_success(&run);
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["format"], "plugin");
    assert_eq!(
        (&summary["steps"], &summary["artworks"]),
        (&2.into(), &3.into())
    );
    assert_eq!(summary["output"], s(&plugin));
    assert_eq!(contents(&plugin).0, contents(&bank).0);

    let home = tmp.path().join("home");
    let styles = |args: &[&str]| {
        easel_command(args)
            .env("EASEL_HOME", &home)
            .output()
            .expect("the easel binary runs")
    };
    let run = styles(&["styles", "install", s(&plugin), "--json"]);
    assert_success(&run);
    let entry: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (&entry["name"], &entry["kind"]),
        (&"rhone".into(), &"bank".into())
    );
    let thumb = tmp.path().join("thumb.png");
    assert_success(&styles(&[
        "styles",
        "show",
        "rhone",
        "--preview",
        s(&thumb),
    ]));
    let validation = tmp.path().join("rhone.run/validation/step_000002.png");
    assert_eq!(
        image::open(&thumb).unwrap().to_rgb8(),
        image::open(&validation).unwrap().to_rgb8()
    );
}

/// SIGINT to a running `easel learn` (as Ctrl-C): it checkpoints after the step in progress,
/// exits with an error naming the checkpoint and `--resume`, and resuming to `k + 2` steps gives
/// the very vectors of a straight `k + 2`-step run.
#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_resume_matches_a_straight_run() {
    use easel_bank::checkpoint::Checkpoint;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let flags = [
        "--resolution",
        "64",
        "--batch",
        "1",
        "--grad-accumulation",
        "1",
        "--seed",
        "3",
        "--checkpoint-every",
        "1",
        "--validate-every",
        "0",
    ];
    let out = tmp.path().join("c.bank");
    let mut args = vec![
        "learn",
        s(&coll),
        "-o",
        s(&out),
        "--sd",
        "org/tiny-sd",
        "--controlnet",
        "org/tiny-controlnet",
        "--device",
        "cpu",
        "--offline",
        "--steps",
        "100000",
    ];
    args.extend(flags);
    let child = easel_command(&args)
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Training has started once the first checkpoint exists.
    let ckpt_path = tmp.path().join("c.run/checkpoint.safetensors");
    let started = Instant::now();
    while !ckpt_path.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("interrupted after"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(err.contains("c.run"), "{err}");
    assert!(!out.exists(), "no bank is written when interrupted");
    let k = Checkpoint::load(&tmp.path().join("c.run"), &Device::Cpu)
        .unwrap()
        .step;
    assert!(k >= 1);
    let target = (k + 2).to_string();

    assert_success(&learn(
        &cache,
        &coll,
        &out,
        &["--resume", "--steps", &target],
    ));
    let straight = tmp.path().join("straight.bank");
    let mut args = flags.to_vec();
    args.extend(["--steps", &target]);
    assert_success(&learn(&cache, &coll, &straight, &args));
    let (a_bits, a_training, _) = contents(&straight);
    let (b_bits, b_training, _) = contents(&out);
    assert_eq!(a_training["steps_done"], k + 2);
    assert_eq!(a_training, b_training);
    assert_eq!(a_bits, b_bits);
}

#[test]
fn an_empty_collection_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = learn(
        &cache,
        &empty,
        &tmp.path().join("x.bank"),
        &["--steps", "1"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!tmp.path().join("x.bank").exists());
}

/// The official presets' training defaults reach the run (recorded in the bank's `training`)
/// and their inference defaults reach `stylize --bank` (recorded in the PNG parameters); flags
/// override both.
#[test]
fn preset_defaults_reach_learn_and_stylize_and_flags_override_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/chelsea_cat.png");
    let base = |layout: &'static str| {
        vec![
            "--layout",
            layout,
            "--resolution",
            "64",
            "--steps",
            "1",
            "--batch",
            "1",
            "--grad-accumulation",
            "1",
            "--validate-every",
            "0",
        ]
    };
    let stylize = |bank: &Path, out: &Path, extra: &[&str]| -> String {
        let mut args = vec![
            "stylize",
            s(&photo),
            "--bank",
            s(bank),
            "--sd",
            "org/tiny-sd",
            "--size",
            "64",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--offline",
            "-o",
            s(out),
        ];
        args.extend(extra);
        let run = easel(&args, &cache);
        assert_success(&run);
        easel_core::read_png_parameters(out).unwrap().unwrap()
    };

    // ArtBank: 1e-4 without the ControlNet; paints by stochastic inversion at CFG 10, no
    // ControlNet.
    let art = tmp.path().join("art.bank");
    let run = learn(&cache, &coll, &art, &base("artbank"));
    assert_success(&run);
    assert!(
        stderr(&run).contains("artbank preset: 1 steps at lr 1e-4, without the ControlNet"),
        "{}",
        stderr(&run)
    );
    let (_, training, _) = contents(&art);
    assert_eq!(training["lr"], 1e-4);
    assert_eq!(training["control"], false);
    assert_eq!(training["inference"]["noise_start"], "stochastic-inversion");
    let params = stylize(&art, &tmp.path().join("art.png"), &[]);
    for expected in [
        "Method: sd-img2img",
        "Guidance: 10",
        "Noise start: stochastic-inversion",
        "Bank defaults: \"guidance, strength, steps, scheduler, negative prompt, noise start, no control\"",
    ] {
        assert!(params.contains(expected), "{expected} in {params}");
    }
    let params = stylize(
        &art,
        &tmp.path().join("art-flags.png"),
        &[
            "--guidance",
            "5",
            "--steps",
            "4",
            "--noise-start",
            "img2img",
            "--controlnet",
            "org/tiny-controlnet",
        ],
    );
    assert!(params.contains("Method: sd-controlnet"), "{params}");
    assert!(params.contains("Guidance: 5, "), "{params}");
    assert!(params.contains("Steps: 4, "), "{params}");
    assert!(!params.contains("Noise start"), "{params}");

    // Flags override the training defaults.
    let flagged = tmp.path().join("art-flags.bank");
    let mut args = base("artbank");
    args.extend(["--lr", "0.01", "--control", "on", "--caption", "art of {}"]);
    assert_success(&learn(&cache, &coll, &flagged, &args));
    let (_, training, _) = contents(&flagged);
    assert_eq!(training["lr"], 0.01);
    assert_eq!(training["control"], true);
    assert_eq!(training["caption"], "art of {}");

    // LSAST: 1e-6 without the ControlNet; paints through it, run on the conditional context.
    let lsast = tmp.path().join("lsast.bank");
    let run = learn(&cache, &coll, &lsast, &base("lsast"));
    assert_success(&run);
    assert!(
        stderr(&run).contains("without the ControlNet, caption \"{}\""),
        "{}",
        stderr(&run)
    );
    let (_, training, _) = contents(&lsast);
    assert_eq!(training["lr"], 1e-6);
    assert_eq!(training["control"], false);
    assert_eq!(
        training["caption"], "{}",
        "the official caption: the placeholder alone"
    );
    let params = stylize(
        &lsast,
        &tmp.path().join("lsast.png"),
        &["--steps", "4", "--controlnet", "org/tiny-controlnet"],
    );
    for expected in [
        "Method: sd-controlnet",
        "Guidance: 10",
        "Control guidance: cond-only",
        "Noise start: ldm-img2img",
    ] {
        assert!(params.contains(expected), "{expected} in {params}");
    }

    // Validation images paint as the bank paints by default.
    for (layout, expected) in [
        (
            "artbank",
            &[
                "Method: sd-img2img",
                "Guidance: 10",
                "Noise start: stochastic-inversion",
            ][..],
        ),
        (
            "lsast",
            &[
                "Method: sd-controlnet",
                "Guidance: 10",
                "Noise start: ldm-img2img",
                "Control guidance: cond-only",
            ][..],
        ),
    ] {
        let out = tmp.path().join(format!("{layout}-validated.bank"));
        let mut args = base(layout);
        args.retain(|a| *a != "--validate-every" && *a != "0");
        args.extend(["--validate-every", "1", "--validation-steps", "2"]);
        assert_success(&learn(&cache, &coll, &out, &args));
        let png = out.with_extension("run").join("validation/step_000001.png");
        let params = easel_core::read_png_parameters(&png).unwrap().unwrap();
        for e in expected {
            assert!(params.contains(e), "{layout}: {e} in {params}");
        }
    }
}

/// ArtBank is built on SD 1.4: the `artbank` preset learns on `CompVis/stable-diffusion-v1-4`
/// unless `--sd` names a model, records it as the bank's base model, resumes on it, and its
/// bank paints on it when no model is named. Offline without it, the error names what to
/// download. (The cache holds the tiny SD under 1.4's repository id.)
#[test]
fn artbank_learns_and_paints_on_sd14_unless_a_model_is_named() {
    const SD14: &str = "CompVis/stable-diffusion-v1-4";
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let coll = collection(tmp.path());
    let art = tmp.path().join("art.bank");
    let learn = |cache: &Path, extra: &[&str]| {
        let mut args = vec![
            "learn",
            s(&coll),
            "-o",
            s(&art),
            "--controlnet",
            "org/tiny-controlnet",
            "--device",
            "cpu",
            "--offline",
            "--validate-every",
            "0",
        ];
        args.extend(extra);
        easel(&args, cache)
    };
    let fresh = [
        "--layout",
        "artbank",
        "--resolution",
        "64",
        "--steps",
        "1",
        "--batch",
        "1",
        "--grad-accumulation",
        "1",
    ];

    // Not in the cache: the download it needs.
    let run = learn(&cache, &fresh);
    assert!(!run.status.success());
    assert!(stderr(&run).contains(SD14), "{}", stderr(&run));

    common::add_to_cache(
        &cache,
        SD14,
        &common::fixtures().join("tiny-sd"),
        "1414141414141414141414141414141414141414",
    );
    let run = learn(&cache, &fresh);
    assert_success(&run);
    assert!(
        stderr(&run).contains(&format!("on {SD14} (--sd overrides)")),
        "{}",
        stderr(&run)
    );
    let meta = |path: &Path| {
        read_bank(&std::fs::read(path).unwrap(), &Device::Cpu)
            .unwrap()
            .1
    };
    assert_eq!(meta(&art).base_model, SD14);
    assert_eq!(meta(&art).training["base_model"], SD14);
    assert_success(&learn(&cache, &["--resume", "--steps", "2"]));
    assert_eq!(meta(&art).training["steps_done"], 2);

    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/chelsea_cat.png");
    let out = tmp.path().join("art.png");
    let run = easel(
        &[
            "stylize",
            s(&photo),
            "--bank",
            s(&art),
            "--size",
            "64",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--offline",
            "-o",
            s(&out),
        ],
        &cache,
    );
    assert_success(&run);
    assert!(
        stderr(&run).contains(&format!(
            "painting on {SD14}, the model the bank was learned on"
        )),
        "{}",
        stderr(&run)
    );
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(params.contains(&format!("{SD14}@1414")), "{params}");

    // --sd names another model: learned there.
    let run = learn(&cache, &[&fresh[..], &["--sd", "org/tiny-sd"]].concat());
    assert_success(&run);
    assert_eq!(meta(&art).base_model, "org/tiny-sd");
}
