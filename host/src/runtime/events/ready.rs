//! The ready list: the ids of the connections whose transport woke them
//! since the instance's task last looked, and the task's waker. With it the
//! task services only the connections that have something to do, however
//! many are open.

use std::sync::Mutex;

use futures::task::AtomicWaker;

use crate::base::locks::lock;

/// Connections ready to be serviced, in the order they woke.
#[derive(Default)]
pub(crate) struct ReadyList {
    ids: Mutex<Vec<u64>>,
    task: AtomicWaker,
}

impl ReadyList {
    /// Connection `id` is ready: queue it and wake the task. Only the push
    /// onto an empty list wakes it: a list with ids has been (or is being)
    /// woken for already, and the task registers before it takes the list,
    /// so the next push after a take finds the list empty and wakes again.
    pub(crate) fn push(&self, id: u64) {
        let first = {
            let mut ids = lock(&self.ids);
            ids.push(id);
            ids.len() == 1
        };
        if first {
            self.task.wake();
        }
    }

    /// The task that services the list is polled with `waker`.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.task.register(waker);
    }

    /// Takes every queued id into `into` (emptied first).
    pub(crate) fn take(&self, into: &mut Vec<u64>) {
        into.clear();
        std::mem::swap(&mut *lock(&self.ids), into);
    }
}
