//! Answering a registry's `401`: its `WWW-Authenticate` challenge, and
//! what goes into `Authorization` — Basic credentials, or a Bearer token
//! from the token service the challenge names (Docker's token
//! authentication, which Docker Hub, GHCR, Quay, Harbor… use; anonymous
//! when no credentials are configured, as public repositories allow).

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde::Deserialize;

use super::credentials::Credentials;
use super::http::{self, Endpoint};

/// The most of a token service's answer that is read.
const TOKEN_RESPONSE_MAX: usize = 1 << 20;

/// What a registry's `WWW-Authenticate` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Send the credentials with every request.
    Basic,
    /// Fetch a token from `realm` (with the credentials, if any).
    Bearer {
        /// The token service's URL.
        realm: String,
        /// Its `service` parameter.
        service: Option<String>,
        /// Its `scope` parameter (`repository:NAME:pull`).
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`
    /// (parameters quoted or not, quoted ones with commas and `\` escapes).
    pub(crate) fn parse(header: &str) -> Result<Self> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("it asks for `{scheme}` authentication; only Basic and Bearer are supported");
        }
        let params = parameters(params);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        Ok(Self::Bearer {
            realm: get("realm").ok_or_else(|| anyhow!("its Bearer challenge names no realm"))?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key=value` or `key="value"` pairs separated by commas.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_owned();
        if key.is_empty() && chars.peek().is_none() {
            return pairs;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                    .collect::<String>()
                    .trim()
                    .to_owned();
            }
        }
        if !key.is_empty() {
            pairs.push((key, value));
        }
    }
}

/// `Basic base64(user:secret)`.
pub(crate) fn basic(credentials: &Credentials) -> String {
    let pair = format!("{}:{}", credentials.username, credentials.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Why a token service said no: the credentials, or their absence.
#[derive(Debug)]
pub(crate) struct TokenRefused;

impl std::fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token service refused")
    }
}

impl std::error::Error for TokenRefused {}

/// A Bearer token from the token service at `realm`, for `scope`. The
/// credentials go only over HTTPS, or over plain HTTP when the registry
/// itself is reached that way (`registry_https` false).
pub(crate) async fn token(
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credentials: Option<&Credentials>,
    registry_https: bool,
) -> Result<String> {
    let (endpoint, path) = Endpoint::of_url(realm)
        .with_context(|| format!("the registry's token service `{realm}` is not usable"))?;
    if registry_https && !endpoint.https {
        bail!("the registry names a token service over plain HTTP ({realm}); refused");
    }
    let mut query = vec![("scope", scope)];
    if let Some(service) = service {
        query.push(("service", service));
    }
    let query: Vec<String> = query
        .into_iter()
        .map(|(key, value)| format!("{key}={}", escape(value)))
        .collect();
    let separator = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{separator}{}", query.join("&"));
    let authorization = credentials.map(basic);
    let response = http::get(
        &endpoint,
        &path,
        &[("accept", "application/json".to_owned())],
        authorization.as_deref(),
    )
    .await?;
    let status = response.status;
    if status == hyper::StatusCode::UNAUTHORIZED || status == hyper::StatusCode::FORBIDDEN {
        return Err(TokenRefused.into());
    }
    let body = response
        .bytes(TOKEN_RESPONSE_MAX, "the token service's answer")
        .await?;
    if !status.is_success() {
        bail!(
            "the token service {realm} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]).trim()
        );
    }
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&body)
        .with_context(|| format!("the token service {realm} answered no valid JSON"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .map(|token| format!("Bearer {token}"))
        .ok_or_else(|| anyhow!("the token service {realm} answered no token"))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Challenge, escape};

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull,push""#
            )
            .unwrap(),
            Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"bearer scope=x, realm="https://a/t\"q""#).unwrap(),
            Challenge::Bearer {
                realm: "https://a/t\"q".into(),
                service: None,
                scope: Some("x".into()),
            }
        );
        assert!(Challenge::parse("Bearer service=x").is_err());
        assert!(Challenge::parse("Negotiate").is_err());
        assert_eq!(escape("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
