//! `wasi:sockets/ip-name-lookup@0.3.0` checked against the app's outbound
//! policy. wasmtime-wasi can only allow or deny all lookups; this replaces
//! its `resolve-addresses` so that a guest may look up only the names its
//! policy lists (a lookup is itself traffic: DNS can carry data out), and
//! so that the addresses returned become connectable for that name's rules.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Accessor, Linker};
use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::ErrorCode;
use wasmtime_wasi::p3::bindings::sockets::types::IpAddress;

use super::host_state::HostState;
use crate::logs::EventKind;

/// The interface whose function is replaced.
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.3.0";
/// A lookup that takes longer fails with a temporary error, so a slow
/// resolver cannot hold a guest's call forever.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;

/// Replaces wasmtime-wasi's `resolve-addresses` in `linker` (which must
/// already hold the WASI 0.3 interfaces).
pub fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = linker
        .instance(INTERFACE)
        .and_then(|mut instance| {
            instance.func_wrap_concurrent(
                "resolve-addresses",
                |accessor: &Accessor<HostState>, (name,): (String,)| {
                    Box::pin(async move { Ok((resolve(accessor, name).await,)) })
                },
            )
        })
        .map_err(anyhow::Error::from)
        .context("cannot install the policy-checked name lookup");
    linker.allow_shadowing(false);
    result
}

async fn resolve(
    accessor: &Accessor<HostState>,
    name: String,
) -> Result<Vec<IpAddress>, ErrorCode> {
    let (policy, log, instance) = accessor.with(|mut access| {
        let state = access.data_mut();
        (state.policy.clone(), state.log.clone(), state.instance)
    });
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ErrorCode::InvalidArgument);
    }
    if !policy.allows_lookup(&name) {
        log.event(
            Some(instance),
            EventKind::OutboundDenied {
                target: format!("name lookup {name:?}"),
            },
        );
        return Err(ErrorCode::AccessDenied);
    }
    let addrs: Vec<IpAddr> = match name.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Err(_) => return Err(ErrorCode::TemporaryResolverFailure),
                Ok(Err(_)) => return Err(ErrorCode::NameUnresolvable),
                Ok(Ok(found)) => {
                    let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    ips
                }
            }
        }
    };
    policy.record_lookup(&name, &addrs);
    Ok(addrs.into_iter().map(IpAddress::from).collect())
}
