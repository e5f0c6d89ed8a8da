//! One shard's life, for every world with long-lived instances: instance
//! after instance until the app is dropped. One loop owns the order of
//! things — room under the gateway's memory ceiling, the instance, then by
//! how it ended: done, asleep until the next connection (or request)
//! wakes it, replaced at once, or trapped and followed by the next one
//! after the crash-loop back-off. Each world says only how one of its
//! instances runs ([`run_shard`]'s `run_one`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::sync::mpsc;

use super::instance::{InstanceError, InstanceSettings};
use crate::base::backoff::Backoff;
use crate::tenant::conns::ShardLoad;

/// What a shard's loop holds of its shard; `T` is what its channel
/// carries (connections, or HTTP jobs).
pub(crate) struct ShardSide<T> {
    /// The instance's index in the app.
    pub index: u32,
    /// Connections (or requests) assigned to it.
    pub load: Arc<ShardLoad>,
    /// Set while the shard hibernates (no instance).
    pub asleep: Arc<AtomicBool>,
    /// Puts what woke the shard back in its channel, for the fresh
    /// instance (weak: the app's end still closes the channel).
    pub requeue: mpsc::WeakSender<T>,
}

/// How one instance ended, as far as its shard's loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceEnd {
    /// Its channel closed (the app was replaced or removed) and what it
    /// held drained: the shard is done.
    Closed,
    /// It hibernated: the next instance starts when something arrives.
    Hibernated,
    /// It must be replaced at once, with no back-off (the world logged
    /// why).
    Replace,
}

/// Runs instance after instance for `shard` until the app is dropped:
/// `run_one(rx, woke)` runs one instance on the channel and gives it back
/// (`woke`: when the connection or job that woke a hibernated shard
/// arrived). While the shard hibernates, what arrives queues in the
/// channel (none is refused) and the first one wakes it — once, whatever
/// arrives during the wake (single flight).
pub(crate) async fn run_shard<T, F, Fut>(
    settings: Arc<InstanceSettings>,
    shard: ShardSide<T>,
    mut rx: mpsc::Receiver<T>,
    mut run_one: F,
) where
    F: FnMut(mpsc::Receiver<T>, Option<tokio::time::Instant>) -> Fut,
    Fut: Future<Output = (Result<InstanceEnd, InstanceError>, mpsc::Receiver<T>)>,
{
    let ShardSide {
        index,
        load,
        asleep,
        requeue,
    } = shard;
    let mut backoff = Backoff::default();
    let mut woke = None;
    settings.offer_for_hibernation(&load);
    loop {
        if !settings.room_to_start(index, &load, &mut rx).await {
            woke = settings
                .sleep_until_woken(index, &mut rx, &requeue, &asleep)
                .await;
            if woke.is_none() {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let (outcome, returned) = run_one(rx, woke.take()).await;
        rx = returned;
        match outcome {
            Ok(InstanceEnd::Closed) => return,
            Ok(InstanceEnd::Hibernated) => {
                woke = settings
                    .sleep_until_woken(index, &mut rx, &requeue, &asleep)
                    .await;
                if woke.is_none() {
                    return;
                }
            }
            Ok(InstanceEnd::Replace) => {}
            Err(err) => {
                err.record_and_back_off(&settings, index, started.elapsed(), &mut backoff)
                    .await
            }
        }
    }
}
