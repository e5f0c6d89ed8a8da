//! sockgate's test kit: the one place the end-to-end tests (`tests/e2e/`)
//! and the benchmarks (`benches/`) take their helpers from, as rustls's
//! `rustls-test` serves its tests and benchmarks.
//!
//! Both drive the real `sockgate` binary with real guests and real clients,
//! so they need the same things: where the repository and the guests are
//! ([`paths`], [`guests`]), a child process whose output can be awaited
//! ([`output`]), a gateway started from a configuration and ready when it
//! says so ([`gateway`] for the tests, [`server`] for the benchmarks, both
//! on the same spawning and parsing), TLS certificates and clients
//! ([`tls`]), Pebble for ACME ([`pebble`]), etcd for cluster mode
//! ([`etcd`]), what a process costs ([`os`]), the message path without sockets ([`in_memory`]) and the
//! benchmarks' measurement and reporting ([`bench`]).
//!
//! A crate rather than a module tree included by `#[path]`: it is compiled
//! once instead of into every test and benchmark binary, its public items
//! need no `allow(dead_code)` where a benchmark uses only part of it, and
//! its own unit tests check the parsing both sides rely on. The one thing
//! a separate crate cannot see at compile time, the path of the `sockgate`
//! binary, Cargo (and nextest) give tests and benchmarks at run time too
//! ([`paths::sockgate_binary`]).

pub mod admin;
pub mod bench;
pub mod etcd;
pub mod gateway;
pub mod guests;
pub mod in_memory;
pub mod net;
pub mod os;
pub mod output;
pub mod paths;
pub mod pebble;
pub mod server;
pub mod tls;
