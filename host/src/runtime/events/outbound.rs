//! Outbound connections an event-world guest asks for (`action.connect`):
//! checked against the app's outbound policy (deny by default) and socket
//! budget, exactly as `wasi:sockets` connects are, then opened by the
//! gateway.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::runtime::name_lookup::LOOKUP_TIMEOUT;
use crate::tenant::outbound::OutboundPolicy;

/// How long opening an outbound connection may take. Threat: an address
/// that never answers holding the attempt (and its socket lease) forever.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an outbound connection was not opened, in the guest's and the
/// operator's terms.
#[derive(Debug)]
pub(crate) struct ConnectRefused {
    /// What went wrong and what to do.
    pub(crate) reason: String,
    /// The limit, when one refused it (for the app's events).
    pub(crate) limit: Option<&'static str>,
}

impl ConnectRefused {
    fn new(reason: String) -> Self {
        Self {
            reason,
            limit: None,
        }
    }
}

/// Opens a TCP connection to `host:port` for a guest of the app with
/// `policy` (the caller holds the outbound socket's lease).
pub(crate) async fn connect(
    policy: Arc<OutboundPolicy>,
    host: String,
    port: u16,
) -> Result<TcpStream, ConnectRefused> {
    let addrs = resolve(&policy, &host, port).await?;
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|addr| policy.allows_connect(*addr))
        .collect();
    if allowed.is_empty() {
        return Err(ConnectRefused {
            reason: format!(
                "denied by the app's outbound policy: {host}:{port} matches none of its \
                 `outbound` rules (add one, e.g. \"{host}:{port}\")"
            ),
            limit: Some("outbound"),
        });
    }
    let mut last = None;
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(err)) => last = Some(format!("connecting to {addr} failed: {err}")),
            Err(_) => {
                last = Some(format!(
                    "connecting to {addr} timed out after {CONNECT_TIMEOUT:?}"
                ))
            }
        }
    }
    Err(ConnectRefused::new(last.unwrap_or_default()))
}

/// The addresses of `host`: itself when it is an IP address, else a name
/// lookup the policy allows, recorded so the name's rules match them.
async fn resolve(
    policy: &OutboundPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ConnectRefused> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if !policy.allows_lookup(host) {
        return Err(ConnectRefused {
            reason: format!(
                "denied by the app's outbound policy: the name {host:?} matches none of its \
                 `outbound` rules (add one, e.g. \"{host}:{port}\")"
            ),
            limit: Some("outbound"),
        });
    }
    let _permit = policy
        .budget()
        .lookup_permit(LOOKUP_TIMEOUT)
        .await
        .map_err(|refusal| ConnectRefused {
            reason: format!("name lookup {host:?} refused: {refusal}"),
            limit: Some(refusal.limit()),
        })?;
    let looked_up = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            ConnectRefused::new(format!(
                "name lookup {host:?} took longer than {LOOKUP_TIMEOUT:?}"
            ))
        })?
        .map_err(|err| ConnectRefused::new(format!("name lookup {host:?} failed: {err}")))?;
    let addrs: Vec<SocketAddr> = looked_up.collect();
    let ips: Vec<IpAddr> = addrs.iter().map(|addr| addr.ip()).collect();
    policy.record_lookup(host, &ips);
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzz target `event_actions`): an IP address with a
    /// trailing dot is a name; with no rule naming it, the connect is
    /// refused without asking the resolver.
    #[tokio::test]
    async fn events_connect_to_an_ip_with_a_trailing_dot_asks_no_resolver() {
        let policy = Arc::new(OutboundPolicy::parse(&["127.0.0.1:80".to_owned()]).unwrap());
        let refused = connect(policy, "127.0.0.1.".to_owned(), 80)
            .await
            .expect_err("refused");
        assert!(refused.reason.contains("the name"), "{}", refused.reason);
        assert_eq!(refused.limit, Some("outbound"));
    }
}
