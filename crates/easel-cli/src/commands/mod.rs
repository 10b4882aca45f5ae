//! One module per subcommand.

pub mod bank;
pub mod bench;
pub mod bench_fast;
pub mod compare;
pub mod import_onnx;
pub mod import_torch;
pub mod learn;
pub mod presets;
pub mod styles;
pub mod stylize;
pub mod stylize_adain;
pub mod stylize_diffusion;
pub mod stylize_gatys;
pub mod stylize_transformer;
pub mod train_fast;
