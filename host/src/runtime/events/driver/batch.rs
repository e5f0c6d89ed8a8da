//! The batch being gathered for the guest: taken in bounded slices, its
//! allocation reused ([`Driver`]'s batch bookkeeping, beside its loop).

use super::{Driver, MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use crate::runtime::events::bindings::{Event, received_bytes};

impl Driver {
    /// Takes the oldest [`MAX_BATCH_EVENTS`] events gathered; the rest
    /// (only when the guest's actions produced more than a batch holds, or
    /// the last connection serviced added a few past it) wait for the
    /// next batch, in order.
    pub(super) fn take_batch(&mut self) -> Vec<Event> {
        if self.events.len() <= MAX_BATCH_EVENTS {
            self.batch_bytes = 0;
            return std::mem::take(&mut self.events);
        }
        let rest = self.events.split_off(MAX_BATCH_EVENTS);
        let batch = std::mem::replace(&mut self.events, rest);
        self.batch_bytes = self.events.iter().map(received_bytes).sum();
        batch
    }

    /// Keeps the allocations of a batch the guest was given for the next
    /// one: its `received` buffers (a 0.2.0 batch gave them already), and
    /// the list itself when no events wait already.
    pub(super) fn recycle(&mut self, mut batch: Vec<Event>) {
        for event in batch.drain(..) {
            if let Event::Received(received) = event {
                self.spare.give(received.bytes);
            }
        }
        if self.events.is_empty() {
            self.events = batch;
        }
    }

    pub(super) fn batch_full(&self) -> bool {
        self.events.len() >= MAX_BATCH_EVENTS || self.batch_bytes >= MAX_BATCH_BYTES
    }
}
