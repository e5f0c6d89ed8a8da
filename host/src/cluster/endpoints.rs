//! Which of etcd's members the node's client sends requests to.
//!
//! etcd-client balances requests over every endpoint it was given
//! (tonic's power-of-two-choices balancer), and a member that died after
//! its connection was made stays in the balance: each request that lands
//! on it fails at once with `connection refused`, so a deploy, which makes
//! several requests, kept failing for as long as the member was down
//! (measured: 271 refused deploys in 60 s after a 3-member etcd's leader
//! was killed). This task looks at each member's client port once a
//! second and takes a member that refuses connections out of the balance,
//! and puts it back once it accepts them again. With every member down
//! all stay in, so that requests fail at once (and say so) rather than
//! wait for a member.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::net::TcpStream;

/// How often the members' ports are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a member has to accept a connection.
const CONNECT_WITHIN: Duration = Duration::from_millis(500);

/// One endpoint as the node was given it and as the balance knows it.
struct Member {
    /// As configured (what [`etcd_client::Client::add_endpoint`] takes).
    given: String,
    /// With its scheme, as etcd-client keyed it in the balance (what
    /// [`etcd_client::Client::remove_endpoint`] takes).
    uri: String,
    /// `host:port`, to connect to.
    address: String,
}

impl Member {
    fn new(given: &str, tls: bool) -> Self {
        let uri = if given.starts_with("http://") || given.starts_with("https://") {
            given.to_owned()
        } else if tls {
            format!("https://{given}")
        } else {
            format!("http://{given}")
        };
        let address = authority_of(&uri).to_owned();
        Self {
            given: given.to_owned(),
            uri,
            address,
        }
    }

    async fn accepts(&self) -> bool {
        tcp_reachable(&self.address, CONNECT_WITHIN).await.is_ok()
    }
}

/// The `host:port` of a URL (`http://host:port/…`) or of a bare
/// `host:port`.
pub(crate) fn authority_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether `authority` (`host:port`) takes a TCP connection within
/// `within`; otherwise why not. One probe for every "is it up" the
/// cluster asks: etcd members here, peers on the dashboard.
pub(crate) async fn tcp_reachable(authority: &str, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, TcpStream::connect(authority)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

/// Keeps `client`'s balance to the members of `endpoints` that accept
/// connections (`tls`: endpoints without a scheme are `https://`). Runs
/// until the process ends; nothing to do for a single endpoint.
pub(super) async fn keep_live(client: etcd_client::Client, endpoints: Vec<String>, tls: bool) {
    if endpoints.len() < 2 {
        return;
    }
    let members: Vec<Member> = endpoints.iter().map(|e| Member::new(e, tls)).collect();
    let mut out: BTreeSet<usize> = BTreeSet::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let mut up = Vec::with_capacity(members.len());
        for member in &members {
            up.push(member.accepts().await);
        }
        let any_up = up.iter().any(|&up| up);
        for (i, member) in members.iter().enumerate() {
            let wanted = up[i] || !any_up;
            if wanted && out.contains(&i) {
                match client.add_endpoint(&member.given).await {
                    Ok(()) => {
                        out.remove(&i);
                        tracing::info!(
                            "cluster: etcd member {} answers again; requests go to it too",
                            member.given
                        );
                    }
                    Err(err) => {
                        tracing::warn!("cluster: cannot use etcd member {}: {err}", member.given)
                    }
                }
            } else if !wanted && !out.contains(&i) {
                match client.remove_endpoint(&member.uri).await {
                    Ok(()) => {
                        out.insert(i);
                        tracing::warn!(
                            "cluster: etcd member {} refuses connections; requests go to the \
                             others until it is back",
                            member.given
                        );
                    }
                    Err(err) => tracing::warn!(
                        "cluster: cannot set etcd member {} aside: {err}",
                        member.given
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Member;

    #[test]
    fn members_are_keyed_as_etcd_client_keys_them() {
        let plain = Member::new("127.0.0.1:2379", false);
        assert_eq!(plain.uri, "http://127.0.0.1:2379");
        assert_eq!(plain.address, "127.0.0.1:2379");
        let tls = Member::new("etcd-1.internal:2379", true);
        assert_eq!(tls.uri, "https://etcd-1.internal:2379");
        assert_eq!(tls.address, "etcd-1.internal:2379");
        let given = Member::new("https://10.0.0.5:2379/", true);
        assert_eq!(given.uri, "https://10.0.0.5:2379/");
        assert_eq!(given.address, "10.0.0.5:2379");
    }
}
