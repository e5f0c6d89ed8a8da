//! Build helper for sockgate's C guests.
//!
//! ```text
//! sockgate-c-tool bindings WIT_DIR WORLD OUT_DIR   # C bindings, like `wit-bindgen c`
//! sockgate-c-tool component CORE.wasm OUT.wasm     # like `wasm-tools component new --adapt`
//! ```
//!
//! `component` embeds the WASI preview1 *reactor* adapter of the wasmtime
//! release the gateway uses, so a module built against wasi-libc (which
//! imports `wasi_snapshot_preview1`) becomes a component importing WASI 0.2.

use std::path::Path;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
use wit_bindgen_core::Files;
use wit_parser::Resolve;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bindings", wit, world, out] => bindings(Path::new(wit), world, Path::new(out)),
        ["component", core, out] => component(Path::new(core), Path::new(out)),
        _ => bail!(
            "usage: sockgate-c-tool bindings WIT_DIR WORLD OUT_DIR\n       \
             sockgate-c-tool component CORE.wasm OUT.wasm"
        ),
    }
}

/// Writes the C bindings (`<world>.h`, `<world>.c` and the component type
/// object `<world>_component_type.o`) for `world` of the WIT package in
/// `wit` into `out`.
fn bindings(wit: &Path, world: &str, out: &Path) -> Result<()> {
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
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out)?;
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
fn component(core: &Path, out: &Path) -> Result<()> {
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
