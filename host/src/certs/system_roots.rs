//! The TLS client configuration for connections the gateway makes to the
//! public internet on someone's behalf — a guest's outbound `https`
//! request, a component pulled from an OCI registry: the operating
//! system's trusted roots (Debian's `ca-certificates`, or `SSL_CERT_FILE`),
//! read once per process.

use std::sync::{Arc, OnceLock};

/// The client configuration for HTTP/1.1 over TLS, verified against the
/// system's roots. An `Err` says why there is none (no roots found) and
/// what to do; it is the same on every call.
pub fn https_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted root certificates found on this system ({} errors reading them); \
             install the ca-certificates package or set SSL_CERT_FILE",
            found.errors.len()
        ));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(super::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
