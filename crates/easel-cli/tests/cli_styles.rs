//! `easel styles` and `easel stylize --use NAME`, per fast plugin kind (AdaIN, StyTr², a
//! painting's style code, a preset mix): install → list --json → show → stylize --use (the
//! bytes of the old flags) → verify → remove; and the refusals: a flipped byte, a duplicate
//! name, a read-only store, an unknown kind, two concurrent installs. Banks: `cli_bank.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{assert_success, easel_command, example, fast_fixture, s, stderr};

/// `easel ARGS` with its store in `home`.
fn easel(home: &Path, args: &[&str]) -> Output {
    easel_command(args)
        .env("EASEL_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the easel binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "easel succeeded, stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected '{expected}' in: {err}");
}

fn copy_as(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (from, to) in files {
        std::fs::copy(fast_fixture(from), dir.join(to)).unwrap();
    }
    dir.to_path_buf()
}

/// Paints the cat at 96 px with `args` and returns the PNG file's bytes.
fn paint(home: &Path, out: &Path, args: &[&str]) -> Vec<u8> {
    let cat = example("chelsea_cat.png");
    let mut all = vec!["stylize", &cat, "--max-size", "96", "--device", "cpu"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", s(out)]);
    let run = easel(home, &all);
    assert_success(&run);
    std::fs::read(out).unwrap()
}

/// The PNG parameters of the file at `path`.
fn parameters(path: &Path) -> String {
    easel_core::read_png_parameters(path)
        .unwrap()
        .unwrap_or_default()
}

fn list(home: &Path) -> Vec<serde_json::Value> {
    let run = easel(home, &["styles", "list", "--json"]);
    assert_success(&run);
    serde_json::from_str::<serde_json::Value>(&stdout(&run))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_fast_kind_installs_lists_paints_verifies_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let starry = example("vangogh_starry_night.jpg");
    let kandinsky = example("kandinsky_composition_vii.jpg");
    let adain = copy_as(
        &tmp.path().join("adain"),
        &[
            ("adain_vgg_tiny.pth", "vgg_normalised.pth"),
            ("adain_decoder_tiny.pth", "decoder.pth"),
        ],
    );
    let stytr = copy_as(
        &tmp.path().join("stytr"),
        &[
            (
                "stytr_transformer_cape_tiny.pth",
                "transformer_iter_160000.pth",
            ),
            ("stytr_embedding_tiny.pth", "embedding_iter_160000.pth"),
            ("stytr_decoder_tiny_cli.pth", "decoder_iter_160000.pth"),
        ],
    );
    let tiny_stytr = [
        "--stytr-heads",
        "4",
        "--stytr-cape-grid",
        "6",
        "--stytr-windows",
        "2,4,8",
    ];
    let painting = format!("painting:{starry}");
    // (name, kind, install source + flags, --use extra flags, the old flags).
    type Case<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "starry",
            "style-code",
            vec![&painting],
            vec![],
            vec!["--style", &starry],
        ),
        (
            "calm",
            "preset-mix",
            vec!["preset:3:0.5,12:0.5"],
            vec![],
            vec!["--preset", "3:0.5,12:0.5"],
        ),
        (
            "adain-tiny",
            "adain",
            vec![s(&adain)],
            vec!["--style", &kandinsky],
            vec![
                "--method",
                "adain",
                "--weights",
                s(&adain),
                "--style",
                &kandinsky,
            ],
        ),
        (
            "stytr-tiny",
            "stytr",
            [vec![s(&stytr)], tiny_stytr.to_vec()].concat(),
            vec!["--style", &kandinsky],
            [
                vec![
                    "--method",
                    "transformer",
                    "--weights",
                    s(&stytr),
                    "--style",
                    &kandinsky,
                ],
                tiny_stytr.to_vec(),
            ]
            .concat(),
        ),
    ];
    for (i, (name, kind, source, use_extra, flags)) in cases.iter().enumerate() {
        let mut install = vec!["styles", "install"];
        install.extend(source.iter().copied());
        install.extend(["--name", name, "--json"]);
        let run = easel(&home, &install);
        assert_success(&run);
        let entry: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
        assert_eq!(entry["name"], *name);
        assert_eq!(entry["kind"], *kind);

        let listed = list(&home);
        assert_eq!(listed.len(), i + 1, "{listed:?}");
        assert!(listed
            .iter()
            .any(|e| e["name"] == *name && e["kind"] == *kind));

        let run = easel(&home, &["styles", "show", name, "--json"]);
        assert_success(&run);
        let shown: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
        let meta = &shown["metadata"];
        assert_eq!(meta["modelspec.sai_model_spec"], "1.0.0");
        assert_eq!(meta["easel.kind"], *kind);
        assert!(meta["modelspec.hash_sha256"]
            .as_str()
            .unwrap()
            .starts_with("0x"));

        // The plugin lies in the store, the old flags' files elsewhere: the parameters name
        // paintings and weights by content, so the files are the same to the byte.
        let with_use = [vec!["--use", *name], use_extra.clone()].concat();
        let (use_png, flags_png) = (
            tmp.path().join(format!("use{i}.png")),
            tmp.path().join(format!("flags{i}.png")),
        );
        let a = paint(&home, &use_png, &with_use);
        let b = paint(&home, &flags_png, flags);
        assert!(
            a == b,
            "{name}: --use and the old flags differ:\n{}\n{}",
            parameters(&use_png),
            parameters(&flags_png)
        );

        let run = easel(&home, &["styles", "verify", name, "--json"]);
        assert_success(&run);
        assert!(stdout(&run).contains("\"ok\": true"), "{}", stdout(&run));
    }
    // The style code's thumbnail is the painting, ~256 px.
    let preview = tmp.path().join("thumb.png");
    assert_success(&easel(
        &home,
        &["styles", "show", "starry", "--preview", s(&preview)],
    ));
    let thumb = image::open(&preview).unwrap();
    assert_eq!(thumb.width().max(thumb.height()), 256);

    assert_success(&easel(&home, &["styles", "rename", "calm", "quiet"]));
    let names: Vec<String> = list(&home)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["adain-tiny", "quiet", "starry", "stytr-tiny"]);
    for name in names {
        assert_success(&easel(&home, &["styles", "remove", &name]));
    }
    assert!(list(&home).is_empty());
    let dir = home.join("styles");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert!(left.is_empty(), "plugin files left: {left:?}");
}

#[test]
fn refusals_name_the_reason_and_keep_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    assert_success(&easel(
        &home,
        &["styles", "install", "preset:7", "--name", "seven"],
    ));

    // A duplicate name, then the same plugin under another name.
    fails_with(
        &easel(&home, &["styles", "install", "preset:3", "--name", "seven"]),
        "a style named \"seven\" is already installed",
    );
    fails_with(
        &easel(&home, &["styles", "install", "preset:7", "--name", "other"]),
        "already installed as \"seven\"",
    );
    // An unknown plugin.
    let cat = example("chelsea_cat.png");
    let out = tmp.path().join("x.png");
    fails_with(
        &easel(&home, &["stylize", &cat, "--use", "nope", "-o", s(&out)]),
        "--use nope: no installed style is named \"nope\" (installed: seven)",
    );
    assert!(!out.exists());

    // A flipped tensor byte: verify names the plugin and fails; --use refuses it.
    let entry = &list(&home)[0];
    let file = home
        .join("styles")
        .join(format!("{}.safetensors", entry["id"].as_str().unwrap()));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let run = easel(&home, &["styles", "verify"]);
    fails_with(&run, "1 plugin(s) failed verification: seven");
    assert!(stdout(&run).contains("FAILED  seven: its tensors hash to"));
    fails_with(
        &easel(&home, &["stylize", &cat, "--use", "seven", "-o", s(&out)]),
        "the file is damaged or was altered",
    );
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    assert_success(&easel(&home, &["styles", "verify"]));

    // A plugin of an unknown kind.
    let alien = tmp.path().join("alien.safetensors");
    let good = std::fs::read(&file).unwrap();
    // Same length, so the header stays valid JSON with the same offsets.
    let (from, to) = (b"\"preset-mix\"", b"\"lora-xyzwq\"");
    let at = good.windows(from.len()).position(|w| w == from).unwrap();
    let mut crafted = good.clone();
    crafted[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&alien, &crafted).unwrap();
    fails_with(
        &easel(&home, &["styles", "install", s(&alien)]),
        "plugin kind \"lora-xyzwq\" is unknown",
    );
    // Neither plugin nor bank.
    fails_with(
        &easel(&home, &["styles", "install", &cat]),
        "is neither an easel plugin, a bank file nor a textual-inversion embedding",
    );

    // A store that cannot be written: the install fails and the index is as it was. Root
    // ignores directory permissions, so there the plugin's own path is made a directory,
    // which no rename can replace.
    let dir = home.join("styles");
    let index_before = std::fs::read(dir.join("index.json")).unwrap();
    #[cfg(unix)]
    let root = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(dir.join("probe"), b"x").is_ok();
        if writable {
            std::fs::remove_file(dir.join("probe")).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        writable
    };
    #[cfg(not(unix))]
    let root = true;
    if root {
        let elsewhere = tmp.path().join("elsewhere");
        let run = easel(&elsewhere, &["styles", "install", "preset:5", "--json"]);
        assert_success(&run);
        let entry: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
        let blocked = dir.join(format!("{}.safetensors", entry["id"].as_str().unwrap()));
        std::fs::create_dir_all(blocked.join("occupied")).unwrap();
    }
    let run = easel(&home, &["styles", "install", "preset:5", "--name", "five"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    fails_with(&run, "styles");
    assert_eq!(std::fs::read(dir.join("index.json")).unwrap(), index_before);
    let names: Vec<_> = list(&home).iter().map(|e| e["name"].clone()).collect();
    assert_eq!(names, ["seven"]);
}

#[test]
fn concurrent_installs_leave_a_consistent_index() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mixes = ["1", "2", "3", "4", "5", "6"];
    let children: Vec<_> = mixes
        .iter()
        .map(|m| {
            easel_command(&[
                "styles",
                "install",
                &format!("preset:{m}"),
                "--name",
                &format!("p{m}"),
            ])
            .env("EASEL_HOME", &home)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out);
    }
    let mut names: Vec<String> = list(&home)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["p1", "p2", "p3", "p4", "p5", "p6"]);
    assert_success(&easel(&home, &["styles", "verify"]));
}
