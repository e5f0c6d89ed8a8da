//! One app's dashboard page, `/apps/NAME`: what runs (version, versions
//! kept for rollback, address, instances), live charts of its traffic
//! ([`super::live`]), its TLS certificates, its events and the tail of its
//! log, each with its time (UTC). Everything the app or its clients can
//! influence is escaped.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Response, StatusCode};

use super::dashboard::{charts, head};
use super::html::escape;
use super::{Body, error, respond};
use crate::certs::format_time;
use crate::gateway::Gateway;
use crate::tenant::logs::Stream;

/// Events shown, newest first.
const EVENTS: usize = 50;
/// Log lines shown, the newest last.
const LOG_TAIL: usize = 100;

/// The charts of an app's page: titles and the series they draw.
const CHARTS: [(&str, &[&str]); 5] = [
    (
        "connections (open; new per step)",
        &["connections", "accepted"],
    ),
    ("bytes per step (in, out)", &["bytes_in", "bytes_out"]),
    ("HTTP requests per step", &["requests"]),
    ("traps per step", &["traps"]),
    (
        "limit hits per step (refused or closed by a limit)",
        &["limit_hits"],
    ),
];

/// The page of app `name`. `csrf`: the session's CSRF token.
pub(crate) async fn page(gateway: &Gateway, name: &str, csrf: Option<&str>) -> Response<Body> {
    let (Some(status), Some(running)) = (gateway.status(name).await, gateway.app(name)) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no running app `{name}` (the overview at / lists them)"),
        );
    };
    let app = escape(&status.name);
    let mut html = head(&format!("sockgate: {}", status.name), csrf);
    let _ = write!(
        html,
        "<p><a href=\"/\">← all apps</a></p><h1>{app}</h1>\
         <table><tr><th>version serving</th><td>{version}</td></tr>\
         <tr><th>deployed</th><td>{deployed}</td></tr>\
         <tr><th>source</th><td>{source:?}</td></tr>\
         <tr><th>world</th><td>{world}</td></tr>\
         <tr><th>address</th><td>{tcp}</td></tr>\
         <tr><th>instances</th><td>{instances}</td></tr>\
         <tr><th>connections open</th><td>{open}</td></tr>\
         <tr><th>accepted / refused (this version)</th><td>{accepted} / {refused}</td></tr>\
         <tr><th>component</th><td><code>{digest}</code> ({kib} KiB)</td></tr>{origin}</table>",
        version = status.version,
        deployed = format_time(UNIX_EPOCH + Duration::from_secs(status.deployed_at)),
        source = status.source,
        world = status.load.world.name(),
        tcp = escape(&status.endpoints.join(" ")),
        instances = status.instances,
        open = status.active_connections,
        accepted = status.accepted,
        refused = status.refused,
        digest = escape(&status.digest),
        kib = status.load.size.div_ceil(1024),
        origin = status
            .origin
            .as_deref()
            .map_or_else(String::new, |origin| format!(
                "<tr><th>pulled from</th><td><code>{}</code></td></tr>",
                escape(origin)
            )),
    );
    html.push_str("<h2>Versions</h2>");
    if status.versions.is_empty() {
        html.push_str(
            "<p class=\"muted\">From the configuration file: one version, changed by a \
             reload.</p>",
        );
    } else {
        html.push_str("<p>Kept for rollback (newest last): ");
        for (i, version) in status.versions.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            if *version == status.version {
                let _ = write!(html, "{sep}<strong>{version} (serving)</strong>");
            } else {
                let _ = write!(html, "{sep}{version}");
            }
        }
        html.push_str("</p>");
    }
    html.push_str("<h2>Traffic</h2>");
    html.push_str(&charts(&format!("/live/apps/{}", status.name), &CHARTS));
    html.push_str("<h2>TLS certificates</h2>");
    certificates(gateway, &status, &mut html);
    let log = running.log();
    html.push_str("<h2>Events (newest first)</h2><pre class=\"events\">");
    let events = log.events();
    for event in events.iter().rev().take(EVENTS) {
        let instance = event
            .instance
            .map(|i| format!(" [instance {i}]"))
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "{}{instance} {}",
            format_time(event.at),
            escape(&event.kind.to_string())
        );
    }
    if events.is_empty() {
        html.push_str("(none)");
    }
    html.push_str("</pre><h2>Log (the newest last)</h2><pre class=\"log\">");
    let lines = log.lines();
    for line in lines.iter().skip(lines.len().saturating_sub(LOG_TAIL)) {
        let stream = match line.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Access => "access",
        };
        let _ = writeln!(
            html,
            "{} [{}] {stream}: {}",
            format_time(line.at),
            line.instance,
            escape(&line.text)
        );
    }
    if lines.is_empty() {
        html.push_str("(empty)");
    }
    html.push_str("</pre></body></html>");
    respond(StatusCode::OK, "text/html; charset=utf-8", html)
}

/// The certificate of each TLS name of the app: its names, issuer and
/// expiry.
fn certificates(gateway: &Gateway, status: &crate::gateway::AppStatus, html: &mut String) {
    let Some(https) = gateway.https() else {
        html.push_str("<p class=\"muted\">TLS is not configured (no [tls] section).</p>");
        return;
    };
    let names = https.names_of(&status.config);
    if names.is_empty() {
        html.push_str("<p class=\"muted\">The app has no TLS name.</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>name</th><th>certificate names</th><th>issuer</th>\
         <th>not after</th></tr>",
    );
    let now = SystemTime::now();
    for name in names {
        let leaf = https
            .certificates()
            .certificate_for(&name)
            .and_then(|key| key.cert.first().cloned());
        let Some(der) = leaf else {
            let _ = write!(
                html,
                "<tr><td>{}</td><td colspan=\"3\">none yet (being obtained)</td></tr>",
                escape(&name)
            );
            continue;
        };
        let names = crate::certs::dns_names_of(&der)
            .map(|n| n.join(", "))
            .unwrap_or_else(|err| format!("{err:#}"));
        let issuer = crate::certs::issuer_of(&der).unwrap_or_else(|err| format!("{err:#}"));
        let expiry = match crate::certs::validity_of(&der) {
            Ok(validity) if validity.not_after > now => format!(
                "{} (in {} days)",
                format_time(validity.not_after),
                validity
                    .not_after
                    .duration_since(now)
                    .map_or(0, |d| d.as_secs() / 86_400)
            ),
            Ok(validity) => format!("{} (expired)", format_time(validity.not_after)),
            Err(err) => format!("{err:#}"),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&name),
            escape(&names),
            escape(&issuer),
            escape(&expiry)
        );
    }
    html.push_str("</table>");
}
