//! Dashboard sessions: what the browser's cookie holds instead of the admin
//! token.
//!
//! Cookies are not scoped by port, so every app the operator opens on the
//! same host name (`127.0.0.1:<port>`) receives the dashboard's cookie.
//! It therefore carries a random session id, never the token: the id is
//! valid only from the client (IPv4 address or IPv6 /64) that logged in,
//! expires ([`IDLE_TIMEOUT`], [`LIFETIME`]), is forgotten at logout and at
//! restart, and by itself authorizes reading only. A request that changes
//! something must also carry the session's CSRF token in the
//! `X-Sockgate-Csrf` header (which a form cannot send, and a page of
//! another origin cannot read) and come from the admin API's own origin
//! (see [`super::Admin`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::base::locks::lock;
use crate::tenant::conns::client_key;

/// Sessions kept at once; logging in beyond it forgets the oldest. Threat:
/// logins (each needs the token) filling memory.
pub(crate) const MAX_SESSIONS: usize = 64;
/// A session unused for this long is over.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A session is over this long after its login, used or not. Threat: a
/// session id that leaked (to an app on the same host name) staying
/// useful forever.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The name of the dashboard's cookie.
pub(crate) const COOKIE: &str = "sockgate_session";

/// The live sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    /// By SHA-256 of the session id (the id itself is not kept).
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// Sessions created so far (orders them, oldest first).
    created: std::sync::atomic::AtomicU64,
}

struct Session {
    seq: u64,
    csrf: String,
    client: IpAddr,
    created: Instant,
    used: Instant,
}

/// A session presented by a request, as checked.
pub(crate) struct Valid {
    /// The session's CSRF token.
    pub csrf: String,
}

impl Sessions {
    /// Starts a session for a client at `peer` that proved it has the
    /// token; returns its id (for the cookie) and its CSRF token.
    pub(crate) fn create(&self, peer: IpAddr) -> anyhow::Result<(String, String)> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut live = lock(&self.live);
        live.retain(|_, s| s.alive(now));
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.seq).map(|(key, _)| *key)
        {
            live.remove(&oldest);
        }
        live.insert(
            key(&id),
            Session {
                seq: self
                    .created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                csrf: csrf.clone(),
                client: client_key(peer),
                created: now,
                used: now,
            },
        );
        Ok((id, csrf))
    }

    /// The session with id `id`, if it is live and `peer` is the client
    /// that logged in; using it keeps it alive.
    pub(crate) fn check(&self, id: &str, peer: IpAddr) -> Option<Valid> {
        let now = Instant::now();
        let mut live = lock(&self.live);
        let key = key(id);
        let session = live.get_mut(&key)?;
        if !session.alive(now) {
            live.remove(&key);
            return None;
        }
        if session.client != client_key(peer) {
            // (Not a warning: anyone holding a leaked id could flood the log.)
            tracing::debug!(
                "admin: a dashboard session was presented from {peer}, not from the client \
                 that logged in: refused"
            );
            return None;
        }
        session.used = now;
        Some(Valid {
            csrf: session.csrf.clone(),
        })
    }

    /// Ends the session with id `id` (logout).
    pub(crate) fn revoke(&self, id: &str) {
        lock(&self.live).remove(&key(id));
    }
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.used) < IDLE_TIMEOUT && now.duration_since(self.created) < LIFETIME
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// 32 random bytes from the OS, hex.
fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("cannot get random bytes for a session: {err}"))?;
    Ok(crate::state::hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_from_its_client_only_and_until_revoked() {
        let sessions = Sessions::default();
        let home: IpAddr = "127.0.0.1".parse().unwrap();
        let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
        let (id, csrf) = sessions.create(home).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert_eq!(sessions.check(&id, home).unwrap().csrf, csrf);
        assert!(sessions.check(&id, elsewhere).is_none());
        assert!(sessions.check("0".repeat(64).as_str(), home).is_none());
        sessions.revoke(&id);
        assert!(sessions.check(&id, home).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (first, _) = sessions.create(ip).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.create(ip).unwrap();
        }
        assert_eq!(lock(&sessions.live).len(), MAX_SESSIONS);
        assert!(sessions.check(&first, ip).is_none(), "the oldest was kept");
    }
}
