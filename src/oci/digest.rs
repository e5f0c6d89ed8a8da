//! Content digests (`sha256:HEX`): what names every manifest and blob in a
//! registry, and the one check that what arrived is what was named.

use std::fmt;

use anyhow::{Result, bail};
use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest. Other algorithms are refused when parsed:
/// every registry serves sha256, and an unknown algorithm cannot be
/// verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    /// 64 lowercase hexadecimal digits.
    hex: String,
}

impl Digest {
    /// Parses `sha256:` and 64 lowercase hexadecimal digits.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            bail!("`{text}` is not a digest: the form is sha256:HEX");
        };
        if algorithm != "sha256" {
            bail!("`{text}`: only sha256 digests are supported");
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("`{text}`: a sha256 digest is 64 hexadecimal digits (lowercase)");
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let hash = Sha256::digest(bytes);
        Self {
            hex: hash.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Fails unless `bytes` hash to this digest; `what` names them in the
    /// error (a corrupted or tampered blob is never deployed).
    pub(crate) fn verify(&self, bytes: &[u8], what: &str) -> Result<()> {
        let found = Self::of(bytes);
        if found != *self {
            bail!(
                "{what} does not match its digest: expected {self}, the bytes received hash \
                 to {found} (the registry's copy is corrupted or was tampered with)"
            );
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn digests_parse_and_verify() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let digest = Digest::parse(empty).unwrap();
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.to_string(), empty);
        digest.verify(b"", "the blob").unwrap();
        let err = digest.verify(b"x", "the blob").unwrap_err().to_string();
        assert!(err.contains("the blob does not match its digest"), "{err}");
        assert!(Digest::parse(&empty.to_uppercase()).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("md5:abc").is_err());
    }
}
