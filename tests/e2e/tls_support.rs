//! Helpers for the TLS and ACME tests, from the kit (`testkit/`): a
//! gateway with a `[tls]` section, a rustls client, raw ClientHellos, and
//! Pebble (Let's Encrypt's test CA) with its mock DNS server, each on free
//! loopback ports.

pub use sockgate_testkit::gateway::{TlsGateway, WAIT};
pub use sockgate_testkit::net::{free_port, send_and_read_until_closed};
pub use sockgate_testkit::pebble::Pebble;
pub use sockgate_testkit::tls::{
    client_config, client_hello, connect, dev_ca_root, echo_through, make_test_ca, received_alert,
    served_certificate,
};
