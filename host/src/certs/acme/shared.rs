//! ACME shared by the gateways of a cluster (`[cluster]`): each name is
//! ordered once, by whichever node takes its lock, and every node serves
//! the result. This floor only says what it needs ([`SharedAcme`]); the
//! cluster floor above implements it on etcd (`cluster/acme.rs`) and feeds
//! back what other nodes did ([`AcmeManager::shared_changed`],
//! [`AcmeManager::learn_challenge`]).
//!
//! The renewal task of a name, in a cluster, before each step:
//! 1. adopts the certificate in the shared store when it is newer than the
//!    one served (another node ordered or renewed it), and the shared
//!    back-off when another node's order failed;
//! 2. when an order is due, takes the name's lock without waiting: a node
//!    that does not get it waits until the holder's certificate, back-off
//!    or lost lock (the holder died) wakes it;
//! 3. inside the lock, looks at the shared store again (the holder before
//!    it may have just finished), orders, and stores the certificate
//!    fenced by the lock, so a holder that lost its lock cannot overwrite
//!    a newer one;
//! 4. publishes its challenge answers through the store and waits until
//!    the other live nodes have them, so that the CA may validate against
//!    any node.
//!
//! With the store unreachable, ACME pauses (a certificate being served
//! stays served) and resumes when it answers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeManager;
use crate::base::locks::lock;
use crate::certs::renewal::{Renewal, Validity};
use crate::certs::store::write_private;
use crate::certs::{certified_key_from_pem, crypto_provider, format_time};

/// The object identifier of the `acmeIdentifier` extension (RFC 8737)
/// that a TLS-ALPN-01 challenge certificate carries.
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Whether this node may order a name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderLock {
    /// This node holds the name's lock; writes made under it carry this
    /// fence (the lock's revision).
    Mine(i64),
    /// Another node holds it (its name), and orders.
    HeldBy(String),
}

/// The shared back-off of a name after failed orders (any node's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedRetry {
    /// Consecutive failed orders.
    pub failures: u32,
    /// No order before this time (seconds since the Unix epoch).
    pub retry_at_unix: u64,
}

/// A challenge answer, as nodes share it: what each needs to answer the
/// CA itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ChallengeAnswer {
    /// HTTP-01: serve `key_authorization` under
    /// `/.well-known/acme-challenge/<token>`.
    Http01 {
        /// The challenge's token.
        token: String,
        /// The key authorization to answer with.
        key_authorization: String,
    },
    /// TLS-ALPN-01: present, for `acme-tls/1` hellos naming `name`, a
    /// certificate whose `acmeIdentifier` is `digest` (the SHA-256 of the
    /// key authorization, 32 bytes, hex).
    TlsAlpn01 {
        /// The name validated.
        name: String,
        /// SHA-256 of the key authorization, hex.
        digest: String,
    },
}

impl ChallengeAnswer {
    /// The answer's identity among those published at once: its token or
    /// its name (characters safe in a store key).
    pub fn id(&self) -> String {
        match self {
            ChallengeAnswer::Http01 { token, .. } => format!("http-01-{token}"),
            ChallengeAnswer::TlsAlpn01 { name, .. } => format!("tls-alpn-01-{name}"),
        }
    }
}

/// What a cluster shares about one CA's certificates. Implemented by the
/// cluster floor on etcd; every method may fail when the store is
/// unreachable, and the renewal task then pauses.
#[async_trait::async_trait]
pub trait SharedAcme: Send + Sync {
    /// The certificate stored for `name` (PEM of key and chain), if any.
    async fn certificate(&self, name: &str) -> Result<Option<String>>;
    /// The shared back-off of `name`, if its last order failed.
    async fn retry(&self, name: &str) -> Result<Option<SharedRetry>>;
    /// Takes `name`'s order lock if nobody holds it; never waits.
    async fn try_lock(&self, name: &str) -> Result<OrderLock>;
    /// Stores `name`'s certificate and clears its back-off, if this node
    /// still holds the lock `fence` names.
    async fn store_certificate(&self, name: &str, pem: &str, fence: i64) -> Result<()>;
    /// Stores `name`'s back-off, if this node still holds the lock.
    async fn store_retry(&self, name: &str, retry: SharedRetry, fence: i64) -> Result<()>;
    /// Releases `name`'s lock, if this node still holds it.
    async fn unlock(&self, name: &str, fence: i64);
    /// Publishes a challenge answer to every node, and returns once every
    /// live node has it (or after a bounded wait, reported).
    async fn publish_challenge(&self, answer: &ChallengeAnswer) -> Result<()>;
    /// Withdraws a published answer.
    async fn withdraw_challenge(&self, answer: &ChallengeAnswer);
}

/// How long a renewal task that could not reach the shared store waits
/// before trying again (unless woken by a change).
const STORE_RETRY: Duration = Duration::from_secs(5);
/// How long a node waiting for another's order looks again regardless
/// (a missed wake-up costs at most this).
const HOLDER_RECHECK: Duration = Duration::from_secs(30);

impl AcmeManager {
    /// Declares that this gateway is in a cluster: renewal tasks wait for
    /// [`share_through`](Self::share_through) before their first order,
    /// so that no node orders on its own while it joins.
    pub fn expect_shared(&self) {
        self.shared_expected
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Shares this CA's certificates through `store` from now on.
    pub fn share_through(&self, store: Arc<dyn SharedAcme>) {
        let _ = self.shared.set(store);
        self.shared_ready.notify_waiters();
        self.shared_changed_all();
    }

    /// The shared store, waiting for it while one is expected; `None`
    /// for a gateway in no cluster.
    pub(super) async fn shared(&self) -> Option<Arc<dyn SharedAcme>> {
        loop {
            let ready = self.shared_ready.notified();
            if let Some(store) = self.shared.get() {
                return Some(store.clone());
            }
            if !self
                .shared_expected
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return None;
            }
            ready.await;
        }
    }

    /// What wakes the renewal task of `name` when the cluster changed
    /// something about it.
    pub(super) fn wake_of(&self, name: &str) -> Arc<tokio::sync::Notify> {
        lock(&self.wakes)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Another node changed something about `name` (its certificate, its
    /// back-off or its lock): its renewal task looks again.
    pub fn shared_changed(&self, name: &str) {
        if let Some(wake) = lock(&self.wakes).get(name) {
            wake.notify_one();
        }
    }

    /// Every renewal task looks again (after the cluster's changes were
    /// re-read: some may have been missed).
    pub fn shared_changed_all(&self) {
        for wake in lock(&self.wakes).values() {
            wake.notify_one();
        }
    }

    /// Answers a challenge another node published (`Some`), or stops
    /// answering it (`None`, with its id).
    pub fn learn_challenge(&self, id: &str, answer: Option<ChallengeAnswer>) {
        match answer {
            Some(ChallengeAnswer::Http01 {
                token,
                key_authorization,
            }) => self.answers.insert_http_01(&token, key_authorization),
            Some(ChallengeAnswer::TlsAlpn01 { name, digest }) => {
                match challenge_certificate(&name, &digest) {
                    Ok(cert) => self.answers.insert_tls_alpn_01(&name, cert),
                    Err(err) => {
                        tracing::error!("acme: cannot answer the challenge for {name}: {err:#}")
                    }
                }
            }
            None => {
                if let Some(token) = id.strip_prefix("http-01-") {
                    self.answers.remove_http_01(token);
                } else if let Some(name) = id.strip_prefix("tls-alpn-01-") {
                    self.answers.remove_tls_alpn_01(name);
                }
            }
        }
    }

    /// Adopts what the cluster has for `name`: a certificate newer than
    /// `current` (deployed and cached in the state directory), and the
    /// shared back-off.
    pub(super) async fn adopt_shared(
        &self,
        store: &dyn SharedAcme,
        name: &str,
        current: &mut Option<Validity>,
        renewal: &mut Renewal,
    ) -> Result<()> {
        if let Some(pem) = store.certificate(name).await? {
            match certified_key_from_pem(pem.as_bytes()) {
                Ok((key, validity))
                    if validity.contains(SystemTime::now())
                        && current.is_none_or(|c| validity.not_after > c.not_after) =>
                {
                    self.deploy(name, key);
                    *current = Some(validity);
                    renewal.succeeded();
                    let path = self.cert_path(name);
                    let saved = tokio::task::spawn_blocking({
                        let path = path.clone();
                        move || write_private(&path, pem.as_bytes())
                    })
                    .await
                    .unwrap_or_else(|err| Err(anyhow::anyhow!("writer panicked: {err}")));
                    tracing::info!(
                        "acme: certificate for {name} taken from the cluster (valid until {}){}",
                        format_time(validity.not_after),
                        match saved {
                            Ok(()) => format!(", cached in {}", path.display()),
                            Err(err) => format!(", not cached ({err:#})"),
                        }
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::error!(
                    "acme: the cluster's certificate for {name} is unusable ({err:#}); it will \
                     be ordered anew"
                ),
            }
        }
        if let Some(retry) = store.retry(name).await? {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(retry.retry_at_unix);
            renewal.adopt_backoff(retry.failures, at);
        }
        Ok(())
    }

    /// Waits for a wake-up of `name` or `at_most`.
    pub(super) async fn idle(wake: &tokio::sync::Notify, at_most: Duration) {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(at_most) => {}
        }
    }
}

/// How long a renewal task pauses after the store failed it.
pub(super) fn store_retry() -> Duration {
    STORE_RETRY
}

/// How long a renewal task waits for another node's order at most.
pub(super) fn holder_recheck() -> Duration {
    HOLDER_RECHECK
}

/// The `acmeIdentifier` of a TLS-ALPN-01 challenge certificate (hex), so
/// that other nodes can make their own.
pub(super) fn acme_identifier_of(cert: &CertifiedKey) -> Result<String> {
    let der = cert
        .cert
        .first()
        .context("an empty challenge certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow::anyhow!("the challenge certificate does not parse: {err}"))?;
    let extension = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .context("the challenge certificate has no acmeIdentifier")?;
    // The extension's value is a DER OCTET STRING of the 32-byte digest.
    match extension.value {
        [0x04, 0x20, digest @ ..] if digest.len() == 32 => Ok(hex(digest)),
        _ => anyhow::bail!("the challenge certificate's acmeIdentifier is malformed"),
    }
}

/// A TLS-ALPN-01 challenge certificate for `name` with `digest` (hex) as
/// its `acmeIdentifier`, on a fresh key.
fn challenge_certificate(name: &str, digest: &str) -> Result<CertifiedKey> {
    let digest = unhex(digest).context("the shared challenge digest is not hex")?;
    anyhow::ensure!(
        digest.len() == 32,
        "the shared challenge digest is not 32 bytes"
    );
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let signing = crypto_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|err| anyhow::anyhow!("cannot load the challenge key: {err}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_tls_alpn_answer_makes_a_certificate_with_the_same_identifier() {
        let digest = hex(&[7u8; 32]);
        let cert = challenge_certificate("app.example.test", &digest).unwrap();
        assert_eq!(acme_identifier_of(&cert).unwrap(), digest);
        assert!(challenge_certificate("app.example.test", "zz").is_err());
        assert!(challenge_certificate("app.example.test", &hex(&[1u8; 31])).is_err());
    }

    #[test]
    fn answers_have_ids_safe_in_a_key_and_round_trip_through_json() {
        let answer = ChallengeAnswer::Http01 {
            token: "tok-EN_1".into(),
            key_authorization: "tok-EN_1.thumb".into(),
        };
        assert_eq!(answer.id(), "http-01-tok-EN_1");
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            serde_json::from_str::<ChallengeAnswer>(&json).unwrap(),
            answer
        );
    }
}
