//! The virtio-vsock packet: the 44-byte `virtio_vsock_hdr` (virtio 1.2,
//! section 5.10.6) and the checks a packet from the guest must pass before
//! the device believes any of its fields.
//!
//! A TX packet (guest to host) is copied out of its descriptor chain at once:
//! its payload is at most [`MAX_PAYLOAD`] bytes, so the copy is small, and
//! the chain can be completed before the data reaches a host socket. An RX
//! packet (host to guest) is written into a chain through [`RxBuffer`],
//! which is checked before the device reads any host data for it.

use std::io::{Read, Write};

use virtio_queue::{desc::split::Descriptor, DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// The size of `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The context id of the host.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device offers.
pub const TYPE_STREAM: u16 = 1;
/// The largest payload of one packet, in either direction. Linux sends at
/// most 64 KiB per packet; a larger `len` from the guest is refused.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags: the sender closed its socket.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The operations of the stream protocol (`VIRTIO_VSOCK_OP_*`).
pub mod op {
    /// Asks the peer to accept a connection.
    pub const REQUEST: u16 = 1;
    /// Accepts a connection.
    pub const RESPONSE: u16 = 2;
    /// Ends a connection at once, or refuses one.
    pub const RST: u16 = 3;
    /// The sender stops receiving and/or sending (see the `SHUTDOWN_*` flags).
    pub const SHUTDOWN: u16 = 4;
    /// Carries data.
    pub const RW: u16 = 5;
    /// Tells the peer the sender's buffer space.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The sender's context id.
    pub src_cid: u64,
    /// The receiver's context id.
    pub dst_cid: u64,
    /// The sender's port.
    pub src_port: u32,
    /// The receiver's port.
    pub dst_port: u32,
    /// The payload length.
    pub len: u32,
    /// The socket type (`TYPE_STREAM`).
    pub kind: u16,
    /// The operation (see [`op`]).
    pub op: u16,
    /// Operation flags (the `SHUTDOWN_*` bits).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// How many bytes the sender has taken out of that buffer, ever.
    pub fwd_cnt: u32,
}

/// Little-endian field reads from a header's bytes; every offset is a
/// constant inside the 44-byte array.
fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire layout.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            kind: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A header of a reply to `self`: addresses swapped, no payload.
    pub fn reply(&self, op: u16) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }
}

/// A packet the guest sent, copied out of guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPacket {
    /// Its header.
    pub hdr: Header,
    /// Its payload: exactly `hdr.len` bytes.
    pub payload: Vec<u8>,
}

/// A packet for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// Its header; `len` is the payload's length.
    pub hdr: Header,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Why a descriptor chain or a packet from the guest was refused.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A TX chain has a device-writable descriptor, or an RX chain a
    /// device-readable one.
    #[error("a {queue} chain has a descriptor in the wrong direction")]
    WrongDirection {
        /// `tx` or `rx`.
        queue: &'static str,
    },
    /// A descriptor lies outside guest memory (or the lengths overflow).
    #[error("a {queue} chain points outside guest memory")]
    OutsideMemory {
        /// `tx` or `rx`.
        queue: &'static str,
        /// What virtio-queue found.
        #[source]
        source: virtio_queue::Error,
    },
    /// The chain holds fewer bytes than a header.
    #[error("a {queue} chain holds {len} bytes, fewer than the {HDR_LEN}-byte header")]
    ShortChain {
        /// `tx` or `rx`.
        queue: &'static str,
        /// The bytes it holds.
        len: usize,
    },
    /// `len` is beyond the device's limit.
    #[error("a packet claims {} bytes of payload, more than the {MAX_PAYLOAD} allowed", .hdr.len)]
    TooLong {
        /// The packet's header.
        hdr: Header,
    },
    /// `len` is beyond what the chain holds.
    #[error("a packet claims {} bytes of payload but its chain holds {left}", .hdr.len)]
    BeyondChain {
        /// The packet's header.
        hdr: Header,
        /// The payload bytes the chain holds.
        left: usize,
    },
    /// Reading the chain failed although its buffers were checked.
    #[error("a tx chain could not be read")]
    Read(#[source] std::io::Error),
}

impl PacketError {
    /// The header, when the fault came after it was read (the connection
    /// it names can then be reset).
    pub fn header(&self) -> Option<&Header> {
        match self {
            PacketError::TooLong { hdr } | PacketError::BeyondChain { hdr, .. } => Some(hdr),
            _ => None,
        }
    }

    /// A small number per kind of fault, to log each kind once.
    pub fn kind(&self) -> u32 {
        match self {
            PacketError::WrongDirection { .. } => 0,
            PacketError::OutsideMemory { .. } => 1,
            PacketError::ShortChain { .. } => 2,
            PacketError::TooLong { .. } => 3,
            PacketError::BeyondChain { .. } => 4,
            PacketError::Read(_) => 5,
        }
    }
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Whether every descriptor of `chain` is writable (`want_write`) or
/// readable; `DescriptorChain` ends loops at the queue size.
fn all_directed(chain: &Chain<'_>, want_write: bool) -> bool {
    chain
        .clone()
        .all(|d: Descriptor| d.is_write_only() == want_write)
}

/// Copies one packet out of a TX chain.
pub fn read_tx(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<TxPacket, PacketError> {
    let queue = "tx";
    if !all_directed(&chain, false) {
        return Err(PacketError::WrongDirection { queue });
    }
    let mut reader: Reader<'_> = chain
        .reader(mem)
        .map_err(|source| PacketError::OutsideMemory { queue, source })?;
    let total = reader.available_bytes();
    if total < HDR_LEN {
        return Err(PacketError::ShortChain { queue, len: total });
    }
    let mut raw = [0u8; HDR_LEN];
    reader.read_exact(&mut raw).map_err(PacketError::Read)?;
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(PacketError::TooLong { hdr });
    }
    let left = reader.available_bytes();
    if len > left {
        return Err(PacketError::BeyondChain { hdr, left });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(PacketError::Read)?;
    Ok(TxPacket { hdr, payload })
}

/// A checked RX chain, ready to take one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Checks that `chain` is all writable, inside guest memory and big
    /// enough for a header.
    pub fn new(mem: &'a GuestMemoryMmap, chain: Chain<'a>) -> Result<Self, PacketError> {
        let queue = "rx";
        if !all_directed(&chain, true) {
            return Err(PacketError::WrongDirection { queue });
        }
        let writer = chain
            .writer(mem)
            .map_err(|source| PacketError::OutsideMemory { queue, source })?;
        let len = writer.available_bytes();
        if len < HDR_LEN {
            return Err(PacketError::ShortChain { queue, len });
        }
        Ok(RxBuffer { writer })
    }

    /// The most payload this buffer takes.
    pub fn payload_room(&self) -> usize {
        (self.writer.available_bytes() - HDR_LEN).min(MAX_PAYLOAD)
    }

    /// Writes the packet; returns the bytes written, for the used ring.
    pub fn write(mut self, pkt: &RxPacket) -> std::io::Result<u32> {
        let mut hdr = pkt.hdr;
        hdr.len = pkt.payload.len() as u32;
        self.writer.write_all(&hdr.to_bytes())?;
        self.writer.write_all(&pkt.payload)?;
        Ok(self.writer.bytes_written() as u32)
    }
}

/// Logs the first fault of each kind as a warning and later ones at debug
/// level, so that a misbehaving guest cannot flood the VMM's log.
#[derive(Debug, Default)]
pub struct FaultLog {
    seen: u64,
}

impl FaultLog {
    /// Logs `msg`, a fault of kind `kind` (below 64).
    pub fn report(&mut self, kind: u32, msg: &str) {
        let bit = 1u64 << (kind % 64);
        if self.seen & bit == 0 {
            self.seen |= bit;
            log::warn!("vsock: {msg} (further faults of this kind are logged at debug level)");
        } else {
            log::debug!("vsock: {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 52,
            len: 7,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 65536,
            fwd_cnt: 0xdead_beef,
        }
    }

    #[test]
    fn header_layout_matches_the_specification() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..20], &1025u32.to_le_bytes());
        assert_eq!(&b[20..24], &52u32.to_le_bytes());
        assert_eq!(&b[24..28], &7u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[32..36], &2u32.to_le_bytes());
        assert_eq!(&b[36..40], &65536u32.to_le_bytes());
        assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), sample());
    }

    #[test]
    fn a_reply_swaps_the_addresses_and_carries_no_payload() {
        let r = sample().reply(op::RST);
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1025));
        assert_eq!((r.op, r.len, r.flags, r.kind), (op::RST, 0, 0, TYPE_STREAM));
    }
}
