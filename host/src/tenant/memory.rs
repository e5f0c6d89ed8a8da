//! The gateway-wide ceiling on guest memory (`[gateway]
//! max_guest_memory_mb`): what every instance's linear memories add up to,
//! and how room is made when a wake or a new instance would pass it.
//!
//! Every store's memory limiter counts its growth here ([`GuestMemory::try_grow`],
//! refused past the ceiling) and gives it back when the store is dropped
//! ([`GuestMemory::release`]). Before an instance starts or a hibernated one
//! wakes, its shard asks for room ([`GuestMemory::make_room`]): if the
//! instance would pass the ceiling, the least recently used *idle* instances
//! of apps that hibernate are asked to hibernate now, and only when that
//! frees too little is the start refused (the caller closes the connection
//! with an event that says so). An app whose `hibernate_after_secs` is 0
//! (never) is never hibernated for room: its instances stay, and count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::base::locks::lock;

/// How long a start waits for the instances it asked to hibernate to drop
/// their stores. An idle instance hibernates at its next turn (micro- to
/// milliseconds); the bound only stops a start from waiting on an instance
/// that turned busy meanwhile.
pub const MAKE_ROOM_PATIENCE: Duration = Duration::from_secs(2);

/// The least an instance is assumed to need when it never ran before
/// (otherwise its memories' initial sizes; a hibernated instance is assumed
/// to need what it held when it hibernated).
pub const FIRST_START_ESTIMATE: usize = 1 << 20;

/// The guest memory of the whole gateway.
pub struct GuestMemory {
    /// The ceiling in bytes; `None`: no ceiling (only counted).
    ceiling: Option<usize>,
    used: AtomicUsize,
    /// Signalled whenever memory is given back.
    freed: tokio::sync::Notify,
    /// The long-lived instances' shards of apps that hibernate: the
    /// candidates for hibernating early.
    shards: Mutex<Vec<Weak<dyn Hibernatable>>>,
}

/// An instance the ceiling may ask to hibernate early (a shard's load,
/// [`crate::tenant::conns::ShardLoad`]): what choosing sees of it, and
/// how it is asked. A trait, so that the ceiling knows nothing else of the
/// shards it weighs.
pub trait Hibernatable: Send + Sync {
    /// What choosing instances to hibernate early sees of this one now.
    fn idle_view(&self) -> IdleView;
    /// Asks the instance to hibernate at once if it is quiet.
    fn hibernate_now(&self);
}

/// Why a start found no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes the instance was assumed to need.
    pub need: usize,
    /// Bytes all instances held when the start gave up.
    pub used: usize,
    /// The ceiling, bytes.
    pub ceiling: usize,
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gateway's guest memory is at {} of {} MiB (max_guest_memory_mb) and the \
             instance needs about {} MiB; no idle instance of an app that hibernates was \
             left to make room. Raise max_guest_memory_mb, lower apps' memory_limit_mb or \
             instances, or let more apps hibernate (hibernate_after_secs)",
            self.used.div_ceil(1 << 20),
            self.ceiling >> 20,
            self.need.div_ceil(1 << 20),
        )
    }
}

impl GuestMemory {
    /// An account with `ceiling` bytes at most (`None`: no ceiling).
    pub fn new(ceiling: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            ceiling,
            used: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            shards: Mutex::new(Vec::new()),
        })
    }

    /// The ceiling in bytes, if there is one.
    pub fn ceiling(&self) -> Option<usize> {
        self.ceiling
    }

    /// Bytes of linear memory all instances hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts a growth of `bytes`, or refuses it (`false`, nothing counted)
    /// when it would pass the ceiling.
    pub fn try_grow(&self, bytes: usize) -> bool {
        let Some(ceiling) = self.ceiling else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&after| after <= ceiling)
            })
            .is_ok()
    }

    /// Gives back `bytes` (a store was dropped).
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Makes `shard` (a long-lived instance's, of an app that hibernates)
    /// a candidate for hibernating early.
    pub fn register<S: Hibernatable + 'static>(&self, shard: &Arc<S>) {
        let shard: Weak<S> = Arc::downgrade(shard);
        let mut shards = lock(&self.shards);
        shards.retain(|shard| shard.strong_count() > 0);
        shards.push(shard);
    }

    /// Makes room for an instance of `shard` that needs about `need`
    /// bytes: asks the least recently used idle instances to hibernate
    /// until the ceiling allows it, waiting up to [`MAKE_ROOM_PATIENCE`]
    /// for them. `Err` when they freed too little. Returns how many
    /// instances were asked, for the app's events.
    pub async fn make_room(&self, shard: &dyn Hibernatable, need: usize) -> Result<usize, NoRoom> {
        let Some(ceiling) = self.ceiling else {
            return Ok(0);
        };
        let fits = |used: usize| used.saturating_add(need) <= ceiling;
        if fits(self.used()) {
            return Ok(0);
        }
        let candidates: Vec<Arc<dyn Hibernatable>> = lock(&self.shards)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|other| !std::ptr::addr_eq(Arc::as_ptr(other), shard))
            .collect();
        let views: Vec<IdleView> = candidates.iter().map(|s| s.idle_view()).collect();
        let excess = self.used().saturating_add(need).saturating_sub(ceiling);
        let asked = least_recently_used(&views, excess);
        for &victim in &asked {
            candidates[victim].hibernate_now();
        }
        let deadline = tokio::time::Instant::now() + MAKE_ROOM_PATIENCE;
        loop {
            let freed = self.freed.notified();
            if fits(self.used()) {
                return Ok(asked.len());
            }
            if asked.is_empty() || tokio::time::timeout_at(deadline, freed).await.is_err() {
                break;
            }
        }
        Err(NoRoom {
            need,
            used: self.used(),
            ceiling,
        })
    }
}

/// What choosing instances to hibernate early sees of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleView {
    /// Whether it has no connection (or request) now.
    pub idle: bool,
    /// Bytes its current instance holds (0: it has none, it hibernates).
    pub memory: usize,
    /// When it last had one (coarse clock, ms): the smaller, the less
    /// recently used.
    pub quiet_since_ms: u64,
}

/// The indexes of the idle instances holding memory to hibernate, least
/// recently used first, until they free at least `excess` bytes (all of
/// them if they cannot). A pure function, so the order is tested alone.
pub fn least_recently_used(views: &[IdleView], excess: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..views.len())
        .filter(|&i| views[i].idle && views[i].memory > 0)
        .collect();
    order.sort_by_key(|&i| views[i].quiet_since_ms);
    let mut freed = 0usize;
    order
        .into_iter()
        .take_while(|&i| {
            let more = freed < excess;
            freed = freed.saturating_add(views[i].memory);
            more
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(idle: bool, memory: usize, quiet_since_ms: u64) -> IdleView {
        IdleView {
            idle,
            memory,
            quiet_since_ms,
        }
    }

    #[test]
    fn the_least_recently_used_idle_instances_go_first_until_enough_is_freed() {
        let views = [
            view(true, 10, 300),
            view(true, 10, 100),
            view(false, 50, 0), // busy: never
            view(true, 0, 50),  // already hibernated: frees nothing
            view(true, 10, 200),
        ];
        assert_eq!(least_recently_used(&views, 1), vec![1]);
        assert_eq!(least_recently_used(&views, 15), vec![1, 4]);
        assert_eq!(least_recently_used(&views, 1000), vec![1, 4, 0]);
        assert_eq!(least_recently_used(&views, 0), Vec::<usize>::new());
    }

    #[test]
    fn growth_past_the_ceiling_is_refused_and_counts_nothing() {
        let memory = GuestMemory::new(Some(100));
        assert!(memory.try_grow(60));
        assert!(!memory.try_grow(41));
        assert_eq!(memory.used(), 60);
        assert!(memory.try_grow(40));
        memory.release(100);
        assert_eq!(memory.used(), 0);
        let unbounded = GuestMemory::new(None);
        assert!(unbounded.try_grow(usize::MAX / 2));
    }
}
