//! Build steps for sockgate's C guests, shared by the `sockgate-c-tool`
//! binary (which guests/build-lang.sh runs) and by `sockgate c-guest`
//! (which the C project `sockgate new --lang c` creates runs), so that both
//! build C guests exactly the same way.
//!
//! `component` embeds the WASI preview1 *reactor* adapter of the wasmtime
//! release the gateway uses, so a module built against wasi-libc (which
//! imports `wasi_snapshot_preview1`) becomes a component importing WASI 0.2.

use std::path::Path;

use anyhow::{Context, Result};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
use wit_bindgen_core::Files;
use wit_parser::Resolve;

/// Writes the C bindings (`<world>.h`, `<world>.c` and the component type
/// object `<world>_component_type.o`) for `world` of the WIT package in
/// `wit` into `out`.
pub fn bindings(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot parse the WIT in {}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world {world} in {}", wit.display()))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("cannot generate the C bindings")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        // Rewrite only what changed, so `make`-style freshness checks hold.
        if std::fs::read(&path).ok().as_deref() != Some(contents) {
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Turns the core module `core` (with its component type custom section)
/// into the component `out`, adapting `wasi_snapshot_preview1` imports.
pub fn component(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
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
