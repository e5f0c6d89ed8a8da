//! Crash-safe file writes and trusted directories, for everything the
//! gateway persists or loads back (deployed components, app records, keys,
//! compiled native code).
//!
//! Threat: another local user who owns, or can write into, one of these
//! directories could plant a file the gateway then trusts — a compiled
//! `.cwasm` is loaded as native code, a record decides what runs. So a
//! directory is used only when this user owns it (its permissions are then
//! narrowed to 0700), and files are created with `O_EXCL | O_NOFOLLOW`
//! under unpredictable names, so nobody can pre-create or redirect them.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` so that a crash at any moment leaves either the
/// old file or the complete new one: write a temporary file in the same
/// directory, fsync it, rename it over `path`, fsync the directory. The
/// file gets permission `mode` (e.g. 0o600 for secrets).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_marked(path, bytes, mode, None)
}

/// Like [`write_atomic`], passing failpoint `before_rename` (if any) once
/// the temporary file is complete and not yet renamed.
///
/// The temporary file has a random name and is created exclusively
/// (`O_EXCL | O_NOFOLLOW`): two writers of the same path (two deploys of
/// the same component at once) never share one, and a symbolic link or a
/// file planted under the name is refused rather than written through.
pub(crate) fn write_atomic_marked(
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
    let tmp = dir.join(format!(".{name}.tmp-{}", random_suffix()?));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        if let Some(point) = before_rename {
            crate::base::failpoint::hit(point);
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    drop(file);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temporary file of [`write_atomic`] (left behind by a
/// crash), which readers of a directory skip.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp")
}

/// Creates `dir` (and its missing parents) readable only by this user, or
/// checks an existing one: it must be a directory owned by this user, and
/// wider permissions than 0700 are narrowed. A directory owned by someone
/// else is refused with an error saying what to do.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to the gateway's user (uid {me}), so another user \
                 could plant files in it that the gateway would trust; remove it, or choose a \
                 directory of your own",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "{} was accessible to other users (mode {:o}); narrowed it to 0700",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Whether the file at `path` can be trusted as the gateway's own: owned by
/// this user and writable by nobody else. Files planted while a directory
/// was open to others fail this check.
pub(crate) fn is_own_file(meta: &std::fs::Metadata) -> bool {
    meta.uid() == effective_uid() && meta.mode() & 0o022 == 0
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// 16 hex digits from the OS's random source.
fn random_suffix() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(err.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockgate-fsutil-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn open_directories_are_narrowed_and_temporary_names_are_unique() {
        let dir = scratch("narrow");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A file planted under a name the writer might use is never
        // followed: the names are random and created exclusively.
        let target = dir.join("blob");
        std::os::unix::fs::symlink("/nonexistent", dir.join(".blob.tmp")).unwrap();
        write_atomic(&target, b"one", 0o600).unwrap();
        write_atomic(&target, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(is_own_file(&std::fs::metadata(&target).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if effective_uid() != 0 {
            return; // Only root can give a directory away.
        }
        let dir = scratch("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = create_private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("belongs to uid 65534"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
