//! Compiled components cached on disk.
//!
//! The key hashes the *input* (the component's bytes) together with the
//! wasmtime version and engine settings (wasmtime's compatibility hash covers both), so a lookup costs one SHA-256 of
//! the file and never a compile; a changed engine simply misses. Each
//! engine of the process (the shared-instance one, the per-connection one
//! with the pooling allocator) adds a label of its own settings to the key.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::base::fsutil::{create_private_dir, write_atomic};

/// Whether a component came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a previously compiled artifact.
    Hit,
    /// Compiled now (and stored for next time).
    Miss,
    /// Already loaded for another app of the same bytes, and shared with
    /// it ([`super::images`]): nothing was read or compiled.
    Shared,
}

impl CacheOutcome {
    /// Whether the component was not compiled now (loaded from the disk
    /// cache or shared in memory).
    pub fn is_hit(self) -> bool {
        self != CacheOutcome::Miss
    }
}

/// A directory of compiled components, `<key>.cwasm`.
pub struct CompileCache {
    dir: PathBuf,
    /// Digest of everything besides the input that makes an artifact valid.
    engine_digest: [u8; 32],
}

impl CompileCache {
    /// Opens (creating it, owner-only) the cache directory; an existing
    /// directory must belong to this user (see
    /// [`crate::base::fsutil::create_private_dir`]).
    pub fn open(dir: PathBuf, engine: &Engine) -> Result<Self> {
        Self::open_labeled(dir, engine, "")
    }

    /// Like [`CompileCache::open`] for an engine whose settings wasmtime's
    /// compatibility hash may not tell apart from another engine's (the
    /// pooling allocator of the per-connection engine, for instance):
    /// `label` names the engine's settings and is part of every key, so two
    /// engines sharing a directory never load each other's artifacts.
    pub fn open_labeled(dir: PathBuf, engine: &Engine, label: &str) -> Result<Self> {
        create_private_dir(&dir)
            .with_context(|| format!("cannot use cache directory {}", dir.display()))?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        if !label.is_empty() {
            // (Only when set, so the main engine's keys stay as they were.)
            label.hash(&mut hasher);
        }
        Ok(Self {
            dir,
            engine_digest: hasher.0.finalize().into(),
        })
    }

    /// The directory of the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of `key` is (or would be).
    pub fn artifact_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// Stores `artifact` under `key`, as compiled elsewhere: by a node of
    /// the same cluster with the same engine (the key says so), whose
    /// artifact's SHA-256 the caller checked against the one that node
    /// published. wasmtime checks its header against this engine when it
    /// is loaded, and an unusable one is recompiled.
    pub fn install(&self, key: &str, artifact: &[u8]) -> Result<()> {
        Ok(write_atomic(&self.artifact_path(key), artifact, 0o600)?)
    }

    /// The cache key of a component's bytes.
    pub fn key(&self, bytes: &[u8]) -> String {
        let mut digest = Sha256::new();
        digest.update(b"sockgate-compile-cache-v1\0");
        digest.update(self.engine_digest);
        digest.update(bytes);
        digest.finalize().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Returns the compiled component for `bytes`, from the cache when it is
    /// there, compiling and storing it otherwise. A cached artifact that
    /// fails to load (truncated, from another build) is recompiled.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome)> {
        self.load_or_compile_keyed(engine, &self.key(bytes), bytes)
    }

    /// Like [`CompileCache::load_or_compile`] with the key of `bytes`
    /// already computed (it hashes every byte: a loader that needed it
    /// first does not pay twice).
    pub fn load_or_compile_keyed(
        &self,
        engine: &Engine,
        key: &str,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome)> {
        let path = self.artifact_path(key);
        let trusted = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && crate::base::fsutil::is_own_file(&meta) => true,
            Ok(_) => {
                // Planted while the directory was open to others (it is
                // narrowed at open), or not a file: never load it as code.
                tracing::warn!(
                    path = %path.display(),
                    "ignoring a compile cache entry not written by the gateway's user"
                );
                false
            }
            Err(_) => false,
        };
        if trusted {
            // SAFETY: the artifact was written by `store` below into a
            // directory only this user can write (checked by
            // `create_private_dir` at open), the file is this user's and
            // writable by no one else (checked above), and wasmtime checks
            // its header against this engine before using it.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    "ignoring unusable compile cache entry: {err:#}"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(err) = store(&path, &component) {
            // A cache that cannot be written only costs time on next start.
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {err:#}");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

/// Writes the artifact atomically: a crash leaves either no entry or a
/// complete one, never a torn file under the final name.
fn store(path: &Path, component: &Component) -> Result<()> {
    let bytes = component.serialize()?;
    Ok(write_atomic(path, &bytes, 0o600)?)
}

/// Feeds `Hash` output into SHA-256, so the key is stable across processes
/// (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
