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
//! names it invents. The routing table says which through [`ServedNames`].
//!
//! Beside them: [`renewal`] (when to order, a plain state machine),
//! [`x509`] (reading certificates and PEM bundles, shared by the three
//! sources), and [`system_roots`] (the client side: the system's trusted
//! roots for the gateway's own outbound TLS).

pub(crate) mod acme;
pub mod dev_ca;
pub(crate) mod files;
pub(crate) mod renewal;
pub mod store;
pub mod system_roots;
pub(crate) mod x509;

pub use x509::{certified_key_from_pem, dns_names_of, format_time, issuer_of, validity_of};

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::base::names::normalize_name;

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
    /// covers need nothing. Call it once the name selects a running app: a
    /// name that does not is refused here, as ACME's renewal task would
    /// stop on it at once (and the dev CA must not issue it).
    pub fn prepare(&self, name: &str) {
        let name = normalize_name(name);
        if self.files.covers(&name) {
            return;
        }
        if !self.serves(&name) && self.source != CertSource::Files {
            tracing::error!(
                "certificates: {name} was prepared before it selects a running app (a bug in \
                 the caller); it gets its certificate at its first TLS handshake"
            );
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
