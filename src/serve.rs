//! `sockgate run` and `sockgate serve`: start a gateway and keep it running.

use std::path::Path;

use anyhow::Result;
use sockgate_host::Gateway;
use sockgate_host::config::Config;
use sockgate_host::gateway::{AppStatus, ConfigFile};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Starts a gateway for `config` (read from `file`, when there is one),
/// prints how to reach each app, and serves until SIGINT or SIGTERM; SIGHUP
/// reloads `file`.
pub async fn serve(mut config: Config, file: Option<ConfigFile>) -> Result<()> {
    config.validate()?;
    // Watched from the start: a SIGHUP once `sockgate ready` is printed
    // reloads, never kills (the default action).
    let signals = Signals::watch();
    // As the file says it, before a port 0 is bound: what a reload compares.
    let as_read = config.clone();
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
    if let Some(file) = file {
        gateway.enable_reload(file, as_read);
    }
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
    if let Some(line) = gateway.describe_cluster() {
        println!("{line}");
    }
    println!("sockgate ready: {} app(s); Ctrl-C stops", apps.len());
    signals.serve_until_shutdown(&gateway).await;
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
/// loaded. Tests parse its start: `app NAME listening on tcp ADDR`, or
/// `app NAME served by name at URL…` for an app without a port.
fn describe(app: &AppStatus) -> String {
    let how = if app.load.shared {
        "shared with an app of the same component"
    } else if app.load.cache_hit {
        "loaded from compile cache"
    } else {
        "compiled"
    };
    let loaded = format!(
        "[{}, {} KiB, {how} in {} ms]",
        app.component.display(),
        app.load.size.div_ceil(1024),
        app.load.load_ms,
    );
    match app.tcp {
        Some(tcp) => format!(
            "app {} listening on tcp {tcp}  (try: nc {} {})  {loaded}",
            app.name,
            tcp.ip(),
            tcp.port(),
        ),
        None => format!(
            "app {} served by name at {}  {loaded}",
            app.name,
            app.endpoints.join(" ")
        ),
    }
}

/// `echo.wasm` → `echo`, lowercased, with `_` turned into `-`.
pub fn default_app_name(component: &Path) -> String {
    component
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase().replace('_', "-"))
        .unwrap_or_else(|| "app".to_owned())
}

/// The signals a serving gateway answers: SIGINT and SIGTERM stop it,
/// SIGHUP reloads its configuration file.
struct Signals {
    watched: std::io::Result<(Signal, Signal)>,
}

impl Signals {
    /// Starts watching (before this, SIGHUP would end the process).
    fn watch() -> Self {
        let watched = signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::hangup())?)));
        Self { watched }
    }

    /// Serves until SIGINT or SIGTERM; each SIGHUP reloads the
    /// configuration file ([`Gateway::reload`], which records its outcome
    /// as a gateway event and in the log), one after the other.
    async fn serve_until_shutdown(self, gateway: &Gateway) {
        let (mut term, mut hangup) = match self.watched {
            Ok(watched) => watched,
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM and SIGHUP ({err}); Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration file");
                    // The outcome is a gateway event, logged as recorded.
                    let _ = gateway.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
    }
}
