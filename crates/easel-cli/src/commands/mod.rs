//! One module per subcommand.

pub mod import_onnx;
pub mod presets;
pub mod stylize;
