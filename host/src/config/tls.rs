//! `[tls]`: the TLS listener's address, the base domains, where
//! certificates come from, and the checks of everything TLS-related in a
//! configuration (`[tls]`, `[http]`, `[quic]`, the apps' `domains` and
//! `alpn`). Plain data read by [`crate::listen::tls`]; the certificates'
//! own settings (`[tls.acme]`, `[[tls.certificate]]`) are defined by
//! `certs`, which this composes.
//!
//! ```toml
//! [tls]
//! listen = "0.0.0.0:443"              # default
//! domain = "example.org"              # or domains = ["example.org", ...]
//! certificates = "acme"               # "acme" (default), "dev-ca" or "files"
//! allowed_domains = ["*.customer.com"] # custom domains deploys may claim
//!                                     # outside the base domains
//!
//! [tls.acme]                          # see certs::acme::AcmeSettings
//! directory = "letsencrypt-staging"
//!
//! [[tls.certificate]]                 # static files, see certs::files
//! cert = "wildcard.pem"
//! key = "wildcard.key"
//!
//! [[app]]
//! name = "chat"                       # served at chat.example.org
//! domains = ["chat.acme.com"]         # and at these names
//! alpn = ["x-chat", "http/1.1"]       # protocols it speaks, preferred first
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};

use super::Config;
use crate::base::names::{NamePolicy, check_dns_name, normalize_name};
use crate::certs::CertSource;
use crate::certs::acme::{AcmeSettings, Challenge};
use crate::certs::files::CertFileSettings;

/// The ALPN protocol of TLS-ALPN-01 challenges, which apps cannot declare.
pub const ACME_TLS_ALPN: &str = "acme-tls/1";
/// `[tls]`: the TLS listener, the base domains and the certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The address to accept TLS connections on (default `0.0.0.0:443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base domains: app `chat` is served at `chat.<domain>` for each.
    /// `domain = "example.org"` is the same as `domains = ["example.org"]`.
    #[serde(default, alias = "domain", deserialize_with = "one_or_many")]
    pub domains: Vec<String>,
    /// Where certificates come from for names no static file covers.
    #[serde(default)]
    pub certificates: CertSource,
    /// A client must complete its handshake within this time (ms).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// ACME settings, for `certificates = "acme"`.
    #[serde(default)]
    pub acme: AcmeSettings,
    /// Static certificate files (`[[tls.certificate]]`).
    #[serde(default, rename = "certificate")]
    pub files: Vec<CertFileSettings>,
    /// Custom domains outside the base domains that apps deployed through
    /// the admin API may claim: exact names, or `*.example.com` for every
    /// name under `example.com`. Empty (the default): none. Threat: a
    /// deployer claiming a name that is not theirs (`www.google.com`),
    /// which the dev CA would sign and for which ACME orders would spend
    /// the shared account's rate limits. (Apps of the configuration file
    /// are the operator's own and may name any domain.)
    #[serde(default)]
    pub allowed_domains: Vec<String>,
}

impl TlsSettings {
    /// Who may claim which custom domain.
    pub fn name_policy(&self) -> NamePolicy {
        NamePolicy::new(&self.domains, &self.allowed_domains)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl TlsSettings {
    /// Resolves relative file names against the configuration file's
    /// directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for file in &mut self.files {
            file.cert = base.join(&file.cert);
            file.key = base.join(&file.key);
        }
        if let Some(ca) = &mut self.acme.directory_ca {
            *ca = base.join(&*ca);
        }
    }
}

/// Checks the TLS-related parts of a configuration: `[tls]`, `[http]` and
/// the apps' `domains` and `alpn`.
pub fn validate(config: &Config) -> Result<()> {
    if let Some(quic) = &config.quic {
        quic.validate()?;
    }
    let Some(tls) = &config.tls else {
        if config.quic.is_some() {
            bail!(
                "[quic] needs a [tls] section: QUIC serves the same names with the same \
                 certificates"
            );
        }
        if config.http.is_some() {
            bail!(
                "[http] needs a [tls] section: the plain-HTTP port redirects to https and \
                 answers ACME challenges"
            );
        }
        if let Some(app) = config
            .apps
            .iter()
            .find(|a| !a.domains.is_empty() || !a.alpn.is_empty())
        {
            bail!(
                "app `{}`: `domains` and `alpn` apply to TLS: add a [tls] section",
                app.name
            );
        }
        return Ok(());
    };
    let mut base = HashSet::new();
    for domain in &tls.domains {
        check_dns_name(domain).context("tls.domains")?;
        if !base.insert(normalize_name(domain)) {
            bail!("tls.domains: `{domain}` is listed twice");
        }
    }
    if !(100..=600_000).contains(&tls.handshake_timeout_ms) {
        bail!("tls.handshake_timeout_ms must be between 100 and 600000");
    }
    let http = config.http.clone().unwrap_or_default();
    if tls.certificates == CertSource::Acme {
        tls.acme.validate()?;
        if tls.acme.challenge == Challenge::Http01 && !http.enabled {
            bail!("tls.acme.challenge = \"http-01\" needs the plain-HTTP port: enable [http]");
        }
    }
    for pattern in &tls.allowed_domains {
        check_dns_name(pattern.strip_prefix("*.").unwrap_or(pattern)).with_context(|| {
            format!("tls.allowed_domains: `{pattern}` (use names, or `*.example.com`)")
        })?;
        let name = normalize_name(pattern.strip_prefix("*.").unwrap_or(pattern));
        if base
            .iter()
            .any(|b| name == *b || name.ends_with(&format!(".{b}")))
        {
            bail!(
                "tls.allowed_domains: `{pattern}` is a base domain or under one; names under \
                 the base domains belong to the app they name"
            );
        }
    }
    let policy = tls.name_policy();
    let mut custom: HashMap<String, &str> = HashMap::new();
    for app in &config.apps {
        for domain in &app.domains {
            // Checked and normalised when the app was read (`DnsName`).
            let domain = domain.to_string();
            if let Some(other) = custom.insert(domain.clone(), &app.name)
                && *other != *app.name
            {
                bail!(
                    "app `{}`: domain `{domain}` is already app `{other}`'s",
                    app.name
                );
            }
            policy.check_claim(&app.name, &domain, true)?;
        }
    }
    if tls.domains.is_empty() && custom.is_empty() {
        bail!(
            "[tls] serves no name: set tls.domain (apps are served at <app>.<domain>) or \
             give apps `domains`"
        );
    }
    Ok(())
}

/// The DNS subtrees the dev CA's root is constrained to: `localhost`, the
/// base domains, the allowlist and the configuration's own custom domains.
pub fn dev_ca_subtrees(config: &Config) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Some(tls) = &config.tls {
        names.extend(tls.name_policy().subtrees());
    }
    for app in &config.apps {
        names.extend(app.domains.iter().map(|d| d.to_string()));
    }
    names
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const APP: &str =
        "[[app]]\nname = \"echo\"\ncomponent = \"e.wasm\"\nlisten = \"127.0.0.1:0\"\n";

    fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn one_domain_or_several() {
        let one = parse(&format!("[tls]\ndomain = \"Example.org\"\n{APP}")).unwrap();
        let tls = one.tls.unwrap();
        assert_eq!(tls.domains, ["Example.org"]);
        assert_eq!(tls.listen.port(), 443);
        assert_eq!(tls.certificates, crate::certs::CertSource::Acme);
        let many = parse(&format!("[tls]\ndomains = [\"a.org\", \"b.org\"]\n{APP}")).unwrap();
        assert_eq!(many.tls.unwrap().domains, ["a.org", "b.org"]);
        // A custom domain alone is enough.
        parse(&format!("[tls]\n{APP}domains = [\"echo.example.com\"]\n")).unwrap();
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let err = |text: String| format!("{:#}", parse(&text).unwrap_err());
        assert!(err(format!("[tls]\n{APP}")).contains("serves no name"));
        assert!(err(format!("[tls]\ndomain = \"bad_name.org\"\n{APP}")).contains("valid DNS name"));
        assert!(
            err(format!(
                "[tls]\ndomain = \"x.org\"\n{APP}alpn = [\"acme-tls/1\"]\n"
            ))
            .contains("reserved")
        );
        assert!(
            err(format!(
                "[tls]\ndomain = \"x.org\"\n{APP}alpn = [\"h2\", \"h2\"]\n"
            ))
            .contains("twice")
        );
        assert!(err(format!("[http]\n{APP}")).contains("needs a [tls] section"));
        assert!(err(format!("{APP}domains = [\"a.org\"]\n")).contains("add a [tls] section"));
        assert!(
            err(format!(
                "[tls]\ndomain = \"x.org\"\n[tls.acme]\nchallenge = \"http-01\"\n\
                 [http]\nenabled = false\n{APP}"
            ))
            .contains("needs the plain-HTTP port")
        );
        assert!(
            err(format!(
                "[tls]\ndomain = \"x.org\"\n[tls.acme]\ndirectory = \"lets-encrypt\"\n{APP}"
            ))
            .contains("letsencrypt-staging")
        );
        let two = format!(
            "[tls]\ndomain = \"x.org\"\n{APP}domains = [\"a.org\"]\n\
             [[app]]\nname = \"other\"\ncomponent = \"o.wasm\"\nlisten = \"127.0.0.1:0\"\n\
             domains = [\"A.org.\"]\n"
        );
        assert!(err(two).contains("already app `echo`'s"));
        assert!(toml::from_str::<Config>("[tls]\nport = 1\n").is_err());
    }
}
