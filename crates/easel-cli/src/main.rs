//! `easel`: learn an artist's style and paint photos in it.
//!
//! One file per subcommand under `commands/`; this file only parses arguments, dispatches and
//! turns errors into a one-line reason with a non-zero exit code.

mod args;
mod commands;
mod plugins;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// easel paints photos in the style of a painting: instantly with embedded feed-forward style
/// networks, or with Stable Diffusion + ControlNet guided by a prompt or a learned style bank.
#[derive(Parser)]
#[command(name = "easel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Boxed: the diffusion flags make it much larger than the other variants.
    Stylize(Box<commands::stylize::StylizeArgs>),
    Presets(commands::presets::PresetsArgs),
    ImportOnnx(commands::import_onnx::ImportOnnxArgs),
    ImportTorch(commands::import_torch::ImportTorchArgs),
    Bank(commands::bank::BankArgs),
    Learn(commands::learn::LearnArgs),
    Bench(commands::bench::BenchArgs),
    TrainFast(commands::train_fast::TrainFastArgs),
    Styles(commands::styles::StylesArgs),
    Compare(commands::compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One process per job: freed activations are worth keeping for the next op or photo.
    easel_cpu::keep_freed_memory();
    let result = match cli.command {
        Command::Stylize(args) => commands::stylize::run(*args),
        Command::Presets(args) => commands::presets::run(args),
        Command::ImportOnnx(args) => commands::import_onnx::run(args),
        Command::ImportTorch(args) => commands::import_torch::run(args),
        Command::Bank(args) => commands::bank::run(args),
        Command::Learn(args) => commands::learn::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::TrainFast(args) => commands::train_fast::run(args),
        Command::Styles(args) => commands::styles::run(args),
        Command::Compare(args) => commands::compare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: "a: b: c".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
