//! What a guest may hold on the host besides its memory and CPU: outbound
//! sockets (each one a file descriptor of the gateway process) and name
//! lookups in flight (each one a thread of the shared blocking pool), per
//! app and over the whole gateway.
//!
//! - Sockets: an app holds at most `limits.max_outbound_sockets` at once,
//!   and all apps together at most the gateway's outbound share of its
//!   descriptor limit ([`outbound_socket_budget`]: half of `RLIMIT_NOFILE`
//!   after [`RESERVED_DESCRIPTORS`]); the other half is left to client
//!   connections, so guests can never push the process into `EMFILE`, which
//!   would stop every listener and the admin API from accepting.
//! - Lookups: an app runs at most `limits.max_concurrent_lookups` at once,
//!   all apps together at most [`GATEWAY_LOOKUPS`], so lookups cannot take
//!   tokio's blocking pool, which compiles deployed components and writes
//!   certificates too.
//!
//! A socket is counted from its creation until the last thing holding its
//! descriptor is gone (see `runtime::guest_sockets`); a lookup from its start
//! until the resolver thread returns, even when the guest stopped waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::AppLimits;

/// Descriptors never given to guests: listeners, the admin API and its
/// connections, TLS handshakes in progress, files (state, cache,
/// certificates), the runtime's own (epoll, eventfds, pipes).
pub const RESERVED_DESCRIPTORS: u64 = 256;
pub use crate::limits::GATEWAY_LOOKUPS;
/// Largest descriptor limit used for the budget (`RLIMIT_NOFILE` may be
/// "unlimited").
const MAX_DESCRIPTORS: u64 = 1 << 22;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a gateway serving
/// thousands of connections needs more than the usual 1024), and returns
/// `(soft before, soft now)`. Call it once, at start, before any socket is
/// opened: the outbound budget is computed from the limit on first use.
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// Outbound sockets all guests together may hold: half of the descriptor
/// limit left after [`RESERVED_DESCRIPTORS`], read once.
pub fn outbound_socket_budget() -> usize {
    DescriptorBudget::global().limit
}

/// Outbound sockets guests hold now, over all apps.
pub fn outbound_sockets_in_use() -> usize {
    DescriptorBudget::global().in_use.load(Ordering::Relaxed)
}

/// The gateway-wide count of outbound sockets.
#[derive(Debug)]
struct DescriptorBudget {
    limit: usize,
    in_use: AtomicUsize,
}

impl DescriptorBudget {
    fn global() -> &'static Self {
        static GLOBAL: OnceLock<DescriptorBudget> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let soft = current_descriptor_limit().min(MAX_DESCRIPTORS);
            let limit = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS) / 2)
                .unwrap_or(usize::MAX);
            Self {
                limit,
                in_use: AtomicUsize::new(0),
            }
        })
    }
}

fn current_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        // The usual default; the budget is then small, never too large.
        return 1024;
    }
    limit.rlim_cur
}

fn gateway_lookups() -> &'static Arc<Semaphore> {
    static GLOBAL: OnceLock<Arc<Semaphore>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Semaphore::new(GATEWAY_LOOKUPS)))
}

/// One app's outbound sockets and lookups in flight (shared by all its
/// instances).
#[derive(Debug)]
pub struct AppBudget {
    sockets: Arc<SocketAccount>,
    lookups: Arc<Semaphore>,
    max_lookups: usize,
}

impl Default for AppBudget {
    fn default() -> Self {
        Self::new(&AppLimits::default())
    }
}

#[derive(Debug)]
struct SocketAccount {
    limit: usize,
    in_use: AtomicUsize,
}

/// Why a new outbound socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRefusal {
    /// The app holds `limits.max_outbound_sockets` already.
    App {
        /// The app's limit.
        limit: usize,
    },
    /// All guests together hold the gateway's outbound share of its
    /// descriptor limit.
    Gateway {
        /// The gateway's budget.
        limit: usize,
    },
}

impl SocketRefusal {
    /// The limit's name, for the app's event.
    pub fn limit(&self) -> &'static str {
        match self {
            SocketRefusal::App { .. } => "max_outbound_sockets",
            SocketRefusal::Gateway { .. } => "gateway outbound socket budget",
        }
    }
}

impl std::fmt::Display for SocketRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketRefusal::App { limit } => write!(
                f,
                "the app holds {limit} outbound sockets, its limits.max_outbound_sockets; \
                 close one first"
            ),
            SocketRefusal::Gateway { limit } => write!(
                f,
                "all apps together hold {limit} outbound sockets, the gateway's share of its \
                 file descriptor limit (RLIMIT_NOFILE); close one first"
            ),
        }
    }
}

/// Why a name lookup was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupRefusal {
    /// The app's `limits.max_concurrent_lookups` were all busy for the
    /// whole wait.
    App {
        /// The app's limit.
        limit: usize,
    },
    /// The gateway's [`GATEWAY_LOOKUPS`] were all busy for the whole wait.
    Gateway,
}

impl LookupRefusal {
    /// The limit's name, for the app's event.
    pub fn limit(&self) -> &'static str {
        match self {
            LookupRefusal::App { .. } => "max_concurrent_lookups",
            LookupRefusal::Gateway => "gateway name lookup cap",
        }
    }
}

impl std::fmt::Display for LookupRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupRefusal::App { limit } => write!(
                f,
                "the app's {limit} lookups in flight (limits.max_concurrent_lookups) stayed busy"
            ),
            LookupRefusal::Gateway => write!(
                f,
                "the gateway's {GATEWAY_LOOKUPS} lookups in flight (over all apps) stayed busy"
            ),
        }
    }
}

impl AppBudget {
    /// The budget of an app with `limits`.
    pub fn new(limits: &AppLimits) -> Self {
        Self {
            sockets: Arc::new(SocketAccount {
                limit: limits.max_outbound_sockets,
                in_use: AtomicUsize::new(0),
            }),
            lookups: Arc::new(Semaphore::new(limits.max_concurrent_lookups)),
            max_lookups: limits.max_concurrent_lookups,
        }
    }

    /// Counts a new outbound socket against the app's limit and the
    /// gateway's budget; the lease gives it back when dropped.
    pub fn open_socket(&self) -> Result<SocketLease, SocketRefusal> {
        let account = &self.sockets;
        if account.in_use.fetch_add(1, Ordering::AcqRel) >= account.limit {
            account.in_use.fetch_sub(1, Ordering::AcqRel);
            return Err(SocketRefusal::App {
                limit: account.limit,
            });
        }
        let gateway = DescriptorBudget::global();
        if gateway.in_use.fetch_add(1, Ordering::AcqRel) >= gateway.limit {
            gateway.in_use.fetch_sub(1, Ordering::AcqRel);
            account.in_use.fetch_sub(1, Ordering::AcqRel);
            return Err(SocketRefusal::Gateway {
                limit: gateway.limit,
            });
        }
        Ok(SocketLease {
            account: account.clone(),
        })
    }

    /// Outbound sockets the app holds now.
    pub fn open_sockets(&self) -> usize {
        self.sockets.in_use.load(Ordering::Relaxed)
    }

    /// Waits (at most `wait`) for the right to run one name lookup, under
    /// the app's and the gateway's caps. Hold the permit until the resolver
    /// returns, not merely until the guest stops waiting.
    pub async fn lookup_permit(&self, wait: Duration) -> Result<LookupPermit, LookupRefusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let app = tokio::time::timeout_at(deadline, self.lookups.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(LookupRefusal::App {
                limit: self.max_lookups,
            })?;
        let gateway = tokio::time::timeout_at(deadline, gateway_lookups().clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(LookupRefusal::Gateway)?;
        Ok(LookupPermit {
            _app: app,
            _gateway: gateway,
        })
    }
}

/// One outbound socket counted against its app and the gateway; dropping
/// it gives both back.
#[derive(Debug)]
pub struct SocketLease {
    account: Arc<SocketAccount>,
}

impl Drop for SocketLease {
    fn drop(&mut self) {
        self.account.in_use.fetch_sub(1, Ordering::AcqRel);
        DescriptorBudget::global()
            .in_use
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The right to run one name lookup; dropping it lets the next one start.
#[derive(Debug)]
pub struct LookupPermit {
    _app: OwnedSemaphorePermit,
    _gateway: OwnedSemaphorePermit,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(sockets: usize, lookups: usize) -> AppBudget {
        AppBudget::new(&AppLimits {
            max_outbound_sockets: sockets,
            max_concurrent_lookups: lookups,
            ..AppLimits::default()
        })
    }

    #[test]
    fn sockets_are_counted_per_app_and_given_back() {
        let app = budget(2, 1);
        let other = budget(2, 1);
        let first = app.open_socket().unwrap();
        let second = app.open_socket().unwrap();
        assert_eq!(
            app.open_socket().unwrap_err(),
            SocketRefusal::App { limit: 2 }
        );
        // Another app has its own count.
        let theirs = other.open_socket().unwrap();
        assert_eq!(app.open_sockets(), 2);
        drop(first);
        assert_eq!(app.open_sockets(), 1);
        let third = app.open_socket().unwrap();
        assert!(outbound_sockets_in_use() >= 3);
        drop((second, third, theirs));
        assert_eq!(app.open_sockets(), 0);
        assert!(
            SocketRefusal::App { limit: 2 }
                .to_string()
                .contains("limits.max_outbound_sockets")
        );
    }

    #[test]
    fn the_gateway_budget_is_half_the_descriptors_after_the_reserve() {
        let soft = current_descriptor_limit().min(MAX_DESCRIPTORS);
        assert_eq!(
            outbound_socket_budget() as u64,
            soft.saturating_sub(RESERVED_DESCRIPTORS) / 2
        );
    }

    #[tokio::test]
    async fn lookups_wait_for_a_permit_then_give_up_with_the_limit_named() {
        let app = budget(1, 1);
        let held = app.lookup_permit(Duration::from_millis(10)).await.unwrap();
        let refused = app
            .lookup_permit(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(refused, LookupRefusal::App { limit: 1 });
        assert!(
            refused
                .to_string()
                .contains("limits.max_concurrent_lookups")
        );
        drop(held);
        app.lookup_permit(Duration::from_millis(10)).await.unwrap();
    }
}
