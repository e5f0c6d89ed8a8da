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
//! versions forgotten) are deleted ([`StateStore::collect_blobs`]); the
//! gateway does both under its deploy lock, so a collection never races a
//! deploy.
//!
//! The directory and its subdirectories must belong to the gateway's user
//! (narrowed to 0700); records and blobs that another user could have
//! written are not trusted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::fsutil::{
    create_private_dir, is_own_file, is_temporary, write_atomic, write_atomic_marked,
};
use crate::config::AppConfig;

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
        let trusted = std::fs::symlink_metadata(&path).map(|meta| {
            meta.is_file() && is_own_file(&meta) && meta.permissions().mode() & 0o077 == 0
        });
        if let Ok(false) = trusted {
            // Someone else could know it: it is no secret.
            tracing::warn!(
                "{} was readable or writable by other users, or not the gateway's own: \
                 generating a new admin token",
                path.display()
            );
        }
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() && trusted.unwrap_or(false) => {
                return Ok(token.trim().to_owned());
            }
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

    /// Stores a component (once per content) and returns its digest. A
    /// blob already there is kept only if it is this user's and holds these
    /// bytes; otherwise it is written anew.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String> {
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

    /// Deletes every blob no app record references (and temporary files
    /// left by a crash); returns how many blobs went. Does nothing when a
    /// record cannot be read: what it references is unknown. The caller
    /// must hold the gateway's deploy lock.
    pub fn collect_blobs(&self) -> Result<usize> {
        let (records, problems) = self.load_apps()?;
        if !problems.is_empty() {
            return Ok(0);
        }
        let used: std::collections::HashSet<String> = records
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

    /// Every persisted app. Records that cannot be read (or that another
    /// user could have written) are reported with the app name their file
    /// gives, if it is one, not fatal: one damaged file must not keep the
    /// other apps down.
    #[allow(clippy::type_complexity)]
    pub fn load_apps(&self) -> Result<(Vec<AppRecord>, Vec<(Option<String>, String)>)> {
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
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| crate::base::names::check_app_name(s).is_ok());
            let parsed = self.read_record(&path).and_then(|record| {
                if name.as_deref() != Some(record.name.as_str()) {
                    bail!("it holds app `{}`, not the app its file names", record.name);
                }
                Ok(record)
            });
            match parsed {
                Ok(record) => records.push(record),
                Err(err) => problems.push((name, format!("{}: {err:#}", path.display()))),
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((records, problems))
    }

    /// Reads one record, refusing a file this user did not write.
    fn read_record(&self, path: &Path) -> Result<AppRecord> {
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() || !is_own_file(&meta) {
            bail!(
                "{} is not a file of the gateway's user (or others may write it): not trusted",
                path.display()
            );
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("cannot parse {}", path.display()))
    }

    /// The persisted record of app `name`, if any.
    pub fn load_app(&self, name: &str) -> Result<Option<AppRecord>> {
        let path = self.app_path(name);
        match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => self.read_record(&path).map(Some),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockgate-state-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(name: &str, digest: &str) -> AppRecord {
        let mut config = AppConfig::new(name, PathBuf::new(), "127.0.0.1:0".parse().unwrap());
        config.component = PathBuf::from(format!("{digest}.wasm"));
        AppRecord {
            name: name.to_owned(),
            current: 1,
            versions: vec![VersionRecord {
                number: 1,
                digest: digest.to_owned(),
                deployed_at: 0,
                config,
            }],
        }
    }

    #[test]
    fn blobs_no_record_references_are_collected() {
        let dir = scratch("gc");
        let store = StateStore::open(&dir).unwrap();
        let kept = store.put_blob(b"kept").unwrap();
        let dropped = store.put_blob(b"dropped").unwrap();
        std::fs::write(dir.join("blobs/.x.wasm.tmp-0123"), b"half").unwrap();
        store.save_app(&record("a", &kept)).unwrap();
        assert_eq!(store.collect_blobs().unwrap(), 1);
        assert!(store.blob_path(&kept).exists());
        assert!(!store.blob_path(&dropped).exists());
        assert_eq!(std::fs::read_dir(dir.join("blobs")).unwrap().count(), 1);

        // A damaged record stops the collection: what it needs is unknown.
        let other = store.put_blob(b"other").unwrap();
        std::fs::write(dir.join("apps/b.json"), b"{ damaged").unwrap();
        assert_eq!(store.collect_blobs().unwrap(), 0);
        assert!(store.blob_path(&other).exists());
        let (records, problems) = store.load_apps().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(problems[0].0.as_deref(), Some("b"));

        // A record under another app's file name is not trusted.
        let renamed = serde_json::to_vec(&record("c", &kept)).unwrap();
        std::fs::write(dir.join("apps/d.json"), renamed).unwrap();
        let (_, problems) = store.load_apps().unwrap();
        assert!(
            problems
                .iter()
                .any(|(name, why)| name.as_deref() == Some("d") && why.contains("holds app `c`"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_admin_token_others_could_read_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("token");
        let store = StateStore::open(&dir).unwrap();
        let token = store.admin_token().unwrap();
        assert_eq!(store.admin_token().unwrap(), token);
        let path = dir.join("admin-token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let fresh = store.admin_token().unwrap();
        assert_ne!(fresh, token);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
