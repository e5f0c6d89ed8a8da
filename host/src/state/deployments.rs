//! The records of deployed apps (`apps/<name>.json`): each app's versions,
//! which one serves, and how a new version is numbered. A record is
//! written whole and atomically; one that cannot be read, or that another
//! user could have written, is reported, never trusted.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::base::fsutil::{is_own_file, write_atomic_marked};
use crate::config::AppConfig;
use crate::runtime::load::World;

/// Versions kept per app (for rollback); older ones are forgotten.
/// Threat: a client deploying in a loop to fill the state directory.
const VERSIONS_KEPT: usize = 10;

/// An app as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    /// The app's name.
    pub name: String,
    /// Number of the version serving.
    pub current: u64,
    /// Known versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

/// One deployed version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    /// 1, 2, 3… per app.
    pub number: u64,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// When it was deployed (seconds since the Unix epoch).
    pub deployed_at: u64,
    /// Its settings; `component` points at the blob.
    pub config: AppConfig,
    /// Where the client got the component (e.g. a pinned `oci://`
    /// reference), if it said; records written before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The WIT world its component implements, found when it was first
    /// loaded: a restart registers the app without loading it (lazy
    /// start) and still knows whether it is an HTTP app (TLS and QUIC
    /// must offer `h2`, `http/1.1` and `h3` before it loads). Records
    /// written before it have none, and such a version loads at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<World>,
}

impl AppRecord {
    /// The version serving.
    pub(crate) fn current_version(&self) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.number == self.current)
    }

    /// Adds `version` as the newest and makes it current, forgetting the
    /// oldest beyond [`VERSIONS_KEPT`]; returns the version forgotten, whose
    /// component may now be used by no record.
    pub(crate) fn push(&mut self, mut version: VersionRecord) -> Option<VersionRecord> {
        version.number = self.versions.last().map_or(1, |v| v.number + 1);
        self.current = version.number;
        self.versions.push(version);
        (self.versions.len() > VERSIONS_KEPT).then(|| self.versions.remove(0))
    }

    /// The version before the current one, for rollback.
    pub(crate) fn previous(&self) -> Option<&VersionRecord> {
        self.versions.iter().rev().find(|v| v.number < self.current)
    }
}

impl StateDir {
    /// Persists an app record atomically.
    pub(crate) fn save_app(&self, record: &AppRecord) -> Result<()> {
        let path = self.app_path(&record.name);
        let json = serde_json::to_vec_pretty(record)?;
        write_atomic_marked(&path, &json, 0o600, Some("deploy-before-record-rename"))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Forgets an app.
    pub(crate) fn remove_app(&self, name: &str) -> Result<()> {
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
    pub(crate) fn load_apps(&self) -> Result<(Vec<AppRecord>, Vec<(Option<String>, String)>)> {
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
    pub(crate) fn load_app(&self, name: &str) -> Result<Option<AppRecord>> {
        let path = self.app_path(name);
        match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => self.read_record(&path).map(Some),
        }
    }
}
