//! The ground floor: vocabulary every other module may use, and that
//! imports nothing of the gateway above it.
//!
//! **Architecture invariant:** nothing in `base/` names a module outside
//! it (checked by `host/tests/layering.rs`).

pub mod backoff;
pub mod clock;
pub mod conn;
pub mod failpoint;
pub mod fsutil;
pub mod locks;
pub mod names;
