//! The fuzz entry point: both queues laid out from arbitrary bytes, a
//! socket pair as the TAP, and every path of the device run over them.

use std::os::unix::net::UnixDatagram;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

use super::{Net, RX_QUEUE, TX_QUEUE};
use crate::virtio::test_utils::{activation, mock_queue, test_memory};
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

/// The queue size of the fuzzed queues: small, so that the bytes decide
/// most of each table.
const FUZZ_QUEUE_SIZE: u16 = 16;

/// Takes bytes from the fuzz input, zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Runs the device over queues and frames made from `data`; it must never
/// panic, whatever `data` holds.
pub fn fuzz_queue(data: &[u8]) {
    let mut input = Bytes(data);
    let mem = test_memory();
    let rx = mock_queue(&mem, RX_QUEUE, FUZZ_QUEUE_SIZE);
    let tx = mock_queue(&mem, TX_QUEUE, FUZZ_QUEUE_SIZE);
    lay_out(&rx, &mut input);
    lay_out(&tx, &mut input);
    let Ok((host, device_end)) = UnixDatagram::pair() else {
        return;
    };
    let _ = device_end.set_nonblocking(true);
    let _ = host.set_nonblocking(true);
    send_frames(&host, &mut input);

    let Ok(mut net) = Net::with_backend("fuzz0", "fuzz-tap", None, Box::new(device_end)) else {
        return;
    };
    let (active, _irq) = activation(&mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
    if net.activate(active).is_err() {
        return;
    }
    net.process_queue(TX_QUEUE);
    net.process_backend(0, event_manager::EventSet::IN);
    net.process_queue(RX_QUEUE);
    let _ = net.save();
    let _ = net.reset();
}

/// Fills a queue's descriptor table and available ring from the input:
/// addresses reach past guest memory, `next` past the table, and the
/// available index may claim more entries than the ring has.
fn lay_out(queue: &MockSplitQueue<'_, GuestMemoryMmap>, input: &mut Bytes) {
    for i in 0..FUZZ_QUEUE_SIZE {
        let addr = input.u64() % (3 << 19);
        let len = input.u32() % 0x2_0000;
        let flags = input.u16() & 0b111;
        let next = input.u16() % (FUZZ_QUEUE_SIZE + 4);
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        let _ = queue.desc_table().store(i, desc);
    }
    let ring = queue.avail().ring();
    for i in 0..FUZZ_QUEUE_SIZE as usize {
        if let Ok(entry) = ring.ref_at(i) {
            entry.store(input.u16() % (FUZZ_QUEUE_SIZE + 4));
        }
    }
    queue
        .avail()
        .idx()
        .store(input.u16() % (FUZZ_QUEUE_SIZE * 2));
}

/// Queues up to four frames of input-chosen sizes on the pretend TAP.
fn send_frames(host: &UnixDatagram, input: &mut Bytes) {
    let [count] = input.take::<1>();
    for i in 0..count % 5 {
        let len = input.u16() as usize % 3000;
        let frame = vec![i; len];
        let _ = host.send(&frame);
    }
}
