//! Certificates for the TLS listener, from three sources behind one
//! resolver ([`Certificates`]):
//!
//! - [`files`]: static PEM certificate and key files, each serving the DNS
//!   names its certificate lists (wildcards included). A name a file covers
//!   always gets that file's certificate.
//! - [`acme`]: certificates ordered from an ACME CA (Let's Encrypt or any
//!   directory URL), one order per app name, validated through TLS-ALPN-01
//!   on the TLS port or HTTP-01 on the plain-HTTP port, renewed well before
//!   expiry, persisted in the state directory ([`store`]).
//! - [`dev_ca`]: a local development CA that issues certificates for app
//!   names on the fly; its root is printed by `sockgate dev-ca`.
//!
//! Only names that select a running app get a certificate from ACME or the
//! dev CA: a client cannot make the gateway order or issue certificates for
//! names it invents.

pub mod acme;
pub mod dev_ca;
pub mod files;
pub mod renewal;
pub mod store;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::base::names::normalize_name;
use renewal::Validity;

/// Where the certificates for app names come from (names that no static
/// file covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    /// Ordered from an ACME CA (`[tls.acme]`).
    #[default]
    Acme,
    /// Issued by the local development CA.
    DevCa,
    /// Only the static files (`[[tls.certificate]]`).
    Files,
}

impl CertSource {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::DevCa => "dev-ca",
            CertSource::Files => "files",
        }
    }
}

/// The crypto provider used for every TLS configuration (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The validity period of a DER certificate.
pub fn validity_of(der: &[u8]) -> Result<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow!("cannot parse the certificate: {err}"))?;
    let secs = |t: i64| {
        let secs = u64::try_from(t).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(Validity {
        not_before: secs(cert.validity().not_before.timestamp()),
        not_after: secs(cert.validity().not_after.timestamp()),
    })
}

/// The DNS names (subjectAltName) of a DER certificate, lowercase.
pub fn dns_names_of(der: &[u8]) -> Result<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow!("cannot parse the certificate: {err}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| anyhow!("invalid subjectAltName extension: {err}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(normalize_name(dns)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Formats a time as RFC 3339 (UTC, seconds), for logs.
pub fn format_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t}"))
}

/// Which server names the gateway serves now: a name gets a certificate
/// from ACME or the dev CA only while it selects a running app. The
/// routing table ([`crate::apps::route::Router`]) answers; certificates
/// never read it themselves.
pub trait ServedNames: Send + Sync {
    /// Whether `server_name` selects a running app.
    fn serves(&self, server_name: &str) -> bool;
}

/// The one certificate resolver of the TLS listener: static files first,
/// then the configured source for names that select a running app.
pub struct Certificates {
    names: Arc<dyn ServedNames>,
    source: CertSource,
    files: Arc<files::StaticCerts>,
    acme: Option<Arc<acme::AcmeManager>>,
    dev_ca: Option<Arc<dev_ca::DevCa>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Assembles the resolver. `acme` must be set for [`CertSource::Acme`]
    /// and `dev_ca` for [`CertSource::DevCa`].
    pub fn new(
        names: Arc<dyn ServedNames>,
        source: CertSource,
        files: Arc<files::StaticCerts>,
        acme: Option<Arc<acme::AcmeManager>>,
        dev_ca: Option<Arc<dev_ca::DevCa>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            names,
            source,
            files,
            acme,
            dev_ca,
        })
    }

    /// The configured source for names no static file covers.
    pub fn source(&self) -> CertSource {
        self.source
    }

    /// The ACME manager, when the source is ACME.
    pub fn acme(&self) -> Option<&Arc<acme::AcmeManager>> {
        self.acme.as_ref()
    }

    /// The development CA, when the source is the dev CA.
    pub fn dev_ca(&self) -> Option<&Arc<dev_ca::DevCa>> {
        self.dev_ca.as_ref()
    }

    /// Whether a name selects a running app (and so may get a certificate
    /// from ACME or the dev CA).
    fn serves(&self, name: &str) -> bool {
        self.names.serves(name)
    }

    /// Makes sure `name` (an app's name under a base domain, or a custom
    /// domain) has a certificate or is getting one: starts its ACME order
    /// and renewals, or issues it from the dev CA. Names a static file
    /// covers need nothing.
    pub fn prepare(&self, name: &str) {
        let name = normalize_name(name);
        if self.files.covers(&name) {
            return;
        }
        match self.source {
            CertSource::Acme => {
                if let Some(acme) = &self.acme {
                    acme.manage(&name);
                }
            }
            CertSource::DevCa => {
                if let Some(dev_ca) = &self.dev_ca
                    && let Err(err) = dev_ca.certificate(&name)
                {
                    tracing::error!("dev CA: cannot issue a certificate for {name}: {err:#}");
                }
            }
            CertSource::Files => tracing::warn!(
                "tls: no certificate file covers {name}: TLS clients asking for it will be \
                 refused; add a [[tls.certificate]] for it"
            ),
        }
    }

    /// The certificate for server name `name` (normalized), if there is one
    /// now. For an app name under ACME without a certificate yet, this
    /// starts its order (an app that appeared while the gateway runs).
    pub fn certificate_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(cert) = self.files.get(name) {
            return Some(cert);
        }
        if !self.serves(name) {
            return None;
        }
        match self.source {
            CertSource::Acme => {
                let acme = self.acme.as_ref()?;
                let cert = acme.certificate(name);
                if cert.is_none() {
                    acme.manage(name);
                }
                cert
            }
            CertSource::DevCa => match self.dev_ca.as_ref()?.certificate(name) {
                Ok(cert) => Some(cert),
                Err(err) => {
                    tracing::error!("dev CA: cannot issue a certificate for {name}: {err:#}");
                    None
                }
            },
            CertSource::Files => None,
        }
    }

    /// The TLS-ALPN-01 challenge certificate for `name`, while an ACME
    /// order for it is being validated.
    pub fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.acme.as_ref()?.challenge_certificate(name)
    }

    /// The HTTP-01 key authorization for challenge `token`, while an ACME
    /// order is being validated.
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        self.acme.as_ref()?.http01_key_authorization(token)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = normalize_name(hello.server_name()?);
        if rustls_acme::is_tls_alpn_challenge(&hello) {
            return self.challenge_certificate(&name);
        }
        self.certificate_for(&name)
    }
}

/// Builds a [`CertifiedKey`] from a PEM bundle holding one private key and
/// the certificate chain (leaf first), as the ACME store keeps them.
pub fn certified_key_from_pem(pem: &[u8]) -> Result<(CertifiedKey, Validity)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key = PrivateKeyDer::from_pem_slice(pem).context("no private key in the PEM data")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .context("invalid certificate in the PEM data")?;
    let leaf = chain.first().context("no certificate in the PEM data")?;
    let validity = validity_of(leaf)?;
    let key = CertifiedKey::from_der(chain, key, &crypto_provider())
        .context("the private key does not fit the certificate")?;
    Ok((key, validity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
    }
}
