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

//!
//! Files: [`settings`] (`[tls.acme]` and its checks), `order` (one order's
//! flow and its polls), `challenge` (the answers published while the CA
//! validates), [`problem`] (the CA's problem documents, classified),
//! [`shared`] (one order per name for a cluster of gateways, through a
//! store the cluster floor provides); this file holds the manager, which
//! serves the certificates, and the renewal loop of each name.

mod challenge;
mod order;
pub(crate) mod problem;
pub(crate) mod settings;
pub(crate) mod shared;

pub(crate) use settings::{AcmeSettings, Challenge, PreparedAcme};
pub(crate) use shared::{ChallengeAnswer, OrderLock, SharedAcme, SharedRetry};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use rustls::sign::CertifiedKey;
use tokio::sync::{Notify, Semaphore};

use crate::base::backoff::random_u32;
use crate::base::locks::{lock, read, write};
use crate::certs::ServedNames;
use crate::certs::renewal::{Renewal, Step, Validity};
use crate::certs::store::{read_optional, write_private};
use crate::certs::{certified_key_from_pem, format_time};
use challenge::Answers;

/// Upper bound on one order, from directory discovery to the downloaded
/// certificate: a CA that stops answering must not stall renewals forever.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Orders running at once; more names wait their turn (bounds the load on
/// the CA and on this gateway when many apps appear at once).
const CONCURRENT_ORDERS: usize = 4;
/// The longest a renewal task sleeps before looking again (clock changes,
/// suspended machines, apps that went away).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The account key's file in the CA's directory (certificates live in
/// `certs/` beside it).
const ACCOUNT_KEY_FILE: &str = "account-key.pem";

/// Certificates ordered from one ACME CA, with their renewals.
pub struct AcmeManager {
    prepared: PreparedAcme,
    /// Which names select a running app (the routing table).
    names: Arc<dyn ServedNames>,
    /// The certificate served for each name.
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Names with a renewal task.
    managed: Mutex<HashSet<String>>,
    /// The challenge answers published while the CA validates.
    answers: Answers,
    /// The account key (PKCS#8), loaded or created on first use.
    account_key: tokio::sync::Mutex<Option<Vec<u8>>>,
    /// Bounds the orders running at once ([`CONCURRENT_ORDERS`]).
    orders: Semaphore,
    /// The cluster's store of this CA's certificates, once joined.
    shared: OnceLock<Arc<dyn SharedAcme>>,
    /// Whether a cluster store is coming (renewals wait for it).
    shared_expected: AtomicBool,
    /// Signalled when the store is set.
    shared_ready: Notify,
    /// Wakes each name's renewal task when the cluster changed its
    /// certificate, back-off or lock.
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
}

impl AcmeManager {
    /// The manager of `prepared`'s CA, for the names `names` serves.
    fn new(prepared: PreparedAcme, names: Arc<dyn ServedNames>) -> Self {
        Self {
            prepared,
            names,
            certs: RwLock::new(HashMap::new()),
            managed: Mutex::new(HashSet::new()),
            answers: Answers::default(),
            account_key: tokio::sync::Mutex::new(None),
            orders: Semaphore::new(CONCURRENT_ORDERS),
            shared: OnceLock::new(),
            shared_expected: AtomicBool::new(false),
            shared_ready: Notify::new(),
            wakes: Mutex::default(),
        }
    }

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
        read(&self.certs).get(name).cloned()
    }

    /// The TLS-ALPN-01 challenge certificate for `name`, while validated.
    pub fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.answers.tls_alpn_01(name)
    }

    /// The HTTP-01 key authorization for `token`, while validated.
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        self.answers.http_01(token)
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
        write(&self.certs).insert(name.to_owned(), Arc::new(key));
    }

    /// Whether `name` still selects a running app.
    fn wanted(&self, name: &str) -> bool {
        self.names.serves(name)
    }

    /// Orders, renews and retries for one name until its app goes away;
    /// in a cluster, only while it holds the name's lock, and otherwise
    /// serves what the node that holds it ordered ([`shared`]).
    async fn run(self: Arc<Self>, name: String, mut current: Option<Validity>) {
        let mut renewal = Renewal::new(self.prepared.policy);
        let wake = self.wake_of(&name);
        if let Some(v) = &current {
            tracing::info!(
                "acme: renewal of {name} due at {}",
                format_time(renewal.renew_at(v))
            );
        }
        let mut paused = false;
        loop {
            if !self.wanted(&name) {
                tracing::info!("acme: {name} no longer names an app; its renewals stop");
                lock(&self.managed).remove(&name);
                lock(&self.wakes).remove(&name);
                return;
            }
            let store = self.shared().await;
            if let Some(store) = &store {
                let adopted = self
                    .adopt_shared(store.as_ref(), &name, &mut current, &mut renewal)
                    .await;
                if let Err(err) = adopted {
                    if !std::mem::replace(&mut paused, true) {
                        tracing::warn!(
                            "acme: {name}: the cluster store is unreachable ({}); ordering \
                             paused, the certificate served stays served",
                            error_text(&err)
                        );
                    }
                    Self::idle(&wake, shared::store_retry()).await;
                    continue;
                }
                if std::mem::replace(&mut paused, false) {
                    tracing::info!("acme: {name}: the cluster store answers again");
                }
            }
            if let Step::Wait(wait) = renewal.next(SystemTime::now(), current.as_ref()) {
                Self::idle(&wake, wait.min(MAX_SLEEP)).await;
                continue;
            }
            let Ok(permit) = self.orders.acquire().await else {
                return;
            };
            let fence = match &store {
                None => None,
                Some(store) => match store.try_lock(&name).await {
                    Ok(OrderLock::Mine(fence)) => Some(fence),
                    Ok(OrderLock::HeldBy(node)) => {
                        tracing::info!(
                            "acme: node {node} orders the certificate for {name}; this node \
                             serves it once issued"
                        );
                        drop(permit);
                        Self::idle(&wake, shared::holder_recheck()).await;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!("acme: {name}: cannot take its order lock: {err:#}");
                        drop(permit);
                        Self::idle(&wake, shared::store_retry()).await;
                        continue;
                    }
                },
            };
            if let (Some(store), Some(fence)) = (&store, fence) {
                // Inside the lock: the holder before may have just finished.
                let adopted = self
                    .adopt_shared(store.as_ref(), &name, &mut current, &mut renewal)
                    .await;
                if adopted.is_err()
                    || renewal.next(SystemTime::now(), current.as_ref()) != Step::Order
                {
                    store.unlock(&name, fence).await;
                    continue;
                }
            }
            let outcome = self.order_once(&name, &mut renewal, &mut current).await;
            if let (Some(store), Some(fence)) = (&store, fence) {
                let shared = match &outcome {
                    Ok(pem) => store.store_certificate(&name, pem, fence).await,
                    Err(retry) => store.store_retry(&name, *retry, fence).await,
                };
                if let Err(err) = shared {
                    tracing::error!(
                        "acme: {name}: the outcome of this node's order is not shared ({}): \
                         the other nodes will order again",
                        error_text(&err)
                    );
                }
                store.unlock(&name, fence).await;
            }
        }
    }

    /// One order for `name`, its certificate deployed and saved: the PEM
    /// issued, or the back-off that follows the failure.
    async fn order_once(
        &self,
        name: &str,
        renewal: &mut Renewal,
        current: &mut Option<Validity>,
    ) -> Result<String, SharedRetry> {
        tracing::info!(
            "acme: ordering a certificate for {name} from {} ({})",
            self.prepared.directory_url,
            self.prepared.challenge.as_str()
        );
        let store = self.shared.get().cloned();
        let result = tokio::time::timeout(
            ORDER_TIMEOUT,
            self.order_retrying_bad_nonce(name, store.as_deref()),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("no certificate after {ORDER_TIMEOUT:?}")));
        match result.and_then(|pem| {
            let (key, validity) =
                certified_key_from_pem(pem.as_bytes()).context("the issued certificate")?;
            Ok((pem, key, validity))
        }) {
            Ok((pem, key, validity)) => {
                renewal.succeeded();
                *current = Some(validity);
                self.deploy(name, key);
                let path = self.cert_path(name);
                let saved = {
                    let (path, pem) = (path.clone(), pem.clone());
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
                Ok(pem)
            }
            Err(err) => {
                let now = SystemTime::now();
                let delay = renewal.failed_with_jitter(now, random_u32());
                let serving = match current.filter(|v| v.contains(now)) {
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
                let retry_at = (now + delay)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                Err(SharedRetry {
                    failures: renewal.failures(),
                    retry_at_unix: retry_at.as_secs(),
                })
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
