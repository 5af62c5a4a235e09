//! Helpers for device tests and fuzzing: guest memory with a queue laid out
//! by `virtio-queue`'s mock, and an activation of a device on it.

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
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

/// Lays out a queue of `mock` from fuzz bytes: every descriptor of the
/// table gets an address, length, flags and next index from `data`, then
/// the available ring gets heads and an index from it. Addresses are
/// mostly inside guest memory and sometimes anywhere; nothing is checked,
/// since the point is to feed the device what a hostile driver could.
pub fn fuzz_layout(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    size: u16,
    data: &[u8],
) {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::{Address, Bytes};

    let mut bytes = FuzzBytes(data);
    for i in 0..size {
        let raw = bytes.u64();
        let addr = if raw & 1 == 0 { raw % (1 << 20) } else { raw };
        let len = bytes.u32() % (1 << 17);
        let flags = bytes.u16() & 0x7;
        let next = bytes.u16() % (size + 2);
        let desc = SplitDescriptor::new(addr, len, flags, next);
        let _ = mock.desc_table().store(i, RawDescriptor::from(desc));
    }
    let count = bytes.u16() % (size + 1);
    let avail = mock.avail_addr();
    for slot in 0..count {
        let head = bytes.u16() % (size + 1);
        let at = avail.unchecked_add(4 + 2 * u64::from(slot));
        let _ = mem.write_obj(head, at);
    }
    let _ = mem.write_obj(count, avail.unchecked_add(2));
}

/// Reads fixed-size values from fuzz bytes, zero once they run out.
pub struct FuzzBytes<'a>(pub &'a [u8]);

impl FuzzBytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// A small deterministic generator for tests that feed the fuzz entry
/// points many inputs without a fuzzer.
pub fn pseudo_random_inputs(count: usize, len: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}
