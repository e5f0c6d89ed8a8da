//! The state directory: everything deployed through the admin API, so a
//! restart brings every app back exactly as it was.
//!
//! ```text
//! state/
//!   admin-token            bearer token of the admin API (0600)
//!   blobs/<sha256>.wasm    components, content-addressed, written once
//!   apps/<name>.json       an app's versions and which one is current
//! ```
//!
//! A deploy writes the blob first and the app record last, each atomically
//! (see [`crate::base::fsutil`]): a crash before the record's rename leaves the
//! old record (the old version serves after restart), a crash after it
//! leaves the new record whose blob is already complete. There is no state
//! in between. Blobs no record references any more (an app removed, old
//! versions forgotten) are deleted ([`StateDir::collect_blobs`]); the
//! gateway does both under its deploy lock, so a collection never races a
//! deploy.
//!
//! The directory and its subdirectories must belong to the gateway's user
//! (narrowed to 0700); records and blobs that another user could have
//! written are not trusted.
//!
//! The files: `mod.rs` the directory ([`StateDir`]) and its layout;
//! `deployments.rs` the app records ([`AppRecord`], [`VersionRecord`]) and
//! how versions are numbered; `blobs.rs` the components; `token.rs` the
//! admin token. (Not to be confused with `certs/store.rs`, the
//! certificates, nor with wasmtime's `Store`, an instance's state.)

mod blobs;
mod deployments;
mod token;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub(crate) use self::deployments::{AppRecord, VersionRecord};
use crate::base::fsutil::create_private_dir;

/// The state directory, where deployed apps are persisted (see the module
/// documentation for its layout and why a crash leaves nothing half
/// written). A path: cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating, owner-only) the state directory.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        for sub in ["", "blobs", "apps"] {
            let path = dir.join(sub);
            create_private_dir(&path)
                .with_context(|| format!("cannot create state directory {}", path.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where the blob with `digest` lives.
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }

    /// Where the record of app `name` lives.
    fn app_path(&self, name: &str) -> PathBuf {
        self.dir.join("apps").join(format!("{name}.json"))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
