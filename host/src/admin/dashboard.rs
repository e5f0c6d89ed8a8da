//! The dashboard's overview page: server-rendered HTML, readable in any
//! browser and in a terminal browser alike, with the gateway's CPU and
//! memory charts drawn live by `assets/dashboard.js` where scripts run
//! (see [`super::live`]). Each app has its own page ([`super::app_page`]);
//! a cluster node shows its cluster ([`super::cluster_panel`]).

use std::fmt::Write;

use hyper::{Response, StatusCode};

use super::html::escape;
use super::{Body, respond};
use crate::gateway::Gateway;

/// Events and log lines shown per app.
const RECENT: usize = 8;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;\
text-align:left}th{background:#f3f3f3}h2{margin-top:2rem}pre{background:#f7f7f7;padding:.5rem;\
overflow-x:auto;max-height:14rem}.muted{color:#777}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem}\
.chart{min-height:220px}.stats td{font-family:monospace}.bad{color:#b00020;font-weight:bold}";

/// The `<head>` of a dashboard page titled `title` (escaped here), with
/// the charting library, the dashboard's script and the session's CSRF
/// token (in a `<meta>` element for scripts of this origin that change
/// something).
pub(crate) fn head(title: &str, csrf: Option<&str>) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"sockgate-csrf\" content=\"{csrf}\">\
         <link rel=\"stylesheet\" href=\"{css}\"><style>{STYLE}</style>\
         <script src=\"{uplot}\" defer></script><script src=\"{script}\" defer></script>\
         </head><body>",
        title = escape(title),
        csrf = escape(csrf.unwrap_or("")),
        css = super::live::UPLOT_CSS,
        uplot = super::live::UPLOT_JS,
        script = super::live::DASHBOARD_JS,
    )
}

/// Live charts fed by the event stream at `live` (a path of this
/// listener): one chart per group of series (`(title, series names)`),
/// and per series a cell whose `data-points`, `data-last` and
/// `data-total` (the sum over the hour) the script keeps current — what
/// a test, or a person with the inspector, reads.
pub(crate) fn charts(live: &str, groups: &[(&str, &[&str])]) -> String {
    let mut html = format!(
        "<section class=\"live\" data-live=\"{}\"><p class=\"muted live-state\">Charts \
         of the last hour, one point every {} s; they need JavaScript.</p><div class=\"charts\">",
        escape(live),
        super::timeline::STEP.as_secs()
    );
    for (title, series) in groups {
        let _ = write!(
            html,
            "<div class=\"chart\" data-title=\"{}\" data-series=\"{}\"></div>",
            escape(title),
            escape(&series.join(" "))
        );
    }
    html.push_str("</div><table class=\"stats\"><tr><th>series</th><th>latest</th></tr>");
    for series in groups.iter().flat_map(|(_, series)| series.iter()) {
        let _ = write!(
            html,
            "<tr><td>{name}</td><td data-stat=\"{name}\" data-points=\"0\" data-last=\"0\" \
             data-total=\"0\">-</td></tr>",
            name = escape(series)
        );
    }
    html.push_str("</table></section>");
    html
}

/// The page for a visitor without a session: a form that logs in by
/// posting the token (never in a URL, so it stays out of the history,
/// logs and `Referer` headers), with `message` if the last try failed.
pub(crate) fn login_page(status: StatusCode, message: Option<&str>) -> Response<Body> {
    let message = message
        .map(|m| format!("<p><strong>{}</strong></p>", escape(m)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sockgate: log in</title>\
         <style>{STYLE}</style></head><body><h1>sockgate</h1>{message}<p>Paste the admin token \
         (the <code>admin-token</code> file in the gateway's state directory).</p>\
         <form method=\"post\" action=\"/login\"><input name=\"token\" type=\"password\" \
         size=\"70\" autocomplete=\"off\"><button type=\"submit\">Log in</button></form>\
         </body></html>"
    );
    respond(status, "text/html; charset=utf-8", html)
}

/// The dashboard's overview. `csrf`: the session's CSRF token.
pub(crate) async fn page(gateway: &Gateway, csrf: Option<&str>) -> Response<Body> {
    let apps = gateway.apps().await;
    let (hits, misses) = gateway.cache_stats();
    let mut html = head("sockgate", csrf);
    let _ = write!(
        html,
        "<h1>sockgate</h1>\
         <form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>\
         <p>{} app(s), {} connection(s) open; compile cache: {hits} hit(s), {misses} miss(es).</p>\
         <table><tr><th>app</th><th>version</th><th>source</th><th>world</th><th>address</th><th>instances</th>\
         <th>open</th><th>accepted</th><th>refused</th><th>component</th></tr>",
        apps.len(),
        gateway.tracker().active(),
    );
    for app in &apps {
        let _ = write!(
            html,
            "<tr><td><a href=\"/apps/{name}\">{name}</a></td><td>{version}</td><td>{source:?}</td>\
             <td>{world}</td><td>{tcp}</td><td>{instances}{asleep}</td><td>{open}</td><td>{accepted}</td>\
             <td>{refused}</td><td><code>{digest}</code> ({kib} KiB)</td></tr>",
            name = escape(&app.name),
            version = app.version,
            source = app.source,
            world = app.load.world.name(),
            tcp = escape(&app.endpoints.join(" ")),
            instances = app.instances,
            asleep = match app.hibernation {
                "hibernated" => " (hibernated)",
                "dormant" => " (dormant: loads on its first connection)",
                _ => "",
            },
            open = app.active_connections,
            accepted = app.accepted,
            refused = app.refused,
            digest = escape(app.digest.get(..12).unwrap_or(&app.digest)),
            kib = app.load.size.div_ceil(1024),
        );
    }
    html.push_str("</table><h2>The gateway</h2>");
    html.push_str(&charts(
        "/live/gateway",
        &[
            ("CPU (% of one core)", &["cpu_percent"]),
            ("resident memory (MiB)", &["rss_mib"]),
        ],
    ));
    // HTTP apps: requests by protocol.
    let http: Vec<_> = apps
        .iter()
        .filter_map(|app| Some((app, gateway.app(&app.name)?.http()?.stats().clone())))
        .collect();
    if !http.is_empty() {
        html.push_str(
            "<h2>HTTP requests</h2><table><tr><th>app</th><th>HTTP/1.1</th><th>HTTP/2</th>\
             <th>HTTP/3</th><th>total</th></tr>",
        );
        for (app, stats) in &http {
            let [h1, h2, h3] = stats.by_protocol().map(|(_, count)| count);
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{h1}</td><td>{h2}</td><td>{h3}</td><td>{}</td></tr>",
                escape(&app.name),
                stats.total()
            );
        }
        html.push_str("</table>");
    }
    let failed = gateway.failed_apps();
    if !failed.is_empty() {
        html.push_str(
            "<h2>Not started</h2><table><tr><th>app</th><th>version</th><th>why</th></tr>",
        );
        for app in &failed {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&app.name),
                app.version,
                escape(&app.error)
            );
        }
        html.push_str("</table>");
    }
    // The cluster, if any: its nodes and the versions each serves.
    let cluster = gateway.cluster_status().await;
    html.push_str(&super::cluster_panel::panel(cluster.as_ref()));
    html.push_str("<h2>TLS certificates</h2>");
    let certificates = super::certificate_status(gateway, &apps);
    if certificates.is_empty() {
        html.push_str("<p class=\"muted\">TLS is not configured (no [tls] section).</p>");
    } else {
        html.push_str("<table><tr><th>app</th><th>name</th><th>certificate</th></tr>");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for (app, name, expiry) in certificates {
            let state = match expiry {
                Some(at) if at > now => format!("valid, expires in {} days", (at - now) / 86_400),
                Some(_) => "expired".to_owned(),
                None => "none yet (being obtained)".to_owned(),
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{state}</td></tr>",
                escape(&app),
                escape(&name)
            );
        }
        html.push_str("</table>");
    }
    for app in &apps {
        let Some(running) = gateway.app(&app.name) else {
            continue;
        };
        let log = running.log();
        let _ = write!(
            html,
            "<h2 id=\"{name}\"><a href=\"/apps/{name}\">{name}</a></h2>\
             <h3>Recent events (newest first)</h3><pre>",
            name = escape(&app.name)
        );
        let events = log.events();
        for event in events.iter().rev().take(RECENT) {
            let _ = writeln!(html, "{}", escape(&event.kind.to_string()));
        }
        if events.is_empty() {
            html.push_str("(none)");
        }
        html.push_str("</pre><h3>Recent log</h3><pre>");
        let lines = log.lines();
        for line in lines.iter().skip(lines.len().saturating_sub(RECENT)) {
            let _ = writeln!(html, "[{}] {}", line.instance, escape(&line.text));
        }
        if lines.is_empty() {
            html.push_str("(empty)");
        }
        html.push_str("</pre>");
    }
    html.push_str("</body></html>");
    respond(StatusCode::OK, "text/html; charset=utf-8", html)
}
