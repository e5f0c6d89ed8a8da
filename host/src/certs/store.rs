//! The gateway's state directory on disk: ACME account keys and
//! certificates, the development CA. Files hold private keys, so each is
//! written atomically (a temporary file, fsync, rename, fsync of the
//! directory: a crash leaves the old or the new file, never half of one)
//! and readable only by the gateway's user (files 0600 in directories 0700).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The gateway's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (created when first needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The private subdirectory `relative` (created mode 0700, and reset to
    /// 0700 if it exists with wider permissions).
    pub fn private_dir(&self, relative: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = self.root.join(relative);
        private_dir(&dir)?;
        Ok(dir)
    }
}

/// Creates `dir` and its missing parents with mode 0700, and makes `dir`
/// itself 0700; a directory of another user is refused (see
/// [`crate::base::fsutil::create_private_dir`]).
pub fn private_dir(dir: &Path) -> Result<()> {
    crate::base::fsutil::create_private_dir(dir)
        .with_context(|| format!("cannot use directory {}", dir.display()))
}

/// Writes `data` to `path` atomically, readable only by this user (0600).
/// The parent directory must exist.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::base::fsutil::write_atomic(path, data, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The contents of `path`, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockgate-store-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn private_files_are_0600_in_0700_directories_and_replace_atomically() {
        let root = scratch("write");
        let state = StateDir::new(&root);
        let dir = state.private_dir("acme/example").unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = dir.join("cert.pem");
        write_private(&file, b"first").unwrap();
        write_private(&file, b"second").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cert.pem"]);
        assert_eq!(read_optional(&dir.join("missing")).unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn wide_directory_permissions_are_narrowed() {
        let root = scratch("narrow");
        fs::create_dir_all(root.join("dev-ca")).unwrap();
        fs::set_permissions(root.join("dev-ca"), fs::Permissions::from_mode(0o755)).unwrap();
        let dir = StateDir::new(&root).private_dir("dev-ca").unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
