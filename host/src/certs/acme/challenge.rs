//! The challenge answers published while the CA validates a name: the
//! TLS-ALPN-01 certificate the TLS listener presents for `acme-tls/1`, and
//! the HTTP-01 key authorization the plain-HTTP listener serves under
//! `/.well-known/acme-challenge/<token>`. An answer is published for the
//! duration of one authorization and withdrawn when its [`Published`]
//! guard drops, whatever the outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

use crate::base::locks::lock;

/// The answers published right now.
#[derive(Default)]
pub(super) struct Answers {
    /// TLS-ALPN-01 challenge certificates by name, while validated.
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token, while validated.
    http01: Mutex<HashMap<String, String>>,
}

impl Answers {
    /// The TLS-ALPN-01 challenge certificate for `name`, while validated.
    pub(super) fn tls_alpn_01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn).get(name).cloned()
    }

    /// The HTTP-01 key authorization for `token`, while validated.
    pub(super) fn http_01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    /// Answers TLS-ALPN-01 for `name` with `cert` (another node's order)
    /// until [`remove_tls_alpn_01`](Self::remove_tls_alpn_01).
    pub(super) fn insert_tls_alpn_01(&self, name: &str, cert: CertifiedKey) {
        lock(&self.tls_alpn).insert(name.to_owned(), Arc::new(cert));
    }

    /// Stops answering TLS-ALPN-01 for `name`.
    pub(super) fn remove_tls_alpn_01(&self, name: &str) {
        lock(&self.tls_alpn).remove(name);
    }

    /// Answers HTTP-01 `token` (another node's order) until
    /// [`remove_http_01`](Self::remove_http_01).
    pub(super) fn insert_http_01(&self, token: &str, key_authorization: String) {
        lock(&self.http01).insert(token.to_owned(), key_authorization);
    }

    /// Stops answering HTTP-01 `token`.
    pub(super) fn remove_http_01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    /// Publishes the TLS-ALPN-01 certificate for `name` until the guard
    /// drops.
    pub(super) fn publish_tls_alpn_01(&self, name: &str, cert: CertifiedKey) -> Published<'_> {
        lock(&self.tls_alpn).insert(name.to_owned(), Arc::new(cert));
        Published {
            answers: self,
            answer: Answer::TlsAlpn01(name.to_owned()),
        }
    }

    /// Publishes the HTTP-01 key authorization for `token` until the guard
    /// drops.
    pub(super) fn publish_http_01(&self, token: &str, key_authorization: String) -> Published<'_> {
        lock(&self.http01).insert(token.to_owned(), key_authorization);
        Published {
            answers: self,
            answer: Answer::Http01(token.to_owned()),
        }
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
pub(super) struct Published<'a> {
    answers: &'a Answers,
    answer: Answer,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        match &self.answer {
            Answer::TlsAlpn01(name) => {
                lock(&self.answers.tls_alpn).remove(name);
            }
            Answer::Http01(token) => {
                lock(&self.answers.http01).remove(token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_withdrawn_when_the_guard_drops() {
        let answers = Answers::default();
        {
            let _published = answers.publish_http_01("token", "token.thumbprint".into());
            assert_eq!(
                answers.http_01("token").as_deref(),
                Some("token.thumbprint")
            );
            assert_eq!(answers.http_01("other"), None);
        }
        assert_eq!(answers.http_01("token"), None);
    }
}
