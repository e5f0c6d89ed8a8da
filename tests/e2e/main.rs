//! End-to-end tests: the real `sockgate` binary, real guests built from
//! `guests/`, real TCP clients on loopback.

mod browser;
mod languages;
mod support;
mod tls_support;

mod chat;
mod cluster;
mod compile_cache;
mod dashboard;
mod deploy;
mod echo;
mod events_world;
mod fairness;
mod go_panic;
mod guest_steps;
mod hibernate;
mod http_apps;
mod http_hello;
mod lazy_start;
mod limits;
mod memory_ceiling;
mod new_project;
mod oci;
mod portless;
mod production;
mod refusals;
mod reload;
mod security_guest;
mod sync_world;
mod traps;

// TLS termination, SNI routing and certificates (dev CA, files, ACME).
mod acme;
mod tls;

// QUIC with the same certificates; quinn and aioquic clients.
mod quic;

// The security review's findings, each tried as an attacker would.
mod security_admin;
mod security_names;
mod security_net;
