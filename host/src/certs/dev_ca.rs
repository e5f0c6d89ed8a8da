//! A local development CA: a root certificate kept in the state directory
//! (`dev-ca/root.pem`, its key in `dev-ca/root-key.pem`, both private to the
//! gateway's user) that issues short-lived certificates for app names on
//! the fly. Clients trust the root printed by `sockgate dev-ca`; nothing
//! else trusts it, so it is for development and tests, never production.
//!
//! The root carries name constraints: it can vouch only for names under
//! `localhost`, the configured base domains, the allowed custom domains
//! (`[tls] allowed_domains`) and the configuration's own custom domains.
//! Threat: a client that trusts the root would otherwise trust it for every
//! name (a deployer once got a leaf for `www.google.com`). When the
//! configuration needs a name the stored root does not cover, a new root
//! is made, and clients must trust it instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::store::{StateDir, private_dir, read_optional, write_private};
use super::{crypto_provider, validity_of};
use crate::base::locks::lock;

/// How long the root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A root this close to expiry is replaced (clients must trust the new one).
const ROOT_REPLACE_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How long an issued certificate is valid.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// An issued certificate this close to expiry is issued anew.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(7 * 86_400);
/// Backdating of issued certificates, for clients with a slightly slow clock.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The development CA.
pub struct DevCa {
    root_path: PathBuf,
    root_pem: String,
    /// The root as an issuer (its parameters and key sign the leaves).
    issuer: Certificate,
    issuer_key: KeyPair,
    /// The DNS subtrees the root is constrained to; empty for a root made
    /// before constraints existed (replaced at the next gateway start).
    permitted: Vec<String>,
    /// Issued certificates by name, with their expiry. Only names of
    /// running apps are issued (the resolver checks), so this stays small.
    issued: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl DevCa {
    /// The CA kept in `state`'s `dev-ca/` directory, created there if there
    /// is none yet (or if the stored root is about to expire). `subtrees`:
    /// the DNS names (with everything under them) the gateway serves; a
    /// stored root that does not cover them all is replaced by one that
    /// does. `None` (`sockgate dev-ca` without a configuration) keeps any
    /// stored root, and creates one for `localhost` only.
    pub fn load_or_create(state: &StateDir, subtrees: Option<&[String]>) -> Result<Self> {
        let dir = state.private_dir("dev-ca")?;
        Self::load_or_create_in(&dir, subtrees)
    }

    fn load_or_create_in(dir: &Path, subtrees: Option<&[String]>) -> Result<Self> {
        private_dir(dir)?;
        let wanted = minimal_subtrees(subtrees.unwrap_or(&["localhost".to_owned()]));
        let root_path = dir.join("root.pem");
        let key_path = dir.join("root-key.pem");
        let stored = match (read_optional(&root_path)?, read_optional(&key_path)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        if let Some((cert, key)) = stored {
            match Self::from_pem(&root_path, &cert, &key) {
                Ok(Some(ca)) if subtrees.is_none() || ca.covers_all(&wanted) => return Ok(ca),
                Ok(Some(ca)) => tracing::warn!(
                    "dev CA: the root in {} {}; creating a new root constrained to {} (clients \
                     must trust the new root: see `sockgate dev-ca`)",
                    root_path.display(),
                    if ca.permitted.is_empty() {
                        "has no name constraints".to_owned()
                    } else {
                        format!("covers only {}", ca.permitted.join(", "))
                    },
                    wanted.join(", ")
                ),
                Ok(None) => tracing::warn!(
                    "dev CA: the root in {} expires soon; creating a new one (clients must \
                     trust the new root: see `sockgate dev-ca`)",
                    root_path.display()
                ),
                Err(err) => {
                    return Err(err.context(format!(
                        "the development CA in {} is unusable: remove the directory to \
                         create a new one",
                        dir.display()
                    )));
                }
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .context("cannot generate the dev CA key")?;
        let name = root_name(&key);
        let now = SystemTime::now();
        let mut params = root_params(&name, &wanted);
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let root = params
            .self_signed(&key)
            .context("cannot create the dev CA root certificate")?;
        // The key first: a root without its key would be unusable.
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&root_path, root.pem().as_bytes())?;
        tracing::info!(
            "dev CA: created a new root `{name}` in {}, for names under {}",
            root_path.display(),
            wanted.join(", ")
        );
        Self::from_pem(
            &root_path,
            root.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )?
        .ok_or_else(|| anyhow!("the new dev CA root is not valid"))
    }

    /// Whether the root's constraints cover every name of `subtrees`.
    fn covers_all(&self, subtrees: &[String]) -> bool {
        !self.permitted.is_empty() && subtrees.iter().all(|name| self.permits(name))
    }

    /// Whether the root may vouch for `name`.
    fn permits(&self, name: &str) -> bool {
        self.permitted.is_empty() || self.permitted.iter().any(|tree| within(name, tree))
    }

    /// Rebuilds the CA from its stored files; `None` if the root expires
    /// within [`ROOT_REPLACE_BEFORE`].
    fn from_pem(root_path: &Path, cert: &[u8], key: &[u8]) -> Result<Option<Self>> {
        let root_pem = String::from_utf8(cert.to_vec()).context("root.pem is not text")?;
        let der = pem::parse(cert).context("root.pem is not a PEM certificate")?;
        let validity = validity_of(der.contents())?;
        if validity.not_after < SystemTime::now() + ROOT_REPLACE_BEFORE {
            return Ok(None);
        }
        let key = std::str::from_utf8(key)
            .ok()
            .and_then(|pem| KeyPair::from_pem(pem).ok())
            .context("root-key.pem holds no usable private key")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.contents())
            .map_err(|err| anyhow!("cannot parse root.pem: {err}"))?;
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .context("root.pem has no common name")?
            .to_owned();
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            anyhow::bail!("root-key.pem is not the key of root.pem");
        }
        let permitted: Vec<String> = parsed
            .name_constraints()
            .map_err(|err| anyhow!("invalid name constraints in root.pem: {err}"))?
            .and_then(|ext| ext.value.permitted_subtrees.as_ref())
            .map(|trees| {
                trees
                    .iter()
                    .filter_map(|tree| match tree.base {
                        x509_parser::extensions::GeneralName::DNSName(dns) => {
                            Some(dns.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Leaves name the root by its subject and key identifier, which
        // depend only on these parameters and the key: rebuilding them
        // gives an issuer that matches the stored root.
        let issuer = root_params(&name, &permitted)
            .self_signed(&key)
            .context("cannot rebuild the dev CA issuer")?;
        Ok(Some(Self {
            root_path: root_path.to_owned(),
            root_pem,
            issuer,
            issuer_key: key,
            permitted,
            issued: Mutex::new(HashMap::new()),
        }))
    }

    /// The root certificate, PEM, for clients to trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Where the root certificate is stored.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The DNS subtrees the root is constrained to.
    pub fn permitted(&self) -> &[String] {
        &self.permitted
    }

    /// A certificate for `name`, issued now or earlier; refused for a name
    /// outside the root's constraints (clients would reject it anyway).
    pub fn certificate(&self, name: &str) -> Result<Arc<CertifiedKey>> {
        if !self.permits(name) {
            anyhow::bail!(
                "`{name}` is outside the dev CA root's name constraints ({})",
                self.permitted.join(", ")
            );
        }
        let now = SystemTime::now();
        let mut issued = lock(&self.issued);
        if let Some((cert, not_after)) = issued.get(name)
            && *not_after > now + LEAF_RENEW_BEFORE
        {
            return Ok(cert.clone());
        }
        let (cert, not_after) = self.issue(name, now)?;
        issued.insert(name.to_owned(), (cert.clone(), not_after));
        Ok(cert)
    }

    fn issue(&self, name: &str, now: SystemTime) -> Result<(Arc<CertifiedKey>, SystemTime)> {
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .with_context(|| format!("cannot issue a certificate for `{name}`"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let not_after = now + LEAF_LIFETIME;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer, &self.issuer_key)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified =
            CertifiedKey::from_der(vec![cert.der().clone()], key_der, &crypto_provider())
                .context("cannot use the issued certificate")?;
        Ok((Arc::new(certified), not_after))
    }
}

/// The root's name: fixed text plus a short fingerprint of its key, so that
/// the roots of different machines are told apart in trust stores.
fn root_name(key: &KeyPair) -> String {
    let digest = Sha256::digest(key.public_key_der());
    let id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sockgate development CA {id}")
}

/// `subtrees` without duplicates and without names under another of them,
/// normalized and sorted.
fn minimal_subtrees(subtrees: &[String]) -> Vec<String> {
    let mut names: Vec<String> = subtrees
        .iter()
        .map(|n| crate::base::names::normalize_name(n))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    let all = names.clone();
    names.retain(|name| !all.iter().any(|other| other != name && within(name, other)));
    names
}

/// Whether `name` is `tree` or under it (DNS name constraint semantics).
fn within(name: &str, tree: &str) -> bool {
    name == tree
        || name
            .strip_suffix(tree)
            .is_some_and(|rest| rest.ends_with('.'))
}

fn root_params(name: &str, permitted: &[String]) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sockgate");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    // Leaves only, no intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    if !permitted.is_empty() {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .iter()
                .map(|tree| GeneralSubtree::DnsName(tree.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_kept_and_issued_certificates_chain_to_it() {
        let dir = std::env::temp_dir().join(format!("sockgate-devca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let localhost = ["localhost".to_owned()];
        let ca = DevCa::load_or_create_in(&dir, Some(&localhost)).unwrap();
        let again = DevCa::load_or_create_in(&dir, Some(&localhost)).unwrap();
        assert_eq!(
            ca.root_pem(),
            again.root_pem(),
            "a second start must reuse the root"
        );

        // A leaf issued by the reloaded CA verifies against the stored root.
        let leaf = again.certificate("echo.localhost").unwrap();
        let root = pem::parse(ca.root_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.contents().to_vec().into()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from("echo.localhost").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        // Cached: the same certificate for the same name.
        assert!(Arc::ptr_eq(
            &leaf,
            &again.certificate("echo.localhost").unwrap()
        ));

        // The root vouches for its subtrees only: nothing is issued for
        // other names, and a leaf its key signs anyway is rejected.
        assert_eq!(again.permitted(), ["localhost"]);
        assert!(again.certificate("www.google.com").is_err());
        let mut params = CertificateParams::new(vec!["www.google.com".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let forged = params
            .signed_by(&key, &again.issuer, &again.issuer_key)
            .unwrap();
        let google = rustls::pki_types::ServerName::try_from("www.google.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    forged.der(),
                    &[],
                    &google,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .is_err()
        );

        // A configuration needing another name gets a new root covering it.
        let wider = ["localhost".to_owned(), "sg.test".to_owned()];
        let renewed = DevCa::load_or_create_in(&dir, Some(&wider)).unwrap();
        assert_ne!(renewed.root_pem(), ca.root_pem());
        assert_eq!(renewed.permitted(), ["localhost", "sg.test"]);
        renewed.certificate("chat.sg.test").unwrap();
        // Printing keeps it.
        let printed = DevCa::load_or_create_in(&dir, None).unwrap();
        assert_eq!(printed.root_pem(), renewed.root_pem());
        assert_eq!(
            minimal_subtrees(&["b.a.test".into(), "A.test.".into(), "x.org".into()]),
            ["a.test", "x.org"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
