//! The dashboard's "Cluster" panel: what `GET /v1/cluster` says
//! ([`crate::gateway::ClusterStatus`]), as a person reads it — etcd's
//! endpoints and whether it answers, this node's name, every live node
//! with its peer URL, its health and the version of each cluster app it
//! serves, and the apps whose version differs between nodes (a node still
//! compiling a deploy, or one that cannot fetch it). Node and app names
//! come from etcd, written by any node: everything is escaped.
//!
//! The markup carries what a test (or a script) reads without parsing
//! prose: `section#cluster`, a row `tr[data-node=NAME]` per node with a
//! cell `td[data-app=APP]` per cluster app, and `li[data-differs=APP]`
//! per app whose versions differ.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::html::escape;
use crate::gateway::ClusterStatus;

/// The panel for `status`; for a gateway in no cluster (`None`), one line
/// saying so.
pub(crate) fn panel(status: Option<&ClusterStatus>) -> String {
    let Some(status) = status else {
        return "<h2>Cluster</h2><p class=\"muted\" id=\"no-cluster\">Not in a cluster \
                (no [cluster] section).</p>"
            .to_owned();
    };
    let etcd_ok = status.etcd == "reachable";
    let mut html = format!(
        "<section id=\"cluster\"><h2>Cluster</h2><p>This is node <strong \
         data-this-node=\"{node}\">{node}</strong>. etcd at <code>{endpoints}</code>: \
         <span data-etcd=\"{ok}\" class=\"{class}\">{etcd}</span>.</p>",
        node = escape(&status.node),
        endpoints = escape(&status.endpoints.join(", ")),
        ok = if etcd_ok { "reachable" } else { "unreachable" },
        class = if etcd_ok { "" } else { "bad" },
        etcd = escape(&status.etcd),
    );
    if status.nodes.is_empty() {
        html.push_str(
            "<p class=\"muted\">No live node is known: etcd does not answer, so this node \
             serves what it last knew.</p></section>",
        );
        return html;
    }
    let apps: BTreeSet<&str> = status
        .nodes
        .iter()
        .flat_map(|node| node.apps.keys().map(String::as_str))
        .collect();
    html.push_str(
        "<table class=\"cluster\"><tr><th>node</th><th>peer URL</th><th>sockgate</th>\
         <th>health</th>",
    );
    for app in &apps {
        let _ = write!(html, "<th>{}</th>", escape(app));
    }
    html.push_str("</tr>");
    for node in &status.nodes {
        let this = if node.name == status.node {
            " (this node)"
        } else {
            ""
        };
        let health = if node.health == "ok" {
            "live, peer port answers".to_owned()
        } else {
            format!("live in etcd; {}", node.health)
        };
        let _ = write!(
            html,
            "<tr data-node=\"{name}\"><td>{name}{this}</td><td><code>{peer}</code></td>\
             <td>{sockgate}</td><td data-health=\"{ok}\">{health}</td>",
            name = escape(&node.name),
            peer = escape(&node.peer_url),
            sockgate = escape(&node.sockgate),
            ok = node.health == "ok",
            health = escape(&health),
        );
        for app in &apps {
            let version = node
                .apps
                .get(*app)
                .map_or_else(|| "-".to_owned(), u64::to_string);
            let _ = write!(html, "<td data-app=\"{}\">{version}</td>", escape(app));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    let differing = differing(status, &apps);
    if differing.is_empty() {
        html.push_str(
            "<p class=\"muted\" id=\"cluster-agrees\">Every node serves the same version of \
             every cluster app.</p>",
        );
    } else {
        html.push_str("<p><strong>Versions differ between nodes</strong> (a deploy still spreading, or a node that cannot fetch it):</p><ul>");
        for (app, versions) in differing {
            let per_node: Vec<String> = versions
                .iter()
                .map(|(node, version)| {
                    let version = version.map_or_else(|| "none".to_owned(), |v| v.to_string());
                    format!("{}: {version}", escape(node))
                })
                .collect();
            let _ = write!(
                html,
                "<li data-differs=\"{app}\">{app}: {}</li>",
                per_node.join(", "),
                app = escape(app),
            );
        }
        html.push_str("</ul>");
    }
    html.push_str("</section>");
    html
}

/// The apps not served at one version by every live node, each with what
/// every node serves (`None`: not served there).
fn differing<'a>(
    status: &'a ClusterStatus,
    apps: &BTreeSet<&'a str>,
) -> BTreeMap<&'a str, Vec<(&'a str, Option<u64>)>> {
    apps.iter()
        .filter_map(|app| {
            let versions: Vec<(&str, Option<u64>)> = status
                .nodes
                .iter()
                .map(|node| (node.name.as_str(), node.apps.get(*app).copied()))
                .collect();
            let distinct: BTreeSet<Option<u64>> = versions.iter().map(|(_, v)| *v).collect();
            (distinct.len() > 1).then_some((*app, versions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ClusterNode;

    fn node(name: &str, apps: &[(&str, u64)]) -> ClusterNode {
        ClusterNode {
            name: name.to_owned(),
            peer_url: format!("http://{name}:9801"),
            sockgate: "0.1.0".to_owned(),
            apps: apps.iter().map(|(a, v)| ((*a).to_owned(), *v)).collect(),
            health: "ok".to_owned(),
        }
    }

    fn status(nodes: Vec<ClusterNode>) -> ClusterStatus {
        ClusterStatus {
            node: "gw-1".to_owned(),
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            etcd: "reachable".to_owned(),
            nodes,
        }
    }

    #[test]
    fn no_cluster_is_one_line() {
        let html = panel(None);
        assert!(html.contains("Not in a cluster"));
        assert!(!html.contains("<table"));
    }

    #[test]
    fn a_version_that_differs_is_flagged_and_agreement_is_not() {
        let agree = panel(Some(&status(vec![
            node("gw-1", &[("echo", 2)]),
            node("gw-2", &[("echo", 2)]),
        ])));
        assert!(agree.contains("cluster-agrees"), "{agree}");
        assert!(!agree.contains("data-differs"), "{agree}");

        let differ = panel(Some(&status(vec![
            node("gw-1", &[("echo", 2), ("web", 1)]),
            node("gw-2", &[("echo", 1), ("web", 1)]),
            node("gw-3", &[("web", 1)]),
        ])));
        assert!(
            differ.contains("<li data-differs=\"echo\">echo: gw-1: 2, gw-2: 1, gw-3: none</li>"),
            "{differ}"
        );
        assert!(!differ.contains("data-differs=\"web\""), "{differ}");
        assert!(differ.contains("gw-1 (this node)"), "{differ}");
    }

    #[test]
    fn names_from_etcd_are_escaped() {
        let mut hostile = node("<script>alert(1)</script>", &[("<img src=x>", 1)]);
        hostile.health = "peer port unreachable: \"<b>\"".to_owned();
        let html = panel(Some(&status(vec![hostile])));
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn etcd_unreachable_says_so() {
        let mut down = status(Vec::new());
        down.etcd = "unreachable: cluster store unavailable".to_owned();
        let html = panel(Some(&down));
        assert!(html.contains("data-etcd=\"unreachable\""), "{html}");
        assert!(html.contains("No live node is known"), "{html}");
    }
}
