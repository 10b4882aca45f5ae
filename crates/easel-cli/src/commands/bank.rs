//! `easel bank show | export | import`: inspect prompt-bank files and exchange them with
//! diffusers and AUTOMATIC1111 textual-inversion embeddings.
//!
//! Every file is written atomically (a temporary file beside it, then renamed) and never over
//! one of the command's inputs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use easel_bank::file::{read_bank, save_bank, BankMetadata};
use easel_bank::interop::{
    export_a1111, export_diffusers, import_embedding, imported_metadata, A1111Info, EmbeddingFormat,
};
use easel_bank::layout::Slot;
use easel_bank::official::OfficialKind;
use easel_bank::show::BankSummary;

use easel_core::hash::sha256_hex;

/// Inspect, export and import prompt banks (.bank files).
#[derive(Args)]
pub struct BankArgs {
    #[command(subcommand)]
    command: BankCommand,
}

#[derive(Subcommand)]
enum BankCommand {
    Show(ShowArgs),
    Export(ExportArgs),
    Import(ImportArgs),
}

/// Print a bank's layout, parameterisation, prompt, metadata and vector norms.
#[derive(Args)]
struct ShowArgs {
    /// The bank file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON: the file's name and sha256, and the summary's fields.
    #[arg(long)]
    json: bool,
}

/// Which embedding format to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// diffusers `load_textual_inversion`: learned_embeds.safetensors, one token per slot,
    /// plus learned_embeds.easel.json describing the slots when the bank has more than one.
    Diffusers,
    /// AUTOMATIC1111: one embedding (`string_to_param.*`) of one slot.
    A1111,
}

/// Export a bank as a textual-inversion embedding for diffusers or AUTOMATIC1111.
#[derive(Args)]
struct ExportArgs {
    /// The bank file.
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// The embedding format: diffusers or a1111.
    #[arg(long, value_name = "FORMAT")]
    format: Format,

    /// The slot STAGE,GROUP to export (a1111 only; required for a bank with more than one
    /// slot, since an A1111 embedding holds one token for all steps and layers).
    #[arg(long, value_name = "S,G", value_parser = parse_slot)]
    slot: Option<Slot>,

    /// The embedding's token name (default: the bank file's stem).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Output: for diffusers a .safetensors file or a directory (which gets
    /// learned_embeds.safetensors; the sidecar goes beside the file as <stem>.easel.json); for
    /// a1111 a .safetensors file.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
}

/// Import a diffusers or AUTOMATIC1111 textual-inversion embedding (safetensors), or an
/// official LSAST / ArtBank checkpoint (embeddings_gs-*.pt, read as data; other PyTorch
/// pickles are refused), as a bank file.
#[derive(Args)]
struct ImportArgs {
    /// The embedding: learned_embeds.safetensors (diffusers), an A1111 / kohya .safetensors
    /// embedding, or the official code's embeddings_gs-*.pt.
    #[arg(value_name = "EMBEDDING")]
    embedding: PathBuf,

    /// The sidecar JSON of a multi-slot diffusers export (learned_embeds.easel.json), to
    /// import all its slots as one bank.
    #[arg(long, value_name = "JSON")]
    sidecar: Option<PathBuf>,

    /// The bank file to write (.bank). Embeddings carry no base-model hash: the bank paints on
    /// any model of its width, with a warning.
    #[arg(short, long, value_name = "OUT.bank")]
    output: PathBuf,
}

fn parse_slot(s: &str) -> std::result::Result<Slot, String> {
    let bad = || format!("slot {s:?} must be STAGE,GROUP (two non-negative integers, e.g. 3,1)");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok(Slot {
        stage: a.trim().parse().map_err(|_| bad())?,
        group: b.trim().parse().map_err(|_| bad())?,
    })
}

/// Runs `easel bank ...`.
pub fn run(args: BankArgs) -> Result<()> {
    match args.command {
        BankCommand::Show(a) => show(&a),
        BankCommand::Export(a) => export(&a),
        BankCommand::Import(a) => import(&a),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn load(path: &Path) -> Result<(easel_bank::bank::Bank, BankMetadata, Vec<u8>)> {
    let bytes = read(path)?;
    let (bank, meta) = read_bank(&bytes, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("bank {}: {e}", file_name(path)))?;
    Ok((bank, meta, bytes))
}

fn show(a: &ShowArgs) -> Result<()> {
    let (bank, meta, bytes) = load(&a.file)?;
    let summary = BankSummary::new(&bank, Some(&meta))?;
    if a.json {
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            file: String,
            sha256: String,
            #[serde(flatten)]
            summary: &'a BankSummary,
        }
        let shown = Shown {
            file: file_name(&a.file),
            sha256: sha256_hex(&bytes),
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    println!(
        "file: {} (sha256 {})",
        file_name(&a.file),
        sha256_hex(&bytes)
    );
    print!("{summary}");
    Ok(())
}

/// Fails when `out` is one of `inputs` (same file, however spelled).
fn export(a: &ExportArgs) -> Result<()> {
    let (bank, meta, _) = load(&a.file)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "easel-style".to_string()),
    };
    let input = a.file.as_path();
    match a.format {
        Format::Diffusers => {
            if a.slot.is_some() {
                bail!("--slot applies to --format a1111 only (diffusers exports every slot)");
            }
            let export = export_diffusers(&bank, &name)?;
            let file = if a.output.is_dir() || a.output.extension().is_none() {
                a.output.join("learned_embeds.safetensors")
            } else {
                a.output.clone()
            };
            let sidecar_path = file.with_file_name(format!(
                "{}.easel.json",
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            easel_core::write_output(&file, &export.embeddings, &[input])?;
            eprintln!("wrote {}", file.display());
            if let Some(sidecar) = &export.sidecar {
                easel_core::write_output(&sidecar_path, sidecar.as_bytes(), &[input])?;
                eprintln!(
                    "wrote {} ({} slots; diffusers has no per-stage prompts: the sidecar says \
                     which token belongs to which stage and layer group)",
                    sidecar_path.display(),
                    bank.layout().num_slots()
                );
            }
        }
        Format::A1111 => {
            let info = A1111Info {
                step: meta
                    .training
                    .get("steps")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                base_model: meta.base_model.clone(),
                base_model_hash: meta.base_model_hash.clone(),
            };
            let bytes = export_a1111(&bank, &name, a.slot, &info)?;
            easel_core::write_output(&a.output, &bytes, &[input])?;
            eprintln!("wrote {}", a.output.display());
        }
    }
    Ok(())
}

fn import(a: &ImportArgs) -> Result<()> {
    let bytes = read(&a.embedding)?;
    let sidecar = a
        .sidecar
        .as_deref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let imported = import_embedding(&bytes, sidecar.as_deref(), &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file_name(&a.embedding)))?;
    let metadata = imported_metadata(&file_name(&a.embedding), &imported);
    let out = save_bank(&imported.bank, &metadata)?;
    let mut inputs = vec![a.embedding.as_path()];
    inputs.extend(a.sidecar.as_deref());
    easel_core::write_output(&a.output, &out, &inputs)?;
    let l = imported.bank.layout();
    let from = match imported.format {
        EmbeddingFormat::Official(kind) => format!(
            "the official {} checkpoint, as the {} preset reads it",
            match kind {
                OfficialKind::Lsast => "LSAST",
                OfficialKind::ArtBank => "ArtBank",
            },
            kind.preset()
        ),
        _ => "a textual-inversion embedding".to_string(),
    };
    eprintln!(
        "wrote {} from {from}: {} stages x {} groups x {} tokens of {} dims; it records no base \
         model, so it paints on any model of that width, with a warning",
        a.output.display(),
        l.stages(),
        l.num_groups(),
        l.tokens_per_slot(),
        imported.bank.dim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_as_stage_comma_group() {
        assert_eq!(parse_slot("3,1"), Ok(Slot { stage: 3, group: 1 }));
        assert_eq!(parse_slot(" 0 , 2 "), Ok(Slot { stage: 0, group: 2 }));
        assert!(parse_slot("3").unwrap_err().contains("STAGE,GROUP"));
        assert!(parse_slot("a,1").is_err());
    }
}
