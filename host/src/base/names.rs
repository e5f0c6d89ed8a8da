//! Names as the gateway receives them — app names, DNS names, server
//! names (SNI, `Host`) — checked and compared in one place, so that a
//! name accepted by the configuration is accepted by the deploy API, the
//! router and the certificate code alike; and who may claim which name as
//! a custom domain ([`NamePolicy`]), which the configuration checks and
//! the gateway enforces on deploys.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// App names become subdomains, so they must be DNS labels: 1 to 63
/// characters of lowercase letters, digits and inner hyphens.
pub fn check_app_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "invalid app name `{name}`: use 1-63 lowercase letters, digits and inner hyphens \
             (it becomes a DNS label)"
        );
    }
    Ok(())
}

/// Checks that `name` is a DNS name a certificate can be ordered for:
/// dot-separated labels of letters, digits and inner hyphens, at most 253
/// characters; a trailing dot (a fully qualified name) is allowed.
pub fn check_dns_name(name: &str) -> Result<()> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = name.len() <= 253 && name.split('.').all(is_dns_label);
    if !valid {
        bail!(
            "`{name}` is not a valid DNS name: use dot-separated labels of letters, digits \
             and inner hyphens, such as `chat.example.org`"
        );
    }
    Ok(())
}

/// Whether `label` is one label of a DNS host name: 1 to 63 letters,
/// digits and inner hyphens (RFC 1123). Any case: callers that compare
/// names lowercase them first.
pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A server name as routing and certificates compare it: lowercase,
/// without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An app's name, checked once: a DNS label (1 to 63 lowercase letters,
/// digits and inner hyphens), since it becomes a subdomain and a file
/// name in the state directory. It cannot hold a bad value: it is made by
/// [`AppName::parse`] or by deserialising, which calls it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    /// Checks `name` ([`check_app_name`]'s rule and message).
    pub fn parse(name: &str) -> Result<Self> {
        check_app_name(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DNS name a certificate can be ordered for, checked and normalised
/// once (lowercase, without a trailing dot), so that every comparison of
/// it — routing, certificates, name claims — compares the same text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(String);

impl DnsName {
    /// Checks `name` ([`check_dns_name`]'s rule and message) and
    /// normalises it ([`normalize_name`]).
    pub fn parse(name: &str) -> Result<Self> {
        check_dns_name(name)?;
        Ok(Self(normalize_name(name)))
    }

    /// The name, normalised.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_type_impls {
    ($name:ident) => {
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = anyhow::Error;
            fn try_from(name: String) -> Result<Self> {
                Self::parse(&name)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = anyhow::Error;
            fn try_from(name: &str) -> Result<Self> {
                Self::parse(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type_impls!(AppName);
name_type_impls!(DnsName);

/// Who may claim which server name as a custom domain: the base domains of
/// `[tls]` and the operator's allowlist of other names (`[tls]
/// allowed_domains`, exact names or `*.suffix` patterns).
#[derive(Debug, Clone, Default)]
pub struct NamePolicy {
    /// Base domains, normalized.
    base: Vec<String>,
    /// Allowed names outside the base domains: `name` exactly, or
    /// `*.suffix` for every name under `suffix`.
    allowed: Vec<String>,
}

impl NamePolicy {
    /// The policy of base domains `base` and allowlist `allowed` (checked
    /// by the configuration).
    pub fn new(base: &[String], allowed: &[String]) -> Self {
        Self {
            base: base.iter().map(|d| normalize_name(d)).collect(),
            allowed: allowed.iter().map(|d| normalize_name(d)).collect(),
        }
    }

    /// Checks that app `app` may claim `domain` as a custom domain.
    /// `operator`: the claim comes from the configuration file, whose
    /// foreign names need no allowlist (the operator wrote them). Who else
    /// claims the name is the caller's to check.
    pub fn check_claim(&self, app: &str, domain: &str, operator: bool) -> Result<()> {
        let domain = normalize_name(domain);
        if self.base.contains(&domain) {
            bail!(
                "app `{app}`: `{domain}` is a base domain of this gateway ([tls] domains): it \
                 belongs to no app"
            );
        }
        for base in &self.base {
            let Some(under) = domain
                .strip_suffix(base.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
            else {
                continue;
            };
            let owner = under.rsplit('.').next().unwrap_or(under);
            if owner != app {
                bail!(
                    "app `{app}`: `{domain}` is under `{owner}.{base}`, which belongs to app \
                     `{owner}`: an app may claim names under its own `{app}.{base}` only"
                );
            }
            return Ok(());
        }
        if operator || self.allows(&domain) {
            return Ok(());
        }
        bail!(
            "app `{app}`: `{domain}` is outside this gateway's base domains ({}), and the \
             operator does not allow it ([tls] allowed_domains = [{}]): ask the operator to \
             add it (or a `*.` pattern covering it)",
            self.base.join(", "),
            self.allowed
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Whether there is a base domain: without one, an app has no
    /// `<name>.<domain>` and is reached by name only through its custom
    /// domains.
    pub fn has_base_domains(&self) -> bool {
        !self.base.is_empty()
    }

    /// Whether the operator's allowlist covers `domain` (normalized).
    fn allows(&self, domain: &str) -> bool {
        self.allowed
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => domain
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
                None => pattern == domain,
            })
    }

    /// The DNS subtrees certificates may be issued under: the base domains
    /// and the allowlist (a `*.suffix` pattern as `suffix`).
    pub fn subtrees(&self) -> Vec<String> {
        self.base
            .iter()
            .chain(&self.allowed)
            .map(|d| d.strip_prefix("*.").unwrap_or(d).to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels() {
        for good in ["echo", "a", "my-app-2", &"x".repeat(63)] {
            check_app_name(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Echo",
            "a.b",
            "../x",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(check_app_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dns_names_are_checked() {
        for good in ["chat.example.org", "a.b", "x-1.sockgate.test", "localhost"] {
            check_dns_name(good).unwrap();
        }
        for bad in ["", "-a.b", "a..b", "a b.c", "*.example.org", "a_b.c"] {
            assert!(check_dns_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn server_names_compare_lowercase_without_the_trailing_dot() {
        assert_eq!(normalize_name("Chat.Example.ORG."), "chat.example.org");
    }

    #[test]
    fn names_are_claimed_by_their_owner_only() {
        let policy = NamePolicy::new(
            &["sg.test".into()],
            &["*.customer.com".into(), "shop.example.net".into()],
        );
        let claim = |app: &str, domain: &str| policy.check_claim(app, domain, false);
        claim("chat", "api.chat.sg.test").unwrap();
        claim("chat", "Chat.SG.test.").unwrap();
        claim("chat", "a.customer.com").unwrap();
        claim("chat", "a.b.customer.com").unwrap();
        claim("chat", "shop.example.net").unwrap();
        let refused = |app: &str, domain: &str| format!("{:#}", claim(app, domain).unwrap_err());
        assert!(refused("squat", "victim.sg.test").contains("belongs to app `victim`"));
        assert!(refused("squat", "x.victim.sg.test").contains("belongs to app `victim`"));
        assert!(refused("squat", "sg.test").contains("base domain"));
        assert!(refused("squat", "www.google.com").contains("allowed_domains"));
        assert!(refused("squat", "customer.com").contains("allowed_domains"));
        assert!(refused("squat", "evilcustomer.com").contains("allowed_domains"));
        // The operator's own configuration names foreign domains freely,
        // never another app's or a base domain.
        policy.check_claim("chat", "chat.acme.com", true).unwrap();
        assert!(policy.check_claim("chat", "echo.sg.test", true).is_err());
        assert_eq!(
            policy.subtrees(),
            ["sg.test", "customer.com", "shop.example.net"]
        );
    }
}
