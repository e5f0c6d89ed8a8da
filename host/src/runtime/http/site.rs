//! Where an HTTP app stands: the routing table it asks ([`SiteMap`],
//! implemented above the runtime by the router, so the runtime never names
//! it) and the shared pieces one app's versions hand on ([`HttpSite`]).
//! Kept apart from the serving code so that a reader looking for "what
//! does the runtime need from the gateway" finds it in one place.

use std::sync::{Arc, OnceLock, Weak};

use http::HeaderValue;

use super::serving::HttpApp;
use crate::http::stats::HttpStats;

/// What an HTTP app asks of the routing table around it, which the
/// runtime never reads itself ([`crate::apps::route::Router`] implements
/// it): which version of an app is current, and which app a host selects.
pub trait SiteMap: Send + Sync {
    /// The current version of app `name` when it is served as an HTTP app
    /// (`None` once it was removed or redeployed as a raw app).
    fn current_http(&self, name: &str) -> Option<Arc<HttpApp>>;
    /// The name of the app that `host` (a request's `Host` or
    /// `:authority`, without port) selects, if any.
    fn app_for_host(&self, host: &str) -> Option<String>;
}

/// The site of an app started alone (tests, benchmarks): no other app,
/// no redeploys.
struct NoSite;

impl SiteMap for NoSite {
    fn current_http(&self, _: &str) -> Option<Arc<HttpApp>> {
        None
    }
    fn app_for_host(&self, _: &str) -> Option<String> {
        None
    }
}

/// What an HTTP app needs from the gateway around it.
#[derive(Clone)]
pub struct HttpSite {
    /// The routing table, to tell whether a request's host selects this
    /// app (else `421`) and which version is current. Weak: the table
    /// holds the app.
    pub router: Weak<dyn SiteMap>,
    /// `Alt-Svc` for HTTP/1.1 and HTTP/2 answers, set once the QUIC
    /// endpoint serves HTTP/3.
    pub alt_svc: Arc<OnceLock<HeaderValue>>,
    /// The app's request counters, shared by its versions.
    pub stats: Arc<HttpStats>,
}

impl Default for HttpSite {
    fn default() -> Self {
        Self {
            router: Weak::<NoSite>::new(),
            alt_svc: Arc::default(),
            stats: Arc::default(),
        }
    }
}
