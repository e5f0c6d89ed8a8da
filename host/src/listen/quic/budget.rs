//! What a QUIC connection holds while it lives: its place in the
//! gateway-wide and per-IP connection counts, and the share of
//! `quic.receive_budget_mb` by which its receive window was raised (the
//! arithmetic is in the module doc of [`super`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{INITIAL_RECEIVE_WINDOW, QuicContext};
use crate::base::locks::lock;

/// The bytes by which QUIC connections' receive windows were raised above
/// [`INITIAL_RECEIVE_WINDOW`], against what `quic.receive_budget_mb` leaves
/// after the initial windows of `max_connections`.
pub(super) struct ReceiveBudget {
    limit: u64,
    reserved: AtomicU64,
}

impl ReceiveBudget {
    pub(super) fn new(limit: u64) -> Self {
        Self {
            limit,
            reserved: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes` if the budget has room.
    pub(super) fn reserve(&self, bytes: u64) -> bool {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved
                    .checked_add(bytes)
                    .filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    pub(super) fn release(&self, bytes: u64) {
        self.reserved.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A QUIC connection's place in the gateway-wide and per-IP counts, and
/// the receive window it holds.
pub(super) struct ConnectionSlot {
    ctx: Arc<QuicContext>,
    ip: IpAddr,
    /// Its receive window: [`INITIAL_RECEIVE_WINDOW`] (set aside for every
    /// connection) or more, the excess reserved from the receive budget.
    window: u64,
}

impl ConnectionSlot {
    pub(super) fn take(ctx: &Arc<QuicContext>, ip: IpAddr) -> Option<Self> {
        let mut counts = lock(&ctx.per_ip);
        let total = counts.get(&None).copied().unwrap_or(0);
        let from_ip = counts.get(&Some(ip)).copied().unwrap_or(0);
        if total >= ctx.settings.max_connections || from_ip >= ctx.settings.max_connections_per_ip {
            return None;
        }
        *counts.entry(None).or_default() += 1;
        *counts.entry(Some(ip)).or_default() += 1;
        Some(Self {
            ctx: ctx.clone(),
            ip,
            window: INITIAL_RECEIVE_WINDOW,
        })
    }

    /// Grows the reserved window to `wanted` bytes if the budget has room;
    /// returns the window the connection may have.
    pub(super) fn grow_window(&mut self, wanted: u64) -> u64 {
        if wanted <= self.window {
            return wanted;
        }
        if self.ctx.receive_budget.reserve(wanted - self.window) {
            self.window = wanted;
        } else {
            self.ctx
                .counters
                .windows_held_back
                .fetch_add(1, Ordering::Relaxed);
        }
        self.window
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx
            .receive_budget
            .release(self.window - INITIAL_RECEIVE_WINDOW);
        let mut counts = lock(&self.ctx.per_ip);
        for key in [None, Some(self.ip)] {
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_windows_share_what_the_initial_ones_leave() {
        let budget = ReceiveBudget::new(3 << 20);
        assert!(budget.reserve(2 << 20));
        assert!(!budget.reserve(2 << 20), "over the budget");
        assert!(budget.reserve(1 << 20));
        budget.release(2 << 20);
        assert!(budget.reserve(2 << 20));
    }
}
