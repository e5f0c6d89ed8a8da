//! The e2e tests' harness, from the kit they share with the benchmarks
//! (`testkit/`, crate `sockgate-testkit`): the example guests, the real
//! `sockgate` binary started with a configuration, and waiting for what it
//! prints. Re-exported here so each test names `crate::support::*`.

pub use sockgate_testkit::gateway::{Gateway, TestApp, run_expecting_failure};
pub use sockgate_testkit::guests::{guest, guest_component, lang_guest};
pub use sockgate_testkit::net::ask;
pub use sockgate_testkit::output::Output;
pub use sockgate_testkit::paths::{ScratchDir, root, shared_cache_dir};
