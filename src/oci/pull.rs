//! Pulling one component: the manifest the reference names (an OCI image
//! manifest, a Docker v2 manifest, or an index whose wasm entry is
//! followed), then its one wasm layer — every byte checked against its
//! digest and every body bounded before it is read.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;

use super::auth::{self, Challenge, TokenRefused};
use super::credentials;
use super::digest::Digest;
use super::http::{self, Endpoint, Response};
use super::reference::Reference;

/// The largest manifest read (the size the OCI distribution spec asks
/// registries to accept). Threat: a hostile registry answering with an
/// endless manifest to exhaust the CLI's memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The most of an error answer that is read, for its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The layer media types of a wasm component: `wkg`/`oci-wasm`'s
/// (the Wasm OCI artifact layout of the CNCF TAG Runtime), and the older
/// `wasm-to-oci`'s.
const WASM_LAYERS: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// A pulled component.
pub(crate) struct Pulled {
    /// The component's bytes, verified against `layer`.
    pub(crate) component: Vec<u8>,
    /// The digest of the manifest the reference resolved to (what pins
    /// this exact version: `oci://…@<manifest>`).
    pub(crate) manifest: Digest,
    /// The digest of the wasm layer: the SHA-256 of the component, which
    /// `sockgate ls` shows as the version's digest.
    pub(crate) layer: Digest,
}

/// What is read of a manifest or an index.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// Pulls the component `reference` names, over plain HTTP if
/// `plain_http` or the registry is on this machine, else HTTPS. At most
/// `max_bytes` of component are accepted.
pub(crate) async fn pull(
    reference: &Reference,
    plain_http: bool,
    max_bytes: usize,
) -> Result<Pulled> {
    let mut registry = Registry::new(reference, plain_http);
    let target = reference.manifest_target();
    let (bytes, media_type, digest) = registry.manifest(&target).await?;
    if let Some(pinned) = &reference.digest {
        pinned.verify(&bytes, &format!("the manifest of {reference}"))?;
    }
    let mut manifest = parse_manifest(&bytes, &media_type, reference)?;
    if is_index(&manifest, &media_type) {
        let entry = pick_from_index(&manifest, reference)?;
        let (bytes, media_type, _) = registry.manifest(&entry.to_string()).await?;
        entry.verify(
            &bytes,
            &format!("the manifest {entry} of {reference}'s index"),
        )?;
        manifest = parse_manifest(&bytes, &media_type, reference)?;
        if is_index(&manifest, &media_type) {
            bail!("{reference}: the index's wasm entry {entry} is itself an index; not supported");
        }
    }
    let layer = pick_layer(&manifest, reference)?;
    let layer_digest = Digest::parse(&layer.digest)
        .with_context(|| format!("{reference}: the manifest's wasm layer"))?;
    if layer.size > max_bytes as u64 {
        bail!(
            "{reference}: the component is {} bytes, more than the {} MiB a deploy may upload",
            layer.size,
            max_bytes >> 20
        );
    }
    let component = registry.blob(&layer_digest, layer.size as usize).await?;
    layer_digest.verify(
        &component,
        &format!("the component (layer {layer_digest}) of {reference}"),
    )?;
    Ok(Pulled {
        component: component.to_vec(),
        manifest: digest,
        layer: layer_digest,
    })
}

fn parse_manifest(bytes: &[u8], media_type: &str, reference: &Reference) -> Result<Manifest> {
    serde_json::from_slice(bytes).with_context(|| {
        format!("{reference}: the registry's manifest ({media_type}) is not a valid OCI manifest")
    })
}

fn is_index(manifest: &Manifest, media_type: &str) -> bool {
    let declared = manifest.media_type.as_deref().unwrap_or(media_type);
    declared == OCI_INDEX
        || declared == DOCKER_LIST
        || (manifest.layers.is_empty() && !manifest.manifests.is_empty())
}

/// The index entry for wasm: the one whose platform's architecture is
/// `wasm` (or whose artifact type is a wasm one), or the only entry.
fn pick_from_index(index: &Manifest, reference: &Reference) -> Result<Digest> {
    let wasm: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == "wasm")
                || d.artifact_type
                    .as_deref()
                    .is_some_and(|t| t.contains("wasm"))
        })
        .collect();
    let entry = match (wasm.as_slice(), index.manifests.as_slice()) {
        ([one], _) => *one,
        ([], [one]) => one,
        ([], entries) => {
            let platforms: Vec<String> = entries
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => d.media_type.clone(),
                })
                .collect();
            bail!(
                "{reference} is an index with no wasm entry (its platforms: {}); deploy a \
                 component published with `wkg oci push`",
                platforms.join(", ")
            );
        }
        (several, _) => bail!(
            "{reference} is an index with {} wasm entries; deploy one by its digest \
             (oci://REGISTRY/REPOSITORY@sha256:…)",
            several.len()
        ),
    };
    Digest::parse(&entry.digest).with_context(|| format!("{reference}: the index's wasm entry"))
}

/// The manifest's one wasm layer.
fn pick_layer<'m>(manifest: &'m Manifest, reference: &Reference) -> Result<&'m Descriptor> {
    let wasm: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| WASM_LAYERS.contains(&l.media_type.as_str()))
        .collect();
    match wasm.as_slice() {
        [one] => Ok(*one),
        [] => {
            let types: Vec<&str> = manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect();
            bail!(
                "{reference} holds no wasm component (no layer of type {}; its layers: {}): is \
                 it a container image? Publish a component with `wkg oci push`",
                WASM_LAYERS.join(" or "),
                if types.is_empty() {
                    "none".to_owned()
                } else {
                    types.join(", ")
                }
            )
        }
        several => bail!(
            "{reference} holds {} wasm layers; sockgate deploys a manifest with one",
            several.len()
        ),
    }
}

/// The registry of one pull: where it is, and the authorization its
/// challenge asked for (obtained once, on the first `401`).
struct Registry<'r> {
    reference: &'r Reference,
    endpoint: Endpoint,
    authorization: Option<String>,
    /// Whether credentials from the Docker configuration were used.
    used_credentials: bool,
}

impl<'r> Registry<'r> {
    fn new(reference: &'r Reference, plain_http: bool) -> Self {
        let https = !(plain_http || reference.is_loopback());
        // Docker Hub's API is not at `docker.io` itself.
        let host = match reference.host.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io".to_owned(),
            host => host.to_owned(),
        };
        Self {
            reference,
            endpoint: Endpoint {
                https,
                host,
                port: reference.port.unwrap_or(if https { 443 } else { 80 }),
            },
            authorization: None,
            used_credentials: false,
        }
    }

    /// The manifest `target` (tag or digest) names: its bytes, its media
    /// type and its digest (as received; checked against the registry's
    /// `Docker-Content-Digest` when it sends one).
    async fn manifest(&mut self, target: &str) -> Result<(Bytes, String, Digest)> {
        let path = format!("/v2/{}/manifests/{target}", self.reference.repository);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let response = self.get(&path, &accept).await?;
        let what = format!("the manifest `{target}` of {}", self.reference);
        if response.status == StatusCode::NOT_FOUND {
            let why = error_text(response).await;
            bail!(
                "{}: no manifest `{target}` in repository `{}` at {} ({why}): check the tag or \
                 digest",
                self.reference,
                self.reference.repository,
                self.endpoint.url()
            );
        }
        let response = self.success(response, &what).await?;
        let media_type = response
            .header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let announced = response.header("docker-content-digest").map(str::to_owned);
        let bytes = response.bytes(MAX_MANIFEST_BYTES, &what).await?;
        let digest = Digest::of(&bytes);
        if let Some(announced) = announced.and_then(|d| Digest::parse(&d).ok())
            && announced != digest
        {
            bail!(
                "{what} does not match its digest: the registry announced {announced}, the \
                 bytes received hash to {digest}"
            );
        }
        Ok((bytes, media_type, digest))
    }

    /// The blob `digest`, of `size` bytes (no more is read).
    async fn blob(&mut self, digest: &Digest, size: usize) -> Result<Bytes> {
        let path = format!("/v2/{}/blobs/{digest}", self.reference.repository);
        let response = self.get(&path, "application/octet-stream").await?;
        let what = format!("the blob {digest} of {}", self.reference);
        if response.status == StatusCode::NOT_FOUND {
            let why = error_text(response).await;
            bail!(
                "{what} is missing from {} ({why}): the registry lost it or it was never \
                 pushed; publish the component again",
                self.endpoint.url()
            );
        }
        let response = self.success(response, &what).await?;
        let bytes = response.bytes(size, &what).await?;
        if bytes.len() != size {
            bail!(
                "{what} is {} bytes where its manifest says {size}",
                bytes.len()
            );
        }
        Ok(bytes)
    }

    /// GET, answering one `401` with the authorization its challenge asks
    /// for.
    async fn get(&mut self, path: &str, accept: &str) -> Result<Response> {
        let response = self.get_once(path, accept).await?;
        if response.status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if self.authorization.is_some() {
            return Err(self.refused());
        }
        let challenge = response
            .header("www-authenticate")
            .map(Challenge::parse)
            .transpose()
            .with_context(|| {
                format!(
                    "the registry {} asks for authentication",
                    self.endpoint.url()
                )
            })?
            .unwrap_or(Challenge::Basic);
        self.authorization = Some(self.authorize(challenge).await?);
        let response = self.get_once(path, accept).await?;
        if response.status == StatusCode::UNAUTHORIZED {
            return Err(self.refused());
        }
        Ok(response)
    }

    /// One GET with the authorization held so far.
    async fn get_once(&self, path: &str, accept: &str) -> Result<Response> {
        let headers = [("accept", accept.to_owned())];
        http::get(
            &self.endpoint,
            path,
            &headers,
            self.authorization.as_deref(),
        )
        .await
        .with_context(|| format!("pulling {}", self.reference))
    }

    async fn authorize(&mut self, challenge: Challenge) -> Result<String> {
        let credentials = credentials::lookup(&self.reference.registry)
            .await
            .with_context(|| format!("the credentials for {}", self.reference.registry))?;
        self.used_credentials = credentials.is_some();
        match challenge {
            Challenge::Basic => match credentials {
                Some(credentials) => Ok(auth::basic(&credentials)),
                None => Err(self.needs_credentials()),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                let found = auth::token(
                    &realm,
                    service.as_deref(),
                    &scope,
                    credentials.as_ref(),
                    self.endpoint.https,
                )
                .await;
                match found {
                    Ok(token) => Ok(token),
                    Err(err) if err.is::<TokenRefused>() => Err(self.refused()),
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// The registry asked for credentials and the Docker configuration
    /// has none for it.
    fn needs_credentials(&self) -> anyhow::Error {
        let registry = &self.reference.registry;
        anyhow!(
            "the registry {registry} needs credentials to pull {} and the Docker configuration \
             ({}) has none for `{registry}`: log in with `docker login {registry}` (or another \
             tool writing that file), or set DOCKER_CONFIG to the directory of a config.json \
             that has them",
            self.reference,
            config_shown()
        )
    }

    /// The registry refused the credentials it was given (or their
    /// absence).
    fn refused(&self) -> anyhow::Error {
        if !self.used_credentials {
            return self.needs_credentials();
        }
        let registry = &self.reference.registry;
        anyhow!(
            "the registry {registry} refused the credentials for `{registry}` in the Docker \
             configuration ({}) to pull {}: log in again with `docker login {registry}`, and \
             check that the account may pull `{}`",
            config_shown(),
            self.reference,
            self.reference.repository
        )
    }

    /// `response` if it succeeded, else an error with the registry's
    /// message.
    async fn success(&self, response: Response, what: &str) -> Result<Response> {
        if response.status.is_success() {
            return Ok(response);
        }
        let status = response.status;
        let why = error_text(response).await;
        if status == StatusCode::FORBIDDEN {
            bail!(
                "the registry {} forbids {what} ({why}): check that the account may pull `{}`",
                self.reference.registry,
                self.reference.repository
            );
        }
        bail!(
            "the registry {} answered {status} for {what}: {why}",
            self.reference.registry
        )
    }
}

/// The Docker configuration file, for messages.
fn config_shown() -> String {
    credentials::config_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no HOME or DOCKER_CONFIG set".into())
}

/// The message of an error answer: the OCI `errors` (`CODE: message`),
/// else the body's start.
async fn error_text(response: Response) -> String {
    let status = response.status;
    let Ok(body) = response.bytes(MAX_ERROR_BYTES, "the error answer").await else {
        return status.to_string();
    };
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) if !errors.errors.is_empty() => errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned();
            if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {text}")
            }
        }
    };
    // The registry's words reach the operator's terminal.
    crate::terminal::printable(&text)
}
