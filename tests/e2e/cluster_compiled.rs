//! `[cluster] share_compiled = true`: the node that receives a deploy
//! compiles the component, and the others fetch its compiled code (checked
//! against the SHA-256 it published in etcd) instead of compiling it again.
//! Each node has a compile cache of its own, as on separate machines.

use super::{CONVERGE, Cluster, NodeSpec, free_port_everywhere};
use sockgate_testkit::etcd::Etcd;

#[test]
fn nodes_fetch_the_compiled_code_instead_of_compiling() {
    let spec = NodeSpec {
        cluster: "share_compiled = true\n",
        own_cache: true,
        ..NodeSpec::default()
    };
    let cluster = Cluster::start_with("cluster-compiled", Etcd::start(), &vec![spec; 3]);
    let port = free_port_everywhere();
    cluster.deploy(1, "echo", "echo", &["--listen", &format!("0.0.0.0:{port}")]);
    for n in [2, 3] {
        cluster.wait_serving(n, port, "echo", CONVERGE);
        let log = cluster.node(n).stderr();
        assert!(
            log.contains("compiled code of") && log.contains("fetched from node-1"),
            "node {n} did not fetch node 1's compiled code"
        );
    }
    // The artifact announced is the one node 1 made: the same key and hash
    // on every node that holds it.
    let held = cluster.etcd.keys("/sockgate/v1/held/");
    assert_eq!(held.len(), 3, "{held:?}");
    let values: Vec<String> = held.iter().map(|k| cluster.etcd.get(k).unwrap()).collect();
    assert!(values[0].contains("\"sha256\""), "{values:?}");
    assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
    // Node 1 compiled it; nobody else did.
    assert!(!cluster.node(1).stderr().contains("fetched from"));
}
