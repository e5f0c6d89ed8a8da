//! Certificates from an ACME CA (RFC 8555): Let's Encrypt, its staging
//! environment, or any directory URL. The protocol messages come from
//! `rustls-acme`'s `acme` module; this module drives them:
//!
//! - one order per name (an app under a base domain, or a custom domain),
//!   started when the app appears, validated through TLS-ALPN-01 (answered
//!   by the TLS listener) or HTTP-01 (answered by the plain-HTTP listener);
//! - renewal well before expiry and exponential back-off after failures
//!   ([`super::renewal`]), serving the previous certificate meanwhile;
//! - the account key and every certificate kept in the state directory
//!   (`acme/<directory>/`), so a restart serves at once and orders nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::sign::CertifiedKey;
use rustls_acme::acme::{
    Account, AuthStatus, Directory, LETS_ENCRYPT_PRODUCTION_DIRECTORY,
    LETS_ENCRYPT_STAGING_DIRECTORY, Order, OrderStatus,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::ServedNames;
use super::renewal::{Renewal, RenewalPolicy, Step, Validity};
use super::store::{StateDir, read_optional, write_private};
use super::{certified_key_from_pem, crypto_provider, format_time};
use crate::base::locks::lock;

/// Upper bound on one order, from directory discovery to the downloaded
/// certificate: a CA that stops answering must not stall renewals forever.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Orders running at once; more names wait their turn (bounds the load on
/// the CA and on this gateway when many apps appear at once).
const CONCURRENT_ORDERS: usize = 4;
/// The longest a renewal task sleeps before looking again (clock changes,
/// suspended machines, apps that went away).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Polling of authorizations and orders while the CA validates or issues:
/// first delay, doubling up to the maximum.
const POLL_FIRST: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);
/// Polls before an authorization or order is given up (about 3 minutes at
/// the maximum delay).
const POLL_ATTEMPTS: u32 = 40;
/// The account key's file in the CA's directory (certificates live in
/// `certs/` beside it).
const ACCOUNT_KEY_FILE: &str = "account-key.pem";
/// A `badNonce` answer (the CA rejected a replay nonce, which RFC 8555 lets
/// it do at any time) is retried at once, this many times.
const BAD_NONCE_RETRIES: u32 = 3;

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
pub struct PreparedAcme {
    directory_url: String,
    contact: Vec<String>,
    challenge: Challenge,
    policy: RenewalPolicy,
    client: Arc<ClientConfig>,
    dir: PathBuf,
}

impl PreparedAcme {
    /// Checks `settings`, reads the extra roots, creates the state
    /// directory for this CA.
    pub fn new(settings: &AcmeSettings, state: &StateDir) -> Result<Self> {
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
        super::store::private_dir(&dir.join("certs"))?;
        Ok(Self {
            directory_url,
            contact: settings.contacts(),
            challenge: settings.challenge,
            policy: settings.policy(),
            client: Arc::new(client),
            dir,
        })
    }

    /// Starts managing certificates for the names `names` serves (see
    /// [`AcmeManager::manage`]).
    pub fn start(self, names: Arc<dyn ServedNames>) -> Arc<AcmeManager> {
        Arc::new(AcmeManager {
            prepared: self,
            names,
            certs: RwLock::new(HashMap::new()),
            managed: Mutex::new(HashSet::new()),
            tls_alpn: Mutex::new(HashMap::new()),
            http01: Mutex::new(HashMap::new()),
            account_key: tokio::sync::Mutex::new(None),
            orders: Semaphore::new(CONCURRENT_ORDERS),
        })
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

/// Certificates ordered from one ACME CA, with their renewals.
pub struct AcmeManager {
    prepared: PreparedAcme,
    /// Which names select a running app (the routing table).
    names: Arc<dyn ServedNames>,
    /// The certificate served for each name.
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Names with a renewal task.
    managed: Mutex<HashSet<String>>,
    /// TLS-ALPN-01 challenge certificates by name, while validated.
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token, while validated.
    http01: Mutex<HashMap<String, String>>,
    /// The account key (PKCS#8), loaded or created on first use.
    account_key: tokio::sync::Mutex<Option<Vec<u8>>>,
    orders: Semaphore,
}

impl AcmeManager {
    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.prepared.directory_url
    }

    /// The challenge type used.
    pub fn challenge(&self) -> Challenge {
        self.prepared.challenge
    }

    /// Where certificates for this CA are stored.
    pub fn dir(&self) -> &Path {
        &self.prepared.dir
    }

    /// The certificate currently served for `name`.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The TLS-ALPN-01 challenge certificate for `name`, while validated.
    pub fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn).get(name).cloned()
    }

    /// The HTTP-01 key authorization for `token`, while validated.
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    /// Starts serving and renewing a certificate for `name` (normalized),
    /// unless that is already under way: the stored certificate is
    /// deployed at once if there is one, and a task orders and renews.
    /// Must be called within a tokio runtime.
    pub fn manage(self: &Arc<Self>, name: &str) {
        if !lock(&self.managed).insert(name.to_owned()) {
            return;
        }
        let stored = self.load_stored(name);
        tokio::spawn(self.clone().run(name.to_owned(), stored));
    }

    /// Where the certificate of `name` is kept: `certs/<name>.pem`, in a
    /// directory of its own, so that no name (a custom domain called
    /// `account-key`, say) can map onto the account key's file.
    fn cert_path(&self, name: &str) -> PathBuf {
        self.prepared.dir.join("certs").join(format!("{name}.pem"))
    }

    /// Deploys the stored certificate of `name`, if there is a usable one
    /// (in `certs/`, or where versions before it kept them).
    fn load_stored(&self, name: &str) -> Option<Validity> {
        let legacy = self.prepared.dir.join(format!("{name}.pem"));
        let mut found = None;
        for path in [self.cert_path(name), legacy] {
            if path.file_name() == Some(std::ffi::OsStr::new(ACCOUNT_KEY_FILE)) {
                continue;
            }
            match read_optional(&path) {
                Ok(Some(pem)) => {
                    found = Some((path, pem));
                    break;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!("acme: {err:#}; ordering a new certificate for {name}");
                    return None;
                }
            }
        }
        let (path, pem) = found?;
        match certified_key_from_pem(&pem) {
            Ok((key, validity)) if validity.contains(SystemTime::now()) => {
                self.deploy(name, key);
                tracing::info!(
                    "acme: certificate for {name} loaded from {} (valid until {})",
                    path.display(),
                    format_time(validity.not_after)
                );
                Some(validity)
            }
            Ok(_) => {
                tracing::info!(
                    "acme: stored certificate for {name} in {} is not valid now; ordering a \
                     new one",
                    path.display()
                );
                None
            }
            Err(err) => {
                tracing::error!(
                    "acme: stored certificate {} is unusable ({err:#}); ordering a new one",
                    path.display()
                );
                None
            }
        }
    }

    fn deploy(&self, name: &str, key: CertifiedKey) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(key));
    }

    /// Whether `name` still selects a running app.
    fn wanted(&self, name: &str) -> bool {
        self.names.serves(name)
    }

    /// Orders, renews and retries for one name until its app goes away.
    async fn run(self: Arc<Self>, name: String, mut current: Option<Validity>) {
        let mut renewal = Renewal::new(self.prepared.policy);
        if let Some(v) = &current {
            tracing::info!(
                "acme: renewal of {name} due at {}",
                format_time(renewal.renew_at(v))
            );
        }
        loop {
            if !self.wanted(&name) {
                tracing::info!("acme: {name} no longer names an app; its renewals stop");
                lock(&self.managed).remove(&name);
                return;
            }
            if let Step::Wait(wait) = renewal.next(SystemTime::now(), current.as_ref()) {
                tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                continue;
            }
            let Ok(_permit) = self.orders.acquire().await else {
                return;
            };
            tracing::info!(
                "acme: ordering a certificate for {name} from {} ({})",
                self.prepared.directory_url,
                self.prepared.challenge.as_str()
            );
            let result = tokio::time::timeout(ORDER_TIMEOUT, self.order_retrying_bad_nonce(&name))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no certificate after {ORDER_TIMEOUT:?}")));
            match result.and_then(|pem| {
                let (key, validity) =
                    certified_key_from_pem(pem.as_bytes()).context("the issued certificate")?;
                Ok((pem, key, validity))
            }) {
                Ok((pem, key, validity)) => {
                    renewal.succeeded();
                    current = Some(validity);
                    self.deploy(&name, key);
                    let path = self.cert_path(&name);
                    let saved = {
                        let path = path.clone();
                        tokio::task::spawn_blocking(move || write_private(&path, pem.as_bytes()))
                            .await
                            .unwrap_or_else(|err| Err(anyhow!("writer panicked: {err}")))
                    };
                    match saved {
                        Ok(()) => tracing::info!(
                            "acme: certificate for {name} issued (valid until {}), saved to {}; \
                             renewal due at {}",
                            format_time(validity.not_after),
                            path.display(),
                            format_time(renewal.renew_at(&validity))
                        ),
                        Err(err) => tracing::error!(
                            "acme: certificate for {name} issued and served, but not saved \
                             ({err:#}): a restart will order it again"
                        ),
                    }
                }
                Err(err) => {
                    let delay = renewal.failed(SystemTime::now());
                    let serving = match current.filter(|v| v.contains(SystemTime::now())) {
                        Some(v) => format!(
                            "still serving the current certificate (valid until {})",
                            format_time(v.not_after)
                        ),
                        None => "no certificate to serve meanwhile".to_owned(),
                    };
                    tracing::warn!(
                        "acme: order for {name} failed (attempt {}): {}; {serving}; \
                         retrying in {}s",
                        renewal.failures(),
                        error_text(&err),
                        delay.as_secs()
                    );
                }
            }
        }
    }

    async fn order_retrying_bad_nonce(&self, name: &str) -> Result<String> {
        let mut attempt = 0;
        loop {
            match self.order(name).await {
                Err(err)
                    if attempt < BAD_NONCE_RETRIES && format!("{err:#}").contains("badNonce") =>
                {
                    attempt += 1;
                    tracing::debug!("acme: {name}: the CA rejected a nonce; retrying");
                }
                result => return result,
            }
        }
    }

    /// The account key, loaded from the state directory or created and
    /// stored there.
    async fn account_key(&self) -> Result<Vec<u8>> {
        let mut slot = self.account_key.lock().await;
        if let Some(key) = &*slot {
            return Ok(key.clone());
        }
        let path = self.prepared.dir.join(ACCOUNT_KEY_FILE);
        let key = match read_optional(&path)? {
            Some(pem) => pem::parse(&pem)
                .with_context(|| format!("{} is not a PEM private key", path.display()))?
                .into_contents(),
            None => {
                let key = Account::generate_key_pair();
                let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key.clone()));
                write_private(&path, pem.as_bytes())?;
                tracing::info!("acme: new account key stored in {}", path.display());
                key
            }
        };
        *slot = Some(key.clone());
        Ok(key)
    }

    /// One order for `name`, from the directory to the certificate: PEM of
    /// the new private key followed by the chain.
    async fn order(&self, name: &str) -> Result<String> {
        let client = &self.prepared.client;
        let url = &self.prepared.directory_url;
        let directory = Directory::discover(client, url)
            .await
            .with_context(|| format!("cannot read the ACME directory {url}"))?;
        let key = self.account_key().await?;
        let account = Account::create_with_keypair(client, directory, &self.prepared.contact, &key)
            .await
            .context("cannot register the ACME account")?;
        let (order_url, order) = account
            .new_order(client, vec![name.to_owned()])
            .await
            .context("the CA refused the order")?;
        for auth_url in &order.authorizations {
            self.authorize(&account, auth_url, name).await?;
        }
        let mut order = self
            .poll_order(&account, &order_url, |s| *s == OrderStatus::Pending)
            .await?;
        if order.status == OrderStatus::Ready {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(vec![name.to_owned()])?;
            params.distinguished_name = DistinguishedName::new();
            let csr = params.serialize_request(&key)?;
            account
                .finalize(client, &order.finalize, csr.der())
                .await
                .context("the CA refused to finalize the order")?;
            order = self
                .poll_order(&account, &order_url, |s| {
                    matches!(s, OrderStatus::Ready | OrderStatus::Processing)
                })
                .await?;
            if let OrderStatus::Valid { certificate } = &order.status {
                let chain = account
                    .certificate(client, certificate)
                    .await
                    .context("cannot download the certificate")?;
                return Ok(format!("{}{chain}", key.serialize_pem()));
            }
        }
        bail!("the order ended {}", describe_order(&order))
    }

    /// Polls `order_url` while `waiting(status)` holds.
    async fn poll_order(
        &self,
        account: &Account,
        order_url: &str,
        waiting: impl Fn(&OrderStatus) -> bool,
    ) -> Result<Order> {
        let mut delay = POLL_FIRST;
        for _ in 0..POLL_ATTEMPTS {
            let order = account
                .order(&self.prepared.client, order_url)
                .await
                .context("cannot read the order")?;
            if !waiting(&order.status) {
                return Ok(order);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(POLL_MAX);
        }
        bail!("the CA did not finish the order in time")
    }

    /// Has the CA validate `name` for the authorization at `auth_url`.
    async fn authorize(&self, account: &Account, auth_url: &str, name: &str) -> Result<()> {
        let client = &self.prepared.client;
        let auth = account
            .auth(client, auth_url)
            .await
            .context("cannot read the authorization")?;
        match auth.status {
            AuthStatus::Valid => return Ok(()),
            AuthStatus::Pending => {}
            other => bail!("the authorization for {name} is {other:?}"),
        }
        // The challenge answer is published for the listeners until this
        // function returns, whatever the outcome.
        let (challenge_url, answer) = match self.prepared.challenge {
            Challenge::TlsAlpn01 => {
                let (challenge, cert) = account
                    .tls_alpn_01(&auth.challenges, name.to_owned())
                    .context(
                        "the CA offers no tls-alpn-01 challenge (try challenge = \"http-01\")",
                    )?;
                lock(&self.tls_alpn).insert(name.to_owned(), Arc::new(cert));
                (challenge.url.clone(), Answer::TlsAlpn01(name.to_owned()))
            }
            Challenge::Http01 => {
                let (challenge, key_auth) = account.http_01(&auth.challenges).context(
                    "the CA offers no http-01 challenge (try challenge = \"tls-alpn-01\")",
                )?;
                lock(&self.http01).insert(challenge.token.clone(), key_auth);
                (
                    challenge.url.clone(),
                    Answer::Http01(challenge.token.clone()),
                )
            }
        };
        let _published = Published {
            manager: self,
            answer,
        };
        account
            .challenge(client, &challenge_url)
            .await
            .context("the CA refused to start the challenge")?;
        let mut delay = POLL_FIRST;
        for _ in 0..POLL_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(POLL_MAX);
            let auth = account
                .auth(client, auth_url)
                .await
                .context("cannot read the authorization")?;
            match auth.status {
                AuthStatus::Pending => {}
                AuthStatus::Valid => return Ok(()),
                other => {
                    let detail = auth
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .filter_map(|p| p.detail.clone())
                        .collect::<Vec<_>>()
                        .join("; ");
                    bail!(
                        "the CA could not validate {name} through {} ({other:?}): {detail}",
                        self.prepared.challenge.as_str()
                    );
                }
            }
        }
        bail!("the CA did not validate {name} in time")
    }
}

/// A published challenge answer.
enum Answer {
    /// The challenge certificate for this name.
    TlsAlpn01(String),
    /// The key authorization for this token.
    Http01(String),
}

/// Withdraws a published challenge answer when dropped.
struct Published<'a> {
    manager: &'a AcmeManager,
    answer: Answer,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        match &self.answer {
            Answer::TlsAlpn01(name) => {
                lock(&self.manager.tls_alpn).remove(name);
            }
            Answer::Http01(token) => {
                lock(&self.manager.http01).remove(token);
            }
        }
    }
}

/// An error and its causes on one line, leaving out causes that the
/// message before already quotes (the ACME client's errors embed theirs).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn describe_order(order: &Order) -> String {
    let detail = order
        .error
        .as_ref()
        .and_then(|p| p.detail.clone())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    format!("{:?}{detail}", order.status)
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
