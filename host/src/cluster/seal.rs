//! Certificates' private keys sealed before they go into etcd, which has
//! no encryption at rest (its data directory and snapshots hold values in
//! the clear): AES-256-GCM under a key derived (HKDF-SHA256) from the
//! cluster's token (`cluster.token_file`), which every node has and etcd
//! never sees. The store key is the associated data, so a sealed value
//! cannot be moved to another name's key.
//!
//! A value is `v1.<nonce, base64>.<ciphertext and tag, base64>`. A node
//! with another token cannot open it and orders its own certificate
//! (reported): rotating the token costs one order per name, nothing more.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};

/// The HKDF salt: fixed, so every node derives the same key.
const SALT: &[u8] = b"sockgate cluster seal v1";
/// What the key is for (HKDF's info): a key for nothing else.
const PURPOSE: &[u8] = b"acme certificates";

/// The sealing key of one cluster.
pub(crate) struct Seal {
    key: LessSafeKey,
}

impl Seal {
    /// The key derived from the cluster's `token`.
    pub(crate) fn new(token: &str) -> Self {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(token.as_bytes());
        let okm = prk
            .expand(&[PURPOSE], &AES_256_GCM)
            .expect("AES-256 key length is valid for HKDF-SHA256");
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes)
            .expect("AES-256 key length is valid for HKDF-SHA256");
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// `plain` sealed for the store key `key`.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|err| anyhow!("no randomness for a nonce: {err}"))?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| anyhow!("sealing failed"))?;
        Ok(format!("v1.{}.{}", B64.encode(nonce), B64.encode(sealed)))
    }

    /// The plain bytes of `value`, read from store key `key`.
    pub(crate) fn open(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        let text = std::str::from_utf8(value).context("a sealed value is text")?;
        let mut parts = text.split('.');
        let (Some("v1"), Some(nonce), Some(sealed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("not a sealed value of this version");
        };
        let nonce: [u8; NONCE_LEN] = B64
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .context("a sealed value's nonce is malformed")?;
        let mut sealed = B64.decode(sealed).context("a sealed value is not base64")?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| {
                anyhow!(
                    "cannot open it: it was sealed with another cluster token (cluster.token_file \
                     differs between nodes?) or altered"
                )
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_values_open_with_the_same_token_and_key_only() {
        let seal = Seal::new(TOKEN);
        let sealed = seal
            .seal("certs/a", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            seal.open("certs/a", sealed.as_bytes()).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        // Another name's key, another token, a flipped byte: refused.
        assert!(seal.open("certs/b", sealed.as_bytes()).is_err());
        let other = Seal::new("another token, 32 characters long");
        assert!(other.open("certs/a", sealed.as_bytes()).is_err());
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(seal.open("certs/a", &altered).is_err());
        assert!(seal.open("certs/a", b"plain text").is_err());
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let seal = Seal::new(TOKEN);
        assert_ne!(
            seal.seal("k", b"same").unwrap(),
            seal.seal("k", b"same").unwrap()
        );
    }
}
