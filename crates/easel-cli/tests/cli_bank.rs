//! End-to-end tests of prompt banks from the command line: `easel bank show | export |
//! import` and `easel stylize --bank`, with banks built by easel-bank against the tiny random
//! SD of easel-pipeline's fixtures (served from a Hugging Face cache layout, offline, CPU).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use easel_bank::bank::Bank;
use easel_bank::file::read_bank;
use easel_bank::layout::Slot;
use easel_bank::params::{BankParams, ParamsSpec};
use easel_bank::preset::Preset;

mod common;

use common::banks::{lsast, save, tensor_bits, tiny_hash, tiny_sd, vector_bits};
use common::{assert_success, easel_command, fixtures, s, stderr};

const SNAPSHOT: &str = "0123456789abcdef0123456789abcdef01234567";

fn easel(args: &[&str], cache: Option<&Path>) -> Output {
    let mut cmd = easel_command(args);
    cmd.env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1");
    if let Some(cache) = cache {
        cmd.env("HF_HUB_CACHE", cache);
    }
    cmd.output().expect("the easel binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line error of a failed run.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "easel succeeded: {}", stderr(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    lines[0].to_string()
}

/// Copies the tiny SD into `root/hub` as huggingface_hub lays it out (`org/tiny-sd`).
fn tiny_cache(root: &Path) -> PathBuf {
    let cache = root.join("hub");
    let repo = cache.join("models--org--tiny-sd");
    let snapshot = repo.join("snapshots").join(SNAPSHOT);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), SNAPSHOT).unwrap();
    let src = fixtures().join("tiny-sd");
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(src.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(rel);
                continue;
            }
            let dest = snapshot.join(&rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(src.join(&rel), dest).unwrap();
        }
    }
    cache
}

/// `bank`'s vectors as a direct bank, with `shift` added to the vectors of `slot`.
fn direct(bank: &Bank, slot: Option<Slot>, shift: f64) -> Bank {
    let l = bank.layout();
    let (stages, groups, tokens) = (l.stages(), l.num_groups(), l.tokens_per_slot());
    let v = bank.vectors().unwrap().detach();
    let d = v.dim(3).unwrap();
    let mut flat = v.reshape((stages * groups * tokens, d)).unwrap();
    if let Some(slot) = slot {
        let start = (slot.stage * groups + slot.group) * tokens;
        let mut mask = vec![0f32; stages * groups * tokens];
        mask[start..start + tokens].fill(shift as f32);
        let mask = Tensor::from_vec(mask, (stages * groups * tokens, 1), &Device::Cpu).unwrap();
        flat = flat.broadcast_add(&mask).unwrap();
    }
    let params = BankParams::from_tensors(
        &ParamsSpec::Direct {},
        l,
        d,
        HashMap::from([("bank.vectors".to_string(), flat)]),
    )
    .unwrap();
    Bank::new(
        l.clone(),
        params,
        bank.prompt().clone(),
        bank.init_word().to_string(),
    )
    .unwrap()
}

fn read(path: &Path) -> Bank {
    read_bank(&std::fs::read(path).unwrap(), &Device::Cpu)
        .unwrap()
        .0
}

#[test]
fn show_prints_the_layout_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tiny_sd();
    let path = tmp.path().join("style.bank");
    save(&lsast(&sd), "ab12cd34ef56ab12", &path);
    let out = easel(&["bank", "show", s(&path)], None);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains(
            "layout: 10 stages x 3 groups (down-mid-up) x 1 tokens = 30 vectors of 32 dims"
        ),
        "{text}"
    );
    assert!(text.contains("parameterisation: generated"), "{text}");
    assert!(
        text.contains("base model: org/tiny-sd (hash ab12cd34ef56ab12)"),
        "{text}"
    );
    assert!(text.contains("created: 2024-05-01T12:00:00Z"), "{text}");
    assert!(text.contains("file: style.bank (sha256 "), "{text}");
    // The header row and 10 stage rows of the norm table.
    let rows = text
        .lines()
        .skip_while(|l| l.split_whitespace().collect::<Vec<_>>() != ["stage", "down", "mid", "up"])
        .count();
    assert_eq!(rows, 11, "{text}");

    // --json: the same facts, parsed.
    let out = easel(&["bank", "show", s(&path), "--json"], None);
    assert_success(&out);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["file"], "style.bank");
    assert_eq!(shown["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(shown["dim"], 32);
    assert_eq!(shown["params"]["kind"], "generated");
    assert_eq!(shown["metadata"]["base_model_hash"], "ab12cd34ef56ab12");
    let norms = shown["norms"].as_array().unwrap();
    assert_eq!(norms.len(), 10);
    assert!(norms
        .iter()
        .all(|stage| stage.as_array().unwrap().len() == 3));
}

#[test]
fn diffusers_export_imports_back_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tiny_sd();
    let path = tmp.path().join("style.bank");
    let bank = lsast(&sd);
    save(&bank, "ab12", &path);
    let export_dir = tmp.path().join("export");
    let out = easel(
        &[
            "bank",
            "export",
            s(&path),
            "--format",
            "diffusers",
            "-o",
            s(&export_dir),
        ],
        None,
    );
    assert_success(&out);
    let embeds = export_dir.join("learned_embeds.safetensors");
    let sidecar = export_dir.join("learned_embeds.easel.json");
    assert!(sidecar.is_file(), "{}", stderr(&out));
    let tokens = candle_core::safetensors::load(&embeds, &Device::Cpu).unwrap();
    assert_eq!(tokens.len(), 30);
    assert_eq!(tokens["<style-s3-g1>"].dims(), [1, 32]);

    let imported = tmp.path().join("imported.bank");
    let out = easel(
        &[
            "bank",
            "import",
            s(&embeds),
            "--sidecar",
            s(&sidecar),
            "-o",
            s(&imported),
        ],
        None,
    );
    assert_success(&out);
    let back = read(&imported);
    assert_eq!(back.layout(), bank.layout());
    assert_eq!(vector_bits(&back), vector_bits(&bank));
    let shown = easel(&["bank", "show", s(&imported)], None);
    assert_success(&shown);
    let text = stdout(&shown);
    assert!(text.contains("layout: 10 stages x 3 groups"), "{text}");
    assert!(text.contains("parameterisation: direct"), "{text}");

    // A1111: one slot, chosen with --slot.
    let a1111 = tmp.path().join("style-a1111.safetensors");
    let refused = easel(
        &[
            "bank",
            "export",
            s(&path),
            "--format",
            "a1111",
            "-o",
            s(&a1111),
        ],
        None,
    );
    assert!(error_line(&refused).contains("30 slots"));
    let out = easel(
        &[
            "bank",
            "export",
            s(&path),
            "--format",
            "a1111",
            "--slot",
            "3,1",
            "-o",
            s(&a1111),
        ],
        None,
    );
    assert_success(&out);
    let one = tmp.path().join("one.bank");
    assert_success(&easel(&["bank", "import", s(&a1111), "-o", s(&one)], None));
    let one = read(&one);
    assert_eq!(one.layout().num_slots(), 1);
    let expected = bank.slot_vectors(Slot { stage: 3, group: 1 }).unwrap();
    let got = one.slot_vectors(Slot { stage: 0, group: 0 }).unwrap();
    assert_eq!(tensor_bits(&got), tensor_bits(&expected));

    // Never over the input; pickles refused.
    let before = std::fs::read(&path).unwrap();
    let out = easel(
        &[
            "bank",
            "export",
            s(&path),
            "--format",
            "diffusers",
            "-o",
            s(&path),
        ],
        None,
    );
    assert!(error_line(&out).contains("it is one of the input"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let pickle = tmp.path().join("learned_embeds.bin");
    std::fs::write(&pickle, b"PK\x03\x04rest of a zip").unwrap();
    let out = easel(
        &[
            "bank",
            "import",
            s(&pickle),
            "-o",
            s(&tmp.path().join("p.bank")),
        ],
        None,
    );
    let line = error_line(&out);
    assert!(
        line.contains("not a readable PyTorch zip checkpoint"),
        "{line}"
    );
}

fn photo(dir: &Path) -> PathBuf {
    let path = dir.join("photo.png");
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    img.save(&path).unwrap();
    path
}

fn stylize(cache: &Path, photo: &Path, bank: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "stylize",
        s(photo),
        "--bank",
        s(bank),
        "--sd",
        "org/tiny-sd",
        "--no-control",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--steps",
        "4",
        "--size",
        "64",
        "-o",
        s(out),
    ];
    args.extend(extra);
    easel(&args, Some(cache))
}

#[test]
fn stylize_with_a_bank_follows_its_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let photo = photo(tmp.path());
    let sd = tiny_sd();
    let hash = tiny_hash(&sd);
    let base = lsast(&sd);
    let a = tmp.path().join("a.bank");
    let b = tmp.path().join("b.bank");
    save(&direct(&base, None, 0.0), &hash, &a);
    // DDIM, 4 steps at strength 0.7: the last step is at timestep 1, stage 0.
    save(
        &direct(&base, Some(Slot { stage: 0, group: 2 }), 0.5),
        &hash,
        &b,
    );

    let run = |bank: &Path, name: &str| -> Vec<u8> {
        let out = tmp.path().join(name);
        let r = stylize(&cache, &photo, bank, &out, &[]);
        assert_success(&r);
        std::fs::read(&out).unwrap()
    };
    let first = run(&a, "a1.png");
    let again = run(&a, "a2.png");
    let changed = run(&b, "b.png");
    assert!(first == again, "the same bank gave different images");
    assert!(first != changed, "changing a slot left the image unchanged");

    let params = easel_core::read_png_parameters(&tmp.path().join("a1.png"))
        .unwrap()
        .unwrap();
    // The hash of the tensor data: the bytes after the safetensors header.
    let bytes = std::fs::read(&a).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let sha = easel_core::hash::sha256_hex(&bytes[8 + header..]);
    assert!(params.contains("Bank: a,"), "{params}");
    assert!(params.contains(&format!("Bank sha256: {sha}")), "{params}");
    assert!(
        params.contains("a painting in the style of {bank}"),
        "{params}"
    );

    // --prompt with {bank}: another prompt, another image, recorded as given.
    let out = tmp.path().join("city.png");
    let r = stylize(
        &cache,
        &photo,
        &a,
        &out,
        &["--prompt", "a city at dusk in the style of {bank}"],
    );
    assert_success(&r);
    assert!(std::fs::read(&out).unwrap() != first);
    let params = easel_core::read_png_parameters(&out).unwrap().unwrap();
    assert!(
        params.contains("a city at dusk in the style of {bank}"),
        "{params}"
    );
    let r = stylize(&cache, &photo, &a, &out, &["--prompt", "a city at dusk"]);
    assert!(error_line(&r).contains("has no {bank}"));
}

#[test]
fn stylize_checks_the_banks_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let photo = photo(tmp.path());
    let sd = tiny_sd();
    let out = tmp.path().join("out.png");

    // Another base model (same width): refused, or loaded with a warning when forced.
    let other = tmp.path().join("other.bank");
    save(&lsast(&sd), "ffffffffffffffff", &other);
    let r = stylize(&cache, &photo, &other, &out, &[]);
    let line = error_line(&r);
    assert!(line.contains("use --force-bank"), "{line}");
    assert!(line.contains("ffffffffffff"), "{line}");
    let r = stylize(&cache, &photo, &other, &out, &["--force-bank"]);
    assert_success(&r);
    assert!(stderr(&r).contains("warning: bank other.bank was learned on org/tiny-sd"));

    // Another embedding width: one line naming both.
    let l = lsast(&sd).layout().clone();
    let n = l.num_vectors();
    let flat = Tensor::ones((n, 40), DType::F32, &Device::Cpu).unwrap();
    let params = BankParams::from_tensors(
        &ParamsSpec::Direct {},
        &l,
        40,
        HashMap::from([("bank.vectors".to_string(), flat)]),
    )
    .unwrap();
    let wide = Bank::new(
        l,
        params,
        Preset::builtin("lsast").unwrap().prompt,
        "painting".to_string(),
    )
    .unwrap();
    let wide_path = tmp.path().join("wide.bank");
    save(&wide, &tiny_hash(&sd), &wide_path);
    let r = stylize(&cache, &photo, &wide_path, &out, &["--force-bank"]);
    let line = error_line(&r);
    assert!(
        line.contains("40-d embeddings") && line.contains("32-d"),
        "{line}"
    );
}

/// `easel ARGS` with the tiny SD cache and its style store in `home`.
fn easel_home(args: &[&str], cache: &Path, home: &Path) -> Output {
    easel_command(args)
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .env("EASEL_HOME", home)
        .output()
        .expect("the easel binary runs")
}

/// The entry `easel styles ARGS --json` prints for a successful install.
fn installed(args: &[&str], cache: &Path, home: &Path) -> serde_json::Value {
    let run = easel_home(args, cache, home);
    assert_success(&run);
    serde_json::from_str(&stdout(&run)).unwrap()
}

/// `easel stylize PHOTO` on the tiny SD without ControlNet, seed 1, `steps` steps at 64 px,
/// with the `style` flags, into `out`.
fn stylize_tiny(
    cache: &Path,
    home: &Path,
    photo: &Path,
    steps: &str,
    style: &[&str],
    out: &Path,
) -> Output {
    let mut args = vec![
        "stylize",
        s(photo),
        "--sd",
        "org/tiny-sd",
        "--no-control",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--steps",
        steps,
        "--size",
        "64",
        "-o",
        s(out),
    ];
    args.extend_from_slice(style);
    easel_home(&args, cache, home)
}

#[test]
fn bank_plugins_install_paint_as_the_bank_and_refuse_another_width() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let home = tmp.path().join("home");
    let photo = photo(tmp.path());
    let sd = tiny_sd();
    let hash = tiny_hash(&sd);
    let bank_file = tmp.path().join("vangogh.bank");
    save(&direct(&lsast(&sd), None, 0.0), &hash, &bank_file);

    let entry = installed(
        &[
            "styles",
            "install",
            s(&bank_file),
            "--sd",
            "org/tiny-sd",
            "--json",
        ],
        &cache,
        &home,
    );
    assert_eq!(entry["name"], "vangogh");
    assert_eq!(entry["kind"], "bank");
    assert_eq!(entry["base_model"], "org/tiny-sd");
    let run = easel_home(
        &["styles", "list", "--kind", "bank", "--json"],
        &cache,
        &home,
    );
    assert_success(&run);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let run = easel_home(&["styles", "show", "vangogh", "--json"], &cache, &home);
    assert_success(&run);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(shown["metadata"]["format"], "easel-bank");
    assert_eq!(shown["metadata"]["base_model_hash"], hash.as_str());
    assert_eq!(shown["fit"], serde_json::Value::Null);
    let run = easel_home(
        &["styles", "show", "vangogh", "--sd", "org/tiny-sd", "--json"],
        &cache,
        &home,
    );
    assert_success(&run);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(shown["fit"], "fits org/tiny-sd");

    // --use NAME writes the very PNG --bank FILE writes: the parameters name the bank by its
    // title (the file's stem) and hash its tensor data, which the plugin keeps as they are.
    let paint = |style: &[&str], out: &Path| {
        assert_success(&stylize_tiny(&cache, &home, &photo, "4", style, out));
        std::fs::read(out).unwrap()
    };
    let a = paint(&["--use", "vangogh"], &tmp.path().join("use.png"));
    let b = paint(&["--bank", s(&bank_file)], &tmp.path().join("bank.png"));
    assert!(a == b, "--use vangogh and --bank paint different bytes");
    assert_success(&easel_home(&["styles", "verify", "vangogh"], &cache, &home));

    // A bank of another embedding width: refused at install, naming both widths.
    let base = lsast(&sd);
    let v = base.vectors().unwrap().detach();
    let wider = Tensor::cat(&[&v, &v.narrow(3, 0, 8).unwrap()], 3).unwrap();
    let (stages, groups, tokens) = {
        let l = base.layout();
        (l.stages(), l.num_groups(), l.tokens_per_slot())
    };
    let d = wider.dim(3).unwrap();
    let params = BankParams::from_tensors(
        &ParamsSpec::Direct {},
        base.layout(),
        d,
        HashMap::from([(
            "bank.vectors".to_string(),
            wider.reshape((stages * groups * tokens, d)).unwrap(),
        )]),
    )
    .unwrap();
    let other = Bank::new(
        base.layout().clone(),
        params,
        base.prompt().clone(),
        base.init_word().to_string(),
    )
    .unwrap();
    let other_file = tmp.path().join("wide.bank");
    save(&other, &hash, &other_file);
    let run = easel_home(
        &["styles", "install", s(&other_file), "--sd", "org/tiny-sd"],
        &cache,
        &home,
    );
    let line = error_line(&run);
    let narrow = sd.text_encoder.config().hidden_size;
    assert!(
        line.contains(&format!("{}-d", narrow + 8)) && line.contains(&format!("has {narrow}-d")),
        "{line}"
    );
    assert_success(&easel_home(&["styles", "remove", "vangogh"], &cache, &home));

    // A diffusers textual-inversion embedding installs through the importer, as a bank of no
    // known base model.
    let ti = tmp.path().join("ink.safetensors");
    let rows = Tensor::ones((2, narrow), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("<ink>".to_string(), rows)]), &ti).unwrap();
    let entry = installed(&["styles", "install", s(&ti), "--json"], &cache, &home);
    assert_eq!(entry["kind"], "bank");
    assert_eq!(entry["name"], "ink");
    assert_eq!(entry["base_model"], "unknown (imported embedding)");
}

/// Textual-inversion embeddings as users find them: a kohya file installs like a diffusers or
/// A1111 one; a hub repository's `learned_embeds.safetensors` installs by repo id from the
/// Hugging Face cache (offline; a repository not in the cache is refused with what to download,
/// and nothing is installed); a folder of embeddings (A1111's `embeddings/`) lists in place,
/// and `--use FILE` paints with one where it lies, as the installed copy paints.
#[test]
fn embeddings_install_from_kohya_and_the_hub_and_list_in_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let home = tmp.path().join("home");
    let photo = photo(tmp.path());
    let width = tiny_sd().text_encoder.config().hidden_size;
    let embeddings = tmp.path().join("embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();
    let rows = |n: usize, v: f32| Tensor::full(v, (n, width), &Device::Cpu).unwrap();
    let kohya = embeddings.join("kohya-ink.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("emb_params".to_string(), rows(3, 0.02))]),
        &kohya,
    )
    .unwrap();
    let diffusers = embeddings.join("cat-toy.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("<cat-toy>".to_string(), rows(1, -0.01))]),
        &diffusers,
    )
    .unwrap();
    std::fs::write(embeddings.join("old.pt"), b"PK\x03\x04").unwrap();

    let entry = installed(&["styles", "install", s(&kohya), "--json"], &cache, &home);
    assert_eq!(
        (&entry["name"], &entry["kind"]),
        (&"kohya-ink".into(), &"bank".into())
    );

    // The folder, in place: each file by the name A1111 prompts it by.
    let run = easel_home(
        &["styles", "list", "--folder", s(&embeddings), "--json"],
        &cache,
        &home,
    );
    assert_success(&run);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    let rows_of = |v: &serde_json::Value| {
        (
            v["name"].as_str().unwrap().to_string(),
            v["format"].as_str().unwrap().to_string(),
            v["vectors"].clone(),
            v["problem"].is_null(),
        )
    };
    let got: Vec<_> = listed.as_array().unwrap().iter().map(rows_of).collect();
    let w = serde_json::json!(width);
    assert_eq!(
        got,
        [
            (
                "cat-toy".into(),
                "embedding".into(),
                serde_json::json!([1, w]),
                true
            ),
            (
                "kohya-ink".into(),
                "embedding".into(),
                serde_json::json!([3, w]),
                true
            ),
            ("old".into(), "".into(), serde_json::Value::Null, false),
        ]
    );
    // --search filters the folder as it filters the store (case-insensitive).
    let run = easel_home(
        &[
            "styles",
            "list",
            "--folder",
            s(&embeddings),
            "--search",
            "KOHYA",
            "--json",
        ],
        &cache,
        &home,
    );
    assert_success(&run);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kohya-ink"]);

    // A hub repository in the cache installs by its id, named after the repository.
    let repo_dir = tmp.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    std::fs::copy(&diffusers, repo_dir.join("learned_embeds.safetensors")).unwrap();
    common::add_to_cache(&cache, "sd-concepts-library/cat-toy", &repo_dir, SNAPSHOT);
    let entry = installed(
        &[
            "styles",
            "install",
            "sd-concepts-library/cat-toy",
            "--offline",
            "--json",
        ],
        &cache,
        &home,
    );
    assert_eq!(entry["name"], "cat-toy");
    assert_eq!(entry["kind"], "bank");
    // Not in the cache: the command that downloads the preferred file, and nothing installed.
    let run = easel_home(
        &["styles", "install", "org/absent-style", "--offline"],
        &cache,
        &home,
    );
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("huggingface-cli download org/absent-style easel-style.safetensors")
            && err
                .contains("or download learned_embeds.safetensors instead for a textual-inversion"),
        "{err}"
    );
    let run = easel_home(&["styles", "list", "--json"], &cache, &home);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&stdout(&run))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["cat-toy", "kohya-ink"]);

    // The embedding paints where it lies as its installed copy does (it records no base model:
    // a warning, not a refusal).
    let paint = |style: &str, out: &Path| {
        let run = stylize_tiny(&cache, &home, &photo, "2", &["--use", style], out);
        assert_success(&run);
        assert!(
            stderr(&run).contains("records no base model"),
            "{}",
            stderr(&run)
        );
        image::open(out).unwrap().to_rgb8().into_raw()
    };
    let in_place = paint(s(&diffusers), &tmp.path().join("in_place.png"));
    let installed = paint("cat-toy", &tmp.path().join("installed.png"));
    assert!(
        in_place == installed,
        "the file and its installed copy paint differently"
    );
}

/// The official LSAST / ArtBank checkpoints (`embeddings_gs-*.pt`, written by
/// `tools/ref/official_ckpt_ref.py` with 16-d tiny weights) import and install as the banks
/// their generators compute; a pickle naming `os.system` is refused by both, writing nothing.
#[test]
fn official_checkpoints_import_and_install_and_hostile_pickles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tiny_cache(tmp.path());
    let home = tmp.path().join("home");
    let official =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../easel-bank/tests/fixtures/official");
    let expected =
        candle_core::safetensors::load(official.join("expected.safetensors"), &Device::Cpu)
            .unwrap();

    let out = tmp.path().join("lsast.bank");
    let lsast_file = official.join("lsast/embeddings_gs-99.pt");
    let run = easel(&["bank", "import", s(&lsast_file), "-o", s(&out)], None);
    assert_success(&run);
    assert!(
        stderr(&run).contains("from the official LSAST checkpoint, as the lsast-official preset"),
        "{}",
        stderr(&run)
    );
    let bank = read(&out);
    let vectors = bank.vectors().unwrap().reshape((30, 16)).unwrap();
    let diff = (vectors - &expected["lsast.vectors"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= 1e-5, "imported vectors differ by {diff}");
    let run = easel(&["bank", "show", s(&out), "--json"], None);
    assert_success(&run);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(shown["layout"]["slot_map"], "windows", "{shown}");

    let artbank_file = official.join("artbank/embeddings_gs-99.pt");
    let entry = installed(
        &[
            "styles",
            "install",
            s(&artbank_file),
            "--name",
            "artbank-official",
            "--json",
        ],
        &cache,
        &home,
    );
    assert_eq!(entry["kind"], "bank");
    assert_success(&easel_home(
        &["styles", "verify", "artbank-official"],
        &cache,
        &home,
    ));
    // The tiny SD's text encoder is 32-d: painting with the 16-d bank is refused, naming both.
    let photo = photo(tmp.path());
    let run = stylize_tiny(
        &cache,
        &home,
        &photo,
        "2",
        &["--use", "artbank-official"],
        &tmp.path().join("art.png"),
    );
    let line = error_line(&run);
    assert!(line.contains("16-d") && line.contains("32-d"), "{line}");

    let evil = official.join("evil/embeddings_gs-1.pt");
    let refused = tmp.path().join("evil.bank");
    let line = error_line(&easel(
        &["bank", "import", s(&evil), "-o", s(&refused)],
        None,
    ));
    assert!(
        line.contains("references posix.system, which could run code"),
        "{line}"
    );
    assert!(!refused.exists());
    let run = easel_home(&["styles", "install", s(&evil)], &cache, &home);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("posix.system"), "{}", stderr(&run));
    let run = easel_home(&["styles", "list", "--json"], &cache, &home);
    assert_success(&run);
    let listed: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["artbank-official"]);
}
