//! Transmit: the guest's tx chains, each one frame behind its header, go to
//! the backend. Every chain is completed with a used length of 0 (the
//! device writes nothing into tx buffers), whether its frame was sent or
//! dropped.

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{Buffers, ChainFault, Direction};
use super::port::{Fault, Port};
use super::{HEADER_LEN, MAX_FRAME_LEN};

impl Port {
    /// Sends every available tx chain; returns whether used entries were
    /// added.
    pub fn transmit(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match self.gather(mem, chain) {
                Ok(()) => self.send(),
                Err(fault) => {
                    self.counters.dropped += 1;
                    let why = fault.describe();
                    self.warn(
                        Fault::TxChain(fault.bit()),
                        format_args!("tx chain {head} dropped: {why}"),
                    );
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::error!("{}: the tx used ring is broken, tx stops: {e}", self.name);
                return used_any;
            }
            used_any = true;
        }
        used_any
    }

    /// Copies one chain's frame into `tx_buf`.
    fn gather(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(), ChainFault> {
        let buffers = Buffers::collect(chain, Direction::DeviceReads, MAX_FRAME_LEN as u64)?;
        let len = buffers.len() as usize;
        if len < HEADER_LEN {
            return Err(ChainFault::TooShort);
        }
        self.tx_buf.resize(len, 0);
        buffers.read_into(mem, &mut self.tx_buf)?;
        // No offload was offered, so a driver sets no header field; zeroing
        // them keeps a guest from reaching the host's checksum and GSO
        // paths with fields it did not negotiate.
        self.tx_buf[..HEADER_LEN].fill(0);
        Ok(())
    }

    fn send(&mut self) {
        match self.backend.send(&self.tx_buf) {
            Ok(n) if n == self.tx_buf.len() => self.counters.tx_frames += 1,
            Ok(n) => {
                self.counters.dropped += 1;
                let len = self.tx_buf.len();
                self.warn(
                    Fault::Send,
                    format_args!("the backend took {n} of a {len}-byte frame"),
                );
            }
            Err(e) => {
                self.counters.dropped += 1;
                self.warn(
                    Fault::Send,
                    format_args!("a frame from the guest was dropped: the backend refused it: {e}"),
                );
            }
        }
    }
}
