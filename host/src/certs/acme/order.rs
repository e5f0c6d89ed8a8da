//! One order's flow against the CA (RFC 8555 section 7): directory,
//! account (its key kept in the state directory), new order, one
//! authorization per identifier answered through the configured challenge,
//! finalization with a fresh key, download of the chain; the polls while
//! the CA validates or issues, and the immediate retry of an order the CA
//! answered with `badNonce`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_acme::acme::{Account, AuthStatus, Directory, Order, OrderStatus};

use super::problem::CaProblem;
use super::shared::acme_identifier_of;
use super::{ACCOUNT_KEY_FILE, AcmeManager, Challenge, ChallengeAnswer, SharedAcme};
use crate::base::backoff::ExponentialBackoff;
use crate::certs::store::{read_optional, write_private};

/// Polling of authorizations and orders while the CA validates or issues:
/// first delay 250 ms, doubling up to 5 s; no jitter (one order's polls
/// are its own).
const POLL: ExponentialBackoff =
    ExponentialBackoff::new(Duration::from_millis(250), Duration::from_secs(5));
/// Polls before an authorization or order is given up (about 3 minutes at
/// the maximum delay).
const POLL_ATTEMPTS: u32 = 40;
/// A `badNonce` answer (the CA rejected a replay nonce, which RFC 8555 lets
/// it do at any time) is retried at once, this many times.
const BAD_NONCE_RETRIES: u32 = 3;

impl AcmeManager {
    /// [`order`](Self::order), again at once while the CA answers with a
    /// problem that asks for that ([`AcmeProblem::retry_at_once`]:
    /// `badNonce`), at most [`BAD_NONCE_RETRIES`] times.
    ///
    /// [`AcmeProblem::retry_at_once`]: super::problem::AcmeProblem::retry_at_once
    pub(super) async fn order_retrying_bad_nonce(
        &self,
        name: &str,
        store: Option<&dyn SharedAcme>,
    ) -> Result<String> {
        let mut attempt = 0;
        loop {
            match self.order(name, store).await {
                Err(err)
                    if attempt < BAD_NONCE_RETRIES
                        && CaProblem::in_chain(&err).is_some_and(|p| p.kind.retry_at_once()) =>
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
    /// the new private key followed by the chain. In a cluster, `store`
    /// shares the challenge answers with the other nodes.
    async fn order(&self, name: &str, store: Option<&dyn SharedAcme>) -> Result<String> {
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
            self.authorize(&account, auth_url, name, store).await?;
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
        for attempt in 0..POLL_ATTEMPTS {
            let order = account
                .order(&self.prepared.client, order_url)
                .await
                .context("cannot read the order")?;
            if !waiting(&order.status) {
                return Ok(order);
            }
            tokio::time::sleep(POLL.delay(attempt)).await;
        }
        bail!("the CA did not finish the order in time")
    }

    /// Has the CA validate `name` for the authorization at `auth_url`; in
    /// a cluster, every live node answers the challenge too, since the CA
    /// may reach any of them.
    async fn authorize(
        &self,
        account: &Account,
        auth_url: &str,
        name: &str,
        store: Option<&dyn SharedAcme>,
    ) -> Result<()> {
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
        let (challenge_url, _published, answer) = match self.prepared.challenge {
            Challenge::TlsAlpn01 => {
                let (challenge, cert) = account
                    .tls_alpn_01(&auth.challenges, name.to_owned())
                    .context(
                        "the CA offers no tls-alpn-01 challenge (try challenge = \"http-01\")",
                    )?;
                let answer = ChallengeAnswer::TlsAlpn01 {
                    name: name.to_owned(),
                    digest: acme_identifier_of(&cert)?,
                };
                let published = self.answers.publish_tls_alpn_01(name, cert);
                (challenge.url.clone(), published, answer)
            }
            Challenge::Http01 => {
                let (challenge, key_auth) = account.http_01(&auth.challenges).context(
                    "the CA offers no http-01 challenge (try challenge = \"tls-alpn-01\")",
                )?;
                let answer = ChallengeAnswer::Http01 {
                    token: challenge.token.clone(),
                    key_authorization: key_auth.clone(),
                };
                let published = self.answers.publish_http_01(&challenge.token, key_auth);
                (challenge.url.clone(), published, answer)
            }
        };
        let Some(store) = store else {
            return self.validate(account, auth_url, name, &challenge_url).await;
        };
        store
            .publish_challenge(&answer)
            .await
            .context("cannot share the challenge answer with the other nodes")?;
        let validated = self.validate(account, auth_url, name, &challenge_url).await;
        store.withdraw_challenge(&answer).await;
        validated
    }

    /// Asks the CA to validate the challenge at `challenge_url` (its answer
    /// published) and polls the authorization until it is decided.
    async fn validate(
        &self,
        account: &Account,
        auth_url: &str,
        name: &str,
        challenge_url: &str,
    ) -> Result<()> {
        let client = &self.prepared.client;
        account
            .challenge(client, challenge_url)
            .await
            .context("the CA refused to start the challenge")?;
        for attempt in 0..POLL_ATTEMPTS {
            tokio::time::sleep(POLL.delay(attempt)).await;
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

/// An order's status and the CA's explanation, for the log.
fn describe_order(order: &Order) -> String {
    let detail = order
        .error
        .as_ref()
        .and_then(|p| p.detail.clone())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    format!("{:?}{detail}", order.status)
}
