//! The fuzz entry point: both queues laid out from arbitrary bytes, a
//! socket pair as the TAP, and every path of the device run over them.

use std::os::unix::net::UnixDatagram;

use super::{Net, RX_QUEUE, TX_QUEUE};
use crate::virtio::test_utils::{activation, fuzz_layout, mock_queue, test_memory, FuzzBytes};
use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

/// The queue size of the fuzzed queues: small, so that the bytes decide
/// most of each table.
const FUZZ_QUEUE_SIZE: u16 = 16;

/// Runs the device over queues and frames made from `data` (a third for
/// each queue, a third for the frames waiting on the pretend TAP); it must
/// neither panic nor hang, whatever `data` holds.
pub fn fuzz_queue(data: &[u8]) {
    let third = data.len() / 3;
    let (rx_bytes, rest) = data.split_at(third);
    let (tx_bytes, frame_bytes) = rest.split_at(third);
    let mem = test_memory();
    let rx = mock_queue(&mem, RX_QUEUE, FUZZ_QUEUE_SIZE);
    let tx = mock_queue(&mem, TX_QUEUE, FUZZ_QUEUE_SIZE);
    fuzz_layout(&mem, &rx, FUZZ_QUEUE_SIZE, rx_bytes);
    fuzz_layout(&mem, &tx, FUZZ_QUEUE_SIZE, tx_bytes);
    let Ok((host, device_end)) = UnixDatagram::pair() else {
        return;
    };
    if device_end.set_nonblocking(true).is_err() || host.set_nonblocking(true).is_err() {
        return;
    }
    send_frames(&host, frame_bytes);

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

/// Queues up to four frames of input-chosen sizes on the pretend TAP.
fn send_frames(host: &UnixDatagram, data: &[u8]) {
    let mut bytes = FuzzBytes(data);
    for i in 0..bytes.u8() % 5 {
        let len = bytes.u16() as usize % 3000;
        let _ = host.send(&vec![i; len]);
    }
}
