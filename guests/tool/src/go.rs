//! Go guests: what a Go project needs besides the Go toolchain, written into
//! one directory that is a complete Go module (`wit_component`, as
//! `wit-bindgen go` names it):
//!
//! - the bindings `wit-bindgen go` 0.63 generates for the world: the
//!   `//go:wasmexport` entry points in package `main`, one package per
//!   interface, and the `export_<interface>` package where the guest's own
//!   code goes (its `Handle` function);
//! - `go-pkg/`: the Go support module the bindings import
//!   (`go.bytecodealliance.org/pkg`: canonical ABI helpers, the WIT types,
//!   the async glue), as it ships inside the `wit-bindgen-go` crate, with
//!   `go.mod` pointing at it through a `replace`, so a build needs no module
//!   proxy (`GOPROXY=off`);
//! - `overlay.json` for `go build -overlay`: empty for worlds without async
//!   functions; for async worlds, the runtime hook below.
//!
//! ## The runtime hooks
//!
//! Two things the component model needs from a Go guest are not in
//! upstream Go's `wasip1` port. Go's runtime is compiled from `GOROOT/src`
//! on every build, so instead of a patched toolchain the build gets a `go
//! build -overlay` that renames two stock functions and adds one file,
//! `sockgate_wasip1.go`, with sockgate's own versions, which call the stock
//! ones. Both are derived from the toolchain's own sources when the
//! bindings are written; a toolchain whose sources differ is refused with
//! an explanation rather than built into a module that would hang or trap.
//!
//! - **Idle hook** (async worlds). Async exports are driven by
//!   `go.bytecodealliance.org/pkg/wit/async`: the component model calls
//!   the export's callback, which lets the guest's goroutines run and must
//!   return to the host once every goroutine is blocked (waiting for a
//!   stream, a future or a channel). Only the scheduler knows when that is,
//!   so the package asks it through `runtime.wasiOnIdle(func() bool)`, a
//!   hook called when no goroutine can run; the stock `beforeIdle` of
//!   `runtime/lock_wasip1.go` (a no-op) is what gets replaced.
//! - **Wall clock during `cabi_realloc`** (every world). The component
//!   model forbids calling an import while the host is asking the guest for
//!   memory (`cabi_realloc`, when an import returns a list or a string).
//!   Go's allocator may finish a garbage collection right there, and the
//!   collector reads both clocks. The support module already tells the
//!   WASI adapter to answer the monotonic clock from a cached value for
//!   that time; the wall clock (`walltime1` of `runtime/os_wasip1.go`) gets
//!   the same treatment here: the support module's `cabi_realloc` is
//!   written with a call that pauses it too, and while paused it returns
//!   the last value read. Without this a Go guest traps ("cannot leave
//!   component instance") on the first collection that ends inside a read.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{generate, load_world, write_if_changed};

include!(concat!(env!("OUT_DIR"), "/go_pkg.rs"));

/// Where the support module goes inside the bindings directory.
const GO_PKG_DIR: &str = "go-pkg";

/// The import path generated code uses for the async glue: its presence
/// means the world has async functions, and needs the runtime hook.
const ASYNC_IMPORT: &str = "\"go.bytecodealliance.org/pkg/wit/async\"";

/// A rename in one of the runtime's files: the stock function the hook
/// file replaces, and the name it keeps to be called by the replacement.
struct RuntimePatch {
    /// The file, in `GOROOT/src/runtime`.
    file: &'static str,
    /// The stock function's first line (Go 1.24 to 1.27).
    stock: &'static str,
    /// The same with the function renamed.
    renamed: &'static str,
}

/// The runtime functions the hook file replaces.
const RUNTIME_PATCHES: &[RuntimePatch] = &[
    RuntimePatch {
        file: "lock_wasip1.go",
        stock: "func beforeIdle(int64, int64) (*g, bool) {",
        renamed: "func wasip1StockBeforeIdle(int64, int64) (*g, bool) {",
    },
    RuntimePatch {
        file: "os_wasip1.go",
        stock: "func walltime1() (sec int64, nsec int32) {",
        renamed: "func wasip1StockWalltime1() (sec int64, nsec int32) {",
    },
];

/// The file the overlay adds to package runtime.
const HOOK_FILE: &str = "sockgate_wasip1.go";

/// The hook file's source (sockgate's own): see the module documentation.
const HOOK_SOURCE: &str = r#"// Added to package runtime by `sockgate go-guest bindings` (go build
// -overlay); not part of upstream Go. See sockgate's guests/tool/src/go.rs.

//go:build wasip1

package runtime

import _ "unsafe" // for go:linkname

// wasiIdleHook is called by the scheduler when no goroutine can run. It
// returns true when it made a goroutine runnable, so that the scheduler
// looks again instead of going to sleep.
var wasiIdleHook func() bool

// wasiOnIdle installs hook (nil removes it). go.bytecodealliance.org/pkg/
// wit/async reaches it through //go:linkname; the one-argument linkname
// below is what lets the linker allow that.
//
//go:linkname wasiOnIdle
func wasiOnIdle(hook func() bool) {
	wasiIdleHook = hook
}

// beforeIdle is called by findRunnable when there is nothing to run: the
// moment an async export's callback must hand control back to the host.
// Like lock_js.go's, it may run code with write barriers.
//
//go:yeswritebarrierrec
func beforeIdle(now, pollUntil int64) (*g, bool) {
	if hook := wasiIdleHook; hook != nil && hook() {
		return nil, true
	}
	return wasip1StockBeforeIdle(now, pollUntil)
}

// While wasiWalltimePaused is set (inside cabi_realloc, where calling an
// import traps), walltime1 answers with the last wall-clock reading instead
// of asking the host.
var (
	wasiWalltimePaused bool
	wasiLastSec        int64
	wasiLastNsec       int32
)

// wasiSetWalltimePaused is called around every cabi_realloc allocation
// (go.bytecodealliance.org/pkg/wit/runtime, through //go:linkname).
//
//go:linkname wasiSetWalltimePaused
func wasiSetWalltimePaused(paused bool) {
	wasiWalltimePaused = paused
}

func walltime1() (sec int64, nsec int32) {
	if wasiWalltimePaused {
		return wasiLastSec, wasiLastNsec
	}
	sec, nsec = wasip1StockWalltime1()
	wasiLastSec, wasiLastNsec = sec, nsec
	return sec, nsec
}
"#;

/// The support module's `cabi_realloc` pauses the adapter's monotonic
/// clock around its allocation; these edits pause the wall clock too (see
/// the module documentation).
const SUPPORT_PATCHES: &[(&str, &str)] = &[
    (
        "\t\tadapterMonotonicClockSetPaused(true)\n",
        "\t\tadapterMonotonicClockSetPaused(true)\n\t\twasiSetWalltimePaused(true)\n",
    ),
    (
        "\t\tadapterMonotonicClockSetPaused(false)\n",
        "\t\twasiSetWalltimePaused(false)\n\t\tadapterMonotonicClockSetPaused(false)\n",
    ),
];

/// Declares the runtime's wall-clock pause in the support module's runtime
/// package (appended to its `runtime.go`).
const SUPPORT_DECLARATION: &str = "
// Added by `sockgate go-guest bindings`: pauses the Go runtime's wall clock
// as the adapter pauses the monotonic one (see runtime/sockgate_wasip1.go).
//
//go:linkname wasiSetWalltimePaused runtime.wasiSetWalltimePaused
func wasiSetWalltimePaused(paused bool)
";

/// The support module's file `SUPPORT_PATCHES` apply to.
const SUPPORT_RUNTIME: &str = "wit/runtime/runtime.go";

/// What [`bindings`] wrote.
#[derive(Debug)]
pub struct Bindings {
    /// The `export_<interface>` packages, where the guest's own code goes
    /// (directory names inside the bindings directory).
    pub export_packages: Vec<String>,
    /// Whether the world has async functions (whose entry points need the
    /// idle hook).
    pub is_async: bool,
}

/// Writes the Go module for `world` (default: the package's only world) of
/// the WIT in `wit` into `out`: bindings, support module, runtime hooks and
/// `overlay.json`. `go` is the Go command whose `GOROOT` the runtime hooks
/// are derived from.
pub fn bindings(wit: &Path, world: Option<&str>, out: &Path, go: &Path) -> Result<Bindings> {
    let (resolve, world) = load_world(wit, world)?;
    let opts = wit_bindgen_go::Opts {
        // Deterministic output, whether or not a `gofmt` is on PATH.
        format: wit_bindgen_go::Format::False,
        quiet: true,
        ..Default::default()
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    generate(opts.build(), resolve, world, out).context("Go bindings")?;

    // The generated go.mod requires the support module from the proxy:
    // point it at the copy written beside it instead.
    let (module, version) = wit_bindgen_go::remote_pkg_version()
        .split_once(' ')
        .map(|(m, v)| (m.to_owned(), v.to_owned()))
        .context("unexpected support module version from wit-bindgen-go")?;
    // The module's Go version must be at least its dependency's.
    let go_version = GO_PKG
        .iter()
        .find(|(path, _)| *path == "go.mod")
        .and_then(|(_, go_mod)| go_mod.lines().find_map(|l| l.strip_prefix("go ")))
        .context("the support module's go.mod has no `go` line")?;
    let go_mod = format!(
        "// Written by `sockgate go-guest bindings`.\nmodule wit_component\n\ngo {go_version}\n\n\
         require {module} {version}\n\nreplace {module} => ./{GO_PKG_DIR}\n"
    );
    write_if_changed(&out.join("go.mod"), go_mod.as_bytes())?;
    for (path, contents) in GO_PKG {
        let contents = if *path == SUPPORT_RUNTIME {
            patch_support_runtime(contents)?
        } else {
            (*contents).to_owned()
        };
        write_if_changed(&out.join(GO_PKG_DIR).join(path), contents.as_bytes())?;
    }

    let mut export_packages = Vec::new();
    let mut is_async = false;
    for file in generated_go_files(out)? {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        is_async |= source.contains(ASYNC_IMPORT);
        // The entry points call into the export packages, which hold the
        // guest's own code (generated only when they have types).
        for line in source.lines() {
            if let Some(package) = line
                .trim()
                .strip_prefix("\"wit_component/")
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|package| package.starts_with("export_"))
            {
                export_packages.push(package.to_owned());
            }
        }
    }
    export_packages.sort();
    export_packages.dedup();
    for package in &export_packages {
        let dir = out.join(package);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let goroot = goroot(go)?;
    let overlay = runtime_overlay(&goroot, out)?;
    write_if_changed(&out.join("overlay.json"), overlay.as_bytes())?;
    format_sources(&goroot, out)?;
    Ok(Bindings {
        export_packages,
        is_async,
    })
}

/// The `wit_bindings.go` files generated under `out` (the support module's
/// own files excluded).
fn generated_go_files(out: &Path) -> Result<Vec<PathBuf>> {
    let mut found = vec![out.join("wit_exports.go")];
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path().join("wit_bindings.go");
        if path.is_file() {
            found.push(path);
        }
    }
    found.retain(|p| p.is_file());
    Ok(found)
}

/// Formats the generated sources with the toolchain's gofmt (for whoever
/// reads them in an editor; the generator writes them unformatted so that
/// its output does not depend on what else is on PATH).
fn format_sources(goroot: &Path, out: &Path) -> Result<()> {
    let gofmt = goroot.join("bin/gofmt");
    let output = Command::new(&gofmt)
        .arg("-w")
        .arg(out)
        .output()
        .with_context(|| format!("cannot run {}", gofmt.display()))?;
    if !output.status.success() {
        bail!(
            "gofmt found errors in the generated Go bindings: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `go env GOROOT`.
fn goroot(go: &Path) -> Result<PathBuf> {
    let output = Command::new(go)
        .args(["env", "GOROOT"])
        .output()
        .with_context(|| {
            format!(
                "cannot run `{} env GOROOT`: the runtime hooks are derived from the Go \
                 toolchain's sources (set GO, or pass --go, to the go command)",
                go.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "`{} env GOROOT` failed: {}",
            go.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let root = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if root.is_empty() {
        bail!("`{} env GOROOT` printed nothing", go.display());
    }
    Ok(PathBuf::from(root))
}

/// The support module's `runtime.go` with the wall-clock pause added.
fn patch_support_runtime(stock: &str) -> Result<String> {
    let mut patched = stock.to_owned();
    for (from, to) in SUPPORT_PATCHES {
        if patched.matches(from).count() != 1 {
            bail!(
                "the Go support module's {SUPPORT_RUNTIME} is not the one sockgate knows how to \
                 hook (no single `{}`)",
                from.trim()
            );
        }
        patched = patched.replace(from, to);
    }
    patched.push_str(SUPPORT_DECLARATION);
    Ok(patched)
}

/// Writes the runtime hooks under `out/runtime-hook/` and returns the
/// overlay JSON that puts them into `goroot`'s runtime.
fn runtime_overlay(goroot: &Path, out: &Path) -> Result<String> {
    let runtime = goroot.join("src/runtime");
    let hook_dir = out.join("runtime-hook");
    let mut replaced = Vec::new();
    for patch in RUNTIME_PATCHES {
        let path = runtime.join(patch.file);
        let stock = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} a Go toolchain with the wasip1 port (Go 1.24 or later)?",
                path.display(),
                goroot.display()
            )
        })?;
        if stock.matches(patch.stock).count() != 1 {
            bail!(
                "{} has no `{}` as sockgate's runtime hooks expect (Go 1.24 to 1.27 have it): \
                 use Go 1.27 (the version sockgate is tested with)",
                path.display(),
                patch.stock
            );
        }
        write_if_changed(
            &hook_dir.join(patch.file),
            stock.replace(patch.stock, patch.renamed).as_bytes(),
        )?;
        replaced.push((path, patch.file));
    }
    write_if_changed(&hook_dir.join(HOOK_FILE), HOOK_SOURCE.as_bytes())?;
    let hook_dir = std::fs::canonicalize(&hook_dir)
        .with_context(|| format!("cannot resolve {}", hook_dir.display()))?;
    let mut entries: Vec<String> = replaced
        .iter()
        .map(|(path, file)| {
            format!(
                "  {}: {}",
                json_string(path),
                json_string(&hook_dir.join(file))
            )
        })
        .collect();
    entries.push(format!(
        "  {}: {}",
        json_string(&runtime.join(HOOK_FILE)),
        json_string(&hook_dir.join(HOOK_FILE))
    ));
    Ok(format!(
        "{{\"Replace\": {{\n{}\n}}}}\n",
        entries.join(",\n")
    ))
}

/// `path` as a JSON string.
fn json_string(path: &Path) -> String {
    let mut quoted = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_support_module_is_embedded_with_its_sources() {
        let paths: Vec<&str> = GO_PKG.iter().map(|(p, _)| *p).collect();
        for wanted in [
            "go.mod",
            "wit/runtime/runtime.go",
            "wit/async/async.go",
            "wit/types/stream.go",
        ] {
            assert!(paths.contains(&wanted), "{wanted} missing from {paths:?}");
        }
        assert!(!paths.iter().any(|p| p.ends_with(".html")), "{paths:?}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(Path::new("/a \"b\"\\c")), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn the_hooks_call_the_stock_functions_they_rename() {
        for patch in RUNTIME_PATCHES {
            let renamed = patch.renamed.trim_start_matches("func ");
            let name = &renamed[..renamed.find('(').unwrap()];
            assert!(
                HOOK_SOURCE.contains(&format!("{name}(")),
                "{name} is not called"
            );
        }
    }

    #[test]
    fn the_support_module_gets_the_wall_clock_pause() {
        let (_, stock) = GO_PKG.iter().find(|(p, _)| *p == SUPPORT_RUNTIME).unwrap();
        let patched = patch_support_runtime(stock).unwrap();
        assert_eq!(patched.matches("wasiSetWalltimePaused(true)").count(), 1);
        assert_eq!(patched.matches("wasiSetWalltimePaused(false)").count(), 1);
        assert!(patched.contains("//go:linkname wasiSetWalltimePaused runtime."));
    }
}
