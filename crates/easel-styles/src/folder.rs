//! Styles used where they lie: a folder of plugins and textual-inversion embeddings, such as
//! AUTOMATIC1111's `embeddings/`, listed without installing anything. Each file can be painted
//! with by its path.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::convert::MAX_SOURCE_BYTES;
use crate::error::{PluginError, Result};
use crate::plugin::{file_name, keys, Kind};

/// The most files of a folder looked at (A1111 folders hold tens to hundreds).
pub const MAX_FOLDER_FILES: usize = 10_000;

/// One file of a listed folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FolderStyle {
    /// The file.
    pub path: PathBuf,
    /// The name A1111 uses it by in prompts: the file name without its extension.
    pub name: String,
    /// What it is: `plugin`, `bank` (an easel bank file) or `embedding`.
    pub format: &'static str,
    /// The plugin's kind (`bank` for banks and embeddings).
    pub kind: Option<Kind>,
    /// The plugin's title, or the embedding's own name where it records one.
    pub title: String,
    /// Prompt vectors and their width, for banks and embeddings.
    pub vectors: Option<(usize, usize)>,
    /// Why the file cannot be used (then the fields above are empty).
    pub problem: Option<String>,
}

/// The styles in `dir` (not recursively): every `.safetensors`, `.bank`, `.pt` and `.bin`
/// file, by name; files of other extensions are skipped, and files that are no usable style
/// (PyTorch pickles among them: convert those to safetensors) are listed with the reason.
pub fn list_folder(dir: &Path) -> Result<Vec<FolderStyle>> {
    let io = |e| PluginError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if path.is_file() && ["safetensors", "bank", "pt", "bin"].contains(&ext.as_str()) {
            if paths.len() == MAX_FOLDER_FILES {
                return Err(PluginError::Source {
                    source_name: dir.display().to_string(),
                    problem: format!("holds more than {MAX_FOLDER_FILES} style files"),
                });
            }
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths.into_iter().map(|p| describe(&p)).collect())
}

fn describe(path: &Path) -> FolderStyle {
    let mut style = FolderStyle {
        path: path.to_path_buf(),
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: "",
        kind: None,
        title: String::new(),
        vectors: None,
        problem: None,
    };
    if let Err(problem) = read_style(path, &mut style) {
        style.problem = Some(problem);
    }
    style
}

fn read_style(path: &Path, style: &mut FolderStyle) -> std::result::Result<(), String> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    if matches!(ext.as_deref(), Some("pt" | "bin")) {
        return Err("a PyTorch pickle, which easel does not run: convert it to safetensors".into());
    }
    let bytes = crate::plugin::read_file(path, MAX_SOURCE_BYTES).map_err(|e| e.to_string())?;
    let name = file_name(path);
    match crate::plugin::read_header(&bytes, &name) {
        Ok(header) => {
            style.format = "plugin";
            style.kind = Some(header.kind);
            style.title = header.get(keys::TITLE).to_string();
            return Ok(());
        }
        Err(e @ PluginError::UnknownKind { .. }) => return Err(e.to_string()),
        Err(_) => {}
    }
    let (bank, title, format) = match easel_bank::file::read_bank(&bytes, &Device::Cpu) {
        Ok((bank, _)) => (bank, String::new(), "bank"),
        Err(_) => {
            let imported = easel_bank::interop::import_embedding(&bytes, None, &Device::Cpu)
                .map_err(|e| {
                    format!("neither an easel plugin, a bank file nor an embedding: {e}")
                })?;
            let title = imported.name.unwrap_or_default();
            (imported.bank, title, "embedding")
        }
    };
    let count = bank
        .vectors()
        .map_err(|e| e.to_string())?
        .elem_count()
        .checked_div(bank.dim())
        .unwrap_or(0);
    style.format = format;
    style.kind = Some(Kind::Bank);
    style.title = title;
    style.vectors = Some((count, bank.dim()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn embedding(key: &str, rows: usize, width: usize, meta: &[(&str, &str)]) -> Vec<u8> {
        let data: Vec<u8> = (0..rows * width)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        let meta: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let shape = [rows, width];
        let tensors = [easel_core::safetensors_writer::TensorBytes {
            name: key,
            dtype: safetensors::Dtype::F32,
            shape: &shape,
            data: data.into(),
        }];
        easel_core::safetensors_writer::safetensors_bytes(&tensors, &meta).unwrap()
    }

    /// An A1111 folder: an A1111 embedding, a kohya one, a diffusers one, a pickle and a
    /// damaged file are each listed by file name with what they are or why they are unusable;
    /// other files are skipped.
    #[test]
    fn a_folder_of_embeddings_lists_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write(
            "inkwash.safetensors",
            &embedding("string_to_param.*", 4, 768, &[("name", "inkwash")]),
        );
        write(
            "kohya-style.safetensors",
            &embedding("emb_params", 2, 768, &[]),
        );
        write(
            "<cat-toy>.safetensors",
            &embedding("<cat-toy>", 1, 768, &[]),
        );
        write("old.pt", b"PK\x03\x04 not read");
        write("broken.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}");
        write("notes.txt", b"skipped");
        let listed = list_folder(dir.path()).unwrap();
        type Row<'a> = (&'a str, &'a str, Option<(usize, usize)>, bool);
        let got: Vec<Row> = listed
            .iter()
            .map(|s| (s.name.as_str(), s.format, s.vectors, s.problem.is_some()))
            .collect();
        assert_eq!(
            got,
            [
                ("<cat-toy>", "embedding", Some((1, 768)), false),
                ("broken", "", None, true),
                ("inkwash", "embedding", Some((4, 768)), false),
                ("kohya-style", "embedding", Some((2, 768)), false),
                ("old", "", None, true),
            ]
        );
        assert_eq!(listed[2].title, "inkwash");
        assert!(listed[4]
            .problem
            .as_ref()
            .unwrap()
            .contains("PyTorch pickle"));
        assert!(listed
            .iter()
            .all(|s| s.kind == s.problem.is_none().then_some(Kind::Bank)));
    }

    #[test]
    fn a_missing_folder_is_named() {
        let err = list_folder(Path::new("/no/such/embeddings")).unwrap_err();
        assert!(
            err.to_string().starts_with("/no/such/embeddings: "),
            "{err}"
        );
    }
}
