//! A registry's credentials, where `docker login` (and `podman login
//! --compat-auth-file`, `wkg`, `oras`) leave them: the Docker
//! configuration, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
//! A `credHelpers` entry for the registry, else `credsStore`, runs
//! `docker-credential-NAME get`; else an `auths` entry gives them inline.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A credential helper must answer within this time: a helper waiting
/// for a keyring prompt nobody sees would otherwise hang the deploy.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a helper's answer that is read (it is a few hundred bytes).
const HELPER_OUTPUT_MAX: u64 = 64 * 1024;

/// A user name and its password (or token), sent to the registry as Basic
/// credentials or to its token service.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The user name.
    pub(crate) username: String,
    /// The password or access token.
    pub(crate) secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, …)", self.username)
    }
}

/// The parts of the Docker configuration this reads.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The Docker configuration file this process reads: `$DOCKER_CONFIG/
/// config.json`, else `~/.docker/config.json`.
pub(crate) fn config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
        }
    }
}

/// The credentials configured for `registry` (`host[:port]` as in the
/// reference); `None` when the configuration has none for it (or there is
/// no configuration).
pub(crate) async fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let config: DockerConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid Docker configuration", path.display()))?;
    let key = server_key(registry);
    let helper = config
        .cred_helpers
        .iter()
        .find(|(server, _)| normalise(server) == key)
        .map(|(_, helper)| helper)
        .or(config.creds_store.as_ref());
    if let Some(helper) = helper {
        return from_helper(helper, registry).await;
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(server, _)| normalise(server) == key)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    let from = || format!("{} (auths.{key})", path.display());
    if entry.identitytoken.is_some() {
        bail!(
            "{}: an identity token (OAuth refresh token) is not supported; log in with a \
             password or access token",
            from()
        );
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| anyhow!("{}: `auth` is not base64 of user:password", from()))?;
        let (username, secret) = decoded
            .split_once(':')
            .ok_or_else(|| anyhow!("{}: `auth` holds no `:` between user and password", from()))?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            secret: secret.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => Ok(Some(Credentials {
            username: username.clone(),
            secret: password.clone(),
        })),
        _ => Ok(None),
    }
}

/// The key of a registry in the Docker configuration: Docker Hub's
/// historical `https://index.docker.io/v1/` for `docker.io`, else
/// `host[:port]`.
fn server_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// A configuration key (`https://host:port/v1/`, `host:port`, …) as
/// `host[:port]`.
fn normalise(server: &str) -> String {
    let server = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    server_key(server.split('/').next().unwrap_or(server))
}

/// Runs `docker-credential-HELPER get` with the server on its stdin (the
/// Docker credential helper protocol): JSON `{"Username", "Secret"}` on
/// stdout, or a non-zero exit with "credentials not found".
async fn from_helper(helper: &str, registry: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let server = match server_key(registry).as_str() {
        "index.docker.io" => "https://index.docker.io/v1/".to_owned(),
        _ => registry.to_owned(),
    };
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run the credential helper {program} (named by the Docker \
                 configuration {}): is it installed and on PATH?",
                config_path().unwrap_or_default().display()
            )
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let talk = async {
        stdin.write_all(server.as_bytes()).await?;
        drop(stdin);
        let mut out = Vec::new();
        (&mut stdout)
            .take(HELPER_OUTPUT_MAX)
            .read_to_end(&mut out)
            .await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out))
    };
    let (status, out) = tokio::time::timeout(HELPER_TIMEOUT, talk)
        .await
        .map_err(|_| {
            anyhow!(
                "the credential helper {program} did not answer within {} s",
                HELPER_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("the credential helper {program} failed"))?;
    if !status.success() {
        let said = String::from_utf8_lossy(&out);
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "the credential helper {program} failed ({status}): {}",
            said.trim()
        );
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&out)
        .with_context(|| format!("the credential helper {program} answered no valid JSON"))?;
    if answer.username == "<token>" {
        bail!(
            "the credential helper {program} gave an identity token (OAuth refresh token) for \
             {registry}, which is not supported; log in with a password or access token"
        );
    }
    Ok(Some(Credentials {
        username: answer.username,
        secret: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::{normalise, server_key};

    #[test]
    fn configuration_keys_match_registries() {
        assert_eq!(
            normalise("https://index.docker.io/v1/"),
            server_key("docker.io")
        );
        assert_eq!(normalise("localhost:5000"), "localhost:5000");
        assert_eq!(normalise("https://GHCR.io"), "ghcr.io");
        assert_eq!(normalise("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_ne!(normalise("127.0.0.1:5001"), server_key("127.0.0.1:5000"));
    }
}
