//! The apps being served and the table that routes a connection to one:
//! an [`app::App`] owns the running version of one app (its instances, or
//! its HTTP workers) and picks the instance that takes each connection;
//! the [`route::Router`] maps names (SNI, subdomains, ports) to apps; a
//! [`dormant::Dormant`] app (lazy start) is registered but not loaded yet,
//! and queues its connections until it is.
//!
//! **Architecture invariant:** apps know no transport: they take a
//! [`crate::base::conn::Connection`] from whichever listener accepted it.

pub mod app;
pub mod dormant;
pub mod route;
