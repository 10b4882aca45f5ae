//! The style store: installed plugins in `<home>/styles/<id>.safetensors` and an index,
//! `<home>/styles/index.json`, of what each file holds.
//!
//! `<home>` is `$EASEL_HOME`, else `$XDG_DATA_HOME/easel`, else `~/.local/share/easel`. Every
//! change takes an exclusive lock on `index.lock` and writes plugin files and the index
//! atomically (temporary file + rename), so two easel processes installing at once leave a
//! consistent index and an interrupted install leaves the old one. Index entries are keyed by
//! file + size + mtime: a file changed behind the store's back is read again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use easel_bank::file::BaseModelInfo;
use serde::{Deserialize, Serialize};

use crate::convert::{make_plugin, PluginInfo, PluginSource, MAX_SOURCE_BYTES};
use crate::error::{PluginError, Result};
use crate::plugin::{self, keys, Kind, PluginHeader};

/// The index format version.
const INDEX_VERSION: u32 = 1;
/// The longest style name.
pub const MAX_NAME_CHARS: usize = 64;

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Stable id (the first 16 hex digits of the tensor hash); the file is `<id>.safetensors`.
    pub id: String,
    /// The name it is used by (unique, matched exactly).
    pub name: String,
    /// What it holds.
    pub kind: Kind,
    /// `modelspec.title`.
    pub title: String,
    /// The base model a bank was learned on ("" for fast models).
    pub base_model: String,
    /// `modelspec.hash_sha256`.
    pub hash: String,
    /// File size in bytes, when indexed.
    pub size: u64,
    /// File mtime in nanoseconds since the epoch, when indexed.
    pub mtime_ns: u64,
    /// Install time, RFC 3339.
    pub installed: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    styles: Vec<Entry>,
}

/// The plugins installed in one place.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PluginError + '_ {
    move |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn stamp(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// Checks a style name: 1 to [`MAX_NAME_CHARS`] characters, no path separators, no control
/// characters, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |problem: &str| PluginError::BadName {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    if name.trim().is_empty() {
        return Err(bad("is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad(&format!("is over {MAX_NAME_CHARS} characters")));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(bad("contains a path separator or a control character"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("starts with '.' or '-'"));
    }
    Ok(())
}

impl Store {
    /// The store in `home` (its `styles/` folder is made on first install).
    pub fn at(home: impl Into<PathBuf>) -> Self {
        Self {
            dir: home.into().join("styles"),
        }
    }

    /// The store the environment names (see the module docs).
    pub fn from_env() -> Result<Self> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(home) = var("EASEL_HOME") {
            return Ok(Self::at(PathBuf::from(home)));
        }
        if let Some(data) = var("XDG_DATA_HOME") {
            return Ok(Self::at(PathBuf::from(data).join("easel")));
        }
        match var("HOME") {
            Some(home) => Ok(Self::at(PathBuf::from(home).join(".local/share/easel"))),
            None => Err(PluginError::NoHome),
        }
    }

    /// The folder holding the plugins and the index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an entry's file is.
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        self.dir.join(format!("{}.safetensors", entry.id))
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.index_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Index {
                    version: INDEX_VERSION,
                    styles: Vec::new(),
                })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| PluginError::Index {
            path: path.clone(),
            problem: format!("not a style index: {e}"),
        })?;
        if index.version != INDEX_VERSION {
            return Err(PluginError::Index {
                path,
                problem: format!(
                    "version {} is not {INDEX_VERSION}, the one this easel reads",
                    index.version
                ),
            });
        }
        Ok(index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let path = self.index_path();
        let json = serde_json::to_vec_pretty(index).map_err(|e| PluginError::Index {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        easel_core::write_atomic(&path, |f| std::io::Write::write_all(f, &json)).map_err(io(&path))
    }

    /// Runs `change` on the index under the exclusive lock; writes the index if it returns
    /// `true` with its value.
    fn locked<T>(&self, change: impl FnOnce(&mut Index) -> Result<(T, bool)>) -> Result<T> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join("index.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut index = self.read_index()?;
        let (value, changed) = change(&mut index)?;
        if changed {
            self.write_index(&index)?;
        }
        // The lock is released when `lock` is dropped, after the index is written.
        drop(lock);
        Ok(value)
    }

    /// Every installed plugin, by name; entries whose file changed are read again.
    pub fn list(&self) -> Result<Vec<Entry>> {
        if !self.index_path().exists() {
            return Ok(Vec::new());
        }
        let mut index = self.read_index()?;
        for entry in &mut index.styles {
            let path = self.dir.join(format!("{}.safetensors", entry.id));
            if let Ok((size, mtime)) = stamp(&path) {
                if (size, mtime) != (entry.size, entry.mtime_ns) {
                    if let Ok(header) = plugin::read_header_file(&path) {
                        fill(entry, &header, size, mtime);
                    }
                }
            }
        }
        index.styles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(index.styles)
    }

    /// The installed plugin named exactly `name`.
    pub fn get(&self, name: &str) -> Result<Entry> {
        let styles = self.list()?;
        styles
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| PluginError::NotInstalled {
                name: name.to_string(),
                known: styles.iter().map(|e| e.name.clone()).collect(),
            })
    }

    /// The plugin file `name_or_path` means: an installed name, else an existing file.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        match self.get(name_or_path) {
            Ok(entry) => Ok(self.path_of(&entry)),
            Err(e @ PluginError::NotInstalled { .. }) => {
                let path = PathBuf::from(name_or_path);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Installs a plugin made from `source` as `name` (default: its title). `replace` lets it
    /// take the place of an installed plugin of that name. With `fit`, a bank must fit that
    /// base model: another embedding width is refused, another base-model hash gives the
    /// returned warning.
    pub fn install(
        &self,
        source: &PluginSource,
        info: &PluginInfo,
        name: Option<&str>,
        replace: bool,
        fit: Option<&BaseModelInfo>,
    ) -> Result<(Entry, Option<String>)> {
        let plugin = make_plugin(source, info)?;
        let bytes = plugin.to_bytes()?;
        let header = plugin::read_header(&bytes, "new plugin")?;
        let name = match name {
            Some(n) => n.to_string(),
            None => header.get(keys::TITLE).to_string(),
        };
        check_name(&name)?;
        let warning = match fit {
            Some(base) => crate::convert::check_fit(&header, &name, base)?,
            None => None,
        };
        let hash = header.get(keys::HASH).to_string();
        let id: String = hash.trim_start_matches("0x").chars().take(16).collect();
        self.locked(|index| {
            if let Some(other) = index.styles.iter().find(|e| e.id == id && e.name != name) {
                return Err(PluginError::AlreadyInstalled {
                    name: other.name.clone(),
                    id: other.id.clone(),
                });
            }
            let taken = index.styles.iter().position(|e| e.name == name);
            if let (Some(i), false) = (taken, replace) {
                return Err(PluginError::NameTaken {
                    name,
                    id: index.styles[i].id.clone(),
                });
            }
            let path = self.dir.join(format!("{id}.safetensors"));
            easel_core::write_atomic(&path, |f| std::io::Write::write_all(f, &bytes))
                .map_err(io(&path))?;
            let (size, mtime) = stamp(&path)?;
            let mut entry = Entry {
                id: id.clone(),
                name: name.clone(),
                kind: header.kind,
                title: String::new(),
                base_model: String::new(),
                hash: String::new(),
                size,
                mtime_ns: mtime,
                installed: easel_core::time::now_rfc3339(),
            };
            fill(&mut entry, &header, size, mtime);
            let replaced = taken.map(|i| index.styles.remove(i));
            index.styles.push(entry.clone());
            if let Some(old) = replaced.filter(|old| old.id != id) {
                // The replaced plugin's file goes once the index no longer names it; if that
                // fails the file is only unused.
                let _ = std::fs::remove_file(self.dir.join(format!("{}.safetensors", old.id)));
            }
            Ok(((entry, warning), true))
        })
    }

    /// Removes the plugin named `name`.
    pub fn remove(&self, name: &str) -> Result<Entry> {
        let entry = self.locked(|index| {
            let i = index
                .styles
                .iter()
                .position(|e| e.name == name)
                .ok_or_else(|| PluginError::NotInstalled {
                    name: name.to_string(),
                    known: index.styles.iter().map(|e| e.name.clone()).collect(),
                })?;
            Ok((index.styles.remove(i), true))
        })?;
        let path = self.path_of(&entry);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(entry),
        }
    }

    /// Renames `old` to `new`.
    pub fn rename(&self, old: &str, new: &str) -> Result<Entry> {
        check_name(new)?;
        self.locked(|index| {
            if let Some(taken) = index.styles.iter().find(|e| e.name == new) {
                return Err(PluginError::NameTaken {
                    name: new.to_string(),
                    id: taken.id.clone(),
                });
            }
            let known: Vec<String> = index.styles.iter().map(|e| e.name.clone()).collect();
            let entry = index
                .styles
                .iter_mut()
                .find(|e| e.name == old)
                .ok_or_else(|| PluginError::NotInstalled {
                    name: old.to_string(),
                    known,
                })?;
            entry.name = new.to_string();
            Ok((entry.clone(), true))
        })
    }

    /// The installed plugin `name` and its header.
    pub fn show(&self, name: &str) -> Result<(Entry, PluginHeader)> {
        let entry = self.get(name)?;
        let header = plugin::read_header_file(&self.path_of(&entry))?;
        Ok((entry, header))
    }

    /// Checks the hash of `name`, or of every installed plugin.
    pub fn verify(&self, name: Option<&str>) -> Result<Vec<(Entry, Result<()>)>> {
        let entries = match name {
            Some(name) => vec![self.get(name)?],
            None => self.list()?,
        };
        Ok(entries
            .into_iter()
            .map(|entry| {
                let path = self.path_of(&entry);
                let checked = plugin::read_file(&path, MAX_SOURCE_BYTES)
                    .and_then(|bytes| plugin::verify(&bytes, &entry.name));
                (entry, checked)
            })
            .collect())
    }
}

fn fill(entry: &mut Entry, header: &PluginHeader, size: u64, mtime: u64) {
    entry.kind = header.kind;
    entry.title = header.get(keys::TITLE).to_string();
    entry.base_model = header.get("base_model").to_string();
    entry.hash = header.get(keys::HASH).to_string();
    entry.size = size;
    entry.mtime_ns = mtime;
}
