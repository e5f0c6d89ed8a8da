//! Crash-safe file writes, for everything the gateway persists.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` so that a crash at any moment leaves either the
/// old file or the complete new one: write a temporary file in the same
/// directory, fsync it, rename it over `path`, fsync the directory. The
/// file gets permission `mode` (e.g. 0o600 for secrets).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_marked(path, bytes, mode, None)
}

/// Like [`write_atomic`], passing failpoint `before_rename` (if any) once
/// the temporary file is complete and not yet renamed.
pub fn write_atomic_marked(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    before_rename: Option<&str>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        if let Some(point) = before_rename {
            crate::failpoint::hit(point);
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and its parents) readable only by this user.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
