//! Listeners: they accept client connections on one transport and turn
//! them into [`Connection`](crate::base::conn::Connection)s for an app. They know
//! nothing about WebAssembly.

pub(crate) mod accept;
pub(crate) mod http;
pub(crate) mod quic;
pub(crate) mod route;
pub(crate) mod tcp;
pub(crate) mod tls;
