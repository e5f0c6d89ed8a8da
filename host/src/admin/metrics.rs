//! Prometheus metrics, in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};

use super::{Body, respond};
use crate::gateway::Gateway;
use crate::runtime::supervisor::TrapCause;

/// Renders every metric.
pub(crate) async fn render(gateway: &Gateway) -> Response<Body> {
    let apps = gateway.apps().await;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let mut lines: Vec<String> = Vec::new();

    let _ = family(
        "sockgate_connections_active",
        "gauge",
        "Connections open now.",
    );
    let mut body = std::mem::take(&mut out);
    for app in &apps {
        let _ = writeln!(
            body,
            "sockgate_connections_active{{app=\"{}\"}} {}",
            app.name, app.active_connections
        );
    }
    lines.push(body);

    let mut section = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let mut text = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (labels, value) in rows {
            let _ = writeln!(text, "{name}{{{labels}}} {value}");
        }
        lines.push(text);
    };
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut closed = Vec::new();
    let mut bytes = Vec::new();
    let mut traps = Vec::new();
    let mut instances = Vec::new();
    for app in &apps {
        let Some(running) = gateway.app(&app.name) else {
            continue;
        };
        let c = &running.account().counters;
        let label = format!("app=\"{}\"", app.name);
        accepted.push((label.clone(), c.accepted.load(Ordering::Relaxed)));
        for (limit, counter) in [
            ("gateway.max_connections", &c.refused_gateway_full),
            (
                "gateway.reserved_connections_percent",
                &c.refused_gateway_share,
            ),
            ("max_connections", &c.refused_app_full),
            ("max_connections_per_ip", &c.refused_per_ip),
            ("max_connections_per_instance", &c.refused_instances_full),
        ] {
            refused.push((
                format!("{label},limit=\"{limit}\""),
                counter.load(Ordering::Relaxed),
            ));
        }
        for (limit, counter) in [
            ("idle_timeout_secs", &c.closed_idle),
            ("max_connection_secs", &c.closed_lifetime),
        ] {
            closed.push((
                format!("{label},limit=\"{limit}\""),
                counter.load(Ordering::Relaxed),
            ));
        }
        bytes.push((
            format!("{label},direction=\"in\""),
            c.bytes_in.load(Ordering::Relaxed),
        ));
        bytes.push((
            format!("{label},direction=\"out\""),
            c.bytes_out.load(Ordering::Relaxed),
        ));
        for cause in TrapCause::ALL {
            traps.push((
                format!("{label},cause=\"{}\"", cause.as_str()),
                c.traps[cause.index()].load(Ordering::Relaxed),
            ));
        }
        instances.push((label, app.instances as u64));
    }
    section(
        "sockgate_connections_total",
        "counter",
        "Connections handed to the app's current version.",
        accepted,
    );
    section(
        "sockgate_connections_refused_total",
        "counter",
        "Connections refused, by the limit that refused them.",
        refused,
    );
    section(
        "sockgate_connections_closed_by_limit_total",
        "counter",
        "Connections closed by a time limit.",
        closed,
    );
    section(
        "sockgate_bytes_total",
        "counter",
        "Bytes between clients and the app.",
        bytes,
    );
    section(
        "sockgate_traps_total",
        "counter",
        "Instance traps, by cause.",
        traps,
    );
    section(
        "sockgate_instances",
        "gauge",
        "Instances serving the app.",
        instances,
    );
    let expiries = super::certificate_status(gateway, &apps)
        .into_iter()
        .filter_map(|(app, name, expiry)| {
            expiry.map(|at| (format!("app=\"{app}\",name=\"{name}\""), at))
        })
        .collect();
    section(
        "sockgate_certificate_expiry_timestamp_seconds",
        "gauge",
        "When each served TLS name's certificate expires (Unix seconds).",
        expiries,
    );
    // HTTP apps: requests by protocol and status, and their durations.
    let mut requests = Vec::new();
    let mut durations = String::new();
    for app in &apps {
        if let Some(http) = gateway
            .app(&app.name)
            .as_deref()
            .and_then(|a| a.http().cloned())
        {
            requests.extend(http.stats().request_rows(&app.name));
            durations.push_str(&http.stats().duration_lines(&app.name));
        }
    }
    section(
        crate::http::stats::REQUESTS_METRIC,
        "counter",
        "HTTP requests to HTTP apps, by protocol (h1, h2, h3) and status code.",
        requests,
    );
    let (hits, misses) = gateway.cache_stats();
    section(
        "sockgate_compile_cache_total",
        "counter",
        "Component loads, by compile cache result.",
        vec![
            ("result=\"hit\"".into(), hits),
            ("result=\"miss\"".into(), misses),
        ],
    );
    section(
        "sockgate_component_images",
        "gauge",
        "Distinct compiled components in memory; apps of the same bytes share one.",
        vec![(String::new(), gateway.component_images() as u64)],
    );
    let memory = gateway.tracker().memory();
    section(
        "sockgate_guest_memory_bytes",
        "gauge",
        "Linear memory all instances hold, and the ceiling (max_guest_memory_mb) if set.",
        std::iter::once(("kind=\"used\"".to_owned(), memory.used() as u64))
            .chain(
                memory
                    .ceiling()
                    .map(|ceiling| ("kind=\"ceiling\"".to_owned(), ceiling as u64)),
            )
            .collect(),
    );
    let wakes: String = apps
        .iter()
        .filter_map(|app| gateway.app(&app.name))
        .map(|app| app.account().counters.wakes.lines(app.name()))
        .collect();
    let name = crate::tenant::hibernation::WAKE_METRIC;
    lines.push(format!(
        "# HELP {name} Wakes of hibernated instances, from the connection that woke one to \
         the fresh instance ready.\n# TYPE {name} histogram\n{wakes}"
    ));
    let name = crate::http::stats::DURATION_METRIC;
    lines.push(format!(
        "# HELP {name} HTTP requests to HTTP apps, from the request head to the end of the \
         response body.\n# TYPE {name} histogram\n{durations}"
    ));
    respond(StatusCode::OK, "text/plain; version=0.0.4", lines.concat())
}
