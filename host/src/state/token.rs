//! The admin API's bearer token (`admin-token`): generated on first use,
//! readable only by the gateway's user, replaced when anyone else could
//! have read it.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};

use super::{StateDir, hex};
use crate::base::fsutil::{is_own_file, write_atomic};

impl StateDir {
    /// The admin API's bearer token, generated on first use (32 random
    /// bytes from the OS, hex), readable only by the gateway's user.
    pub(crate) fn admin_token(&self) -> Result<String> {
        let path = self.dir.join("admin-token");
        let trusted = std::fs::symlink_metadata(&path).map(|meta| {
            meta.is_file() && is_own_file(&meta) && meta.permissions().mode() & 0o077 == 0
        });
        if let Ok(false) = trusted {
            // Someone else could know it: it is no secret.
            tracing::warn!(
                "{} was readable or writable by other users, or not the gateway's own: \
                 generating a new admin token",
                path.display()
            );
        }
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() && trusted.unwrap_or(false) => {
                return Ok(token.trim().to_owned());
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|err| anyhow::anyhow!("cannot get random bytes for the admin token: {err}"))?;
        let token = hex(&bytes);
        write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(token)
    }
}
