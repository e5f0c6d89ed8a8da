//! sockgate: a gateway that serves network connections from WebAssembly
//! components.
//!
//! The path of one connection: a listener ([`listen`]) accepts it and turns it
//! into a transport-neutral [`base::conn::Connection`]; the [`apps::app::App`] it belongs
//! to picks one of its instances (shards); the [`runtime`] hands the bytes to
//! the guest's `handle` export on that long-lived instance and pumps the
//! guest's answer back. [`gateway::Gateway`] assembles all of it from a
//! [`config::Config`].

#![warn(unreachable_pub)]

pub mod admin;
pub mod apps;
pub mod base;
pub mod certs;
pub mod cluster;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub(crate) mod http;
pub mod limits;
pub(crate) mod listen;
pub mod runtime;
pub(crate) mod state;
pub mod tenant;

pub use config::Config;
pub use gateway::Gateway;
