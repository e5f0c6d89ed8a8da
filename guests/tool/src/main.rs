//! Build helper for sockgate's guests in C, Zig, Go and TypeScript.
//!
//! ```text
//! sockgate-guest-tool c-bindings WIT_DIR WORLD OUT_DIR    # like `wit-bindgen c`
//! sockgate-guest-tool go-bindings WIT_DIR WORLD OUT_DIR   # like `wit-bindgen go`, plus the
//!                                                         # support module and runtime hook;
//!                                                         # prints the export package(s)
//! sockgate-guest-tool ts-types WIT_DIR WORLD OUT_DIR      # TypeScript declarations for
//!                                                         # componentize-qjs guests
//! sockgate-guest-tool component CORE.wasm OUT.wasm [WIT_DIR WORLD]
//!                                                         # like `wasm-tools component
//!                                                         # [embed +] new --adapt`
//! ```
//!
//! The work is done by the library (`src/lib.rs`), which `sockgate c-guest`
//! and `sockgate go-guest` share. `go-bindings` runs `$GO` (default `go`)
//! to find the Go toolchain's sources when the world is async.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use sockgate_guest_tool::{c_bindings, component, go, ts};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["c-bindings", wit, world, out] => c_bindings(Path::new(wit), world, Path::new(out)),
        ["go-bindings", wit, world, out] => {
            let go_command = std::env::var_os("GO").map_or_else(|| PathBuf::from("go"), Into::into);
            let bindings = go::bindings(Path::new(wit), Some(world), Path::new(out), &go_command)?;
            // Where the guest's code goes, for the build script.
            for package in bindings.export_packages {
                println!("{package}");
            }
            Ok(())
        }
        ["ts-types", wit, world, out] => {
            ts::types(Path::new(wit), Some(world), Path::new(out)).map(|_| ())
        }
        ["component", core, out] => component(Path::new(core), Path::new(out), None),
        ["component", core, out, wit, world] => component(
            Path::new(core),
            Path::new(out),
            Some((Path::new(wit), Some(world))),
        ),
        _ => bail!(
            "usage: sockgate-guest-tool c-bindings WIT_DIR WORLD OUT_DIR\n       \
             sockgate-guest-tool go-bindings WIT_DIR WORLD OUT_DIR\n       \
             sockgate-guest-tool ts-types WIT_DIR WORLD OUT_DIR\n       \
             sockgate-guest-tool component CORE.wasm OUT.wasm [WIT_DIR WORLD]"
        ),
    }
}
