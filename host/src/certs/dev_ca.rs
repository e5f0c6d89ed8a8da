//! A local development CA: a root certificate kept in the state directory
//! (`dev-ca/root.pem`, its key in `dev-ca/root-key.pem`, both private to the
//! gateway's user) that issues short-lived certificates for app names on
//! the fly. Clients trust the root printed by `sockgate dev-ca`; nothing
//! else trusts it, so it is for development and tests, never production.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::store::{StateDir, private_dir, read_optional, write_private};
use super::{crypto_provider, validity_of};

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
    /// Issued certificates by name, with their expiry. Only names of
    /// running apps are issued (the resolver checks), so this stays small.
    issued: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl DevCa {
    /// The CA kept in `state`'s `dev-ca/` directory, created there if there
    /// is none yet (or if the stored root is about to expire).
    pub fn load_or_create(state: &StateDir) -> Result<Self> {
        let dir = state.private_dir("dev-ca")?;
        Self::load_or_create_in(&dir)
    }

    fn load_or_create_in(dir: &Path) -> Result<Self> {
        private_dir(dir)?;
        let root_path = dir.join("root.pem");
        let key_path = dir.join("root-key.pem");
        let stored = match (read_optional(&root_path)?, read_optional(&key_path)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        if let Some((cert, key)) = stored {
            match Self::from_pem(&root_path, &cert, &key) {
                Ok(Some(ca)) => return Ok(ca),
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
        let mut params = root_params(&name);
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let root = params
            .self_signed(&key)
            .context("cannot create the dev CA root certificate")?;
        // The key first: a root without its key would be unusable.
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&root_path, root.pem().as_bytes())?;
        tracing::info!(
            "dev CA: created a new root `{name}` in {}",
            root_path.display()
        );
        Self::from_pem(
            &root_path,
            root.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )?
        .ok_or_else(|| anyhow!("the new dev CA root is not valid"))
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
        // Leaves name the root by its subject and key identifier, which
        // depend only on these parameters and the key: rebuilding them
        // gives an issuer that matches the stored root.
        let issuer = root_params(&name)
            .self_signed(&key)
            .context("cannot rebuild the dev CA issuer")?;
        Ok(Some(Self {
            root_path: root_path.to_owned(),
            root_pem,
            issuer,
            issuer_key: key,
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

    /// A certificate for `name`, issued now or earlier.
    pub fn certificate(&self, name: &str) -> Result<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
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

fn root_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sockgate");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    // Leaves only, no intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
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
        let ca = DevCa::load_or_create_in(&dir).unwrap();
        let again = DevCa::load_or_create_in(&dir).unwrap();
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
