//! Static certificates: PEM certificate-chain and key files named in the
//! configuration (`[[tls.certificate]]`). Each serves the DNS names its
//! certificate lists, wildcards (`*.example.org`) included. The files are
//! read at start (a bad file refuses the start) and read again when they
//! change on disk, so a certificate renewed by another tool is picked up
//! without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use super::renewal::Validity;
use super::{crypto_provider, dns_names_of, format_time, validity_of};
use crate::base::locks::{read, write};

/// How often the files are checked for changes.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A certificate served from files: `[[tls.certificate]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFileSettings {
    /// PEM file with the certificate chain, leaf first (relative paths are
    /// relative to the configuration file).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One loaded certificate file.
#[derive(Clone)]
struct Loaded {
    settings: CertFileSettings,
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    validity: Validity,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

/// The static certificates, by name.
#[derive(Default)]
pub struct StaticCerts {
    loaded: RwLock<Vec<Loaded>>,
}

impl StaticCerts {
    /// Reads every file; fails, naming the file and what to do, if one is
    /// unusable.
    pub fn load(settings: &[CertFileSettings]) -> Result<Self> {
        let loaded = settings
            .iter()
            .map(|s| {
                let loaded = load(s)?;
                warn_if_expiring(&loaded);
                Ok(loaded)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            loaded: RwLock::new(loaded),
        })
    }

    /// Nothing loaded.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The certificate covering `name` (normalized): an exact name first,
    /// then a wildcard for its parent domain.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let loaded = read(&self.loaded);
        let exact = loaded.iter().find(|l| l.names.iter().any(|n| n == name));
        let found = exact.or_else(|| {
            let (_, parent) = name.split_once('.')?;
            let wildcard = format!("*.{parent}");
            loaded.iter().find(|l| l.names.contains(&wildcard))
        });
        found.map(|l| l.key.clone())
    }

    /// Whether a file covers `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names each file covers, for the start-up report.
    pub fn describe(&self) -> Vec<(PathBuf, Vec<String>, SystemTime)> {
        let loaded = read(&self.loaded);
        loaded
            .iter()
            .map(|l| {
                (
                    l.settings.cert.clone(),
                    l.names.clone(),
                    l.validity.not_after,
                )
            })
            .collect()
    }

    /// Reads again the files that changed on disk. A file that became
    /// unusable is reported and its previous certificate kept.
    pub fn reload_changed(&self) {
        let current: Vec<Loaded> = read(&self.loaded).clone();
        for (index, old) in current.iter().enumerate() {
            if modified(&old.settings) == old.modified {
                continue;
            }
            match load(&old.settings) {
                Ok(new) => {
                    tracing::info!(
                        "tls: reloaded {} ({}; valid until {})",
                        new.settings.cert.display(),
                        new.names.join(", "),
                        format_time(new.validity.not_after)
                    );
                    warn_if_expiring(&new);
                    let mut loaded = write(&self.loaded);
                    if let Some(slot) = loaded.get_mut(index) {
                        *slot = new;
                    }
                }
                Err(err) => {
                    tracing::error!(
                        "tls: {} changed but cannot be used ({err:#}); still serving the \
                         certificate loaded before",
                        old.settings.cert.display()
                    );
                    // Do not report the same broken file every minute.
                    let mut loaded = write(&self.loaded);
                    if let Some(slot) = loaded.get_mut(index) {
                        slot.modified = modified(&old.settings);
                    }
                }
            }
        }
    }

    /// Checks the files for changes forever.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_changed()).await;
        }
    }
}

fn modified(settings: &CertFileSettings) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(&settings.cert), mtime(&settings.key))
}

fn warn_if_expiring(loaded: &Loaded) {
    let now = SystemTime::now();
    if loaded.validity.not_after < now {
        tracing::warn!(
            "tls: certificate {} expired on {}: clients will refuse it; replace the file",
            loaded.settings.cert.display(),
            format_time(loaded.validity.not_after)
        );
    } else if loaded.validity.not_after < now + Duration::from_secs(14 * 86_400) {
        tracing::warn!(
            "tls: certificate {} expires on {}: replace the file soon",
            loaded.settings.cert.display(),
            format_time(loaded.validity.not_after)
        );
    }
}

fn load(settings: &CertFileSettings) -> Result<Loaded> {
    let context = || {
        format!(
            "certificate {} with key {}",
            settings.cert.display(),
            settings.key.display()
        )
    };
    let modified = modified(settings);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert)
        .with_context(|| format!("cannot read {}", settings.cert.display()))
        .and_then(|certs| {
            certs
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("invalid PEM in {}", settings.cert.display()))
        })
        .with_context(context)?;
    let Some(leaf) = chain.first() else {
        bail!(
            "{} holds no CERTIFICATE block: give the PEM certificate chain, leaf first",
            settings.cert.display()
        );
    };
    let names = dns_names_of(leaf).with_context(context)?;
    if names.is_empty() {
        bail!(
            "{}: the certificate lists no DNS names (subjectAltName), so it cannot serve \
             any server name",
            settings.cert.display()
        );
    }
    let validity = validity_of(leaf).with_context(context)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .with_context(|| {
            format!(
                "cannot read a private key from {} (PEM: PRIVATE KEY, RSA PRIVATE KEY or EC \
                 PRIVATE KEY)",
                settings.key.display()
            )
        })
        .with_context(context)?;
    let key = CertifiedKey::from_der(chain, key, &crypto_provider()).with_context(|| {
        format!(
            "{} does not hold the private key of {} (or the key type is not supported)",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    Ok(Loaded {
        settings: settings.clone(),
        key: Arc::new(key),
        names,
        validity,
        modified,
    })
}
