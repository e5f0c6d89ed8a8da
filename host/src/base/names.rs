//! Names as the gateway receives them — app names, DNS names, server
//! names (SNI, `Host`) — checked and compared in one place, so that a
//! name accepted by the configuration is accepted by the deploy API, the
//! router and the certificate code alike.

use anyhow::{Result, bail};

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
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        bail!(
            "`{name}` is not a valid DNS name: use dot-separated labels of letters, digits \
             and inner hyphens, such as `chat.example.org`"
        );
    }
    Ok(())
}

/// A server name as routing and certificates compare it: lowercase,
/// without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
}
