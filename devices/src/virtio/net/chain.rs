//! The buffers of one descriptor chain, checked before any byte is moved:
//! all in the expected direction, a chain that ends, a bounded length. The
//! bytes themselves go through `vm-memory`, so a buffer outside guest RAM
//! is an error.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Why a chain was refused. Each kind is warned about once per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFault {
    /// The chain has no descriptor (its head or indirect table is unreadable).
    Empty,
    /// The chain does not end: it loops, or a `next` index or an indirect
    /// table lies outside the descriptor table or guest memory.
    Unterminated,
    /// A buffer goes the wrong way (writable in tx, readable in rx).
    WrongDirection,
    /// A tx chain holds more than the largest frame.
    TooLong,
    /// The chain cannot even hold the virtio-net header.
    TooShort,
    /// A buffer lies outside guest memory.
    OutsideMemory,
}

impl ChainFault {
    /// A sentence for the log.
    pub fn describe(self) -> &'static str {
        match self {
            ChainFault::Empty => "the chain has no readable descriptor",
            ChainFault::Unterminated => {
                "the chain does not end (a loop, or a next index out of range)"
            }
            ChainFault::WrongDirection => "a buffer has the wrong direction for its queue",
            ChainFault::TooLong => "the chain is longer than the largest frame",
            ChainFault::TooShort => "the chain is shorter than the virtio-net header",
            ChainFault::OutsideMemory => "a buffer lies outside guest memory",
        }
    }

    /// A distinct bit per kind, for warning once.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The direction of a queue's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Buffers the device reads (tx).
    DeviceReads,
    /// Buffers the device writes (rx).
    DeviceWrites,
}

/// A chain's buffers, in order.
#[derive(Debug, Default)]
pub struct Buffers {
    parts: Vec<(GuestAddress, u32)>,
    total: u64,
}

impl Buffers {
    /// Collects the buffers of `chain`; they must all go in `dir`, and add
    /// up to at most `limit` bytes.
    pub fn collect<M>(
        chain: DescriptorChain<M>,
        dir: Direction,
        limit: u64,
    ) -> Result<Buffers, ChainFault>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut buffers = Buffers::default();
        let mut ends = false;
        for desc in chain {
            if desc.is_write_only() != (dir == Direction::DeviceWrites) {
                return Err(ChainFault::WrongDirection);
            }
            buffers.total += u64::from(desc.len());
            if buffers.total > limit {
                return Err(ChainFault::TooLong);
            }
            buffers.parts.push((desc.addr(), desc.len()));
            ends = !desc.has_next();
        }
        match (buffers.parts.is_empty(), ends) {
            (true, _) => Err(ChainFault::Empty),
            (false, false) => Err(ChainFault::Unterminated),
            (false, true) => Ok(buffers),
        }
    }

    /// The bytes the buffers hold.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Copies the buffers' contents into `out`, which must be `len()` long.
    pub fn read_into(&self, mem: &GuestMemoryMmap, out: &mut [u8]) -> Result<(), ChainFault> {
        let mut at = 0usize;
        for &(addr, len) in &self.parts {
            let end = at + len as usize;
            let dst = out.get_mut(at..end).ok_or(ChainFault::TooLong)?;
            mem.read_slice(dst, addr)
                .map_err(|_| ChainFault::OutsideMemory)?;
            at = end;
        }
        Ok(())
    }

    /// Writes `data` across the buffers from the start. Every buffer is
    /// checked first, so a chain with a bad buffer anywhere is refused
    /// before any byte is written.
    pub fn write_from(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), ChainFault> {
        if data.len() as u64 > self.total {
            return Err(ChainFault::TooShort);
        }
        let all_inside = self.parts.iter().all(|&(addr, len)| {
            GuestMemory::check_range(mem, addr, len as usize, Permissions::Write)
        });
        if !all_inside {
            return Err(ChainFault::OutsideMemory);
        }
        let mut rest = data;
        for &(addr, len) in &self.parts {
            let n = rest.len().min(len as usize);
            mem.write_slice(&rest[..n], addr)
                .map_err(|_| ChainFault::OutsideMemory)?;
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        Ok(())
    }
}
