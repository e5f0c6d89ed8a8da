//! `[tls.acme]` and what it becomes at start: the settings as written
//! ([`AcmeSettings`], [`Challenge`]), checked and turned into a
//! [`PreparedAcme`] (HTTPS client for the CA, state directory, renewal
//! policy) so that a mistake refuses the start. The certificates define
//! their settings here; the configuration composes them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_acme::acme::{LETS_ENCRYPT_PRODUCTION_DIRECTORY, LETS_ENCRYPT_STAGING_DIRECTORY};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AcmeManager;
use crate::certs::ServedNames;
use crate::certs::crypto_provider;
use crate::certs::renewal::RenewalPolicy;
use crate::certs::store::StateDir;

/// How the CA validates control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Challenge {
    /// TLS-ALPN-01 (RFC 8737) on the TLS port: needs nothing but port 443.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01 on the plain-HTTP port (80).
    #[serde(rename = "http-01")]
    Http01,
}

impl Challenge {
    /// The name used by ACME and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// `[tls.acme]`: where and how to order certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// `"letsencrypt"` (default), `"letsencrypt-staging"`, or the URL of any
    /// ACME directory.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Contact addresses for the account (`admin@example.org` or
    /// `mailto:admin@example.org`); optional.
    #[serde(default)]
    pub contact: Vec<String>,
    /// `"tls-alpn-01"` (default) or `"http-01"`.
    #[serde(default)]
    pub challenge: Challenge,
    /// PEM file of extra CA roots to trust when talking to the directory
    /// over HTTPS (a private ACME CA); the public web roots are always
    /// trusted.
    pub directory_ca: Option<PathBuf>,
    /// Renew this many days before expiry; default: once a third of the
    /// lifetime remains.
    pub renew_before_days: Option<u64>,
    /// First delay before retrying a failed order, in seconds (doubles up
    /// to `backoff_max_secs`).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_secs: u64,
    /// Longest delay between retries, in seconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
}

fn default_directory() -> String {
    "letsencrypt".to_owned()
}

fn default_backoff_initial() -> u64 {
    RenewalPolicy::default().backoff_initial.as_secs()
}

fn default_backoff_max() -> u64 {
    RenewalPolicy::default().backoff_max.as_secs()
}

impl Default for AcmeSettings {
    fn default() -> Self {
        Self {
            directory: default_directory(),
            contact: Vec::new(),
            challenge: Challenge::default(),
            directory_ca: None,
            renew_before_days: None,
            backoff_initial_secs: default_backoff_initial(),
            backoff_max_secs: default_backoff_max(),
        }
    }
}

impl AcmeSettings {
    /// The directory URL, resolving the presets.
    pub fn directory_url(&self) -> Result<String> {
        match self.directory.as_str() {
            "letsencrypt" => Ok(LETS_ENCRYPT_PRODUCTION_DIRECTORY.to_owned()),
            "letsencrypt-staging" => Ok(LETS_ENCRYPT_STAGING_DIRECTORY.to_owned()),
            url if url.starts_with("https://") => Ok(url.to_owned()),
            other => bail!(
                "tls.acme.directory `{other}`: use \"letsencrypt\", \"letsencrypt-staging\" \
                 or the https:// URL of an ACME directory"
            ),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        self.directory_url()?;
        if self.backoff_initial_secs == 0 || self.backoff_max_secs < self.backoff_initial_secs {
            bail!(
                "tls.acme: backoff_initial_secs must be at least 1 and backoff_max_secs at \
                 least backoff_initial_secs"
            );
        }
        for contact in &self.contact {
            let address = contact.strip_prefix("mailto:").unwrap_or(contact);
            if !address.contains('@') || address.chars().any(char::is_whitespace) {
                bail!("tls.acme.contact `{contact}` is not an email address");
            }
        }
        Ok(())
    }

    fn policy(&self) -> RenewalPolicy {
        RenewalPolicy {
            renew_before: self
                .renew_before_days
                .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
            backoff_initial: Duration::from_secs(self.backoff_initial_secs),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
        }
    }

    fn contacts(&self) -> Vec<String> {
        self.contact
            .iter()
            .map(|c| {
                if c.starts_with("mailto:") {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
    }
}

/// The ACME side of the gateway, before it knows the apps: settings
/// checked, HTTPS client for the CA built, state directory ready. Made at
/// start so that mistakes refuse the start.
pub(crate) struct PreparedAcme {
    /// The directory URL, presets resolved.
    pub(super) directory_url: String,
    /// Contact URLs for the account (`mailto:` added).
    pub(super) contact: Vec<String>,
    /// How the CA validates control of a name.
    pub(super) challenge: Challenge,
    /// When to renew and how to back off after failed orders.
    pub(super) policy: RenewalPolicy,
    /// HTTPS client for the CA (public roots and `directory_ca`).
    pub(super) client: Arc<ClientConfig>,
    /// This CA's state directory (`acme/<directory>/`).
    pub(super) dir: PathBuf,
    /// Whether the gateway joins a cluster, which then orders each name
    /// once for every node ([`super::shared`]).
    pub(super) clustered: bool,
}

impl PreparedAcme {
    /// Checks `settings`, reads the extra roots, creates the state
    /// directory for this CA.
    pub(crate) fn new(settings: &AcmeSettings, state: &StateDir) -> Result<Self> {
        settings.validate()?;
        let directory_url = settings.directory_url()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &settings.directory_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .with_context(|| {
                    format!(
                        "tls.acme.directory_ca: cannot read PEM certificates from {}",
                        path.display()
                    )
                })?;
            if certs.is_empty() {
                bail!(
                    "tls.acme.directory_ca: {} holds no CERTIFICATE block",
                    path.display()
                );
            }
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!(
                        "tls.acme.directory_ca: unusable certificate in {}",
                        path.display()
                    )
                })?;
            }
        }
        let client = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .context("TLS client for the ACME CA")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let dir = state.private_dir(Path::new("acme").join(directory_dir_name(&directory_url)))?;
        crate::certs::store::private_dir(&dir.join("certs"))?;
        Ok(Self {
            directory_url,
            contact: settings.contacts(),
            challenge: settings.challenge,
            policy: settings.policy(),
            client: Arc::new(client),
            dir,
            clustered: false,
        })
    }

    /// Marks the gateway as joining a cluster: no order before the
    /// cluster's store is set ([`AcmeManager::share_through`]).
    pub(crate) fn in_cluster(mut self, clustered: bool) -> Self {
        self.clustered = clustered;
        self
    }

    /// Starts managing certificates for the names `names` serves (see
    /// [`AcmeManager::manage`]).
    pub(crate) fn start(self, names: Arc<dyn ServedNames>) -> Arc<AcmeManager> {
        let clustered = self.clustered;
        let manager = Arc::new(AcmeManager::new(self, names));
        if clustered {
            manager.expect_shared();
        }
        manager
    }
}

/// `acme-v02.api.letsencrypt.org-1a2b3c4d`: readable, and distinct per URL.
fn directory_dir_name(url: &str) -> String {
    let host: String = url
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(url.as_bytes());
    let id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_presets_and_urls() {
        let mut s = AcmeSettings::default();
        assert_eq!(
            s.directory_url().unwrap(),
            LETS_ENCRYPT_PRODUCTION_DIRECTORY
        );
        s.directory = "letsencrypt-staging".into();
        assert_eq!(s.directory_url().unwrap(), LETS_ENCRYPT_STAGING_DIRECTORY);
        s.directory = "https://127.0.0.1:14000/dir".into();
        assert_eq!(s.directory_url().unwrap(), "https://127.0.0.1:14000/dir");
        s.directory = "http://insecure/dir".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn contacts_get_mailto_and_are_checked() {
        let s = AcmeSettings {
            contact: vec!["a@example.org".into(), "mailto:b@example.org".into()],
            ..AcmeSettings::default()
        };
        assert_eq!(
            s.contacts(),
            ["mailto:a@example.org", "mailto:b@example.org"]
        );
        s.validate().unwrap();
        let bad = AcmeSettings {
            contact: vec!["nobody".into()],
            ..AcmeSettings::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn each_directory_gets_its_own_state_directory() {
        let a = directory_dir_name(LETS_ENCRYPT_PRODUCTION_DIRECTORY);
        let b = directory_dir_name(LETS_ENCRYPT_STAGING_DIRECTORY);
        assert!(a.starts_with("acme-v02.api.letsencrypt.org-"), "{a}");
        assert_ne!(a, b);
        assert!(directory_dir_name("https://127.0.0.1:14000/dir").starts_with("127.0.0.1-"));
    }
}
