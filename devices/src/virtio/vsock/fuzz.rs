//! The body of [`super::fuzz_queue`]: descriptors with arbitrary address,
//! length, flags and next index on all three queues, guest memory filled
//! with the input (with valid context ids now and then, so that packets get
//! past the first checks), and a host program that connects meanwhile.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use event_manager::EventSet;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::HOST_CID;
use super::{Vsock, VsockState, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::virtio::test_utils::{activation, mock_queue, test_memory};
use crate::virtio::VIRTIO_F_VERSION_1;

const QUEUE_LEN: u16 = 16;
const DESCS_PER_QUEUE: usize = 8;
const DESC_BYTES: usize = 16;
/// Where the input's remaining bytes go in guest memory.
const DATA_ADDR: u64 = 0x8_0000;
/// Descriptor addresses fall in twice the test memory, so about half
/// point outside it.
const ADDR_SPAN: u64 = 2 << 20;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

pub(super) fn run(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!(
        "hiber-vsock-fuzz-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir_all(&dir).is_ok() {
        drive(&dir, data);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn device(path: &Path, restored: bool) -> Option<Vsock> {
    if restored {
        let state = VsockState {
            guest_cid: 3,
            uds_path: PathBuf::from("unused"),
        };
        Vsock::restore(&state, Some(path)).ok()
    } else {
        Vsock::new(3, path).ok()
    }
}

fn drive(dir: &Path, data: &[u8]) {
    let path = dir.join("v.sock");
    let flags = data.first().copied().unwrap_or(0);
    let Some(mut dev) = device(&path, flags & 2 != 0) else {
        return;
    };
    let mem = test_memory();
    let mocks: Vec<_> = (0..3).map(|i| mock_queue(&mem, i, QUEUE_LEN)).collect();
    let split = data.len().min(3 * DESCS_PER_QUEUE * DESC_BYTES);
    let (descs, rest) = data.split_at(split);
    for (mock, bytes) in mocks.iter().zip(descs.chunks(DESCS_PER_QUEUE * DESC_BYTES)) {
        lay_out(mock, bytes);
    }
    fill_memory(&mem, rest, flags & 1 == 0);
    let refs: Vec<&MockSplitQueue<'_, GuestMemoryMmap>> = mocks.iter().collect();
    let (active, _evt) = activation(&mem, &refs, VIRTIO_F_VERSION_1);
    if dev.activate(active).is_err() {
        return;
    }
    let host = UnixStream::connect(&path).ok();
    if let Some(mut h) = host.as_ref() {
        let _ = h.write_all(b"CONNECT 52\n");
    }
    use crate::virtio::VirtioDevice;
    for _ in 0..3 {
        dev.process_queue(TX_QUEUE);
        dev.process_backend(0, EventSet::IN);
        dev.process_queue(RX_QUEUE);
        dev.process_queue(EVENT_QUEUE);
    }
}

fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(&b[at..at + N]);
    v
}

/// Writes the descriptors `bytes` describe and offers some as chain heads.
fn lay_out(mock: &MockSplitQueue<'_, GuestMemoryMmap>, bytes: &[u8]) {
    let mut heads = 0u16;
    for (i, d) in bytes.chunks_exact(DESC_BYTES).enumerate() {
        let addr = u64::from_le_bytes(field(d, 0)) % ADDR_SPAN;
        let raw_len = u32::from_le_bytes(field(d, 8));
        let len = if d[14] & 0x80 != 0 {
            raw_len
        } else {
            raw_len % 0x2_0000
        };
        let mask = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT;
        let flags = u16::from_le_bytes(field(d, 12)) & mask as u16;
        let next = u16::from(d[15]) % QUEUE_LEN;
        let desc = SplitDescriptor::new(addr, len, flags, next);
        let _ = mock.desc_table().store(i as u16, RawDescriptor::from(desc));
        if d[14] & 1 == 0 {
            if let Ok(slot) = mock.avail().ring().ref_at(heads as usize) {
                slot.store(i as u16);
                heads += 1;
            }
        }
    }
    mock.avail().idx().store(heads);
}

/// Copies `rest` to guest memory; with `valid_cids`, the first packet
/// there names the right context ids.
fn fill_memory(mem: &GuestMemoryMmap, rest: &[u8], valid_cids: bool) {
    let rest = &rest[..rest.len().min(64 << 10)];
    let _ = mem.write_slice(rest, GuestAddress(DATA_ADDR));
    if valid_cids && rest.len() >= 16 {
        let _ = mem.write_obj(3u64, GuestAddress(DATA_ADDR));
        let _ = mem.write_obj(HOST_CID, GuestAddress(DATA_ADDR + 8));
    }
}
