//! `sockgate deploy NAME oci://REGISTRY/REPOSITORY:TAG` (or `@sha256:…`):
//! the CLI pulls the component from an OCI registry, the way the component
//! ecosystem distributes them (`wkg oci push`, `spin registry push`,
//! `oras push`), then uploads it through the admin API like a file — so
//! the gateway needs no registry access and no credentials.
//!
//! - `reference.rs`: the `oci://` grammar, refused whole when malformed;
//! - `digest.rs`: `sha256:` digests, and the check of every byte pulled;
//! - `credentials.rs`: the Docker configuration (`auths`, `credHelpers`,
//!   `credsStore`);
//! - `auth.rs`: the `401` challenge, Basic or Bearer (token service);
//! - `http.rs`: one bounded GET over HTTPS or plain HTTP;
//! - `pull.rs`: manifest (or index), then the one wasm layer.
//!
//! Plain HTTP is used for registries on this machine (`localhost`,
//! 127.0.0.0/8, `::1`), as Docker does, and for any registry with
//! `--plain-http`; HTTPS otherwise, verified against the system's roots.

mod auth;
mod credentials;
mod digest;
mod http;
mod pull;
mod reference;

pub(crate) use self::pull::{Pulled, pull};
pub(crate) use self::reference::{Reference, SCHEME};
