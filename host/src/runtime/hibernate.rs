//! An instance's sleep and wake, for every world with long-lived
//! instances: hibernating ([`InstanceSettings::sleep_until_woken`]), the
//! wake's record ([`InstanceSettings::started`]), and the room a start
//! needs under the gateway's memory ceiling
//! ([`InstanceSettings::room_to_start`], [`crate::tenant::memory`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::instance::InstanceSettings;
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::EventKind;
use crate::tenant::memory::FIRST_START_ESTIMATE;

impl InstanceSettings {
    /// Instance `index` hibernated: records it (`asleep` set, a
    /// `hibernated` event) and waits on `rx` for the connection (or job)
    /// that wakes it, which goes back in the channel through `requeue` for
    /// the fresh instance — one wake, whatever arrives meanwhile. Returns
    /// when it arrived; `None` once the app is gone (the channel closed).
    pub(crate) async fn sleep_until_woken<T>(
        &self,
        index: u32,
        rx: &mut mpsc::Receiver<T>,
        requeue: &mpsc::WeakSender<T>,
        asleep: &AtomicBool,
    ) -> Option<tokio::time::Instant> {
        asleep.store(true, Ordering::Relaxed);
        let idle_secs = self.hibernate_after.unwrap_or_default().as_secs();
        self.log
            .event(Some(index), EventKind::Hibernated { idle_secs });
        let first = rx.recv().await?;
        let woke = tokio::time::Instant::now();
        asleep.store(false, Ordering::Relaxed);
        // Room is certain: the channel holds as many entries as the
        // instance's cap, and `first` still counts in its load.
        drop(requeue.upgrade()?.try_send(first));
        Some(woke)
    }

    /// Before instance `index` of `shard` starts or wakes: makes room for
    /// it under the gateway's memory ceiling, asking the least recently
    /// used idle instances of apps that hibernate to hibernate now
    /// ([`crate::tenant::memory`]). Without room, the connections (or
    /// requests) waiting in `rx` are refused — closed, with an event that
    /// says why and what to do — and `false` says the shard stays asleep
    /// until the next one.
    pub(crate) async fn room_to_start<T>(
        &self,
        index: u32,
        shard: &Arc<ShardLoad>,
        rx: &mut mpsc::Receiver<T>,
    ) -> bool {
        let need = match shard.last_memory() {
            0 => self.pre.initial_memory().max(FIRST_START_ESTIMATE),
            held => held,
        };
        match self.tracker.memory().make_room(&**shard, need).await {
            Ok(asked) => {
                if asked > 0 {
                    self.log.event(
                        Some(index),
                        EventKind::LimitHit {
                            limit: "max_guest_memory_mb",
                            detail: format!(
                                "asked {asked} idle instances (least recently used first) to \
                                 hibernate, to make room for this one",
                            ),
                        },
                    );
                }
                true
            }
            Err(no_room) => {
                let mut refused = 0;
                while let Ok(waiting) = rx.try_recv() {
                    drop(waiting);
                    refused += 1;
                }
                self.log.event(
                    Some(index),
                    EventKind::LimitHit {
                        limit: "max_guest_memory_mb",
                        detail: format!(
                            "instance not started, {refused} waiting connections refused: \
                             {no_room}"
                        ),
                    },
                );
                false
            }
        }
    }

    /// Makes the long-lived instances of `shard` candidates for hibernating
    /// early when the gateway's memory ceiling needs room — if the app
    /// hibernates at all (`hibernate_after_secs` not 0).
    pub(crate) fn offer_for_hibernation(&self, shard: &Arc<ShardLoad>) {
        if self.hibernate_after.is_some() {
            self.tracker.memory().register(shard);
        }
    }

    /// Records that instance `index` was created and serves: an
    /// `instance started` event, or, when it was woken from hibernation
    /// by a connection that arrived at `woke`, a `woke (N ms)` event and
    /// the wake's time in the app's histogram.
    pub(crate) fn started(&self, index: u32, woke: Option<tokio::time::Instant>) {
        let Some(woke) = woke else {
            self.log.event(Some(index), EventKind::InstanceStarted);
            return;
        };
        let took = woke.elapsed();
        self.account.counters.wakes.record(took);
        let wake_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.log.event(Some(index), EventKind::Woke { wake_us });
    }
}
