//! Which app serves a connection, by name: the table the TLS and QUIC
//! listeners consult with the client's server name (SNI), and that deploys
//! update while the gateway runs; and who may claim which name
//! ([`NamePolicy`]).
//!
//! Names are owned: `<app>.<base domain>` (and every name under it) is app
//! `<app>`'s alone, a base domain is no app's, a custom domain belongs to
//! the one app that claimed it, and names outside every base domain are
//! claimable only as the operator allows (`[tls] allowed_domains`). An
//! app's custom domains are replaced by each deploy and dropped with it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::apps::app::App;
use crate::base::locks::{read, write};
use crate::base::names::{DnsName, normalize_name};
use crate::certs::ServedNames;
use crate::runtime::http::serving::{HttpApp, SiteMap};

/// The apps by name, and the base domains whose subdomains name them.
#[derive(Default)]
pub struct Router {
    apps: RwLock<HashMap<String, Arc<App>>>,
    /// Base domains, lowercase, without a trailing dot: `example.org`
    /// routes `chat.example.org` to app `chat`.
    domains: RwLock<Vec<String>>,
    /// Extra names routed to an app (custom domains), lowercase.
    custom: RwLock<HashMap<String, String>>,
}

impl Router {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds or replaces the app called `name`.
    pub fn insert(&self, name: &str, app: Arc<App>) {
        write(&self.apps).insert(name.to_owned(), app);
    }

    /// Removes the app called `name` and its custom domains, returning it.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
        self.set_custom_domains(name, &[]);
        write(&self.apps).remove(name)
    }

    /// The app called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<App>> {
        read(&self.apps).get(name).cloned()
    }

    /// The names of all apps, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.apps).keys().cloned().collect();
        names.sort();
        names
    }

    /// Sets the base domains.
    pub fn set_domains(&self, domains: &[String]) {
        *write(&self.domains) = domains.iter().map(|d| normalize_name(d)).collect();
    }

    /// The base domains.
    pub fn domains(&self) -> Vec<String> {
        read(&self.domains).clone()
    }

    /// Routes the extra names `domains` to app `app`, replacing the ones
    /// it had: a redeploy without a name stops routing it.
    pub fn set_custom_domains(&self, app: &str, domains: &[DnsName]) {
        let mut custom = write(&self.custom);
        custom.retain(|_, owner| owner != app);
        for domain in domains {
            custom.insert(domain.to_string(), app.to_owned());
        }
    }

    /// The custom domains routed to app `app`.
    pub fn custom_domains_of(&self, app: &str) -> Vec<String> {
        let mut names: Vec<String> = read(&self.custom)
            .iter()
            .filter(|(_, owner)| owner.as_str() == app)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The app name a server name selects: `<app>.<base domain>` for a
    /// configured base domain, or a custom domain. `None` for anything
    /// else, including the bare base domain. `<app>.<base domain>` is
    /// looked at first: it always names app `<app>`.
    pub fn app_name_for_server_name(&self, server_name: &str) -> Option<String> {
        let server_name = normalize_name(server_name);
        let by_subdomain = read(&self.domains).iter().find_map(|domain| {
            let label = server_name
                .strip_suffix(domain.as_str())?
                .strip_suffix('.')?;
            (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
        });
        by_subdomain.or_else(|| read(&self.custom).get(&server_name).cloned())
    }

    /// The app a server name selects, if it is running.
    pub fn app_for_server_name(&self, server_name: &str) -> Option<Arc<App>> {
        self.get(&self.app_name_for_server_name(server_name)?)
    }
}

impl ServedNames for Router {
    fn serves(&self, server_name: &str) -> bool {
        self.app_for_server_name(server_name).is_some()
    }
}

impl SiteMap for Router {
    fn current_http(&self, name: &str) -> Option<Arc<HttpApp>> {
        self.get(name)?.http().cloned()
    }

    fn app_for_host(&self, host: &str) -> Option<String> {
        self.app_name_for_server_name(host)
    }
}

/// Who may claim which server name: moved to the names vocabulary so the
/// configuration can check claims without naming the router.
pub use crate::base::names::NamePolicy;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_select_apps_by_subdomain_and_custom_domain() {
        let router = Router::new();
        router.set_domains(&["Example.org.".into(), "sockgate.test".into()]);
        router.set_custom_domains("chat", &[DnsName::parse("chat.acme.com").unwrap()]);
        let name = |s: &str| router.app_name_for_server_name(s);
        assert_eq!(name("chat.example.org").as_deref(), Some("chat"));
        assert_eq!(name("CHAT.example.org.").as_deref(), Some("chat"));
        assert_eq!(name("echo.sockgate.test").as_deref(), Some("echo"));
        assert_eq!(name("chat.acme.com").as_deref(), Some("chat"));
        assert_eq!(name("example.org"), None);
        assert_eq!(name("a.b.example.org"), None);
        assert_eq!(name("chatexample.org"), None);
        assert_eq!(name("chat.other.org"), None);
        // A redeploy replaces the set; removal drops it.
        router.set_custom_domains("chat", &[DnsName::parse("talk.acme.com").unwrap()]);
        assert_eq!(name("chat.acme.com"), None);
        assert_eq!(name("talk.acme.com").as_deref(), Some("chat"));
        router.remove("chat");
        assert_eq!(name("talk.acme.com"), None);
    }
}
