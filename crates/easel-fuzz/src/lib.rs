//! Fuzz entry points: one function per parser of bytes that come from strangers (images,
//! plugins, banks, checkpoints, ONNX and PyTorch files, configs, presets, prompts).
//!
//! Each target takes arbitrary bytes, runs the parser and drops its result: an error is the
//! right answer to garbage, and only a panic, an abort, a hang or a runaway allocation is a
//! failure. The same functions serve the libFuzzer binaries in `fuzz/` (nightly, cargo-fuzz)
//! and `tests/replay.rs`, which runs every committed corpus and regression file through them on
//! stable Rust in CI. docs/reliability.md has the campaign's numbers and the commands.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;

/// A fuzz target: parses `data` and must return without panicking.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("image_decode", image_decode),
    ("png_parameters", png_parameters),
    ("safetensors_weights", safetensors_weights),
    ("bank_file", bank_file),
    ("plugin_file", plugin_file),
    ("plugin_index", plugin_index),
    ("onnx_import", onnx_import),
    ("torch_checkpoint", torch_checkpoint),
    ("tokenizer", tokenizer),
    ("preset_toml", preset_toml),
    ("model_configs", model_configs),
    ("specs", specs),
];

/// The largest image the decode target lets through (header-checked before decoding), so that
/// a valid header for a huge picture is refused instead of eating the fuzzer's memory limit.
const FUZZ_MAX_PIXELS: u64 = 4 << 20;

/// A scratch folder for the targets whose parser reads a path, one per process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        // In /dev/shm where there is one: these targets write a file per execution.
        let shm = Path::new("/dev/shm");
        let made = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("easel-fuzz")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("easel-fuzz").tempdir()
        };
        // A fuzz run without a scratch folder cannot test anything: stopping is the answer.
        made.expect("create a scratch folder for the fuzz targets")
    })
    .path()
}

/// Writes `data` to `name` in the scratch folder; `None` where the write fails (the input is
/// then skipped: it says nothing about the parser).
fn scratch_file(name: &str, data: &[u8]) -> Option<PathBuf> {
    let path = scratch().join(name);
    std::fs::write(&path, data).ok().map(|()| path)
}

/// Text of `data`, invalid UTF-8 replaced (the text parsers take `&str`).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Image decoding with its header limits: PNG, JPEG, WebP, BMP, TIFF, sniffed by content.
pub fn image_decode(data: &[u8]) {
    let opts = easel_core::LoadOptions {
        max_side: None,
        max_pixels: FUZZ_MAX_PIXELS,
    };
    let _ = easel_core::decode_rgb(data, Path::new("fuzz.img"), &opts);
    let downscale = easel_core::LoadOptions {
        max_side: Some(17),
        max_pixels: FUZZ_MAX_PIXELS,
    };
    let _ = easel_core::decode_rgb(data, Path::new("fuzz.img"), &downscale);
}

/// The PNG `parameters` chunk (tEXt, zTXt, iTXt) that `easel` writes and reads back.
pub fn png_parameters(data: &[u8]) {
    if let Some(path) = scratch_file("parameters.png", data) {
        let _ = easel_core::read_png_parameters(&path);
    }
}

/// safetensors weights as the diffusion loader checks them, and the two training checkpoints.
pub fn safetensors_weights(data: &[u8]) {
    let _ = easel_diffusion::weights::layout::check_safetensors_bytes("fuzz.safetensors", data);
    let _ = easel_bank::checkpoint::Checkpoint::from_bytes(data, &Device::Cpu);
    let _ = easel_fast::train::checkpoint::Checkpoint::from_bytes(data, &Device::Cpu);
}

/// Prompt-bank files (safetensors header, metadata, layout).
pub fn bank_file(data: &[u8]) {
    let _ = easel_bank::file::read_bank(data, &Device::Cpu);
}

/// Style plugins: header and metadata, then the whole file (hash checked).
pub fn plugin_file(data: &[u8]) {
    let _ = easel_styles::plugin::read_header(data, "fuzz.safetensors");
    let _ = easel_styles::plugin::PluginFile::read(data, "fuzz.safetensors");
}

/// The plugin store's `index.json`, read as `easel styles list` reads it.
pub fn plugin_index(data: &[u8]) {
    let store = easel_styles::store::Store::at(scratch().join("store"));
    if std::fs::create_dir_all(store.dir()).is_err() {
        return;
    }
    if std::fs::write(store.dir().join("index.json"), data).is_ok() {
        let _ = store.list();
    }
}

/// ONNX protobuf and the two ONNX importers (the arbitrary network reads the same bytes as its
/// predictor and its transformer).
pub fn onnx_import(data: &[u8]) {
    if let Ok(model) = easel_onnx::OnnxModel::from_bytes(data) {
        for name in model.initializer_names() {
            let _ = model.weight(name);
        }
    }
    let _ = easel_fast::import::cin26::import_cin26(data);
    let _ = easel_fast::import::arbitrary::import_arbitrary(data, data);
}

/// PyTorch checkpoints: the zip and legacy `torch.save` formats, their pickle VM, TorchScript
/// archives, and pickled modules (the official LSAST / ArtBank checkpoints, imported as banks).
pub fn torch_checkpoint(data: &[u8]) {
    let _ = easel_core::torch_checkpoint::read_torch_checkpoint(data, "fuzz.pth");
    let _ = easel_core::torch_checkpoint::read_torchscript_tensors(data, "fuzz.pt");
    let _ = easel_bank::official::import_official(data, "fuzz.pt", &Device::Cpu);
    let _ = easel_fast::import::adain::read_weights(data, "fuzz.pth");
}

/// The full CLIP tokenizer (open_clip's merges from `shared/data`) on prompt text.
pub fn tokenizer(data: &[u8]) {
    static TOKENIZER: OnceLock<easel_diffusion::tokenizer::ClipTokenizer> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let path = std::env::var("EASEL_CLIP_BPE").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/clip/bpe_simple_vocab_16e6.txt.gz"
            )
            .to_string()
        });
        // Without the vocabulary this target tests nothing: stopping is the answer.
        let bytes = std::fs::read(&path).expect("read the CLIP merges (or set EASEL_CLIP_BPE)");
        let mut merges = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut merges)
            .expect("gunzip the CLIP merges");
        easel_diffusion::tokenizer::ClipTokenizer::from_open_clip_bpe(&merges)
            .expect("build the CLIP tokenizer")
    });
    let _ = tokenizer.encode(&text(data));
}

/// Prompt-bank layout presets (TOML).
pub fn preset_toml(data: &[u8]) {
    let _ = easel_bank::preset::Preset::parse(&text(data), "fuzz.toml");
}

/// diffusers / transformers `config.json`, `scheduler_config.json`, `model_index.json`, shard
/// indexes and `tokenizer.json` / `vocab.json`.
pub fn model_configs(data: &[u8]) {
    use easel_diffusion::weights::{config_json, layout};
    let json = text(data);
    let _ = config_json::unet_config_from_diffusers_json(&json);
    let _ = config_json::controlnet_config_from_diffusers_json(&json);
    let _ = config_json::vae_config_from_diffusers_json(&json);
    let _ = config_json::clip_config_from_transformers_json(&json);
    let _ = easel_pipeline::scheduler_config::scheduler_config_from_diffusers_json(&json);
    let _ = layout::model_index(&json);
    let _ = layout::shard_files(&json);
    let _ = easel_diffusion::tokenizer::ClipTokenizer::from_tokenizer_json(&json);
    // vocab.json and merges.txt: the input split at its first NUL.
    let (vocab, merges) = json.split_once('\0').unwrap_or((&json, ""));
    let _ = easel_diffusion::tokenizer::ClipTokenizer::from_vocab_merges(vocab, merges);
}

/// The strings users type: `--use` specs, weighted paintings, preset mixes, Canny thresholds,
/// prompt templates.
pub fn specs(data: &[u8]) {
    let spec = text(data);
    let _ = easel_host::spec::UseSpec::parse(&spec);
    let _ = easel_host::fast::WeightedPath::parse(&spec);
    let _ = easel_fast::cin26::parse_preset_mix(&spec);
    let _ = easel_pipeline::canny::parse_thresholds(&spec);
    let _ = easel_bank::conditioning::prompt_template(&spec);
}
