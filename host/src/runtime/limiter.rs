//! The store limiter: what one instance's memories and tables may grow
//! to, and the refusals remembered so that a later trap can be explained
//! (`memory_limit_mb` reached, not a guest bug).

use std::sync::Arc;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::limits::AppLimits;
use crate::tenant::logs::{AppLog, EventKind};

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
    /// The size a guest last asked to grow a memory to and was refused.
    pub refused_memory: Option<usize>,
    log: Arc<AppLog>,
    instance: u32,
}

impl GuestLimiter {
    /// Limits from the app's configuration; refusals are recorded as events
    /// of instance `instance` in `log`.
    pub(crate) fn new(limits: &AppLimits, log: Arc<AppLog>, instance: u32) -> Self {
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
            refused_memory: None,
            log,
            instance,
        }
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
        }
        Ok(allowed)
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
