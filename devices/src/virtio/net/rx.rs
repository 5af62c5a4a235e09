//! Receive: frames from the backend go into the guest's rx chains, one
//! frame per chain (VIRTIO_NET_F_MRG_RXBUF is not offered).
//!
//! The backend descriptor is watched edge-triggered, so each call reads
//! until the backend has nothing more or the guest has no buffer left. In
//! the second case the frame read last waits in the port, and reading
//! goes on when the guest notifies the rx queue (it does so whenever it
//! adds buffers, since the device never suppresses notifications).

use std::mem::offset_of;

use virtio_bindings::virtio_net::virtio_net_hdr_v1;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{Buffers, ChainFault, Direction};
use super::port::{Fault, Port};
use super::HEADER_LEN;

/// What became of one rx chain.
enum Delivery {
    /// The frame was written; the used length.
    Written(u32),
    /// The frame is bigger than the chain: the frame is dropped and the
    /// chain is kept for the next one.
    TooBig,
    /// The chain was refused; the frame waits for the next chain.
    Refused(ChainFault),
}

impl Port {
    /// Moves frames into rx chains; returns whether used entries were added.
    pub fn receive(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used_any = false;
        while self.rx_pending.is_some() || self.fetch() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                log::trace!("{}: no rx buffer, a frame waits", self.name);
                break;
            };
            let head = chain.head_index();
            let len = match self.deliver(mem, chain) {
                Delivery::Written(len) => len,
                Delivery::TooBig => {
                    queue.go_to_previous_position();
                    continue;
                }
                Delivery::Refused(fault) => {
                    let why = fault.describe();
                    self.warn(
                        Fault::RxChain(fault.bit()),
                        format_args!("rx chain {head} refused: {why}"),
                    );
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("{}: the rx used ring is broken, rx stops: {e}", self.name);
                return used_any;
            }
            used_any = true;
        }
        used_any
    }

    /// Reads the next usable frame from the backend into `rx_buf`; false
    /// when there is none now.
    fn fetch(&mut self) -> bool {
        loop {
            match self.backend.recv(&mut self.rx_buf) {
                Ok(0) => {
                    self.warn(Fault::Recv, format_args!("the backend was closed"));
                    return false;
                }
                Ok(n) if n < HEADER_LEN => {
                    self.counters.dropped += 1;
                    self.warn(
                        Fault::ShortFrame,
                        format_args!("a {n}-byte frame from the backend has no header, dropped"),
                    );
                }
                Ok(n) => {
                    self.rx_pending = Some(n);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.warn(Fault::Recv, format_args!("reading the backend failed: {e}"));
                    return false;
                }
            }
        }
    }

    /// Writes the waiting frame into `chain`.
    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Delivery {
        let Some(len) = self.rx_pending else {
            return Delivery::Refused(ChainFault::Empty);
        };
        let buffers = match Buffers::collect(chain, Direction::DeviceWrites, u64::MAX) {
            Ok(b) if b.len() < HEADER_LEN as u64 => return Delivery::Refused(ChainFault::TooShort),
            Ok(b) => b,
            Err(fault) => return Delivery::Refused(fault),
        };
        if buffers.len() < len as u64 {
            self.drop_too_big(len, buffers.len());
            return Delivery::TooBig;
        }
        write_header(&mut self.rx_buf[..HEADER_LEN]);
        if let Err(fault) = buffers.write_from(mem, &self.rx_buf[..len]) {
            return Delivery::Refused(fault);
        }
        self.rx_pending = None;
        self.counters.rx_frames += 1;
        Delivery::Written(len as u32)
    }

    fn drop_too_big(&mut self, len: usize, room: u64) {
        self.rx_pending = None;
        self.counters.dropped += 1;
        self.warn(
            Fault::FrameTooBig,
            format_args!("a {len}-byte frame does not fit a {room}-byte rx buffer, dropped"),
        );
    }
}

/// The header of a received frame: no flag and no GSO (nothing was
/// negotiated that would allow them, so the TAP's header is not passed
/// on), and `num_buffers` 1: without VIRTIO_NET_F_MRG_RXBUF a frame always
/// takes one chain (Linux reads the field only with mergeable buffers).
fn write_header(header: &mut [u8]) {
    let at = offset_of!(virtio_net_hdr_v1, num_buffers);
    header.fill(0);
    header[at..at + 2].copy_from_slice(&1u16.to_le_bytes());
}
