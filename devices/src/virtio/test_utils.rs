//! Helpers for device tests and fuzzing: guest memory with a queue laid out
//! by `virtio-queue`'s mock, and an activation of a device on it.

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActiveQueues, Interrupt};

/// Guest RAM for tests: 1 MiB at address 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// Where queue `i`'s rings are placed by [`mock_queue`].
pub fn queue_base(i: usize) -> GuestAddress {
    GuestAddress(0x1_0000 * (i as u64 + 1))
}

/// A mock queue of `size` entries for queue number `i`.
pub fn mock_queue(
    mem: &GuestMemoryMmap,
    i: usize,
    size: u16,
) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, queue_base(i), size)
}

/// An activation with the given mock queues and a fresh interrupt; the
/// interrupt's eventfd is returned to check signalling.
pub fn activation(
    mem: &GuestMemoryMmap,
    mocks: &[&MockSplitQueue<'_, GuestMemoryMmap>],
    acked_features: u64,
) -> (ActiveQueues, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let queues: Vec<Queue> = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
    let active = ActiveQueues {
        mem: mem.clone(),
        queues,
        interrupt: Interrupt::new(evt.try_clone().unwrap(), 0),
        acked_features,
    };
    (active, evt)
}

/// The `(id, len)` of used-ring entry `index` of a mock queue.
pub fn used_entry(mock: &MockSplitQueue<'_, GuestMemoryMmap>, index: u16) -> (u32, u32) {
    let e = mock.used().ring().ref_at(index as usize).unwrap().load();
    (e.id(), e.len())
}

/// How many used entries a mock queue has.
pub fn used_count(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    mock.used().idx().load()
}

/// Makes every queue of `active` ready (the mock leaves them so already).
pub fn all_ready(active: &ActiveQueues) -> bool {
    active.queues.iter().all(|q| q.ready())
}
