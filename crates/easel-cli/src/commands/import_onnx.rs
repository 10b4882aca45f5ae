//! `easel import-onnx`: convert the upstream ONNX style networks into easel's safetensors weights
//! (how the embedded weights were made; see crates/easel-fast/weights/README.md).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(about = "Convert upstream ONNX style networks into easel safetensors weights")]
pub struct ImportOnnxArgs {
    #[command(subcommand)]
    network: Network,
}

#[derive(Subcommand)]
enum Network {
    /// The arbitrary-style network (style prediction + style transfer ONNX files).
    Arbitrary {
        /// The style prediction network, e.g. arbitrary_predict.onnx.
        #[arg(long, value_name = "ONNX")]
        predict: PathBuf,
        /// The style transfer network, e.g. arbitrary_transform.onnx.
        #[arg(long, value_name = "ONNX")]
        transform: PathBuf,
        /// Where to write the safetensors weights.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// The 26-preset conditional-instance-norm network, e.g. multistyle26.onnx.
    Cin26 {
        /// The ONNX file.
        #[arg(value_name = "ONNX")]
        model: PathBuf,
        /// Where to write the safetensors weights.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(args: ImportOnnxArgs) -> Result<()> {
    let (bytes, output) = match args.network {
        Network::Arbitrary {
            predict,
            transform,
            output,
        } => {
            let bytes = easel_fast::import::arbitrary::import_arbitrary(
                &read(&predict)?,
                &read(&transform)?,
            )?;
            (bytes, output)
        }
        Network::Cin26 { model, output } => {
            let bytes = easel_fast::import::cin26::import_cin26(&read(&model)?)?;
            (bytes, output)
        }
    };
    easel_core::write_output(&output, &bytes, &[])?;
    eprintln!("wrote {} ({} bytes)", output.display(), bytes.len());
    Ok(())
}
