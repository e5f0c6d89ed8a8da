//! `oci://REGISTRY/REPOSITORY:TAG` and `oci://REGISTRY/REPOSITORY@sha256:HEX`:
//! the one parser of the references `sockgate deploy` pulls, checked whole
//! before anything is asked of a registry (the grammar of
//! distribution's `reference` package, with the registry always named).

use std::fmt;
use std::net::IpAddr;

use anyhow::{Result, bail};
use sockgate_host::base::names::is_dns_label;

use super::digest::Digest;

/// The scheme that marks a deploy's component as a registry reference.
pub(crate) const SCHEME: &str = "oci://";

/// The longest repository name registries accept (distribution's
/// `NameTotalLengthMax`).
const MAX_REPOSITORY_LEN: usize = 255;
/// The longest tag (the OCI distribution spec's tag grammar).
const MAX_TAG_LEN: usize = 128;

/// A parsed registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// The registry as written (`host`, `host:port`, `[::1]:port`): what
    /// Docker config entries and `docker login` name.
    pub(crate) registry: String,
    /// The host to connect to (without brackets for IPv6).
    pub(crate) host: String,
    /// The port, if written.
    pub(crate) port: Option<u16>,
    /// The repository path (`team/app`).
    pub(crate) repository: String,
    /// The tag, if written.
    pub(crate) tag: Option<String>,
    /// The pinned manifest digest, if written (it wins over a tag).
    pub(crate) digest: Option<Digest>,
}

impl Reference {
    /// Parses `oci://…`; every refusal says which part is wrong and what
    /// the form is.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let Some(rest) = text.strip_prefix(SCHEME) else {
            bail!("`{text}` is not an OCI reference: it must start with {SCHEME}");
        };
        let form = "the form is oci://REGISTRY/REPOSITORY:TAG or \
                    oci://REGISTRY/REPOSITORY@sha256:DIGEST";
        let Some((registry, path)) = rest.split_once('/') else {
            bail!("`{text}` names no repository; {form}");
        };
        let (host, port) = parse_registry(registry)
            .map_err(|why| anyhow::anyhow!("`{text}`: bad registry `{registry}`: {why}; {form}"))?;
        let (name, digest) = match path.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (path, None),
        };
        // A tag follows the last `:` after the last `/`.
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last..].find(':') {
            Some(colon) => (&name[..last + colon], Some(&name[last + colon + 1..])),
            None => (name, None),
        };
        check_repository(repository)
            .map_err(|why| anyhow::anyhow!("`{text}`: bad repository `{repository}`: {why}"))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|why| anyhow::anyhow!("`{text}`: bad tag `{tag}`: {why}"))?;
        }
        if tag.is_none() && digest.is_none() {
            bail!(
                "`{text}` names neither a tag nor a digest (sockgate does not assume \
                 `latest`); {form}"
            );
        }
        Ok(Self {
            registry: registry.to_owned(),
            host,
            port,
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8,
    /// `::1`): the one case plain HTTP is the default, as Docker does.
    pub(crate) fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// What the manifest is asked for by: the digest if pinned, else the
    /// tag.
    pub(crate) fn manifest_target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => unreachable!("parse requires a tag or a digest"),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `host`, `host:port` or `[ipv6]:port`, hosts as DNS names or IP
/// addresses.
fn parse_registry(registry: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err("an IPv6 address needs its closing `]`".into());
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` is not an IPv6 address"));
        }
        match after {
            "" => (ip, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => return Err("only `:PORT` may follow `]`".into()),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(format!("`{port}` is not a port number")),
        },
    };
    if host.is_empty() {
        return Err("the registry's host is empty".into());
    }
    if !registry.starts_with('[') && !host.split('.').all(is_dns_label) {
        return Err("a host is DNS labels (letters, digits, `-`) separated by dots".into());
    }
    Ok((host.to_owned(), port))
}

/// Path components of lowercase letters and digits, separated inside by
/// `.`, `_`, `__` or runs of `-`; components separated by `/`.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("it is empty".into());
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!("it is longer than {MAX_REPOSITORY_LEN} characters"));
    }
    for component in repository.split('/') {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = component.as_bytes();
        let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
            return Err("it has an empty path component".into());
        };
        if !alnum(first) || !alnum(last) {
            return Err(format!(
                "`{component}` must start and end with a lowercase letter or a digit"
            ));
        }
        if let Some(bad) = bytes
            .iter()
            .find(|&&b| !(alnum(b) || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(format!(
                "`{component}` holds `{}`: only lowercase letters, digits, `.`, `_` and `-`",
                char::from(*bad)
            ));
        }
        if component.contains("..")
            || component.contains("___")
            || component.contains("._")
            || component.contains("_.")
            || component.contains(".-")
            || component.contains("-.")
            || component.contains("_-")
            || component.contains("-_")
        {
            return Err(format!(
                "`{component}` mixes separators (`.`, `_`, `__` or `-` between letters and digits)"
            ));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes().first() {
        None => return Err("it is empty".into()),
        Some(&first) if !word(first) => {
            return Err("it must start with a letter, a digit or `_`".into());
        }
        _ => {}
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("it is longer than {MAX_TAG_LEN} characters"));
    }
    if let Some(bad) = tag.bytes().find(|&b| !(word(b) || b == b'.' || b == b'-')) {
        return Err(format!(
            "it holds `{}`: only letters, digits, `_`, `.` and `-`",
            char::from(bad)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Reference;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_digests_ports_and_ipv6_parse() {
        let r = Reference::parse("oci://ghcr.io/team/app:v1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.host.as_str(), r.port),
            ("ghcr.io", "ghcr.io", None)
        );
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("team/app", Some("v1.2"))
        );
        assert!(!r.is_loopback());

        let r = Reference::parse(&format!("oci://127.0.0.1:5000/app@sha256:{HEX}")).unwrap();
        assert_eq!((r.port, r.tag.as_deref()), (Some(5000), None));
        assert_eq!(r.manifest_target(), format!("sha256:{HEX}"));
        assert!(r.is_loopback());

        let r = Reference::parse(&format!("oci://[::1]:5000/a/b:t@sha256:{HEX}")).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(5000)));
        assert_eq!(
            r.manifest_target(),
            format!("sha256:{HEX}"),
            "a digest wins"
        );
        assert_eq!(
            r.to_string(),
            format!("oci://[::1]:5000/a/b:t@sha256:{HEX}")
        );

        let r = Reference::parse("oci://localhost:5000/my_app.x-y:latest").unwrap();
        assert!(r.is_loopback());
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        let refused = |text: &str, why: &str| {
            let err = format!("{:#}", Reference::parse(text).unwrap_err());
            assert!(err.contains(why), "{text}: {err}");
        };
        refused("ghcr.io/team/app:v1", "must start with oci://");
        refused("oci://ghcr.io", "names no repository");
        refused("oci://ghcr.io/team/app", "neither a tag nor a digest");
        refused("oci://ghcr.io/Team/app:v1", "lowercase");
        refused("oci://ghcr.io/team//app:v1", "empty path component");
        refused("oci://ghcr.io/team/app:", "bad tag");
        refused("oci://ghcr.io/team/app:-x", "must start with");
        refused("oci://ghcr.io/team/app:a/b", "bad repository");
        refused("oci://ghcr.io/team/app@sha256:abc", "64 hexadecimal");
        refused("oci://ghcr.io/team/app@sha512:abc", "only sha256");
        refused("oci://ghcr.io:99999/app:v1", "not a port number");
        refused("oci://gh_cr.io/app:v1", "DNS labels");
        refused("oci://:5000/app:v1", "host is empty");
        refused("oci://[::1/app:v1", "closing");
        refused("oci://ghcr.io/a..b:v1", "mixes separators");
    }
}
