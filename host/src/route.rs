//! Which app serves a connection, by name: the table the TLS and QUIC
//! listeners consult with the client's server name (SNI), and that deploys
//! update while the gateway runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::app::App;
use crate::locks::{read, write};

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

    /// Removes the app called `name`, returning it.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
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
        *write(&self.domains) = domains.iter().map(|d| normalize(d)).collect();
    }

    /// The base domains.
    pub fn domains(&self) -> Vec<String> {
        read(&self.domains).clone()
    }

    /// Routes the extra name `domain` to app `app`.
    pub fn add_custom_domain(&self, domain: &str, app: &str) {
        write(&self.custom).insert(normalize(domain), app.to_owned());
    }

    /// The app name a server name selects: `<app>.<base domain>` for a
    /// configured base domain, or a custom domain. `None` for anything
    /// else, including the bare base domain and deeper subdomains.
    pub fn app_name_for_server_name(&self, server_name: &str) -> Option<String> {
        let server_name = normalize(server_name);
        if let Some(app) = read(&self.custom).get(&server_name) {
            return Some(app.clone());
        }
        read(&self.domains).iter().find_map(|domain| {
            let label = server_name
                .strip_suffix(domain.as_str())?
                .strip_suffix('.')?;
            (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
        })
    }

    /// The app a server name selects, if it is running.
    pub fn app_for_server_name(&self, server_name: &str) -> Option<Arc<App>> {
        self.get(&self.app_name_for_server_name(server_name)?)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_select_apps_by_subdomain_and_custom_domain() {
        let router = Router::new();
        router.set_domains(&["Example.org.".into(), "sockgate.test".into()]);
        router.add_custom_domain("chat.acme.com", "chat");
        let name = |s: &str| router.app_name_for_server_name(s);
        assert_eq!(name("chat.example.org").as_deref(), Some("chat"));
        assert_eq!(name("CHAT.example.org.").as_deref(), Some("chat"));
        assert_eq!(name("echo.sockgate.test").as_deref(), Some("echo"));
        assert_eq!(name("chat.acme.com").as_deref(), Some("chat"));
        assert_eq!(name("example.org"), None);
        assert_eq!(name("a.b.example.org"), None);
        assert_eq!(name("chatexample.org"), None);
        assert_eq!(name("chat.other.org"), None);
    }
}
