//! Where things are: the repository, the `sockgate` binary under test, the
//! compile caches, and scratch directories under `target/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root (this crate lives in `<root>/testkit`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
}

/// The `sockgate` binary Cargo built for the running test or benchmark.
///
/// Cargo sets `CARGO_BIN_EXE_sockgate` when it builds and when it runs an
/// integration test or benchmark of the root package (nextest too); a
/// separate crate cannot use `env!` for it, so it is read at run time.
pub fn sockgate_binary() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_sockgate")
        .map(PathBuf::from)
        .expect(
            "CARGO_BIN_EXE_sockgate is not set: run the tests and benchmarks through \
             `cargo test`, `cargo nextest run` or `cargo bench`, or set it to the \
             sockgate binary",
        )
}

/// A compile cache shared by the tests of one run, so each component is
/// compiled once.
pub fn shared_cache_dir() -> PathBuf {
    root().join("target/sockgate-test-cache")
}

/// The benchmarks' compile cache, so a component compiled by an earlier
/// benchmark loads at once.
pub fn bench_cache_dir() -> PathBuf {
    root().join("target/bench-cache")
}

/// The working directory of benchmark `bench`, `target/bench-tmp/<bench>`
/// (created; kept after the run, for a look at its configuration).
pub fn bench_dir(bench: &str) -> PathBuf {
    let dir = root().join("target/bench-tmp").join(bench);
    std::fs::create_dir_all(&dir).expect("cannot create target/bench-tmp");
    dir
}

/// A fresh scratch directory under `target/`, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// Creates `target/sockgate-test-tmp/<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root()
            .join("target/sockgate-test-tmp")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
