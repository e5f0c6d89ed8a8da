//! The components of deployed versions (`blobs/<sha256>.wasm`):
//! content-addressed, written once, deleted when no record needs them.

use std::collections::HashSet;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{StateDir, hex};
use crate::base::fsutil::{is_own_file, is_temporary, write_atomic};

impl StateDir {
    /// Stores a component (once per content) and returns its digest. A
    /// blob already there is kept only if it is this user's and holds these
    /// bytes; otherwise it is written anew.
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = hex(&Sha256::digest(bytes));
        let path = self.blob_path(&digest);
        let intact = std::fs::symlink_metadata(&path)
            .is_ok_and(|meta| meta.is_file() && is_own_file(&meta))
            && std::fs::read(&path).is_ok_and(|stored| stored == bytes);
        if !intact {
            write_atomic(&path, bytes, 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(digest)
    }

    /// The digests of every component stored (what a cluster node tells
    /// its peers it holds).
    pub(crate) fn blob_digests(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("blobs");
        let mut digests = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(digest) = name.strip_suffix(".wasm")
                && digest.len() == 64
                && digest.bytes().all(|b| b.is_ascii_hexdigit())
            {
                digests.push(digest.to_owned());
            }
        }
        Ok(digests)
    }

    /// Deletes every blob no app record references (and temporary files
    /// left by a crash); returns how many blobs went. Does nothing when a
    /// record cannot be read: what it references is unknown. The caller
    /// must hold the gateway's deploy lock.
    pub(crate) fn collect_blobs(&self) -> Result<usize> {
        let (records, problems) = self.load_apps()?;
        if !problems.is_empty() {
            return Ok(0);
        }
        let used: HashSet<String> = records
            .iter()
            .flat_map(|r| r.versions.iter().map(|v| format!("{}.wasm", v.digest)))
            .collect();
        let dir = self.dir.join("blobs");
        let mut removed = 0;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let unused = if is_temporary(&name) {
                true
            } else if name.ends_with(".wasm") && !used.contains(&name) {
                removed += 1;
                true
            } else {
                false
            };
            if unused {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        Ok(removed)
    }
}
