//! HTTP apps, the WebAssembly side: standard `wasi:http` components.
//!
//! Two worlds, told apart by their export ([`detect`]):
//!
//! - **`wasi:http/service`** (WASI 0.3, export `wasi:http/handler@0.3.x`):
//!   `handle: async func(request) -> result<response, error-code>`, called
//!   concurrently on the app's long-lived instances, like `conn-handler`:
//!   one instance serves many requests at once and keeps its state between
//!   them ([`service`]).
//! - **`wasi:http/proxy`** (WASI 0.2, export
//!   `wasi:http/incoming-handler@0.2.x`): a synchronous `handle(request,
//!   response-outparam)`; an instance is created for each request from the
//!   pooling engine, like `conn-handler-sync` ([`proxy`]).
//!
//! Release candidates of WASI 0.3 (`wasi:http/handler@0.3.0-rc-…`, built
//! by toolchains of 2025 and early 2026) do not link with the final 0.3.0
//! wasmtime 48 provides: they are refused with the versions that build
//! 0.3.0 ([`rc_refusal`]).
//!
//! Guests' outbound requests (`wasi:http/client` in 0.3,
//! `outgoing-handler` in 0.2) never use wasmtime's default sender, which
//! connects wherever the guest asks: [`hooks::GatewayHooks`] sends them
//! through the app's outbound policy ([`outbound`]), with TLS verified
//! against the operating system's roots.
//!
//! The protocol side ([`crate::http`]) hands requests over as
//! [`crate::http::Body`] requests; [`bodies`] converts them to and from the
//! body type of `wasmtime-wasi-http`.

pub(crate) mod bodies;
pub(crate) mod hooks;
pub(crate) mod outbound;
mod per_request;
pub(crate) mod proxy;
pub(crate) mod service;
mod service_instance;
pub(crate) mod serving;
pub(crate) mod site;

use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// The interface a WASI 0.3 HTTP component exports (without version).
pub(crate) const SERVICE_EXPORT: &str = "wasi:http/handler";
/// The interface a WASI 0.2 HTTP component exports (without version).
pub(crate) const PROXY_EXPORT: &str = "wasi:http/incoming-handler";
/// The WIT package of `wasi:http`, whose interfaces HTTP apps import.
pub(crate) const HTTP_PACKAGE: &str = "wasi:http";

/// The two `wasi:http` worlds the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// `wasi:http/service` (WASI 0.3): long-lived instances, concurrent
    /// requests.
    Service,
    /// `wasi:http/proxy` (WASI 0.2): an instance per request.
    Proxy,
}

/// What a component's exports say about `wasi:http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detected {
    /// No `wasi:http` handler export.
    NotHttp,
    /// A handler of a final version: the world, and the export's full name.
    Http(HttpWorld, String),
    /// Only a release candidate's handler: its full name.
    ReleaseCandidate(String),
}

/// Reads a component's top-level export names for a `wasi:http` handler:
/// `wasi:http/handler@0.3.<n>` is [`HttpWorld::Service`],
/// `wasi:http/incoming-handler@0.2.<n>` is [`HttpWorld::Proxy`] (any patch
/// version: wasmtime matches them by semver), a pre-release of either
/// (`@0.3.0-rc-2026-03-15`) a [`Detected::ReleaseCandidate`]. A component
/// exporting both worlds is served as `service` (as `wasmtime serve`
/// does).
pub(crate) fn detect(exports: &[String]) -> Detected {
    let mut proxy = None;
    let mut candidate = None;
    for export in exports {
        let Some((interface, version)) = export.split_once('@') else {
            continue;
        };
        let wanted = match interface {
            SERVICE_EXPORT => "0.3.",
            PROXY_EXPORT => "0.2.",
            _ => continue,
        };
        let Some(rest) = version.strip_prefix(wanted) else {
            continue;
        };
        if rest.contains(['-', '+']) || rest.parse::<u32>().is_err() {
            candidate.get_or_insert_with(|| export.clone());
        } else if interface == SERVICE_EXPORT {
            return Detected::Http(HttpWorld::Service, export.clone());
        } else {
            proxy.get_or_insert_with(|| export.clone());
        }
    }
    match (proxy, candidate) {
        (Some(export), _) => Detected::Http(HttpWorld::Proxy, export),
        (None, Some(export)) => Detected::ReleaseCandidate(export),
        (None, None) => Detected::NotHttp,
    }
}

/// Why a component exporting release candidate `export` is refused, and
/// what builds one the gateway serves.
pub(crate) fn rc_refusal(export: &str) -> String {
    format!(
        "it exports `{export}`, a release candidate of WASI's HTTP interfaces; release \
         candidates do not link with the final WASI 0.3.0 (wasi:http@0.3.0) this gateway \
         (wasmtime 48) provides. Rebuild it against WASI 0.3.0: Rust with the `wasip3` crate \
         0.7 to 0.9 (0.9.0+wasi-0.3.0; 0.6 and older are release candidates) or wit-bindgen \
         0.57 or later with the wasi:http@0.3.0 WIT (`sockgate new NAME --lang rust --http` \
         makes such a project); Python with componentize-py 0.25 and the world \
         `wasi:http/service@0.3.0` (`sockgate new NAME --lang python --http`). Or build a \
         WASI 0.2 component exporting `wasi:http/incoming-handler@0.2.x` (Rust `wasip2` 1.x, \
         JavaScript with componentize-js)"
    )
}

/// A `wasi:http` component pre-linked for its world.
pub enum HttpPre<T: 'static> {
    /// `wasi:http/service`, for long-lived instances.
    Service(ServicePre<T>),
    /// `wasi:http/proxy`, for an instance per request.
    Proxy(ProxyPre<T>),
}

impl<T: 'static> HttpPre<T> {
    /// The world.
    pub fn world(&self) -> HttpWorld {
        match self {
            HttpPre::Service(_) => HttpWorld::Service,
            HttpPre::Proxy(_) => HttpWorld::Proxy,
        }
    }
}

impl<T: 'static> Clone for HttpPre<T> {
    fn clone(&self) -> Self {
        match self {
            HttpPre::Service(pre) => HttpPre::Service(pre.clone()),
            HttpPre::Proxy(pre) => HttpPre::Proxy(pre.clone()),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod detect_tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_export_names_the_world() {
        assert_eq!(
            detect(&names(&["wasi:http/handler@0.3.0"])),
            Detected::Http(HttpWorld::Service, "wasi:http/handler@0.3.0".into())
        );
        assert_eq!(
            detect(&names(&["wasi:http/incoming-handler@0.2.4"])),
            Detected::Http(HttpWorld::Proxy, "wasi:http/incoming-handler@0.2.4".into())
        );
        // Both: WASI 0.3 wins.
        assert_eq!(
            detect(&names(&[
                "wasi:http/incoming-handler@0.2.12",
                "wasi:http/handler@0.3.2"
            ])),
            Detected::Http(HttpWorld::Service, "wasi:http/handler@0.3.2".into())
        );
        assert_eq!(
            detect(&names(&[
                "sockgate:gateway/handler@0.1.0",
                "wasi:cli/run@0.2.0"
            ])),
            Detected::NotHttp
        );
    }

    #[test]
    fn release_candidates_are_recognised() {
        let rc = "wasi:http/handler@0.3.0-rc-2026-03-15";
        assert_eq!(detect(&names(&[rc])), Detected::ReleaseCandidate(rc.into()));
        assert_eq!(
            detect(&names(&["wasi:http/incoming-handler@0.2.0-rc-2023-12-05"])),
            Detected::ReleaseCandidate("wasi:http/incoming-handler@0.2.0-rc-2023-12-05".into())
        );
        // A final version beside a candidate is served.
        assert_eq!(
            detect(&names(&[rc, "wasi:http/incoming-handler@0.2.0"])),
            Detected::Http(HttpWorld::Proxy, "wasi:http/incoming-handler@0.2.0".into())
        );
        let text = rc_refusal(rc);
        assert!(text.contains(rc) && text.contains("wasip3") && text.contains("0.3.0"));
    }
}
