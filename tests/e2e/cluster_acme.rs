//! Certificates in cluster mode (issue 17): three gateways, each on its own
//! loopback address, order from a real ACME CA (Pebble) through one etcd.
//! Each name is ordered exactly once, by whichever node takes its lock;
//! every node serves the same certificate; the CA validates against the
//! node the name resolves to (pebble-challtestsrv answers per name), which
//! answers the orderer's TLS-ALPN-01 challenge from etcd; the certificate's
//! key is sealed in etcd; and a lock whose holder died is taken over once
//! its lease ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use sockgate_testkit::etcd::Etcd;
use sockgate_testkit::net::free_port;
use sockgate_testkit::pebble::Pebble;
use sockgate_testkit::tls::{client_config, connect, echo_through, served_certificate};

use super::{Cluster, NodeSpec, POLL, free_port_everywhere, node_ip};
use crate::support::TestApp;

/// The base domain of the apps.
const DOMAIN: &str = "sockgate.test";
/// How long a name may take to be served with its certificate by every
/// node: an order against Pebble takes about a second; generous for a
/// busy machine.
const CERTIFIED: Duration = Duration::from_secs(60);

/// The `[tls]` table of every node: TLS (and QUIC) on the node's own IP,
/// the same port everywhere, certificates from `pebble` through
/// TLS-ALPN-01; no plain-HTTP port.
fn tls_tables(pebble: &Pebble, tls_port: u16) -> String {
    format!(
        "[tls]\nlisten = \"{{ip}}:{tls_port}\"\ndomain = \"{DOMAIN}\"\n\n{}\n\
         [http]\nenabled = false\n",
        pebble.acme_table("tls-alpn-01", "")
    )
}

/// Three nodes ordering from `pebble` on `tls_port`; node 1 serves
/// `node_1_apps` (`[[app]]` tables) of its own too.
fn acme_cluster(label: &str, pebble: &Pebble, tls_port: u16, node_1_apps: &str) -> Cluster {
    let spec = NodeSpec {
        tables: tls_tables(pebble, tls_port),
        ..NodeSpec::default()
    };
    let first = NodeSpec {
        tables: format!("{}\n{node_1_apps}", spec.tables),
        ..spec.clone()
    };
    Cluster::start_with(label, Etcd::start(), &[first, spec.clone(), spec])
}

/// Deploys the echo guest as `app` on node 1.
fn deploy_echo(cluster: &Cluster, app: &str) {
    let listen = format!("0.0.0.0:{}", free_port_everywhere());
    cluster.deploy(1, app, "echo", &["--listen", &listen]);
}

/// The certificate node `n` serves for `name` once it has one (a client
/// verifying against `config`'s roots), after an echo through it.
fn certificate_served(
    runtime: &tokio::runtime::Runtime,
    n: usize,
    tls_port: u16,
    name: &str,
    config: &Arc<ClientConfig>,
) -> CertificateDer<'static> {
    let addr = SocketAddr::from((node_ip(n), tls_port));
    let started = Instant::now();
    loop {
        let attempt = runtime.block_on(async {
            let mut stream = connect(addr, name, config.clone()).await?;
            echo_through(&mut stream, format!("hello {name}\n").as_bytes()).await;
            Ok::<_, std::io::Error>(served_certificate(&stream))
        });
        match attempt {
            Ok(cert) => return cert,
            Err(_) if started.elapsed() < CERTIFIED => std::thread::sleep(POLL),
            Err(err) => panic!(
                "node {n} serves no verified certificate for {name} after {CERTIFIED:?}: {err}"
            ),
        }
    }
}

/// The nodes that logged an order for `name`.
fn orderers(cluster: &Cluster, name: &str) -> Vec<usize> {
    let line = format!("acme: ordering a certificate for {name} ");
    (1..=3)
        .filter(|&n| cluster.node(n).stderr().contains(&line))
        .collect()
}

/// The id of the CA at `directory` in the cluster's keys (the first 16
/// hex digits of its URL's SHA-256).
fn ca_id(directory: &str) -> String {
    Sha256::digest(directory.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn each_name_is_ordered_once_and_every_node_serves_its_certificate() {
    let tls_port = free_port_everywhere();
    let pebble = Pebble::start(tls_port, free_port());
    // Each name resolves to another node: the CA validates there, whichever
    // node ordered.
    let apps = [("one", 1), ("two", 2), ("three", 3)];
    for (app, target) in apps {
        pebble.resolve(&format!("{app}.{DOMAIN}"), IpAddr::V4(node_ip(target)));
    }
    // Node 1's own app (of its file, not the cluster's): only node 1 serves
    // it and orders its certificate, while the CA validates it at node 3.
    pebble.resolve(&format!("own.{DOMAIN}"), IpAddr::V4(node_ip(3)));
    let own = TestApp {
        name: "own",
        guest: "echo",
        extra: "",
    };
    let mut cluster = acme_cluster("cluster-acme", &pebble, tls_port, &own.toml());
    for (app, _) in apps {
        deploy_echo(&cluster, app);
    }
    let runtime = runtime();
    let root = runtime.block_on(pebble.root());
    let config = client_config(std::slice::from_ref(&root), &[]);
    let mut validated = Vec::new();
    for (app, target) in apps {
        let name = format!("{app}.{DOMAIN}");
        let served: Vec<_> = (1..=3)
            .map(|n| certificate_served(&runtime, n, tls_port, &name, &config))
            .collect();
        assert!(
            served.iter().all(|c| *c == served[0]),
            "the nodes serve different certificates for {name}"
        );
        let ordered_by = orderers(&cluster, &name);
        assert_eq!(
            ordered_by.len(),
            1,
            "{name} was ordered by nodes {ordered_by:?}"
        );
        let answered = format!("answered a tls-alpn-01 challenge for {name}");
        assert!(
            cluster.node(target).stderr().contains(&answered),
            "the CA did not validate {name} against node {target}, where it resolves"
        );
        validated.push((name, ordered_by[0], target));
    }
    eprintln!("name, ordered by node, validated against node: {validated:?}");
    // Every node prepared each deployed name once the name routed to its
    // app: none was prepared before (the gateway refuses and says so), and
    // no renewal stopped for a name still served.
    for n in 1..=3 {
        let log = cluster.node(n).stderr();
        for wrong in ["before it selects a running app", "no longer names an app"] {
            assert!(!log.contains(wrong), "node {n} logged `{wrong}`:\n{log}");
        }
    }
    // Node 1's own app: ordered there, validated at node 3, which answered
    // from what node 1 published in etcd.
    let name = format!("own.{DOMAIN}");
    certificate_served(&runtime, 1, tls_port, &name, &config);
    assert_eq!(orderers(&cluster, &name), [1]);
    assert!(
        cluster
            .node(3)
            .stderr()
            .contains(&format!("answered a tls-alpn-01 challenge for {name}")),
        "node 3 did not answer the challenge node 1 published"
    );
    assert_eq!(pebble.orders(), apps.len() + 1, "one order per name");
    // etcd holds each certificate with its key sealed, never in the clear.
    let certs = format!("/sockgate/v1/acme/{}/certs/", ca_id(&pebble.directory));
    let keys = cluster.etcd.keys(&certs);
    assert_eq!(keys.len(), apps.len() + 1, "{keys:?}");
    for key in keys {
        let value = cluster.etcd.get(&key).unwrap();
        assert!(
            value.starts_with("v1.") && !value.contains("PRIVATE KEY"),
            "{key} is not sealed: {value:.60}"
        );
    }
    // No lock outlives its order.
    let locks = format!("/sockgate/v1/acme/{}/locks/", ca_id(&pebble.directory));
    assert_eq!(cluster.etcd.keys(&locks), Vec::<String>::new());

    // etcd gone: ACME pauses, and a node restarted meanwhile serves the
    // certificates it cached in its state directory.
    let name = format!("two.{DOMAIN}");
    let before = certificate_served(&runtime, 2, tls_port, &name, &config);
    cluster.etcd.kill(0);
    cluster.restart(2);
    assert_eq!(
        certificate_served(&runtime, 2, tls_port, &name, &config),
        before
    );
    let paused = format!("acme: {name}: the cluster store is unreachable");
    assert!(
        cluster
            .node(2)
            .running()
            .stderr
            .wait_for(CERTIFIED, |t| t.contains(&paused)),
        "node 2 did not report ACME paused"
    );
    assert_eq!(
        pebble.orders(),
        apps.len() + 1,
        "an order while etcd was gone"
    );
}

#[test]
fn an_order_lock_whose_holder_died_is_taken_over_when_its_lease_ends() {
    let tls_port = free_port_everywhere();
    let pebble = Pebble::start(tls_port, free_port());
    let cluster = acme_cluster("cluster-acme-takeover", &pebble, tls_port, "");
    let name = format!("four.{DOMAIN}");
    // A node that took the lock and died: its lease is revoked below, as
    // etcd does when a dead node's lease runs out (its time to live, a
    // minute here, only bounds the test).
    let granted = cluster.etcd.etcdctl(&["lease", "grant", "60"]);
    let granted = String::from_utf8_lossy(&granted.stdout).into_owned();
    let lease = granted
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("etcdctl lease grant printed {granted:?}"))
        .to_owned();
    let lock = format!(
        "/sockgate/v1/acme/{}/locks/{name}",
        ca_id(&pebble.directory)
    );
    let put = cluster
        .etcd
        .etcdctl(&["put", &format!("--lease={lease}"), &lock, "node-gone"]);
    assert!(put.status.success(), "{put:?}");
    deploy_echo(&cluster, "four");
    let waiting = format!("node node-gone orders the certificate for {name}");
    for n in 1..=3 {
        let stderr = &cluster.node(n).running().stderr;
        assert!(
            stderr.wait_for(CERTIFIED, |t| t.contains(&waiting)),
            "node {n} did not wait for the lock's holder"
        );
    }
    // Nobody orders while the dead node's lease lives.
    assert_eq!(
        pebble.orders(),
        0,
        "an order went out while the lock was held"
    );
    let revoked = cluster.etcd.etcdctl(&["lease", "revoke", &lease]);
    assert!(revoked.status.success(), "{revoked:?}");
    let runtime = runtime();
    let root = runtime.block_on(pebble.root());
    let config = client_config(std::slice::from_ref(&root), &[]);
    let served: Vec<_> = (1..=3)
        .map(|n| certificate_served(&runtime, n, tls_port, &name, &config))
        .collect();
    assert!(served.iter().all(|c| *c == served[0]));
    assert_eq!(pebble.orders(), 1, "one order after the takeover");
    assert_eq!(orderers(&cluster, &name).len(), 1);
}
