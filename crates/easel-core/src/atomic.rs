//! Atomic file writes: every file easel writes (images, weights, banks, checkpoints, caches)
//! goes through a temporary file beside the target, synced to disk and renamed over it, so an
//! interrupted or failed write never leaves a partial file and never loses the previous one.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};

/// Writes `path` atomically: `write` fills `<dir>/<name>.<random>.tmp` in the target's folder,
/// which is synced to disk and renamed over `path` (then the folder is synced, where the file
/// system allows). If `write` or any step fails, the temporary file is removed, `path` is left
/// as it was and the error is returned. The folder must exist.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        ));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp_path, mut tmp_file) = create_temp_file(dir, name)?;
    let written = write(&mut tmp_file)
        .and_then(|()| tmp_file.sync_all())
        .and_then(|()| fs::rename(&tmp_path, path));
    drop(tmp_file);
    if let Err(e) = written {
        // Best effort: the temp file is ours and useless now; if removing it fails too, the
        // original error is the one worth reporting.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    // Persist the rename itself. Not every file system supports syncing a directory, and the
    // data is already safe, so failure is not an error.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `path` as [`write_atomic`] does, first creating the missing folders
/// above it, and refusing when `path` is the same file as one of `inputs` (by canonical path),
/// so that a run never replaces what it read.
pub fn write_output(path: &Path, bytes: &[u8], inputs: &[&Path]) -> crate::Result<()> {
    let inputs: Vec<PathBuf> = inputs.iter().map(|p| p.to_path_buf()).collect();
    if crate::image_io::is_one_of(path, &inputs) {
        return Err(crate::Error::OutputIsInput {
            path: path.to_path_buf(),
        });
    }
    let write_error = |e: io::Error| crate::Error::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_error)?;
    }
    write_atomic(path, |f| io::Write::write_all(f, bytes)).map_err(write_error)
}

/// Creates `<dir>/<name>.<random>.tmp`, retrying on the (unlikely) clash.
fn create_temp_file(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let mut last_err = None;
    for attempt in 0u32..16 {
        // RandomState is seeded from OS randomness per process and varied per
        // instance; mixing in pid, time and attempt keeps names distinct.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u32(attempt);
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(t.as_nanos());
        }
        let mut file_name = name.to_os_string();
        file_name.push(format!(".{:016x}.tmp", hasher.finish()));
        let path = dir.join(file_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not create a temporary file")))
}
