//! `easel import-torch`: convert a PyTorch checkpoint (`.pth`) into easel's safetensors weights,
//! reading it without executing anything (see `easel_core::torch_checkpoint`) and checking it
//! against the network it is for.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use easel_fast::import::adain::{self, import_adain};
use easel_fast::import::stytr::{self, import_stytr};
use std::path::PathBuf;

#[derive(Args)]
#[command(
    about = "Convert a PyTorch checkpoint (.pth) into easel safetensors weights, executing nothing",
    after_help = "Examples:\n  easel import-torch --kind adain-vgg vgg_normalised.pth -o adain/vgg_normalised.safetensors\n  \
                  easel import-torch --kind adain-decoder decoder.pth -o adain/decoder.safetensors\n  \
                  easel import-torch --kind stytr-transformer transformer_iter_160000.pth -o stytr/transformer_iter_160000.safetensors\n  \
                  easel import-torch --kind stytr-embedding embedding_iter_160000.pth -o stytr/embedding_iter_160000.safetensors\n  \
                  easel import-torch --kind stytr-decoder decoder_iter_160000.pth -o stytr/decoder_iter_160000.safetensors"
)]
pub struct ImportTorchArgs {
    /// What the checkpoint holds: `adain-vgg` (pytorch-AdaIN's vgg_normalised.pth),
    /// `adain-decoder` (its decoder.pth), or one of StyTr²'s three files: `stytr-transformer`
    /// (transformer_iter_*.pth), `stytr-embedding` (embedding_iter_*.pth), `stytr-decoder`
    /// (decoder_iter_*.pth).
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
    /// StyTr²'s transformer, transformer_iter_*.pth.
    StytrTransformer,
    /// StyTr²'s patch embedding, embedding_iter_*.pth.
    StytrEmbedding,
    /// StyTr²'s CNN decoder, decoder_iter_*.pth.
    StytrDecoder,
}

pub fn run(args: ImportTorchArgs) -> Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let source_name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.input.display().to_string());
    let sha256 = easel_core::hash::sha256_hex(&bytes);
    let extra = [
        ("source".to_string(), source_name),
        ("source_sha256".to_string(), sha256),
    ];
    let source = args.input.display().to_string();
    let out = match args.kind {
        Kind::AdainVgg => import_adain(&bytes, &source, adain::Part::Vgg, &extra)?,
        Kind::AdainDecoder => import_adain(&bytes, &source, adain::Part::Decoder, &extra)?,
        Kind::StytrTransformer => import_stytr(&bytes, &source, stytr::Part::Transformer, &extra)?,
        Kind::StytrEmbedding => import_stytr(&bytes, &source, stytr::Part::Embedding, &extra)?,
        Kind::StytrDecoder => import_stytr(&bytes, &source, stytr::Part::Decoder, &extra)?,
    };
    easel_core::write_output(&args.output, &out, &[])?;
    eprintln!("wrote {} ({} bytes)", args.output.display(), out.len());
    Ok(())
}
