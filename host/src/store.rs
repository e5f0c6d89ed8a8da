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
//! (see [`crate::fsutil`]): a crash before the record's rename leaves the
//! old record (the old version serves after restart), a crash after it
//! leaves the new record whose blob is already complete. There is no state
//! in between.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AppConfig;
use crate::fsutil::{create_private_dir, write_atomic, write_atomic_marked};

/// Versions kept per app (for rollback); older ones are forgotten.
const VERSIONS_KEPT: usize = 10;

/// An app as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app's name.
    pub name: String,
    /// Number of the version serving.
    pub current: u64,
    /// Known versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

/// One deployed version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, 3… per app.
    pub number: u64,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// When it was deployed (seconds since the Unix epoch).
    pub deployed_at: u64,
    /// Its settings; `component` points at the blob.
    pub config: AppConfig,
}

impl AppRecord {
    /// The version serving.
    pub fn current_version(&self) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.number == self.current)
    }

    /// Adds `version` as the newest and makes it current, forgetting the
    /// oldest beyond [`VERSIONS_KEPT`].
    pub fn push(&mut self, mut version: VersionRecord) {
        version.number = self.versions.last().map_or(1, |v| v.number + 1);
        self.current = version.number;
        self.versions.push(version);
        if self.versions.len() > VERSIONS_KEPT {
            self.versions.remove(0);
        }
    }

    /// The version before the current one, for rollback.
    pub fn previous(&self) -> Option<&VersionRecord> {
        self.versions.iter().rev().find(|v| v.number < self.current)
    }
}

/// The state directory.
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating, owner-only) the state directory.
    pub fn open(dir: &Path) -> Result<Self> {
        for sub in ["", "blobs", "apps"] {
            let path = dir.join(sub);
            create_private_dir(&path)
                .with_context(|| format!("cannot create state directory {}", path.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin API's bearer token, generated on first use (32 random
    /// bytes from the OS, hex), readable only by the gateway's user.
    pub fn admin_token(&self) -> Result<String> {
        let path = self.dir.join("admin-token");
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|err| anyhow::anyhow!("cannot get random bytes for the admin token: {err}"))?;
        let token = hex(&bytes);
        write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(token)
    }

    /// Stores a component (once per content) and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = hex(&Sha256::digest(bytes));
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes, 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(digest)
    }

    /// Where the blob with `digest` lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }

    /// Persists an app record atomically.
    pub fn save_app(&self, record: &AppRecord) -> Result<()> {
        let path = self.app_path(&record.name);
        let json = serde_json::to_vec_pretty(record)?;
        write_atomic_marked(&path, &json, 0o600, Some("deploy-before-record-rename"))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Forgets an app.
    pub fn remove_app(&self, name: &str) -> Result<()> {
        let path = self.app_path(name);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Every persisted app. Records that cannot be read are reported, not
    /// fatal: one damaged file must not keep the other apps down.
    pub fn load_apps(&self) -> Result<(Vec<AppRecord>, Vec<String>)> {
        let dir = self.dir.join("apps");
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue; // temporary files of an interrupted write
            }
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<AppRecord>(&bytes)?));
            match parsed {
                Ok(record) => records.push(record),
                Err(err) => problems.push(format!("{}: {err:#}", path.display())),
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((records, problems))
    }

    /// The persisted record of app `name`, if any.
    pub fn load_app(&self, name: &str) -> Result<Option<AppRecord>> {
        let path = self.app_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("cannot parse {}", path.display())
                })?))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn app_path(&self, name: &str) -> PathBuf {
        self.dir.join("apps").join(format!("{name}.json"))
    }
}

/// Validates a digest given by a client (64 lowercase hex digits).
pub fn check_digest(digest: &str) -> Result<()> {
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        bail!("invalid component digest `{digest}`: expected 64 lowercase hex digits (SHA-256)");
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
