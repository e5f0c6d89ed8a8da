//! End-to-end tests: the real `sockgate` binary, real guests built from
//! `guests/`, real TCP clients on loopback.

mod languages;
mod support;

mod chat;
mod compile_cache;
mod echo;
mod http_hello;
mod limits;
mod refusals;
mod traps;
