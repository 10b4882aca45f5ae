//! `easel import-torch`: convert a PyTorch checkpoint (`.pth`) into easel's safetensors weights,
//! reading it without executing anything (see `easel_fast::import::torch_zip`) and checking it
//! against the network it is for.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use easel_fast::import::adain::{import_adain, Part};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Convert a PyTorch checkpoint (.pth) into easel safetensors weights, executing nothing",
    after_help = "Examples:\n  easel import-torch --kind adain-vgg vgg_normalised.pth -o adain/vgg_normalised.safetensors\n  \
                  easel import-torch --kind adain-decoder decoder.pth -o adain/decoder.safetensors"
)]
pub struct ImportTorchArgs {
    /// What the checkpoint holds: `adain-vgg` (pytorch-AdaIN's vgg_normalised.pth) or
    /// `adain-decoder` (its decoder.pth).
    #[arg(long, value_enum)]
    kind: Kind,

    /// The checkpoint (`torch.save` of a state dict, zip or legacy format).
    #[arg(value_name = "IN.pth")]
    input: PathBuf,

    /// Where to write the safetensors weights.
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// AdaIN's VGG-19 encoder, vgg_normalised.pth.
    AdainVgg,
    /// AdaIN's decoder, decoder.pth.
    AdainDecoder,
}

pub fn run(args: ImportTorchArgs) -> Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let part = match args.kind {
        Kind::AdainVgg => Part::Vgg,
        Kind::AdainDecoder => Part::Decoder,
    };
    let source_name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.input.display().to_string());
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let extra = [
        ("source".to_string(), source_name),
        ("source_sha256".to_string(), sha256),
    ];
    let out = import_adain(&bytes, &args.input.display().to_string(), part, &extra)?;
    super::bank::write_atomic(&args.output, &out, &[])?;
    eprintln!("wrote {} ({} bytes)", args.output.display(), out.len());
    Ok(())
}
