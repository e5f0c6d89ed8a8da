//! `sockgate run` and `sockgate serve`: start a gateway and keep it running.

use std::path::Path;

use anyhow::Result;
use sockgate_host::Gateway;
use sockgate_host::config::Config;
use sockgate_host::gateway::AppStatus;

/// Starts a gateway for `config`, prints how to reach each app, and serves
/// until SIGINT or SIGTERM.
pub async fn serve(mut config: Config) -> Result<()> {
    config.validate()?;
    let state_dir = config.state_dir();
    // Before anything is opened: the guests' outbound budget is half of it.
    let descriptors = sockgate_host::tenant::guest_budget::raise_descriptor_limit();
    // The admin listener is bound before any app starts, so its port is
    // known (and protected from guests) from the first app on.
    let admin = match config.gateway.admin {
        Some(addr) => {
            let listener = sockgate_host::admin::bind(addr).await?;
            config.gateway.admin = Some(listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let gateway = Gateway::start(config).await?;
    describe_descriptors(descriptors);
    let apps = gateway.apps().await;
    for app in &apps {
        println!("{}", describe(app));
    }
    for failed in gateway.failed_apps() {
        println!(
            "app {} not started (version {}): {}",
            failed.name, failed.version, failed.error
        );
    }
    if let Some(https) = gateway.https() {
        for line in https.describe() {
            println!("{line}");
        }
    }
    if let Some(listener) = admin {
        let bound = sockgate_host::admin::serve(gateway.clone(), listener)?;
        println!(
            "admin API and dashboard on http://{bound}/  (token in {})",
            state_dir.join("admin-token").display()
        );
    }
    println!("sockgate ready: {} app(s); Ctrl-C stops", apps.len());
    wait_for_shutdown().await;
    Ok(())
}

/// Says what the descriptor limit is (raised to the hard limit before the
/// gateway opened anything), and the guests' share of it.
fn describe_descriptors(raised: std::io::Result<(u64, u64)>) {
    use sockgate_host::tenant::guest_budget::outbound_socket_budget;
    match raised {
        Ok((before, now)) => tracing::info!(
            "file descriptors: limit {now}{}; guests' outbound sockets may use {} of them",
            if before < now {
                format!(" (raised from {before})")
            } else {
                String::new()
            },
            outbound_socket_budget()
        ),
        Err(err) => tracing::warn!(
            "cannot read or raise the file descriptor limit (RLIMIT_NOFILE): {err}; guests' \
             outbound sockets may use {} descriptors",
            outbound_socket_budget()
        ),
    }
}

/// The line printed for each app at start: how to reach it, and what was
/// loaded. Tests parse its start: `app NAME listening on tcp ADDR`.
fn describe(app: &AppStatus) -> String {
    let how = if app.load.cache_hit {
        "loaded from compile cache"
    } else {
        "compiled"
    };
    format!(
        "app {} listening on tcp {}  (try: nc {} {})  [{}, {} KiB, {how} in {} ms]",
        app.name,
        app.tcp,
        app.tcp.ip(),
        app.tcp.port(),
        app.component.display(),
        app.load.size.div_ceil(1024),
        app.load.load_ms,
    )
}

/// `echo.wasm` → `echo`, lowercased, with `_` turned into `-`.
pub fn default_app_name(component: &Path) -> String {
    component
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase().replace('_', "-"))
        .unwrap_or_else(|| "app".to_owned())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
