//! Listeners: they accept client connections on one transport and turn
//! them into [`Connection`](crate::base::conn::Connection)s for an app. They know
//! nothing about WebAssembly.

pub mod accept;
pub mod http;
pub mod quic;
pub mod route;
pub mod tcp;
pub mod tls;
