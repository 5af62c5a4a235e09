//! The fuzz entry point: a drive on a scratch image behind a mock queue whose
//! descriptors, request headers and available ring come from the fuzz input.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::Block;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, FuzzBytes};
use crate::virtio::VirtioDevice;

/// The mock queue's size: small, so that fuzzed indices often hit it.
const FUZZ_QUEUE_SIZE: u16 = 16;
/// The scratch image: 128 sectors.
const FUZZ_DISK_SIZE: u64 = 64 << 10;
/// Descriptor addresses are taken below this, a third of it outside the
/// 1 MiB of test memory.
const ADDR_SPAN: u32 = 0x18_0000;
/// Where well-formed chains put their buffers, one page per descriptor.
const CHAIN_AREA: u64 = 0x4_0000;

/// Runs the drive on one queue laid out from `data`. It must never panic,
/// hang or touch memory outside the test guest's; the image is a scratch
/// file, removed afterwards.
pub fn fuzz_queue(data: &[u8]) {
    let Ok(image) = TempFile::new_with_prefix(std::env::temp_dir().join("hiber-block-fuzz")) else {
        return;
    };
    if image.as_file().set_len(FUZZ_DISK_SIZE).is_err() {
        return;
    }
    let mut input = FuzzBytes(data);
    let read_only = input.u8() & 1 == 1;
    let Ok(mut block) = Block::new("fuzz", image.as_path(), read_only) else {
        return;
    };
    let mem = test_memory();
    let mock = mock_queue(&mem, 0, FUZZ_QUEUE_SIZE);
    lay_out(&mem, &mock, &mut input);
    let (active, _irq) = activation(&mem, &[&mock], block.avail_features());
    if block.activate(active).is_ok() {
        block.process_queue(0);
        let _ = block.quiesce();
    }
}

/// Lays out either arbitrary descriptors (a quarter of inputs) or
/// well-formed header-data-status chains with fuzzed types, sectors, sizes
/// and directions, one field of which the input may then spoil, so that
/// random inputs also reach the I/O paths.
fn lay_out(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    input: &mut FuzzBytes,
) {
    let arbitrary = input.u8().is_multiple_of(4);
    let count = 1 + input.u16() % FUZZ_QUEUE_SIZE;
    for i in 0..count {
        let desc = match arbitrary {
            true => arbitrary_descriptor(input),
            false => chain_descriptor(i, input),
        };
        write_header(mem, desc.addr(), input);
        let _ = mock.desc_table().store(i, RawDescriptor::from(desc));
    }
    if !arbitrary {
        spoil_one(mock, count, input);
    }
    let heads = match arbitrary {
        true => input.u16() % (FUZZ_QUEUE_SIZE + 1),
        false => count.div_ceil(3),
    };
    for slot in 0..heads {
        let head = match arbitrary {
            true => input.u16() % (FUZZ_QUEUE_SIZE + 2),
            false => slot * 3,
        };
        if let Ok(at) = mock.avail().ring().ref_at(slot as usize) {
            at.store(u16::to_le(head));
        }
    }
    mock.avail().idx().store(u16::to_le(heads));
}

/// A descriptor with any address (a third outside memory), length, flags
/// and next index.
fn arbitrary_descriptor(input: &mut FuzzBytes) -> SplitDescriptor {
    let addr = u64::from(input.u32() % ADDR_SPAN);
    let raw_len = input.u32();
    let len = if input.u8() & 1 == 0 {
        raw_len % 0x3000
    } else {
        raw_len
    };
    let mask = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT;
    let flags = input.u16() & mask as u16;
    let next = input.u16() % (FUZZ_QUEUE_SIZE + 1);
    SplitDescriptor::new(addr, len, flags, next)
}

/// Descriptor `i` of back-to-back three-descriptor chains: a 16-byte
/// header, up to 2 KiB of data either way, a 1-byte status.
fn chain_descriptor(i: u16, input: &mut FuzzBytes) -> SplitDescriptor {
    let addr = CHAIN_AREA + u64::from(i) * 0x1000;
    let next_flag = VRING_DESC_F_NEXT as u16;
    match i % 3 {
        0 => SplitDescriptor::new(addr, 16, next_flag, i + 1),
        1 => {
            let len = u32::from(input.u8() % 5) * 512;
            let write = (input.u8() & 1) as u16 * VRING_DESC_F_WRITE as u16;
            SplitDescriptor::new(addr, len, next_flag | write, i + 1)
        }
        _ => SplitDescriptor::new(addr, 1, VRING_DESC_F_WRITE as u16, 0),
    }
}

/// Replaces one field of one descriptor with an input value.
fn spoil_one(mock: &MockSplitQueue<'_, GuestMemoryMmap>, count: u16, input: &mut FuzzBytes) {
    let which = input.u16() % count;
    let Ok(raw) = mock.desc_table().load(which) else {
        return;
    };
    let d = SplitDescriptor::from(raw);
    let (mut addr, mut len, mut flags, mut next) = (d.addr().0, d.len(), d.flags(), d.next());
    match input.u8() % 5 {
        0 => addr = u64::from(input.u32() % ADDR_SPAN),
        1 => len = input.u32(),
        2 => flags = input.u16() & 0x7,
        3 => next = input.u16() % (FUZZ_QUEUE_SIZE + 1),
        _ => return,
    }
    let spoiled = SplitDescriptor::new(addr, len, flags, next);
    let _ = mock.desc_table().store(which, RawDescriptor::from(spoiled));
}

/// Writes a request header (type 0 to 9, sector 0 to 255 of the 128) at
/// `addr` when it is in memory, so that requests get past their header.
fn write_header(mem: &GuestMemoryMmap, addr: GuestAddress, input: &mut FuzzBytes) {
    let mut header = [0u8; 16];
    header[0] = input.u8() % 10;
    header[8] = input.u8();
    let _ = mem.write_slice(&header, addr);
}
