//! `sockgate c-guest`, `sockgate go-guest` and `sockgate ts-guest`: the
//! steps of a C, Zig, Go or TypeScript guest's build that need the
//! component model's tooling (bindings, declarations, component encoding),
//! so that a project `sockgate new` creates needs only its language's own
//! toolchain and this binary. They run the same library
//! (`sockgate-guest-tool`, guests/tool) guests/build-lang.sh uses for the
//! example guests.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

/// The world C and Zig projects implement unless they name another (the C
/// bindings name their files after it: `conn_handler.h`).
pub const C_WORLD: &str = "sockgate:gateway/conn-handler";

/// The steps `sockgate c-guest` performs (C and Zig projects).
#[derive(Subcommand)]
pub enum CGuestStep {
    /// Write the C bindings of a world, by default `conn-handler` (like
    /// `wit-bindgen c`).
    Bindings {
        /// The WIT directory (the project's `wit/`).
        wit: PathBuf,
        /// Where to write `<world>.{h,c}` and `<world>_component_type.o`
        /// (`conn_handler.h` for the default world).
        out: PathBuf,
        /// The world: `sockgate:events/conn-events` for an event-world
        /// project (`sockgate new --events`).
        #[arg(long, default_value = C_WORLD)]
        world: String,
    },
    /// Make a component of a core module built by clang or zig, adapting
    /// its WASI preview1 imports (like `wasm-tools component new --adapt`).
    Component {
        /// The core module (.wasm).
        core: PathBuf,
        /// The component to write.
        out: PathBuf,
    },
}

/// The steps `sockgate go-guest` performs.
#[derive(Subcommand)]
pub enum GoGuestStep {
    /// Write the Go module to build: the bindings of the world (like
    /// `wit-bindgen go`), the Go support module they import, and
    /// `overlay.json` with the runtime hooks Go's wasip1 port lacks (for
    /// `go build -overlay`). Prints the package the guest's code goes in.
    Bindings {
        /// The WIT directory (the project's `wit/`).
        wit: PathBuf,
        /// The directory to write the Go module into.
        out: PathBuf,
        /// The world (default: the WIT package's only world).
        #[arg(long)]
        world: Option<String>,
        /// The go command, whose GOROOT the runtime hooks are derived from.
        #[arg(long, env = "GO", default_value = "go")]
        go: PathBuf,
    },
    /// Make a component of the core module `go build` wrote: embed the
    /// world's type information, adapt the WASI preview1 imports.
    Component {
        /// The WIT directory the bindings came from.
        wit: PathBuf,
        /// The core module (.wasm).
        core: PathBuf,
        /// The component to write.
        out: PathBuf,
        /// The world (default: the WIT package's only world).
        #[arg(long)]
        world: Option<String>,
    },
}

/// The steps `sockgate ts-guest` performs.
#[derive(Subcommand)]
pub enum TsGuestStep {
    /// Write TypeScript declarations (`<world>.d.ts`) for the world as
    /// componentize-qjs presents it to JavaScript, for tsc.
    Types {
        /// The WIT directory (the project's `wit/`).
        wit: PathBuf,
        /// Where to write the declarations.
        out: PathBuf,
        /// The world (default: the WIT package's only world).
        #[arg(long)]
        world: Option<String>,
    },
}

/// Runs a `sockgate c-guest` step.
pub fn c_guest(step: CGuestStep) -> Result<()> {
    match step {
        CGuestStep::Bindings { wit, out, world } => {
            sockgate_guest_tool::c_bindings(&wit, &world, &out)
        }
        CGuestStep::Component { core, out } => sockgate_guest_tool::component(&core, &out, None),
    }
}

/// Runs a `sockgate go-guest` step.
pub fn go_guest(step: GoGuestStep) -> Result<()> {
    match step {
        GoGuestStep::Bindings {
            wit,
            out,
            world,
            go,
        } => {
            let bindings = sockgate_guest_tool::go::bindings(&wit, world.as_deref(), &out, &go)?;
            // Where the guest's own code goes, for the build script.
            for package in bindings.export_packages {
                println!("{package}");
            }
            Ok(())
        }
        GoGuestStep::Component {
            wit,
            core,
            out,
            world,
        } => sockgate_guest_tool::component(&core, &out, Some((&wit, world.as_deref()))),
    }
}

/// Runs a `sockgate ts-guest` step.
pub fn ts_guest(step: TsGuestStep) -> Result<()> {
    match step {
        TsGuestStep::Types { wit, out, world } => {
            sockgate_guest_tool::ts::types(&wit, world.as_deref(), &out).map(|_| ())
        }
    }
}
