//! The example guests under `guests/`, built on first use: Rust guests
//! with Cargo, guests in other languages with `guests/build-lang.sh`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::paths::root;

/// Path of the component built from `guests/<name>`, building the guests
/// workspace once per process (a no-op when it is up to date).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Run from guests/ so its .cargo/config.toml applies; the target is
        // also named explicitly.
        let status = Command::new(env!("CARGO"))
            .current_dir(root().join("guests"))
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
            .status()
            .expect("cannot run cargo to build the guests");
        assert!(status.success(), "building the guests failed");
    });
    let path = root()
        .join("guests/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "guest {name} not built at {}",
        path.display()
    );
    path
}

/// Path of `guests/target/lang/<lang>-<name>.wasm`, the guest
/// `guests/<lang>/<name>` in a language other than Rust, running
/// `guests/build-lang.sh <lang>` once per language and process (quick when
/// up to date; it installs a missing toolchain first).
pub fn lang_guest(lang: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    {
        // Held while building: two threads asking for one language build
        // it once, and build-lang.sh never runs twice at once.
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        let built = built.get_or_insert_with(HashSet::new);
        if !built.contains(lang) {
            let status = Command::new("bash")
                .arg(root().join("guests/build-lang.sh"))
                .arg(lang)
                .env("CARGO", env!("CARGO"))
                .status()
                .expect("cannot run guests/build-lang.sh");
            assert!(status.success(), "guests/build-lang.sh {lang} failed");
            built.insert(lang.to_owned());
        }
    }
    let path = root()
        .join("guests/target/lang")
        .join(format!("{lang}-{name}.wasm"));
    assert!(
        path.exists(),
        "guest {lang}/{name} not built at {}",
        path.display()
    );
    path
}

/// Path of the component a guest spec names: `<lang>/<name>` for
/// [`lang_guest`], otherwise a Rust guest crate for [`guest`].
pub fn guest_component(spec: &str) -> PathBuf {
    match spec.split_once('/') {
        Some((lang, name)) => lang_guest(lang, name),
        None => guest(spec),
    }
}
