//! The `sockgate` command: serve WebAssembly components as network apps,
//! and operate a running gateway.

mod client;
mod dev_ca;
mod guest_steps;
mod log_writer;
mod new;
mod oci;
mod reload;
mod serve;
mod terminal;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sockgate_host::base::names::AppName;
use sockgate_host::config::{AppConfig, Config, Instances, LogFormat};
use sockgate_host::gateway::ConfigFile;

/// Serve network connections from WebAssembly components.
#[derive(Parser)]
#[command(name = "sockgate", version, about)]
struct Cli {
    /// How the gateway's own log (stderr) is written: `text` for people,
    /// `json` (one object a line, with `timestamp`, `level`, `fields.message`,
    /// `target`) for log collectors. Default: `gateway.log_format` of the
    /// configuration file, else `text`.
    #[arg(
        long,
        global = true,
        env = "SOCKGATE_LOG_FORMAT",
        value_name = "text|json"
    )]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// Instances serving the app: a number, or `auto` for one per core.
        /// The default, 1, serves every connection from one long-lived
        /// instance, so they share its state (a chat room, a cache). With
        /// several, connections are spread over instances that each have
        /// their own state, and a trap closes only one instance's
        /// connections.
        #[arg(long, value_name = "N|auto")]
        instances: Option<Instances>,
        /// Drop the app's instances (their memory) after this many seconds
        /// without a connection or pending guest work; the next connection
        /// starts a fresh one (default 0: never). Instance state is lost.
        #[arg(long, value_name = "SECS")]
        hibernate_after_secs: Option<u64>,
        /// Where compiled components are cached.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Serve the apps a configuration file names, and those deployed
    /// through the admin API.
    Serve {
        /// The TOML configuration file (optional with --admin).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve the admin API and dashboard on this address (overrides
        /// gateway.admin).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// The state directory for deployed apps (overrides
        /// gateway.state_dir).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Join a cluster whose apps live in etcd at these addresses
        /// (overrides cluster.endpoints; the file's [cluster] section gives
        /// the node's name, peer address and token).
        #[arg(long, value_name = "etcd://HOST:PORT[,HOST:PORT…]")]
        cluster: Option<String>,
    },
    /// Print the development CA's root certificate (PEM), creating the CA
    /// if needed: clients trust it to reach apps served with
    /// `certificates = "dev-ca"`.
    DevCa {
        /// Take the state directory from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The state directory (overrides the configuration's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Deploy a component as a new version of an app (created if new): a
    /// `.wasm` file, or `oci://REGISTRY/REPOSITORY:TAG` (or `@sha256:…`)
    /// pulled from an OCI registry with the Docker configuration's
    /// credentials.
    Deploy {
        #[command(flatten)]
        args: client::DeployArgs,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// List the apps of a running gateway.
    Ls {
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Print an app's log; with -f, keep printing new lines.
    Logs {
        /// The app.
        name: String,
        /// Follow: print new lines as they come.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Print an app's events (deploys, traps, limits hit); without a name,
    /// the gateway's own (reloads).
    Events {
        /// The app.
        name: Option<String>,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Remove an app (open connections drain).
    Rm {
        /// The app.
        name: String,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Re-read the running gateway's configuration file (as SIGHUP does):
    /// apps added, changed and removed there switch, with drain; a broken
    /// file is refused whole, naming its line, and changes nothing.
    Reload {
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Switch an app back to its previous version.
    Rollback {
        /// The app.
        name: String,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Create a ready-to-build guest project: the WIT, an echo body to
    /// edit, and a README with the build command.
    New {
        /// The app's name (a DNS label: it becomes the app name and
        /// subdomain).
        name: String,
        /// The language to write the guest in.
        #[arg(long, value_enum)]
        lang: new::Lang,
        /// Where to create it (default: ./NAME); must be new or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// An HTTP app: a standard `wasi:http` component (Rust and Python:
        /// WASI 0.3 `wasi:http/service`; JavaScript: WASI 0.2
        /// `wasi:http/proxy` on StarlingMonkey), served over HTTP/1.1,
        /// HTTP/2 and HTTP/3.
        #[arg(long)]
        http: bool,
        /// A guest of the event world `sockgate:events/conn-events`: one
        /// synchronous call per batch of socket events, answered with
        /// actions (Rust, C, Python and JavaScript).
        #[arg(long, conflicts_with = "http")]
        events: bool,
    },
    /// Build steps of a C or Zig guest (run by the build.sh of `sockgate
    /// new --lang c|zig` projects).
    #[command(subcommand)]
    CGuest(guest_steps::CGuestStep),
    /// Build steps of a Go guest (run by the build.sh of `sockgate new
    /// --lang go` projects).
    #[command(subcommand)]
    GoGuest(guest_steps::GoGuestStep),
    /// Build steps of a TypeScript guest (run by the build script of
    /// `sockgate new --lang ts` projects).
    #[command(subcommand)]
    TsGuest(guest_steps::TsGuestStep),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Flushes the gateway's log (briefly) when main returns.
    let format = cli
        .log_format
        .or_else(|| configured_log_format(&cli.command))
        .unwrap_or_default();
    let _flush_log = init_tracing(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err.into()),
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    let client = |admin| client::Client::new(admin);
    let outcome = match command {
        Command::Run {
            component,
            listen,
            name,
            instances,
            hibernate_after_secs,
            cache_dir,
        } => {
            let name = name.unwrap_or_else(|| serve::default_app_name(&component));
            let name = match AppName::parse(&name) {
                Ok(name) => name,
                Err(err) => return fail(&err),
            };
            let mut app = AppConfig::new(name, component, Some(listen));
            app.instances = instances;
            app.limits.hibernate_after_secs = hibernate_after_secs;
            let mut config = Config::default();
            config.gateway.cache_dir = cache_dir;
            config.apps.push(app);
            return result(serve::serve(config, None).await);
        }
        Command::Serve {
            config,
            admin,
            state_dir,
            cluster,
        } => {
            let file = config.map(|path| {
                ConfigFile::new(path, admin, state_dir.clone()).with_cluster(cluster.clone())
            });
            let loaded = match &file {
                Some(file) => file.read(),
                None => Ok(Config::default()),
            };
            let mut config = match loaded {
                Ok(config) => config,
                Err(err) => return fail(&err),
            };
            if admin.is_some() {
                config.gateway.admin = admin;
            }
            if state_dir.is_some() {
                config.gateway.state_dir = state_dir;
            }
            if cluster.is_some() && file.is_none() {
                return fail(&anyhow::anyhow!(
                    "--cluster needs --config FILE with a [cluster] section (peer_listen, \
                     token_file; see the README's \"Run a cluster\")"
                ));
            }
            return result(serve::serve(config, file).await);
        }
        Command::DevCa { config, state_dir } => {
            return result(dev_ca::print_root(config, state_dir));
        }
        Command::New {
            name,
            lang,
            dir,
            http,
            events,
        } => {
            let kind = match (http, events) {
                (true, _) => new::Kind::Http,
                (false, true) => new::Kind::Events,
                (false, false) => new::Kind::Conn,
            };
            return result(new::create(&name, lang, dir, kind));
        }
        Command::CGuest(step) => return result(guest_steps::c_guest(step)),
        Command::GoGuest(step) => return result(guest_steps::go_guest(step)),
        Command::TsGuest(step) => return result(guest_steps::ts_guest(step)),
        Command::Deploy { args, admin } => match client(admin) {
            Ok(client) => client.deploy(args).await,
            Err(failure) => Err(failure),
        },
        Command::Ls { admin } => match client(admin) {
            Ok(client) => client.ls().await,
            Err(failure) => Err(failure),
        },
        Command::Logs {
            name,
            follow,
            admin,
        } => match client(admin) {
            Ok(client) => client.logs(&name, follow).await,
            Err(failure) => Err(failure),
        },
        Command::Events { name, admin } => match client(admin) {
            Ok(client) => client.events(name.as_deref()).await,
            Err(failure) => Err(failure),
        },
        Command::Rm { name, admin } => match client(admin) {
            Ok(client) => client.rm(&name).await,
            Err(failure) => Err(failure),
        },
        Command::Reload { admin } => match client(admin) {
            Ok(client) => reload::reload(&client).await,
            Err(failure) => Err(failure),
        },
        Command::Rollback { name, admin } => match client(admin) {
            Ok(client) => client.rollback(&name).await,
            Err(failure) => Err(failure),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn result(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// Logs to stderr through a bounded queue and a writer thread
/// ([`log_writer`]), so a slow stderr never blocks the runtime; falls back
/// to writing stderr directly if the thread cannot start.
fn init_tracing(format: LogFormat) -> Option<log_writer::FlushOnExit> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::MakeWriter;
    fn install<W>(format: LogFormat, writer: W)
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        match format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
        }
    }
    match log_writer::LossyStderr::start() {
        Ok((writer, flush)) => {
            install(format, writer);
            Some(flush)
        }
        Err(err) => {
            install(format, std::io::stderr);
            tracing::warn!("cannot start the log writer thread ({err}); logging synchronously");
            None
        }
    }
}

/// `gateway.log_format` of the configuration file `sockgate serve` will
/// read, if it says; a file that does not load says nothing here (its
/// error is reported once the log is set up).
fn configured_log_format(command: &Command) -> Option<LogFormat> {
    match command {
        Command::Serve {
            config: Some(path), ..
        } => Config::load(path).ok()?.gateway.log_format,
        _ => None,
    }
}

/// Prints an error and its causes, one per line, without a backtrace.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::FAILURE
}
