//! The gateways of a cluster against an etcd that serves TLS only, asks
//! every client for a certificate of its CA (`--client-cert-auth`), and has
//! its authentication on, with a user whose permissions cover the
//! cluster's prefix only: `[cluster]`'s `etcd_ca_file`, `etcd_cert_file`,
//! `etcd_key_file`, `etcd_user` and `etcd_password_file`. A deploy on one
//! node is served by the other; a node with a wrong password is told why
//! it cannot reach etcd, and serves what it has meanwhile.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sockgate_testkit::etcd::{Etcd, EtcdTls};
use sockgate_testkit::tls::make_test_ca;

use super::{CONVERGE, Cluster, EXIT_STORE_UNAVAILABLE, NodeSpec, free_port_everywhere};
use crate::support::{ScratchDir, guest};

/// The etcd user of the gateways.
const USER: &str = "sockgate";

/// Writes a file only its owner reads.
fn private_file(path: &Path, text: &str) {
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap(),
        text.as_bytes(),
    )
    .unwrap();
}

/// The `[cluster]` lines of a node reaching the TLS etcd as `USER` with
/// the password in `password_file`.
fn etcd_access(tls: &EtcdTls, password_file: &Path) -> &'static str {
    let lines = format!(
        "etcd_ca_file = {:?}\netcd_cert_file = {:?}\netcd_key_file = {:?}\n\
         etcd_user = {USER:?}\netcd_password_file = {:?}\n",
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
        password_file.display().to_string()
    );
    Box::leak(lines.into_boxed_str())
}

#[test]
fn nodes_reach_an_etcd_with_tls_client_certificates_and_a_user() {
    let dir = ScratchDir::new("cluster-etcd-tls");
    let (ca, cert, key) = make_test_ca(&dir.0, &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let tls = EtcdTls { ca, cert, key };
    let mut etcd = Etcd::start_tls(tls.clone());
    etcd.enable_auth(USER, "correct horse battery staple", "/sockgate/");
    let right = dir.0.join("password");
    private_file(&right, "correct horse battery staple\n");
    let wrong = dir.0.join("wrong-password");
    private_file(&wrong, "not the password\n");
    let node = |password: &Path| NodeSpec {
        cluster: etcd_access(&tls, password),
        ..NodeSpec::default()
    };
    let cluster = Cluster::start_with(
        "cluster-etcd-tls",
        etcd,
        &[node(&right), node(&right), node(&wrong)],
    );

    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    cluster.wait_serving(2, port, "echo", CONVERGE);
    assert!(
        cluster
            .etcd
            .keys("/sockgate/v1/apps/")
            .contains(&"/sockgate/v1/apps/echo".to_owned())
    );

    // The node with the wrong password says so, and has not joined.
    let told = "cannot authenticate to etcd as cluster.etcd_user \"sockgate\"";
    assert!(
        cluster
            .node(3)
            .running()
            .stderr
            .wait_for(CONVERGE, |t| t.contains(told)),
        "node 3 did not report its failed authentication"
    );
    assert_eq!(cluster.version(3, "echo"), None);
    let component = guest("echo").display().to_string();
    let listen = format!("0.0.0.0:{}", free_port_everywhere());
    let (code, stdout, stderr) =
        cluster.cli(3, &["deploy", "other", &component, "--listen", &listen]);
    assert_eq!(code, EXIT_STORE_UNAVAILABLE, "{stdout}{stderr}");
}
