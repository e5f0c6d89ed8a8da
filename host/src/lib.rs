//! sockgate: a gateway that serves network connections from WebAssembly
//! components.
//!
//! The path of one connection: a listener ([`listen`]) accepts it and turns it
//! into a transport-neutral [`conn::Connection`]; the [`app::App`] it belongs
//! to picks one of its instances (shards); the [`runtime`] hands the bytes to
//! the guest's `handle` export on that long-lived instance and pumps the
//! guest's answer back. [`gateway::Gateway`] assembles all of it from a
//! [`config::Config`].

pub mod admin;
pub mod app;
pub mod certs;
pub mod config;
pub mod conn;
pub mod conns;
pub mod failpoint;
pub mod fsutil;
pub mod gateway;
pub mod guest_budget;
pub mod limits;
pub mod listen;
pub mod locks;
pub mod logs;
pub mod outbound;
pub mod public_ip;
pub mod route;
pub mod runtime;
pub mod store;

pub use config::Config;
pub use gateway::Gateway;
