//! `kill -9` at moments spread over a run of `styles install`, `train-fast`, `learn` and
//! `compare` (a child process each time): afterwards every file is absent or complete (the
//! plugin index parses and every plugin verifies, checkpoints load, outputs decode), no debris
//! blocks the next run, and `--resume` finishes with the same bits as an uninterrupted run.
//!
//! The kills fall at `(i + ½) / N` of a measured uninterrupted run, `N` =
//! `EASEL_KILL_TRIALS` (default 3 per command; docs/reliability.md records the 50-trial run).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{assert_success, easel_command, example, fast_fixture, s, stderr, tiny_cache};

fn trials() -> usize {
    std::env::var("EASEL_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Runs `cmd` to the end, timing it.
fn timed(mut cmd: Command) -> (Output, Duration) {
    let start = Instant::now();
    let out = cmd.output().expect("the easel binary runs");
    (out, start.elapsed())
}

/// Starts `cmd` and sends it SIGKILL after `delay` (unless it has finished by then).
fn kill_after(mut cmd: Command, delay: Duration) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the easel binary starts");
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Child::kill is SIGKILL on Unix: no handler runs, nothing is cleaned up.
    let _ = child.kill();
    let _ = child.wait();
}

/// The `i`-th of `n` kill moments over a run of `length`.
fn moment(i: usize, n: usize, length: Duration) -> Duration {
    length.mul_f64((i as f64 + 0.5) / n as f64)
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            found.extend(files_with_extension(&path, ext));
        } else if path.extension().is_some_and(|x| x == ext) {
            found.push(path);
        }
    }
    found
}

/// Every PNG below `dir` decodes whole.
fn assert_pngs_complete(dir: &Path) {
    for png in files_with_extension(dir, "png") {
        image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    }
}

#[test]
fn styles_install_killed_anywhere_leaves_a_readable_store() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let styles = |args: &[&str]| {
        let mut cmd = easel_command(&[&["styles"], args].concat());
        cmd.env("EASEL_HOME", &home);
        cmd
    };
    let (out, length) = timed(styles(&[
        "install",
        "preset:3:0.5,12:0.5",
        "--name",
        "first",
    ]));
    assert_success(&out);
    let n = trials();
    for i in 0..n {
        let name = format!("mix{i}");
        // A mix of its own each trial: the store refuses a second copy of the same tensors.
        let spec = format!("preset:0:{},1:1", i + 1);
        kill_after(
            styles(&["install", &spec, "--name", &name]),
            moment(i, n, length),
        );
        let list = styles(&["list"]).output().unwrap();
        assert_success(&list);
        let verify = styles(&["verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "trial {i}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            stderr(&verify)
        );
        // Whatever the kill left, the same install goes through now (a name already taken by
        // the killed run's complete install is the one refusal allowed).
        let again = styles(&["install", &spec, "--name", &name])
            .output()
            .unwrap();
        assert!(
            again.status.success() || stderr(&again).contains(&name),
            "trial {i}: {}",
            stderr(&again)
        );
    }
    let list = String::from_utf8(styles(&["list"]).output().unwrap().stdout).unwrap();
    for i in 0..n {
        assert!(list.contains(&format!("mix{i}")), "{list}");
    }
}

/// train-fast's tiny AdaIN run (as `cli_train_fast.rs` runs it), into `out`.
fn train_fast(root: &Path, out: &Path, resume: bool) -> Command {
    if resume {
        let run = out.with_extension("run");
        return easel_command(&[
            "train-fast",
            "--resume",
            s(&run),
            "--steps",
            "6",
            "-o",
            s(out),
            "--device",
            "cpu",
        ]);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/images");
    let (content, styles) = (root.join("photos"), root.join("paintings"));
    for (dir, file) in [
        (&content, "content/chelsea_cat.png"),
        (&styles, "style/gauguin_te_fare.jpg"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        let src = shared.join(file);
        std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    }
    let vgg = fast_fixture("adain_vgg_tiny.pth");
    let args = vec![
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
        "6",
        "--batch",
        "1",
        "--load-size",
        "40",
        "--crop",
        "32",
        "--seed",
        "3",
        "--save-every",
        "1",
        "--sample-every",
        "2",
        "--device",
        "cpu",
    ];
    easel_command(&args)
}

#[test]
fn train_fast_killed_anywhere_resumes_to_the_same_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight.safetensors");
    let (out, length) = timed(train_fast(tmp.path(), &straight, false));
    assert_success(&out);
    let expected = std::fs::read(&straight).unwrap();
    let n = trials();
    for i in 0..n {
        let out = tmp.path().join(format!("killed{i}.safetensors"));
        kill_after(train_fast(tmp.path(), &out, false), moment(i, n, length));
        let run = out.with_extension("run");
        let checkpoint = run.join("checkpoint.safetensors");
        let resumable = checkpoint.is_file();
        if resumable {
            let bytes = std::fs::read(&checkpoint).unwrap();
            easel_fast::train::checkpoint::Checkpoint::from_bytes(&bytes, &Device::Cpu)
                .unwrap_or_else(|e| panic!("trial {i}: checkpoint: {e}"));
        }
        if out.is_file() {
            candle_core::safetensors::load(&out, &Device::Cpu)
                .unwrap_or_else(|e| panic!("trial {i}: output: {e}"));
        }
        assert_pngs_complete(&run);
        let finish = train_fast(tmp.path(), &out, resumable).output().unwrap();
        assert!(finish.status.success(), "trial {i}: {}", stderr(&finish));
        assert!(
            std::fs::read(&out).unwrap() == expected,
            "trial {i}: the resumed decoder differs from the uninterrupted one"
        );
    }
}

/// learn's tiny run (as `cli_learn.rs` runs it) on one artwork, into `out`.
fn learn(root: &Path, cache: &Path, out: &Path, resume: bool) -> Command {
    let collection = root.join("collection");
    std::fs::create_dir_all(&collection).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../easel-bank/tests/fixtures/collection/sunflowers_1888.png");
    std::fs::copy(&src, collection.join("sunflowers_1888.png")).unwrap();
    let mut args = vec![
        "learn",
        s(&collection),
        "-o",
        s(out),
        "--sd",
        "org/tiny-sd",
        "--controlnet",
        "org/tiny-controlnet",
        "--device",
        "cpu",
        "--offline",
        "--steps",
        "6",
    ];
    if resume {
        args.push("--resume");
    } else {
        args.extend([
            "--resolution",
            "64",
            "--seed",
            "1",
            "--checkpoint-every",
            "1",
            "--validate-every",
            "0",
        ]);
    }
    let mut cmd = easel_command(&args);
    cmd.env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache);
    cmd
}

#[test]
fn learn_killed_anywhere_resumes_to_the_same_bank() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let straight = tmp.path().join("straight.bank");
    let (out, length) = timed(learn(tmp.path(), &cache, &straight, false));
    assert_success(&out);
    let vectors = |path: &Path| {
        let (bank, _) = easel_bank::file::read_bank(&std::fs::read(path).unwrap(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        common::banks::vector_bits(&bank)
    };
    let expected = vectors(&straight);
    let n = trials();
    for i in 0..n {
        let out = tmp.path().join(format!("killed{i}.bank"));
        kill_after(learn(tmp.path(), &cache, &out, false), moment(i, n, length));
        let run = out.with_extension("run");
        let checkpoint = run.join("checkpoint.safetensors");
        let resumable = checkpoint.is_file();
        if resumable {
            let bytes = std::fs::read(&checkpoint).unwrap();
            easel_bank::checkpoint::Checkpoint::from_bytes(&bytes, &Device::Cpu)
                .unwrap_or_else(|e| panic!("trial {i}: checkpoint: {e}"));
        }
        if out.is_file() {
            vectors(&out);
        }
        let finish = learn(tmp.path(), &cache, &out, resumable).output().unwrap();
        assert!(finish.status.success(), "trial {i}: {}", stderr(&finish));
        assert_eq!(vectors(&out), expected, "trial {i}");
    }
}

#[test]
fn compare_killed_anywhere_leaves_complete_files_and_reruns() {
    let tmp = tempfile::tempdir().unwrap();
    let compare = |out: &Path| {
        let mut cmd = easel_command(&[
            "compare",
            &example("chelsea_cat.png"),
            "--use",
            "preset:3",
            "--use",
            "arbitrary",
            "--style",
            &example("vangogh_starry_night.jpg"),
            "--max-size",
            "64",
            "--no-perceptual",
            "--device",
            "cpu",
            "-o",
            s(out),
        ]);
        cmd.env("EASEL_HOME", tmp.path().join("home"));
        cmd
    };
    let straight = tmp.path().join("straight");
    let (out, length) = timed(compare(&straight));
    assert_success(&out);
    // The cells' pixels (metrics.csv also holds timings, which differ run to run).
    let cells = |dir: &Path| {
        let mut pngs = files_with_extension(&dir.join("cells"), "png");
        pngs.sort();
        pngs.iter()
            .map(|p| image::open(p).unwrap().to_rgb8().into_raw())
            .collect::<Vec<_>>()
    };
    let expected = cells(&straight);
    assert_eq!(expected.len(), 2);
    let n = trials();
    for i in 0..n {
        let out = tmp.path().join(format!("killed{i}"));
        kill_after(compare(&out), moment(i, n, length));
        assert_pngs_complete(&out);
        for json in files_with_extension(&out, "json") {
            let text = std::fs::read(&json).unwrap();
            serde_json::from_slice::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("trial {i}: {}: {e}", json.display()));
        }
        let again = compare(&out).output().unwrap();
        assert!(again.status.success(), "trial {i}: {}", stderr(&again));
        assert!(cells(&out) == expected, "trial {i}: the cells differ");
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(out.join("metrics.json")).unwrap(),
        )
        .unwrap();
    }
}
