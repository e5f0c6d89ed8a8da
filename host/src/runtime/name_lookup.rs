//! `wasi:sockets/ip-name-lookup@0.3.0` checked against the app's outbound
//! policy. wasmtime-wasi can only allow or deny all lookups; this replaces
//! its `resolve-addresses` so that a guest may look up only the names its
//! policy lists (a lookup is itself traffic: DNS can carry data out), and
//! so that the addresses returned become connectable for that name's rules
//! (the public ones: see [`crate::tenant::outbound`]).
//!
//! A lookup is `getaddrinfo` on a thread of tokio's blocking pool, which
//! deploys (compiles) and certificate saves share; it takes a permit of the
//! app's `limits.max_concurrent_lookups` and one of the gateway's
//! [`GATEWAY_LOOKUPS`](crate::tenant::guest_budget::GATEWAY_LOOKUPS) first, held
//! until the thread returns, so guests never hold more threads than that
//! however slow the resolver is. Waiting for permits and the lookup itself
//! share one deadline, [`LOOKUP_TIMEOUT`].

use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Accessor, Linker};
use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::ErrorCode;
use wasmtime_wasi::p3::bindings::sockets::types::IpAddress;

use super::host_state::HostState;
use crate::tenant::logs::EventKind;

/// The interface whose function is replaced.
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.3.0";
/// A lookup that takes longer (waiting for a permit included) fails with a
/// temporary error, so a slow resolver or a busy cap cannot hold a guest's
/// call forever. The resolver thread may go on after it; its permit with it.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;

/// Replaces wasmtime-wasi's `resolve-addresses` in `linker` (which must
/// already hold the WASI 0.3 interfaces).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
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
            let refused = |limit: &'static str, detail: String| {
                log.event(Some(instance), EventKind::LimitHit { limit, detail });
            };
            look_up(&policy, &name, refused).await?
        }
    };
    policy.record_lookup(&name, &addrs);
    Ok(addrs.into_iter().map(IpAddress::from).collect())
}

/// Resolves `name` on the blocking pool under the app's and the gateway's
/// caps, within [`LOOKUP_TIMEOUT`]; `refused` records a lookup that a cap
/// or the timeout stopped.
async fn look_up(
    policy: &crate::tenant::outbound::OutboundPolicy,
    name: &str,
    refused: impl Fn(&'static str, String),
) -> Result<Vec<IpAddr>, ErrorCode> {
    let started = Instant::now();
    let permit = match policy.budget().lookup_permit(LOOKUP_TIMEOUT).await {
        Ok(permit) => permit,
        Err(refusal) => {
            let why =
                format!("name lookup {name:?} not started within {LOOKUP_TIMEOUT:?}: {refusal}");
            refused(refusal.limit(), why.clone());
            return Err(ErrorCode::Other(Some(why)));
        }
    };
    let host = name.to_owned();
    let resolving = tokio::task::spawn_blocking(move || {
        // Held until getaddrinfo returns, even when the guest stopped
        // waiting: the cap counts threads, not waiters.
        let _permit = permit;
        (host.as_str(), 0)
            .to_socket_addrs()
            .map(|found| found.map(|a| a.ip()).collect::<Vec<IpAddr>>())
    });
    let left = LOOKUP_TIMEOUT.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, resolving).await {
        Err(_) => {
            refused(
                "name lookup timeout",
                format!("name lookup {name:?} took longer than {LOOKUP_TIMEOUT:?}"),
            );
            Err(ErrorCode::TemporaryResolverFailure)
        }
        Ok(Err(_)) => Err(ErrorCode::TemporaryResolverFailure),
        Ok(Ok(Err(_))) => Err(ErrorCode::NameUnresolvable),
        Ok(Ok(Ok(mut ips))) => {
            ips.sort();
            ips.dedup();
            Ok(ips)
        }
    }
}
