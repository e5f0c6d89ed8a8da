//! Build helper for sockgate's C guests.
//!
//! ```text
//! sockgate-c-tool bindings WIT_DIR WORLD OUT_DIR   # C bindings, like `wit-bindgen c`
//! sockgate-c-tool component CORE.wasm OUT.wasm     # like `wasm-tools component new --adapt`
//! ```
//!
//! The work is done by the library (`src/lib.rs`), which `sockgate c-guest`
//! shares.

use std::path::Path;

use anyhow::{Result, bail};
use sockgate_c_tool::{bindings, component};

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
