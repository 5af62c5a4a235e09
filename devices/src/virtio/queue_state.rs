//! The saved form of one virtqueue.
//!
//! `virtio-queue` has its own `QueueState`, but without serde; this is the
//! same content in a type the snapshot can encode, and the one place that
//! turns it back into a queue, checking it as the crate does.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// One queue as the snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made the queue ready.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// Whether VIRTIO_F_RING_EVENT_IDX was negotiated.
    pub event_idx: bool,
}

/// Why a saved queue cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
#[error("saved queue (size {size}, max {max_size}) is invalid: {reason}")]
pub struct QueueRestoreError {
    size: u16,
    max_size: u16,
    reason: String,
}

impl SavedQueue {
    /// The state of `queue`.
    pub fn save(queue: &Queue) -> Self {
        let s = queue.state();
        SavedQueue {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }

    /// Rebuilds the queue; sizes and ring alignment are checked.
    pub fn restore(&self) -> Result<Queue, QueueRestoreError> {
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|e| QueueRestoreError {
            size: self.size,
            max_size: self.max_size,
            reason: e.to_string(),
        })
    }
}

/// A copy of `queue` (the crate's queue is not `Clone`). A queue whose
/// settings do not form a valid queue copies as a fresh one of the same
/// maximum size: only ready, valid queues are ever used.
pub fn duplicate(queue: &Queue) -> Queue {
    Queue::try_from(queue.state()).unwrap_or_else(|_| {
        Queue::new(queue.max_size()).expect("a queue's own maximum size is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_round_trips() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(128);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        q.set_next_avail(7);
        q.set_next_used(5);
        q.set_ready(true);
        let saved = SavedQueue::save(&q);
        let back = saved.restore().unwrap();
        assert_eq!(SavedQueue::save(&back), saved);
        assert_eq!(back.next_avail(), 7);
    }

    #[test]
    fn a_size_that_is_not_a_power_of_two_is_refused() {
        let mut saved = SavedQueue::save(&Queue::new(256).unwrap());
        saved.size = 100;
        let err = saved.restore().unwrap_err().to_string();
        assert!(err.contains("size 100"), "{err}");
    }
}
