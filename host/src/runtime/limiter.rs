//! The store limiter: what one instance's memories and tables may grow
//! to, and the refusals remembered so that a later trap can be explained
//! (`memory_limit_mb` reached, not a guest bug).

use std::sync::Arc;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::limits::AppLimits;
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::memory::GuestMemory;

/// Elements one table of a store may grow to. Threat: a guest growing a
/// table without bound, in host memory outside its `memory_limit_mb`.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Core instances one store may hold (a component has a handful). Threat: a
/// guest instantiating without bound.
pub(crate) const MAX_INSTANCES: usize = 100;
/// Tables one store may hold (a component has a handful).
pub(crate) const MAX_TABLES: usize = 100;
/// Memories one store may hold (a component has a handful); each is held to
/// `memory_limit_mb`, so this bounds their sum.
pub(crate) const MAX_MEMORIES: usize = 100;

/// Bounds one instance's memories and tables ([`MAX_TABLE_ELEMENTS`],
/// [`MAX_INSTANCES`], [`MAX_TABLES`], [`MAX_MEMORIES`], and the app's
/// `memory_limit_mb`), and remembers refusals so a later trap can be
/// explained.
pub(crate) struct GuestLimiter {
    limits: StoreLimits,
    memory_limit: usize,
    /// The gateway's guest memory (and its ceiling), which every growth
    /// draws on and the store's drop gives back.
    gateway: Arc<GuestMemory>,
    /// The long-lived instance's shard, told what the store holds.
    shard: Option<Arc<ShardLoad>>,
    /// Bytes of linear memory this store holds.
    held: usize,
    /// What it would have held had the gateway's ceiling not refused a
    /// growth: what the shard's next instance is assumed to need.
    needed: usize,
    /// The size a guest last asked to grow a memory to and was refused.
    pub refused_memory: Option<usize>,
    log: Arc<AppLog>,
    instance: u32,
}

impl GuestLimiter {
    /// Limits from the app's configuration; refusals are recorded as events
    /// of instance `instance` in `log`.
    pub(crate) fn new(
        limits: &AppLimits,
        log: Arc<AppLog>,
        instance: u32,
        gateway: Arc<GuestMemory>,
    ) -> Self {
        let memory_limit = usize::try_from(limits.memory_limit_mb << 20).unwrap_or(usize::MAX);
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                // A component has a handful of tables and core instances;
                // these bounds stop a guest from creating unbounded numbers.
                .table_elements(MAX_TABLE_ELEMENTS)
                .instances(MAX_INSTANCES)
                .tables(MAX_TABLES)
                .memories(MAX_MEMORIES)
                .trap_on_grow_failure(false)
                .build(),
            memory_limit,
            gateway,
            shard: None,
            held: 0,
            needed: 0,
            refused_memory: None,
            log,
            instance,
        }
    }

    /// Tells `shard` (a long-lived instance's) what the store holds, from
    /// now on and for what it holds already.
    pub(crate) fn attach(&mut self, shard: Arc<ShardLoad>) {
        shard.held(self.held);
        self.shard = Some(shard);
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        if let Some(shard) = &self.shard {
            shard.held_no_more(self.held, self.held.max(self.needed));
        }
        self.gateway.release(self.held);
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            // Record the first refusal only: a guest retrying in a loop
            // must not flood the events.
            if self.refused_memory.is_none() {
                self.log.event(
                    Some(self.instance),
                    EventKind::MemoryRefused {
                        requested: desired,
                        limit: self.memory_limit,
                    },
                );
            }
            self.refused_memory = Some(desired);
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        if !self.gateway.try_grow(growth) {
            self.needed = self.needed.max(self.held.saturating_add(growth));
            self.log.event(
                Some(self.instance),
                EventKind::LimitHit {
                    limit: "max_guest_memory_mb",
                    detail: format!(
                        "memory growth to {} MiB refused: the gateway's guest memory is at {} \
                         of {} MiB",
                        desired.div_ceil(1 << 20),
                        self.gateway.used().div_ceil(1 << 20),
                        self.gateway.ceiling().unwrap_or(0) >> 20,
                    ),
                },
            );
            return Ok(false);
        }
        self.held += growth;
        if let Some(shard) = &self.shard {
            shard.held(growth);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
