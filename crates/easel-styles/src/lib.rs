//! easel-styles: style plugins users install, list, check, share and paint with.
//!
//! * [`plugin`]: the single-file plugin format (safetensors with SAI ModelSpec metadata).
//! * [`convert`]: making plugins from banks, fast-model weights, preset mixes and paintings,
//!   and what a plugin paints as ([`convert::PluginUse`], a host [`easel_host::host::Style`]).
//! * [`store`]: where installed plugins live (`$EASEL_HOME/styles`), with an index safe under
//!   concurrent easel processes.
//! * [`folder`]: a folder of plugins and embeddings (AUTOMATIC1111's `embeddings/`) listed in
//!   place, uninstalled.

#![warn(missing_docs)]

pub mod convert;
pub mod error;
pub mod folder;
pub mod plugin;
pub mod store;

pub use convert::{PluginInfo, PluginSource, PluginUse};
pub use error::{PluginError, Result};
pub use plugin::{Kind, PluginFile, PluginHeader};
pub use store::{Entry, Store};
