//! The ground floor: vocabulary every other module may use, and that
//! imports nothing of the gateway above it.
//!
//! **Architecture invariant:** nothing in `base/` names a module outside
//! it (checked by `host/tests/layering.rs`).

pub(crate) mod backoff;
pub(crate) mod clock;
pub mod conn;
pub(crate) mod failpoint;
pub(crate) mod fsutil;
pub(crate) mod histogram;
pub(crate) mod locks;
pub mod names;
