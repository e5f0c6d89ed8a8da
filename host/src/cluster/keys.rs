//! The keys of a cluster in etcd, under its prefix, built and parsed in one
//! place:
//!
//! ```text
//! <prefix>apps/<name>            the app's record (JSON): versions, digests, settings
//! <prefix>nodes/<node>           a live node: how peers reach it (under its lease)
//! <prefix>held/<sha256>/<node>   this node holds (and compiled) that component (its lease)
//! <prefix>acme/<ca>/certs/<name>       a certificate and its key, sealed (`seal.rs`)
//! <prefix>acme/<ca>/locks/<name>       the node ordering that name (its lease)
//! <prefix>acme/<ca>/retry/<name>       the name's back-off after a failed order
//! <prefix>acme/<ca>/challenges/<id>    a challenge answer being validated (orderer's lease)
//! <prefix>acme/<ca>/seen/<id>/<node>   that node answers it too (its lease)
//! ```
//!
//! `<ca>` tells the certificates of different CAs apart (Let's Encrypt and
//! its staging): the first 16 hex digits of the directory URL's SHA-256.
//!
//! A node's keys live under its lease, so a node that dies disappears from
//! `nodes/` and from every `held/` after the lease's time to live.

/// The key layout of one cluster (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a key of the cluster's prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    /// `apps/<name>`.
    App(&'a str),
    /// `nodes/<node>`.
    Node(&'a str),
    /// `held/<digest>/<node>`.
    Held {
        /// The component's SHA-256, hex.
        digest: &'a str,
        /// The node that holds it.
        node: &'a str,
    },
    /// `acme/<ca>/{certs,locks,retry}/<name>`: something about a name's
    /// certificate changed.
    AcmeName {
        /// The CA.
        ca: &'a str,
        /// The name.
        name: &'a str,
    },
    /// `acme/<ca>/challenges/<id>`.
    Challenge {
        /// The CA.
        ca: &'a str,
        /// The answer's id.
        id: &'a str,
    },
    /// `acme/<ca>/seen/<id>/<node>`.
    ChallengeSeen,
}

/// The kinds of per-name ACME keys.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AcmeKey {
    /// The sealed certificate.
    Cert,
    /// The order lock.
    Lock,
    /// The shared back-off.
    Retry,
}

impl AcmeKey {
    fn dir(self) -> &'static str {
        match self {
            AcmeKey::Cert => "certs",
            AcmeKey::Lock => "locks",
            AcmeKey::Retry => "retry",
        }
    }
}

impl Keys {
    /// The layout under `prefix` (which starts and ends with `/`).
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The whole cluster: what a watch follows.
    pub(crate) fn all(&self) -> &str {
        &self.prefix
    }

    /// Every app record.
    pub(crate) fn apps(&self) -> String {
        format!("{}apps/", self.prefix)
    }

    /// App `name`'s record.
    pub(crate) fn app(&self, name: &str) -> String {
        format!("{}apps/{name}", self.prefix)
    }

    /// Every live node.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// Node `node`'s liveness key.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    /// The holders of component `digest`.
    pub(crate) fn holders(&self, digest: &str) -> String {
        format!("{}held/{digest}/", self.prefix)
    }

    /// `node` holds component `digest`.
    pub(crate) fn held(&self, digest: &str, node: &str) -> String {
        format!("{}held/{digest}/{node}", self.prefix)
    }

    /// A per-name ACME key of CA `ca`.
    pub(crate) fn acme(&self, ca: &str, kind: AcmeKey, name: &str) -> String {
        format!("{}acme/{ca}/{}/{name}", self.prefix, kind.dir())
    }

    /// Challenge answer `id` of CA `ca`.
    pub(crate) fn challenge(&self, ca: &str, id: &str) -> String {
        format!("{}acme/{ca}/challenges/{id}", self.prefix)
    }

    /// Every challenge answer of CA `ca`.
    pub(crate) fn challenges(&self, ca: &str) -> String {
        format!("{}acme/{ca}/challenges/", self.prefix)
    }

    /// The nodes answering challenge `id` of CA `ca`.
    pub(crate) fn challenge_seen_all(&self, ca: &str, id: &str) -> String {
        format!("{}acme/{ca}/seen/{id}/", self.prefix)
    }

    /// `node` answers challenge `id` of CA `ca`.
    pub(crate) fn challenge_seen(&self, ca: &str, id: &str, node: &str) -> String {
        format!("{}acme/{ca}/seen/{id}/{node}", self.prefix)
    }

    /// What `key` is; `None` for a key of the prefix this version does not
    /// know (a newer node's, say), which is ignored.
    pub(crate) fn parse<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(name) = rest.strip_prefix("apps/") {
            return (!name.is_empty() && !name.contains('/')).then_some(Key::App(name));
        }
        if let Some(node) = rest.strip_prefix("nodes/") {
            return (!node.is_empty() && !node.contains('/')).then_some(Key::Node(node));
        }
        if let Some(acme) = rest.strip_prefix("acme/") {
            return parse_acme(acme);
        }
        let held = rest.strip_prefix("held/")?;
        let (digest, node) = held.split_once('/')?;
        let valid = digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit())
            && !node.is_empty()
            && !node.contains('/');
        valid.then_some(Key::Held { digest, node })
    }
}

/// An ACME key after `acme/`.
fn parse_acme(rest: &str) -> Option<Key<'_>> {
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts[..] {
        [ca, "certs" | "locks" | "retry", name] => Some(Key::AcmeName { ca, name }),
        [ca, "challenges", id] => Some(Key::Challenge { ca, id }),
        [_, "seen", _, _] => Some(Key::ChallengeSeen),
        _ => None,
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn keys_parse_back_to_what_built_them() {
        let keys = Keys::new("/sockgate/v1/");
        assert_eq!(keys.parse(&keys.app("echo")), Some(Key::App("echo")));
        assert_eq!(keys.parse(&keys.node("gw-1")), Some(Key::Node("gw-1")));
        assert_eq!(
            keys.parse(&keys.held(DIGEST, "gw-2")),
            Some(Key::Held {
                digest: DIGEST,
                node: "gw-2"
            })
        );
        assert!(keys.holders(DIGEST).starts_with(keys.all()));
        for kind in [AcmeKey::Cert, AcmeKey::Lock, AcmeKey::Retry] {
            assert_eq!(
                keys.parse(&keys.acme("0a1b", kind, "app.example.org")),
                Some(Key::AcmeName {
                    ca: "0a1b",
                    name: "app.example.org"
                })
            );
        }
        assert_eq!(
            keys.parse(&keys.challenge("0a1b", "http-01-tok")),
            Some(Key::Challenge {
                ca: "0a1b",
                id: "http-01-tok"
            })
        );
        assert_eq!(
            keys.parse(&keys.challenge_seen("0a1b", "http-01-tok", "gw-2")),
            Some(Key::ChallengeSeen)
        );
        assert!(
            keys.challenge_seen("0a1b", "x", "gw-2")
                .starts_with(&keys.challenge_seen_all("0a1b", "x"))
        );
    }

    #[test]
    fn foreign_and_malformed_keys_are_ignored() {
        let keys = Keys::new("/sockgate/v1/");
        for key in [
            "/other/apps/echo",
            "/sockgate/v1/apps/",
            "/sockgate/v1/apps/a/b",
            "/sockgate/v1/held/abc/gw-1",
            "/sockgate/v1/held/{DIGEST}",
            "/sockgate/v1/locks/x",
            "/sockgate/v1/acme/ca/certs/",
            "/sockgate/v1/acme/ca/other/x",
            "/sockgate/v1/acme/ca/certs/a/b",
        ] {
            assert_eq!(keys.parse(key), None, "{key}");
        }
    }

    #[test]
    fn the_prefix_end_is_the_next_key_after_every_key_of_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
