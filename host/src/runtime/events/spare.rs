//! Spare byte buffers for `received` events: a small message's bytes are
//! copied into a buffer given back by an earlier batch, so a message costs
//! no allocation once the instance is warm. Bounded, because an instance
//! that had one busy moment must not hold its memory after it.

/// Largest buffer kept: a busy connection's 64 KiB reads are not.
const MAX_KEPT_CAPACITY: usize = 4 * 1024;
/// Most bytes of capacity kept in all (so at most this much per instance
/// beside its connections; `received` buffers of small messages are
/// usually far smaller: 64 of 64 bytes in the boundary bench).
const MAX_KEPT_BYTES: usize = 64 * 1024;

/// The buffers kept, and their capacity in all.
#[derive(Default)]
pub(crate) struct SpareBuffers {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl SpareBuffers {
    /// An empty buffer, with the capacity of one given back when there is
    /// one.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        match self.buffers.pop() {
            Some(buffer) => {
                self.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// Keeps `buffer` (emptied) for a later `take`, unless it is large or
    /// enough is kept already.
    pub(crate) fn give(&mut self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0 || capacity > MAX_KEPT_CAPACITY || self.bytes + capacity > MAX_KEPT_BYTES {
            return;
        }
        buffer.clear();
        self.bytes += capacity;
        self.buffers.push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_small_buffers_up_to_its_bound_and_drops_the_rest() {
        let mut spare = SpareBuffers::default();
        spare.give(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        assert_eq!(spare.take().capacity(), 0, "a large buffer is not kept");
        let kept = MAX_KEPT_BYTES / MAX_KEPT_CAPACITY;
        for _ in 0..kept + 3 {
            let mut buffer = Vec::with_capacity(MAX_KEPT_CAPACITY);
            buffer.extend_from_slice(b"old bytes");
            spare.give(buffer);
        }
        assert_eq!(spare.bytes, MAX_KEPT_BYTES);
        for _ in 0..kept {
            let buffer = spare.take();
            assert!(buffer.is_empty() && buffer.capacity() == MAX_KEPT_CAPACITY);
        }
        assert_eq!(spare.take().capacity(), 0, "only {kept} were kept");
        assert_eq!(spare.bytes, 0);
    }
}
