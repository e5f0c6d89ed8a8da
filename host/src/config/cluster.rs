//! `[cluster]`: several gateways sharing their deployed apps through etcd,
//! read by [`crate::cluster`] (which documents the keys and the protocol).
//!
//! ```toml
//! [cluster]
//! endpoints = ["10.0.0.5:2379", "10.0.0.6:2379"]   # etcd's client URLs
//! node = "gw-1"                  # this node's name; default: the host name
//! prefix = "/sockgate/v1/"       # every key lives under it
//! peer_listen = "10.0.0.11:9801" # where peers fetch components from this node
//! peer_url = "http://10.0.0.11:9801"  # how peers reach it; default from peer_listen
//! token_file = "/etc/sockgate/cluster-token"  # the same secret on every node
//! app_address = "10.0.0.11"      # binds cluster apps' ports on this address
//! # etcd over TLS, with a client certificate and/or a user (all optional):
//! etcd_ca_file = "/etc/sockgate/etcd-ca.pem"
//! etcd_cert_file = "/etc/sockgate/etcd-client.pem"
//! etcd_key_file = "/etc/sockgate/etcd-client-key.pem"
//! etcd_user = "sockgate"
//! etcd_password_file = "/etc/sockgate/etcd-password"
//! ```
//!
//! `sockgate serve --cluster etcd://HOST:PORT[,HOST:PORT…]` sets
//! `endpoints` (and needs the rest of the section).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The shortest cluster token accepted, in characters. Threat: a guessable
/// secret letting anyone who reaches a node's peer port read every
/// deployed component.
pub const MIN_TOKEN_CHARS: usize = 32;

/// `[cluster]`: this gateway is one node of a cluster whose apps live in
/// etcd. Apps of the configuration file stay this node's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// etcd's client addresses (`HOST:PORT`, `http://HOST:PORT` or
    /// `https://…`), any member of one etcd cluster.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// This node's name, unique in the cluster: it keys the node's
    /// liveness and which components it holds. Default: the host name.
    pub node: Option<String>,
    /// The key prefix, so one etcd can hold several sockgate clusters (or
    /// other tenants).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Where this node serves components to its peers (HTTP, bearer
    /// token): a deploy on another node fetches the bytes from here.
    pub peer_listen: SocketAddr,
    /// How peers reach `peer_listen` (behind NAT, a proxy); default
    /// `http://` + the address bound (port 0 picks a free port).
    pub peer_url: Option<String>,
    /// A file holding the cluster's shared secret (at least
    /// [`MIN_TOKEN_CHARS`] characters), the same on every node: peers
    /// prove with it that they may fetch components.
    pub token_file: PathBuf,
    /// The address this node binds cluster apps' own ports on: a deploy
    /// asks for a port, every node binds it on its own address. Default:
    /// the address the deploy named.
    pub app_address: Option<IpAddr>,
    /// How long a deploy waits for every live node to hold and compile
    /// the new component before it switches the app (seconds). Past it,
    /// the deploy goes on when at least two nodes (or every node, when
    /// fewer) hold it, and the others fetch it as they can.
    #[serde(default = "default_spread_secs")]
    pub spread_timeout_secs: u64,
    /// etcd over TLS: the CA (PEM) that signed etcd's server certificate.
    /// Set, endpoints without a scheme are `https://`; an `https://`
    /// endpoint needs it.
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's `--client-cert-auth`, with
    /// `etcd_key_file`.
    pub etcd_cert_file: Option<PathBuf>,
    /// The key (PEM) of `etcd_cert_file`.
    pub etcd_key_file: Option<PathBuf>,
    /// An etcd user (etcd's `auth enable`), with `etcd_password_file`.
    pub etcd_user: Option<String>,
    /// A file holding `etcd_user`'s password (kept out of the
    /// configuration file, like the token).
    pub etcd_password_file: Option<PathBuf>,
}

/// How this node proves itself to etcd and checks etcd's identity, read
/// from the files `[cluster]` names.
#[derive(Default)]
pub struct EtcdCredentials {
    /// The CA of etcd's server certificate (PEM): TLS when set.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// A user and password.
    pub user: Option<(String, String)>,
}

fn default_prefix() -> String {
    "/sockgate/v1/".to_owned()
}

fn default_spread_secs() -> u64 {
    30
}

impl ClusterSettings {
    /// Replaces the endpoints with those of `--cluster etcd://A,B`.
    pub fn set_endpoints_from_url(&mut self, url: &str) -> Result<()> {
        let Some(list) = url.strip_prefix("etcd://") else {
            bail!("--cluster {url}: expected etcd://HOST:PORT[,HOST:PORT…]");
        };
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            bail!("--cluster {url}: no etcd endpoint given (etcd://HOST:PORT[,HOST:PORT…])");
        }
        self.endpoints = endpoints;
        Ok(())
    }

    /// This node's name: the configured one, or the host name.
    pub fn node_name(&self) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "sockgate".to_owned())
    }

    /// How peers reach this node's component server, bound on `bound`.
    pub fn peer_url(&self, bound: SocketAddr) -> String {
        self.peer_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
    }

    /// Reads the shared token, refusing one too short to be a secret.
    pub fn read_token(&self) -> Result<String> {
        let token = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!(
                "cannot read cluster.token_file {}: create it with the same secret on every \
                 node (e.g. `head -c 32 /dev/urandom | base64 > FILE`, mode 0600)",
                self.token_file.display()
            )
        })?;
        let token = token.trim().to_owned();
        if token.chars().count() < MIN_TOKEN_CHARS {
            bail!(
                "cluster.token_file {} holds {} characters; the cluster token must have at \
                 least {MIN_TOKEN_CHARS} (e.g. `head -c 32 /dev/urandom | base64`)",
                self.token_file.display(),
                token.chars().count()
            );
        }
        Ok(token)
    }

    /// Reads the TLS files and the password `[cluster]` names for etcd.
    pub fn etcd_credentials(&self) -> Result<EtcdCredentials> {
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path)
                .with_context(|| format!("cannot read cluster.{key} {}", path.display()))
        };
        let ca_pem = match &self.etcd_ca_file {
            Some(path) => Some(read("etcd_ca_file", path)?),
            None => None,
        };
        let identity = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(cert), Some(key)) => {
                Some((read("etcd_cert_file", cert)?, read("etcd_key_file", key)?))
            }
            _ => None,
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(path)) => {
                let password = String::from_utf8(read("etcd_password_file", path)?)
                    .context("cluster.etcd_password_file is not text")?;
                Some((
                    user.clone(),
                    password.trim_end_matches(['\r', '\n']).to_owned(),
                ))
            }
            _ => None,
        };
        if self.endpoints.iter().any(|e| e.starts_with("https://")) && ca_pem.is_none() {
            bail!(
                "cluster.endpoints has an https:// address but no cluster.etcd_ca_file: name \
                 the CA (PEM) that signed etcd's server certificate"
            );
        }
        if ca_pem.is_some() && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            bail!(
                "cluster.etcd_ca_file is set but an endpoint is http://: write https:// (or \
                 HOST:PORT alone) for an etcd serving TLS"
            );
        }
        Ok(EtcdCredentials {
            ca_pem,
            identity,
            user,
        })
    }

    /// Checks what can be checked before anything starts (the endpoints
    /// are checked at start: `--cluster` may give them after the file is
    /// read).
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            bail!(
                "cluster.prefix = {:?} must start and end with `/` (e.g. \"/sockgate/v1/\")",
                self.prefix
            );
        }
        let node = self.node_name();
        if node.is_empty()
            || node.len() > 63
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!(
                "cluster.node = {node:?}: a node name is 1 to 63 letters, digits, `-`, `_` or `.`"
            );
        }
        if self.spread_timeout_secs == 0 {
            bail!("cluster.spread_timeout_secs must be at least 1");
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            bail!(
                "cluster.etcd_cert_file and cluster.etcd_key_file go together: a client \
                 certificate needs its key"
            );
        }
        if self.etcd_user.is_some() != self.etcd_password_file.is_some() {
            bail!(
                "cluster.etcd_user and cluster.etcd_password_file go together: name the file \
                 holding the user's password"
            );
        }
        if self.etcd_cert_file.is_some() && self.etcd_ca_file.is_none() {
            bail!(
                "cluster.etcd_cert_file needs cluster.etcd_ca_file: a client certificate is \
                 presented over TLS, which checks etcd's certificate against that CA"
            );
        }
        self.read_token()?;
        Ok(())
    }
}
