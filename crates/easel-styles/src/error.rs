//! Why a plugin or the store refused: one variant per cause, naming the file or plugin.

use std::path::PathBuf;

/// Result of this crate.
pub type Result<T> = std::result::Result<T, PluginError>;

/// Why a plugin cannot be read, installed or used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is larger than plugins may be.
    #[error("{}: {size} bytes is over the {limit}-byte limit for a plugin", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not a safetensors file, or a damaged one.
    #[error("{name}: not a readable plugin: {problem}")]
    Malformed {
        /// The file's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A safetensors file without the plugin keys.
    #[error("{name}: not an easel plugin: {problem}")]
    NotAPlugin {
        /// The file's name.
        name: String,
        /// What is missing.
        problem: String,
    },
    /// A plugin of a kind this easel does not know.
    #[error("{name}: plugin kind {kind:?} is unknown to this easel (known: bank, adain, stytr, preset-mix, style-code)")]
    UnknownKind {
        /// The file's name.
        name: String,
        /// The kind it names.
        kind: String,
    },
    /// The tensor bytes do not match the recorded hash.
    #[error("{name}: its tensors hash to {actual} but the plugin records {recorded:?}: the file is damaged or was altered")]
    HashMismatch {
        /// The plugin.
        name: String,
        /// `modelspec.hash_sha256`.
        recorded: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The plugin does not fit the model it would be used with.
    #[error("{name} does not fit: {problem}")]
    DoesNotFit {
        /// The plugin.
        name: String,
        /// Why.
        problem: String,
    },
    /// A source to make a plugin from is not usable.
    #[error("{source_name}: {problem}")]
    Source {
        /// What was given.
        source_name: String,
        /// Why it cannot become a plugin.
        problem: String,
    },
    /// No installed plugin has this name.
    #[error("no installed style is named {name:?}{}", suggestion(.known))]
    NotInstalled {
        /// The name asked for.
        name: String,
        /// Installed names, for the message.
        known: Vec<String>,
    },
    /// The name is taken.
    #[error("a style named {name:?} is already installed (id {id})")]
    NameTaken {
        /// The name.
        name: String,
        /// The installed plugin's id.
        id: String,
    },
    /// The same plugin (same tensors) is installed under another name.
    #[error("this plugin is already installed as {name:?} (id {id})")]
    AlreadyInstalled {
        /// Its installed name.
        name: String,
        /// Its id.
        id: String,
    },
    /// A name that cannot be a style name.
    #[error("style name {name:?} {problem}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        problem: String,
    },
    /// The store's index is damaged.
    #[error("style index {}: {problem}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No store location: neither `EASEL_HOME` nor a data directory is known.
    #[error("no place for installed styles: set EASEL_HOME (or HOME / XDG_DATA_HOME)")]
    NoHome,
    /// A bank inside the plugin is unusable.
    #[error("{0}")]
    Bank(#[from] easel_bank::file::BankFitError),
    /// A model computation failed while making a plugin.
    #[error("{what}: {source}")]
    Compute {
        /// What was being computed.
        what: String,
        /// The cause.
        source: candle_core::Error,
    },
    /// A plugin's tensors that cannot be written (bytes that do not match a shape).
    #[error("plugin {title:?} cannot be written: {source}")]
    Unwritable {
        /// The plugin's title.
        title: String,
        /// What the writer refused.
        source: easel_core::safetensors_writer::WriteError,
    },
    /// The host refused a style.
    #[error(transparent)]
    Host(#[from] easel_host::HostError),
    /// Image I/O.
    #[error(transparent)]
    Core(#[from] easel_core::Error),
}

fn suggestion(known: &[String]) -> String {
    if known.is_empty() {
        " (none are installed)".to_string()
    } else {
        format!(" (installed: {})", known.join(", "))
    }
}
