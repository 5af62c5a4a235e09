use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, used_count, used_entry};

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

fn active_rng<'a>(mem: &'a GuestMemoryMmap, mock: &MockSplitQueue<'a, GuestMemoryMmap>) -> Rng {
    let (active, _evt) = activation(mem, &[mock], VIRTIO_F_VERSION_1);
    let mut rng = Rng::new();
    rng.activate(active).unwrap();
    rng
}

#[test]
fn writable_buffers_are_filled() {
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&[desc(0x8_0000, 512, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    let mut rng = active_rng(&mem, &mock);
    rng.process_queue(0);
    assert_eq!(used_count(&mock), 1);
    assert_eq!(used_entry(&mock, 0), (0, 512));
    let mut got = [0u8; 512];
    mem.read_slice(&mut got, GuestAddress(0x8_0000)).unwrap();
    assert!(
        got.iter().any(|&b| b != 0),
        "512 random bytes are not all zero"
    );
}

#[test]
fn a_readable_buffer_is_answered_with_nothing() {
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&[desc(0x8_0000, 64, 0, 0)], 0)
        .unwrap();
    let mut rng = active_rng(&mem, &mock);
    rng.process_queue(0);
    assert_eq!(used_entry(&mock, 0), (0, 0));
}

#[test]
fn a_buffer_outside_guest_memory_is_answered_with_nothing() {
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&[desc(0xff_ff00, 0x1000, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    let mut rng = active_rng(&mem, &mock);
    rng.process_queue(0);
    assert_eq!(used_count(&mock), 1);
}

#[test]
fn a_looping_chain_ends() {
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    let flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    mock.add_desc_chains(
        &[desc(0x8_0000, 16, flags, 1), desc(0x8_1000, 16, flags, 0)],
        0,
    )
    .unwrap();
    // add_desc_chains links descriptors in order; point the second back.
    mock.desc_table()
        .store(1, desc(0x8_1000, 16, flags, 0))
        .unwrap();
    let mut rng = active_rng(&mem, &mock);
    rng.process_queue(0);
    assert_eq!(used_count(&mock), 1);
    let (_, len) = used_entry(&mock, 0);
    assert!(
        len <= 16 * 16,
        "a loop is cut at the queue size, got {len} bytes"
    );
}

#[test]
fn a_huge_request_is_capped() {
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&[desc(0x4_0000, 0x8_0000, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    let mut rng = active_rng(&mem, &mock);
    rng.process_queue(0);
    assert_eq!(used_entry(&mock, 0).1 as usize, MAX_REQUEST);
}

#[test]
fn fuzz_inputs_neither_panic_nor_hang() {
    for input in crate::virtio::test_utils::pseudo_random_inputs(300, 256) {
        fuzz_queue(&input);
    }
}
