//! `sockgate dev-ca`: prints the root certificate of the development CA
//! (creating the CA in the state directory if there is none yet), for
//! clients to trust when apps are served with `certificates = "dev-ca"`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sockgate_host::certs::dev_ca::DevCa;
use sockgate_host::certs::store::StateDir;
use sockgate_host::config::Config;

/// Prints the root (PEM) on stdout and where it is kept on stderr.
pub fn print_root(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> Result<()> {
    let configured = config.is_some();
    let mut config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if state_dir.is_some() {
        config.gateway.state_dir = state_dir;
    }
    // With a configuration, the root covers its names as the gateway's would
    // (made anew if the stored one does not); without, any stored root.
    let subtrees = configured.then(|| sockgate_host::config::tls::dev_ca_subtrees(&config));
    let ca = DevCa::load_or_create(&StateDir::new(config.state_dir()), subtrees.as_deref())?;
    std::io::stdout()
        .write_all(ca.root_pem().as_bytes())
        .context("cannot print the root certificate")?;
    eprintln!(
        "sockgate dev-ca: root certificate {} — trust it in your clients only \
         (curl --cacert FILE, openssl s_client -CAfile FILE), never system-wide",
        ca.root_path().display()
    );
    Ok(())
}
