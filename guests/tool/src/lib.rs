//! Build steps for sockgate's guests in C, Zig, Go and TypeScript, shared by the
//! `sockgate-guest-tool` binary (which guests/build-lang.sh runs) and by
//! `sockgate c-guest` / `sockgate go-guest` (which the projects `sockgate
//! new --lang c|zig|go` creates run), so that both build guests exactly the
//! same way.
//!
//! - [`c_bindings`]: C bindings for a world (what `wit-bindgen c` writes),
//!   used by the C and Zig guests.
//! - [`go::bindings`]: Go bindings for a world (what `wit-bindgen go`
//!   writes), with the Go support module they import and, for worlds with
//!   async functions, the Go runtime hook they need (see [`go`]).
//! - [`ts::types`]: TypeScript declarations for a world as componentize-qjs
//!   presents it, for the TypeScript guests.
//! - [`component`]: a core module to a component, embedding the WASI
//!   preview1 *reactor* adapter of the wasmtime release the gateway uses, so
//!   that a module built against wasi-libc or Go's `wasip1` port (which
//!   import `wasi_snapshot_preview1`) becomes a component importing WASI 0.2.

pub mod go;
pub mod ts;

use std::path::Path;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
use wit_bindgen_core::{Files, WorldGenerator};
use wit_parser::{Resolve, WorldId};

/// Parses the WIT package in `wit` and selects `world` in it; `None`
/// selects the package's only world.
pub fn load_world(wit: &Path, world: Option<&str>) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot parse the WIT in {}", wit.display()))?;
    let selected = resolve.select_world(&[package], world);
    let id = match (selected, world) {
        (Ok(id), _) => id,
        (Err(err), Some(world)) => {
            return Err(err).with_context(|| format!("no world {world} in {}", wit.display()));
        }
        (Err(_), None) => {
            let names: Vec<&str> = resolve.packages[package]
                .worlds
                .keys()
                .map(String::as_str)
                .collect();
            bail!(
                "{} has several worlds ({}): name one with --world",
                wit.display(),
                names.join(", ")
            );
        }
    };
    Ok((resolve, id))
}

/// Runs `generator` over `world` and writes what it generates into `out`.
fn generate(
    mut generator: Box<dyn WorldGenerator>,
    mut resolve: Resolve,
    world: WorldId,
    out: &Path,
) -> Result<()> {
    let mut files = Files::default();
    generator
        .generate(&mut resolve, world, &mut files)
        .context("cannot generate the bindings")?;
    for (name, contents) in files.iter() {
        write_if_changed(&out.join(name), contents)?;
    }
    Ok(())
}

/// Writes `contents` at `path` (creating its directory) unless the file
/// already holds exactly that, so `make`-style freshness checks hold.
pub(crate) fn write_if_changed(path: &Path, contents: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the C bindings (`<world>.h`, `<world>.c` and the component type
/// object `<world>_component_type.o`) for `world` of the WIT package in
/// `wit` into `out`.
pub fn c_bindings(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (resolve, world) = load_world(wit, Some(world))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    generate(wit_bindgen_c::Opts::default().build(), resolve, world, out).context("C bindings")
}

/// Turns the core module `core` into the component `out`, adapting its
/// `wasi_snapshot_preview1` imports.
///
/// The module must say which world it implements: C bindings link a
/// `component-type` custom section in; for a module without one (Go's),
/// `wit` names the WIT package and world to embed first.
pub fn component(core: &Path, out: &Path, wit: Option<(&Path, Option<&str>)>) -> Result<()> {
    let mut module =
        std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
    if let Some((dir, world)) = wit {
        let (resolve, world) = load_world(dir, world)?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )
        .with_context(|| format!("cannot embed the world of {} in the module", dir.display()))?;
    }
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            "wasi_snapshot_preview1",
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .with_context(|| format!("cannot make a component of {}", core.display()))?;
    std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))
}
