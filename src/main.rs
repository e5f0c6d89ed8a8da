//! The `sockgate` command: serve WebAssembly components as network apps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sockgate_host::Gateway;
use sockgate_host::config::{AppConfig, Config};
use sockgate_host::gateway::ServedApp;
use sockgate_host::runtime::cache::CacheOutcome;

/// Serve network connections from WebAssembly components.
#[derive(Parser)]
#[command(name = "sockgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one component right away.
    Run {
        /// The component (.wasm) implementing the `conn-handler` world.
        component: PathBuf,
        /// TCP address to accept connections on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// App name, used in logs (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Instances serving the app (default: one per core); set 1 when
        /// connections must share the instance's state.
        #[arg(long)]
        instances: Option<usize>,
        /// Where compiled components are cached.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Serve the apps a configuration file names.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err.into()),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

async fn run(command: Command) -> Result<()> {
    let config = match command {
        Command::Run {
            component,
            listen,
            name,
            instances,
            cache_dir,
        } => {
            let name = name.unwrap_or_else(|| default_app_name(&component));
            let mut app = AppConfig::new(&name, component, listen);
            app.instances = instances;
            let mut config = Config::default();
            config.gateway.cache_dir = cache_dir;
            config.apps.push(app);
            config
        }
        Command::Serve { config } => Config::load(&config)?,
    };
    let gateway = Gateway::start(config).await?;
    for served in gateway.apps() {
        println!("{}", describe(served));
    }
    println!(
        "sockgate ready: {} app(s); Ctrl-C stops",
        gateway.apps().len()
    );
    wait_for_shutdown().await;
    Ok(())
}

/// The line printed for each app at start: how to reach it, and what was
/// loaded. Tests parse its start: `app NAME listening on tcp ADDR`.
fn describe(served: &ServedApp) -> String {
    let how = match served.cache {
        CacheOutcome::Hit => "loaded from compile cache",
        CacheOutcome::Miss => "compiled",
    };
    format!(
        "app {} listening on tcp {}  (try: nc {} {})  [{}, {} KiB, {how} in {} ms]",
        served.app.name(),
        served.tcp,
        served.tcp.ip(),
        served.tcp.port(),
        served.component.display(),
        served.size.div_ceil(1024),
        served.load_time.as_millis(),
    )
}

/// `echo.wasm` → `echo`, lowercased, with `_` turned into `-`.
fn default_app_name(component: &std::path::Path) -> String {
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Prints an error and its causes, one per line, without a backtrace.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::FAILURE
}
