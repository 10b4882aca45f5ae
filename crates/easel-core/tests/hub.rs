//! Weight resolution through a Hugging Face cache that the tests build in
//! the real layout. Everything is offline: the environment is passed to
//! the resolver as a map (the process environment is never touched), the
//! "unreachable hub" is a refused local port, and downloads come from a
//! tiny HTTP server on 127.0.0.1 that answers like the hub.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use easel_core::{
    resolve_first_in_dir, resolve_in_dir, resolve_optional_in_dir, DownloadEvent, Error,
    HubResolver, MissingReason, RepoFiles, WeightSource,
};

const REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
const HASH: &str = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14";
const HASH_V1: &str = "0123456789abcdef0123456789abcdef01234567";
const CN_REPO: &str = "lllyasviel/control_v11p_sd15_canny";

/// Writes `files` of `repo` at commit `hash` in the hub cache layout under
/// `cache`: content in `blobs/`, relative symlinks (plain copies off unix)
/// in `snapshots/<hash>/`, and `refs/<r>` holding `hash` for each of `refs`.
fn write_snapshot(cache: &Path, repo: &str, hash: &str, refs: &[&str], files: &[(&str, &[u8])]) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    for (i, (name, content)) in files.iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("{hash}-{i:04}"));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let link = repo_dir.join("snapshots").join(hash).join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        #[cfg(unix)]
        {
            // snapshots/<hash>/<a>/<b> → ../../../blobs/<blob>
            let depth = name.split('/').count() + 1;
            let target = PathBuf::from("../".repeat(depth))
                .join("blobs")
                .join(blob.file_name().unwrap());
            std::os::unix::fs::symlink(target, &link).unwrap();
        }
        #[cfg(not(unix))]
        std::fs::copy(&blob, &link).unwrap();
    }
    for r in refs {
        let ref_path = repo_dir.join("refs").join(r);
        std::fs::create_dir_all(ref_path.parent().unwrap()).unwrap();
        std::fs::write(ref_path, hash).unwrap();
    }
}

fn snapshot_path(cache: &Path, repo: &str, hash: &str, file: &str) -> PathBuf {
    cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(hash)
        .join(file)
}

/// A resolver configured from `vars` only.
fn resolver(vars: &[(&str, &str)]) -> HubResolver {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HubResolver::from_env_vars(move |k| map.get(k).cloned()).unwrap()
}

/// The standard test cache: SD 1.5 at `main` (and `v1` at another commit).
fn sd_cache() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    write_snapshot(
        &cache,
        REPO,
        HASH,
        &["main"],
        &[
            (
                "model_index.json",
                b"{\"_class_name\": \"StableDiffusionPipeline\"}",
            ),
            ("unet/config.json", b"{\"sample_size\": 64}"),
            ("unet/diffusion_pytorch_model.safetensors", b"fp32 weights"),
        ],
    );
    write_snapshot(
        &cache,
        REPO,
        HASH_V1,
        &["v1"],
        &[("unet/config.json", b"{\"sample_size\": 32}")],
    );
    (tmp, cache)
}

fn missing(err: Error) -> easel_core::MissingModelFiles {
    match err {
        Error::MissingModelFiles(m) => *m,
        other => panic!("expected MissingModelFiles, got {other:?}"),
    }
}

#[test]
fn resolves_from_hf_hub_cache() {
    let (_tmp, cache) = sd_cache();
    let hub = resolver(&[
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ]);
    assert_eq!(hub.cache_dir(), cache);
    assert!(hub.is_offline());
    let paths = hub
        .resolve(REPO, "main", &["unet/config.json", "model_index.json"])
        .unwrap();
    assert_eq!(
        paths,
        vec![
            snapshot_path(&cache, REPO, HASH, "unet/config.json"),
            snapshot_path(&cache, REPO, HASH, "model_index.json"),
        ]
    );
    // Read through the symlink into blobs/.
    assert_eq!(std::fs::read(&paths[0]).unwrap(), b"{\"sample_size\": 64}");
    assert_eq!(
        hub.cached_path(REPO, "main", "unet/diffusion_pytorch_model.safetensors")
            .unwrap(),
        Some(snapshot_path(
            &cache,
            REPO,
            HASH,
            "unet/diffusion_pytorch_model.safetensors"
        ))
    );
    assert_eq!(
        hub.cached_path(REPO, "main", "vae/config.json").unwrap(),
        None
    );
}

#[test]
fn cache_dir_from_hf_home_and_home() {
    let (tmp, cache) = sd_cache();
    let parent = tmp.path().to_str().unwrap();

    // HF_HOME → $HF_HOME/hub.
    let hub = resolver(&[("HF_HOME", parent), ("HF_HUB_OFFLINE", "true")]);
    assert_eq!(hub.cache_dir(), cache);
    let paths = hub.resolve(REPO, "main", &["unet/config.json"]).unwrap();
    assert_eq!(
        paths,
        vec![snapshot_path(&cache, REPO, HASH, "unet/config.json")]
    );

    // HF_HUB_CACHE wins over HF_HOME.
    let hub = resolver(&[
        ("HF_HOME", "/nonexistent/hf"),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ]);
    assert_eq!(hub.cache_dir(), cache);

    // No HF variable: ~/.cache/huggingface/hub; USERPROFILE when HOME is unset.
    let hub = resolver(&[("HOME", "/home/u")]);
    assert_eq!(hub.cache_dir(), Path::new("/home/u/.cache/huggingface/hub"));
    let hub = resolver(&[("USERPROFILE", "/users/u")]);
    assert_eq!(
        hub.cache_dir(),
        Path::new("/users/u/.cache/huggingface/hub")
    );
    // Empty values count as unset.
    let hub = resolver(&[("HF_HUB_CACHE", ""), ("HOME", "/home/u")]);
    assert_eq!(hub.cache_dir(), Path::new("/home/u/.cache/huggingface/hub"));

    // Nothing at all to name a cache: an error, not a panic.
    let err = HubResolver::from_env_vars(|_| None).unwrap_err();
    assert!(err.to_string().contains("HF_HUB_CACHE"), "{err}");
}

#[test]
fn env_options_offline_token_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_str().unwrap();

    let hub = resolver(&[("HF_HOME", home)]);
    assert!(!hub.is_offline());
    assert!(!hub.has_token());
    assert_eq!(hub.endpoint(), "https://huggingface.co");

    for value in ["1", "TRUE", "yes", "On"] {
        assert!(
            resolver(&[("HF_HOME", home), ("HF_HUB_OFFLINE", value)]).is_offline(),
            "{value}"
        );
    }
    for value in ["0", "false", "no"] {
        assert!(
            !resolver(&[("HF_HOME", home), ("HF_HUB_OFFLINE", value)]).is_offline(),
            "{value}"
        );
    }
    // The flag overrides the environment both ways.
    assert!(!resolver(&[("HF_HOME", home), ("HF_HUB_OFFLINE", "1")])
        .with_offline(false)
        .is_offline());
    assert!(resolver(&[("HF_HOME", home)])
        .with_offline(true)
        .is_offline());

    // Token: $HF_HOME/token, HF_TOKEN first; never printed by Debug.
    std::fs::write(tmp.path().join("token"), "\n  hf_filetoken  \n").unwrap();
    let hub = resolver(&[("HF_HOME", home)]);
    assert!(hub.has_token());
    let debug = format!("{hub:?}");
    assert!(!debug.contains("hf_filetoken"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    let hub = resolver(&[("HF_HOME", home), ("HF_TOKEN", "hf_envtoken")]);
    assert!(!format!("{hub:?}").contains("hf_envtoken"));
    assert!(!hub.with_token(None).has_token());

    let hub = resolver(&[
        ("HF_HOME", home),
        ("HF_ENDPOINT", "https://hf-mirror.example/"),
    ]);
    assert_eq!(hub.endpoint(), "https://hf-mirror.example");
}

#[test]
fn revision_by_ref_name_and_commit_hash() {
    let (_tmp, cache) = sd_cache();
    let hub = HubResolver::new(&cache).with_offline(true);
    let by_ref = hub.resolve(REPO, "v1", &["unet/config.json"]).unwrap();
    assert_eq!(
        by_ref,
        vec![snapshot_path(&cache, REPO, HASH_V1, "unet/config.json")]
    );
    assert_eq!(std::fs::read(&by_ref[0]).unwrap(), b"{\"sample_size\": 32}");

    // A full commit hash needs no ref file.
    let by_hash = hub.resolve(REPO, HASH, &["unet/config.json"]).unwrap();
    assert_eq!(
        by_hash,
        vec![snapshot_path(&cache, REPO, HASH, "unet/config.json")]
    );
    std::fs::remove_file(
        cache
            .join("models--stable-diffusion-v1-5--stable-diffusion-v1-5")
            .join("refs")
            .join("v1"),
    )
    .unwrap();
    let by_hash = hub.resolve(REPO, HASH_V1, &["unet/config.json"]).unwrap();
    assert_eq!(
        by_hash,
        vec![snapshot_path(&cache, REPO, HASH_V1, "unet/config.json")]
    );

    // A file present at one revision only is missing at the other.
    let err = missing(
        hub.resolve(REPO, HASH_V1, &["model_index.json"])
            .unwrap_err(),
    );
    assert_eq!(err.missing[0].revision, HASH_V1);
    assert_eq!(err.missing[0].files, vec!["model_index.json"]);
    // An unknown ref: everything is missing.
    let err = missing(hub.resolve(REPO, "v2", &["unet/config.json"]).unwrap_err());
    assert_eq!(err.missing[0].files, vec!["unet/config.json"]);
}

#[test]
fn missing_files_one_error_with_download_commands() {
    let (_tmp, cache) = sd_cache();
    let hub = resolver(&[
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
        // Proves no network is tried: this port refuses, which would be
        // reported as "cannot reach", not "offline".
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ]);
    let requests = [
        RepoFiles::new(
            REPO,
            "main",
            &[
                "unet/config.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ],
        )
        .with_hint("pass --sd DIR with a local diffusers folder"),
        RepoFiles::new(CN_REPO, "fp16", &["config.json"])
            .with_one_of(&[
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors",
            ])
            .with_hint("pass --controlnet DIR"),
    ];
    let err = hub.resolve_many(&requests).unwrap_err();
    let expected = format!(
        "missing model files (offline: HF_HUB_OFFLINE=1):\n\
         \x20 {REPO} @ main: vae/config.json, vae/diffusion_pytorch_model.safetensors\n\
         \x20 {CN_REPO} @ fp16: config.json, diffusion_pytorch_model.fp16.safetensors\n\
         Download them on a machine with network access with\n\
         \x20 huggingface-cli download {REPO} vae/config.json vae/diffusion_pytorch_model.safetensors\n\
         \x20 huggingface-cli download {CN_REPO} --revision fp16 config.json diffusion_pytorch_model.fp16.safetensors\n\
         and copy ~/.cache/huggingface/hub to this machine (as {}), or pass --sd DIR with a local \
         diffusers folder, or pass --controlnet DIR.",
        cache.display()
    );
    assert_eq!(err.to_string(), expected);
    let m = missing(err);
    assert_eq!(m.reason, MissingReason::OfflineEnv("1".into()));
    assert_eq!(m.cache_dir, cache);
    assert_eq!(m.missing.len(), 2);

    // The flag reads "offline mode"; a single repository without hint.
    let err = HubResolver::new(&cache)
        .with_endpoint("http://127.0.0.1:9")
        .with_offline(true)
        .resolve(REPO, "main", &["text_encoder/model.safetensors"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "missing model files (offline mode):\n\
             \x20 {REPO} @ main: text_encoder/model.safetensors\n\
             Download them on a machine with network access with\n\
             \x20 huggingface-cli download {REPO} text_encoder/model.safetensors\n\
             and copy ~/.cache/huggingface/hub to this machine (as {}).",
            cache.display()
        )
    );
}

#[test]
fn unreachable_hub_fails_fast_with_the_same_clear_error() {
    let (_tmp, cache) = sd_cache();
    let hub = HubResolver::new(&cache).with_endpoint("http://127.0.0.1:9");
    assert!(!hub.is_offline());
    let start = Instant::now();
    let err = hub
        .resolve_many(&[
            RepoFiles::new(
                REPO,
                "main",
                &["unet/config.json", "vae/config.json", "vae/x.safetensors"],
            ),
            RepoFiles::new(CN_REPO, "main", &["config.json"]),
        ])
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.starts_with("missing model files (cannot reach http://127.0.0.1:9: "),
        "{text}"
    );
    let m = missing(err);
    assert!(
        matches!(&m.reason, MissingReason::Unreachable { endpoint, .. } if endpoint == "http://127.0.0.1:9"),
        "{:?}",
        m.reason
    );
    // Every missing file of every repository, the cached one excluded.
    assert_eq!(m.missing.len(), 2);
    assert_eq!(
        m.missing[0].files,
        vec!["vae/config.json", "vae/x.safetensors"]
    );
    assert_eq!(m.missing[1].repo_id, CN_REPO);
    assert_eq!(m.missing[1].files, vec!["config.json"]);
    assert!(
        text.contains(&format!("huggingface-cli download {CN_REPO} config.json\n")),
        "{text}"
    );

    // resolve_optional: unreachable means "not available", not an error.
    let got = hub
        .resolve_optional(
            REPO,
            "main",
            &[
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
            ],
        )
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(snapshot_path(&cache, REPO, HASH, "unet/config.json")),
            None
        ]
    );
    // Nothing was written to the cache by the failed attempts.
    assert!(!cache
        .join("models--lllyasviel--control_v11p_sd15_canny")
        .exists());
}

#[test]
fn optional_files_and_alternatives_offline() {
    let (_tmp, cache) = sd_cache();
    let hub = HubResolver::new(&cache).with_offline(true);
    let fp16 = "unet/diffusion_pytorch_model.fp16.safetensors";
    let fp32 = "unet/diffusion_pytorch_model.safetensors";

    let got = hub.resolve_optional(REPO, "main", &[fp16, fp32]).unwrap();
    assert_eq!(
        got,
        vec![None, Some(snapshot_path(&cache, REPO, HASH, fp32))]
    );

    // The first cached alternative wins, even if it is not the preferred one.
    assert_eq!(
        hub.resolve_first(REPO, "main", &[fp16, fp32]).unwrap(),
        snapshot_path(&cache, REPO, HASH, fp32)
    );
    // None cached: the preferred one is reported.
    let vae16 = "vae/diffusion_pytorch_model.fp16.safetensors";
    let vae32 = "vae/diffusion_pytorch_model.safetensors";
    let m = missing(
        hub.resolve_first(REPO, "main", &[vae16, vae32])
            .unwrap_err(),
    );
    assert_eq!(m.missing[0].files, vec![vae16]);
    // ...unless the cache records that the hub lacks it.
    let no_exist = cache
        .join("models--stable-diffusion-v1-5--stable-diffusion-v1-5/.no_exist")
        .join(HASH)
        .join(vae16);
    std::fs::create_dir_all(no_exist.parent().unwrap()).unwrap();
    std::fs::write(&no_exist, b"").unwrap();
    let m = missing(
        hub.resolve_first(REPO, "main", &[vae16, vae32])
            .unwrap_err(),
    );
    assert_eq!(m.missing[0].files, vec![vae32]);

    // Results come back per request: files first, then groups.
    let paths = hub
        .resolve_many(&[
            RepoFiles::new(REPO, "main", &["model_index.json"]).with_one_of(&[fp16, fp32])
        ])
        .unwrap();
    assert_eq!(
        paths,
        vec![vec![
            snapshot_path(&cache, REPO, HASH, "model_index.json"),
            snapshot_path(&cache, REPO, HASH, fp32)
        ]]
    );
}

#[test]
fn dotdot_and_bad_names_refused() {
    let (_tmp, cache) = sd_cache();
    // A file just outside the snapshot folder that `..` would reach.
    let repo_dir = cache.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5");
    std::fs::write(repo_dir.join("snapshots").join("secret.txt"), b"secret").unwrap();
    let hub = HubResolver::new(&cache).with_offline(true);
    for name in [
        "../secret.txt",
        "unet/../../secret.txt",
        "..",
        "/etc/passwd",
        "unet\\..\\..\\secret.txt",
        "C:/x",
        "unet//config.json",
        "./model_index.json",
        "",
    ] {
        let err = hub.resolve(REPO, "main", &[name]).unwrap_err();
        assert!(
            matches!(&err, Error::ModelFileName { name: n, .. } if n == name),
            "{name:?}: {err:?}"
        );
        let err = hub.resolve_optional(REPO, "main", &[name]).unwrap_err();
        assert!(matches!(err, Error::ModelFileName { .. }), "{name:?}");
        let err = resolve_in_dir(&repo_dir.join("snapshots").join(HASH), &[name]).unwrap_err();
        assert!(matches!(err, Error::ModelFileName { .. }), "{name:?}");
    }
    let err = hub.resolve(REPO, "main", &["../secret.txt"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing model file name \"../secret.txt\": '..' would lead out of the model folder"
    );
    // Refused before anything is looked up: a good name alongside does not help.
    let err = hub
        .resolve(REPO, "main", &["model_index.json", "a/../../b"])
        .unwrap_err();
    assert!(matches!(err, Error::ModelFileName { .. }));
    // Revisions and repository ids are checked too.
    for rev in ["..", "../main", "refs/../../x", "", "/main"] {
        let err = hub.resolve(REPO, rev, &["model_index.json"]).unwrap_err();
        assert!(
            matches!(err, Error::ModelFileName { .. }),
            "{rev:?}: {err:?}"
        );
    }
    for repo in ["../x", "a/b/c", "a/..", "", "org/na me", "org/-x"] {
        let err = hub
            .resolve(repo, "main", &["model_index.json"])
            .unwrap_err();
        assert!(
            matches!(err, Error::ModelFileName { .. }),
            "{repo:?}: {err:?}"
        );
    }
}

#[test]
fn local_dir_override() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd15");
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::write(dir.join("unet/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("unet/diffusion_pytorch_model.safetensors"), b"w").unwrap();

    assert_eq!(
        resolve_in_dir(&dir, &["unet/config.json"]).unwrap(),
        vec![dir.join("unet/config.json")]
    );
    let err = resolve_in_dir(
        &dir,
        &["unet/config.json", "vae/config.json", "model_index.json"],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "missing model files in {}: vae/config.json, model_index.json",
            dir.display()
        )
    );
    assert!(
        matches!(&err, Error::MissingLocalFiles { files, .. } if files == &["vae/config.json", "model_index.json"])
    );
    assert_eq!(
        resolve_optional_in_dir(&dir, &["unet/x.fp16.safetensors", "unet/config.json"]).unwrap(),
        vec![None, Some(dir.join("unet/config.json"))]
    );
    assert_eq!(
        resolve_first_in_dir(
            &dir,
            &[
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/diffusion_pytorch_model.safetensors"
            ]
        )
        .unwrap(),
        dir.join("unet/diffusion_pytorch_model.safetensors")
    );
    let err =
        resolve_first_in_dir(&dir, &["vae/a.fp16.safetensors", "vae/a.safetensors"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "missing model files in {}: vae/a.fp16.safetensors",
            dir.display()
        )
    );
    // Not a folder / no such folder: named.
    let err = resolve_in_dir(&dir.join("unet/config.json"), &["x"]).unwrap_err();
    assert!(
        err.to_string().ends_with("config.json\": not a folder"),
        "{err}"
    );
    let err = resolve_in_dir(&tmp.path().join("nope"), &["x"]).unwrap_err();
    assert!(err.to_string().ends_with("nope\": no such folder"), "{err}");
}

#[test]
fn weight_source_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd15");
    std::fs::create_dir_all(&dir).unwrap();
    let file = tmp.path().join("v1-5-pruned.safetensors");
    std::fs::write(&file, b"w").unwrap();

    assert_eq!(
        WeightSource::parse(dir.to_str().unwrap()).unwrap(),
        WeightSource::LocalDir(dir.clone())
    );
    assert_eq!(
        WeightSource::parse(file.to_str().unwrap()).unwrap(),
        WeightSource::SingleFile(file.clone())
    );
    assert_eq!(
        WeightSource::parse(REPO).unwrap(),
        WeightSource::Hub {
            repo_id: REPO.into(),
            revision: "main".into()
        }
    );
    let parsed: WeightSource = format!("{CN_REPO}@fp16").parse().unwrap();
    assert_eq!(
        parsed,
        WeightSource::Hub {
            repo_id: CN_REPO.into(),
            revision: "fp16".into()
        }
    );
    assert_eq!(parsed.to_string(), format!("{CN_REPO}@fp16"));
    assert_eq!(
        WeightSource::parse(&format!("{REPO}@{HASH}")).unwrap(),
        WeightSource::Hub {
            repo_id: REPO.into(),
            revision: HASH.into()
        }
    );

    let missing_dir = tmp.path().join("nope");
    for (given, reason) in [
        (
            missing_dir.to_str().unwrap().to_string(),
            "no such file or folder",
        ),
        ("./models/sd15".to_string(), "no such file or folder"),
        ("~/models/sd15".to_string(), "no such file or folder"),
        ("models/sd/unet".to_string(), "no such file or folder"),
        (
            "v1-5-pruned-emaonly.safetensors".to_string(),
            "no such file or folder",
        ),
        (
            "sd15".to_string(),
            "not an existing file or folder, nor a hub repo id org/name[@revision]",
        ),
        (
            "org/name@".to_string(),
            "the revision after '@' must be a branch or tag name or a commit hash",
        ),
        (
            "org/name@../x".to_string(),
            "the revision after '@' must be a branch or tag name or a commit hash",
        ),
    ] {
        let err = WeightSource::parse(&given).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot use model {given:?}: {reason}")
        );
    }
    assert!(WeightSource::parse("  ").is_err());
}

// ---------------------------------------------------------------------------
// Downloads, against a local server that answers like the hub.

/// Serves `files` (path after `/{repo}/resolve/{rev}/`) at commit `HASH`:
/// ranged GETs get 206 with the hub's headers, anything else a 404
/// `EntryNotFound`. Returns the endpoint.
fn fake_hub(repo: &'static str, files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().trim_start_matches("bytes=").to_string());
                    }
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or("");
            let prefix = format!("/{repo}/resolve/main/");
            let found = path
                .strip_prefix(&prefix)
                .and_then(|name| files.iter().enumerate().find(|(_, (n, _))| *n == name));
            let response = match found {
                Some((i, (_, body))) => {
                    let len = body.len();
                    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                        Some((s, e)) => {
                            let s: usize = s.parse().unwrap_or(0);
                            let e: usize = e.parse().unwrap_or(len - 1);
                            (s, e.min(len - 1))
                        }
                        None => (0, len - 1),
                    };
                    let mut head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {start}-{end}/{len}\r\nx-repo-commit: {HASH}\r\n\
                         ETag: \"etag{i}\"\r\nConnection: close\r\n\r\n",
                        end + 1 - start
                    )
                    .into_bytes();
                    head.extend_from_slice(&body[start..=end]);
                    head
                }
                None => format!(
                    "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\n\
                     x-repo-commit: {HASH}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .into_bytes(),
            };
            let _ = stream.write_all(&response);
        }
    });
    endpoint
}

#[test]
fn downloads_into_the_cache_layout_with_progress() {
    const DL_REPO: &str = "easel-test/tiny";
    let weights: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let endpoint = fake_hub(
        DL_REPO,
        vec![
            ("config.json", b"{\"tiny\": true}".to_vec()),
            ("diffusion_pytorch_model.safetensors", weights.clone()),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = events.clone();
    let hub = HubResolver::new(&cache)
        .with_endpoint(endpoint.clone())
        .with_progress(Arc::new(move |e: DownloadEvent<'_>| {
            let line = match e {
                DownloadEvent::Started {
                    repo_id,
                    file,
                    total_bytes,
                } => {
                    format!("start {repo_id} {file} {total_bytes}")
                }
                DownloadEvent::Progress {
                    file,
                    downloaded_bytes,
                    total_bytes,
                    ..
                } => {
                    format!("progress {file} {downloaded_bytes}/{total_bytes}")
                }
                DownloadEvent::Finished { file, .. } => format!("finish {file}"),
            };
            sink.lock().unwrap().push(line);
        }));

    let paths = hub
        .resolve(
            DL_REPO,
            "main",
            &["config.json", "diffusion_pytorch_model.safetensors"],
        )
        .unwrap();
    assert_eq!(
        paths,
        vec![
            snapshot_path(&cache, DL_REPO, HASH, "config.json"),
            snapshot_path(&cache, DL_REPO, HASH, "diffusion_pytorch_model.safetensors"),
        ]
    );
    assert_eq!(std::fs::read(&paths[0]).unwrap(), b"{\"tiny\": true}");
    assert_eq!(std::fs::read(&paths[1]).unwrap(), weights);
    let repo_dir = cache.join("models--easel-test--tiny");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        HASH
    );
    assert_eq!(
        std::fs::read(repo_dir.join("blobs/etag1")).unwrap(),
        weights
    );

    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.first().unwrap(),
        &format!("start {DL_REPO} config.json 14")
    );
    assert!(
        events.contains(&"progress config.json 14/14".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"finish config.json".to_string()),
        "{events:?}"
    );
    let big = "diffusion_pytorch_model.safetensors";
    assert!(
        events.contains(&format!("start {DL_REPO} {big} 100000")),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap(), &format!("finish {big}"));
    assert_eq!(
        events.iter().rev().nth(1).unwrap(),
        &format!("progress {big} 100000/100000")
    );

    // Now cached: found offline, with the same paths.
    let offline = HubResolver::new(&cache).with_offline(true);
    assert_eq!(
        offline
            .resolve(
                DL_REPO,
                "main",
                &["config.json", "diffusion_pytorch_model.safetensors"]
            )
            .unwrap(),
        paths
    );

    // A file the hub lacks: None when optional, skipped among alternatives,
    // a named error when required.
    let got = hub
        .resolve_optional(
            DL_REPO,
            "main",
            &["diffusion_pytorch_model.fp16.safetensors", "config.json"],
        )
        .unwrap();
    assert_eq!(got, vec![None, Some(paths[0].clone())]);
    // ...and the cache now records that, as huggingface_hub does, so an
    // offline run reports the full-precision file instead of the fp16 one.
    let marker = repo_dir
        .join(".no_exist")
        .join(HASH)
        .join("diffusion_pytorch_model.fp16.safetensors");
    assert!(marker.is_file());
    let m = missing(
        HubResolver::new(&cache)
            .with_offline(true)
            .resolve_first(
                DL_REPO,
                "main",
                &[
                    "diffusion_pytorch_model.fp16.safetensors",
                    "unet.safetensors",
                ],
            )
            .unwrap_err(),
    );
    assert_eq!(m.missing[0].files, vec!["unet.safetensors"]);
    let hub_plain = HubResolver::new(&cache).with_endpoint(endpoint);
    std::fs::remove_dir_all(&repo_dir).unwrap();
    let first = hub_plain
        .resolve_first(
            DL_REPO,
            "main",
            &[
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors",
            ],
        )
        .unwrap();
    assert_eq!(
        first,
        snapshot_path(&cache, DL_REPO, HASH, "diffusion_pytorch_model.safetensors")
    );
    let err = hub_plain
        .resolve(DL_REPO, "main", &["vae/config.json"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot download vae/config.json from {DL_REPO} @ main: the file does not exist in \
             this repository at this revision"
        )
    );
}
