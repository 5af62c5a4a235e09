//! One virtio-blk request: a descriptor chain checked into a [`Request`] and
//! carried out against the image, start to finish, before the next one.
//!
//! The layout accepted is the one every driver uses: a device-readable
//! 16-byte header first, the data buffers, and a device-writable status
//! descriptor last (its first byte is the status). Everything the guest
//! controls is checked before any byte moves: chain shape, directions, sizes,
//! the sector range and that every buffer lies in guest RAM.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

use super::disk::{DiskImage, SECTOR_SIZE};

/// The most data descriptors of one request, offered to the driver as
/// `seg_max`. With the header and the status a request fits a queue of 256
/// without indirect descriptors (which Hiber does not offer).
pub const SEG_MAX: u32 = 128;
/// The largest data descriptor, offered to the driver as `size_max`.
pub const SIZE_MAX: u32 = 256 << 10;
/// The most data one request may move: `SEG_MAX * SIZE_MAX` (32 MiB). Linux
/// never builds a larger request from that configuration (by default it
/// sends at most 1.25 MiB); a larger one is refused with an error status.
pub const MAX_DATA: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// The size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_SIZE: u32 = 16;
/// The most descriptors of one request: header, data, status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain loops, links past the descriptor table, or is unreadable.
    #[error("the descriptor chain loops or links outside the descriptor table")]
    BrokenChain,
    /// The last descriptor cannot hold the status byte.
    #[error("the last descriptor is device-readable or empty; it must be the writable status")]
    NoStatus,
    /// The status byte is not in guest RAM.
    #[error("the status byte at {0:#x} is outside guest memory")]
    StatusOutside(u64),
    /// The chain has more descriptors than `seg_max` allows.
    #[error("the chain has {0} descriptors; at most {MAX_DESCRIPTORS} (seg_max + 2) are allowed")]
    TooManyDescriptors(usize),
    /// The first descriptor is not a readable header.
    #[error("the header must be a device-readable descriptor of at least {HEADER_SIZE} bytes")]
    BadHeader,
    /// The header is not in guest RAM.
    #[error("the header at {0:#x} is outside guest memory")]
    HeaderOutside(u64),
    /// The request type is not one Hiber implements.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// A data buffer points the wrong way.
    #[error("a data buffer of a {kind} request is device-{found}; it must be device-{wanted}")]
    WrongDirection {
        /// The request type.
        kind: &'static str,
        /// The buffer's direction.
        found: &'static str,
        /// The direction the type needs.
        wanted: &'static str,
    },
    /// A data buffer is not in guest RAM.
    #[error("the data buffer at {addr:#x} of {len} bytes is outside guest memory")]
    DataOutside {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The data is not whole sectors.
    #[error("the request moves {0} bytes, not a multiple of 512")]
    PartialSector(u64),
    /// The data is larger than the device allows.
    #[error("the request moves {0} bytes; at most {MAX_DATA} are allowed")]
    TooLarge(u64),
    /// The sectors are not all on the disk.
    #[error("sectors {sector}..{sector}+{count} are beyond the disk's {capacity} sectors")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// How many.
        count: u64,
        /// The disk's size in sectors.
        capacity: u64,
    },
    /// A write to a read-only drive.
    #[error("the drive is read-only: writes are refused")]
    ReadOnly,
    /// The host failed to move the data.
    #[error("the {kind} of {len} bytes at image offset {offset} failed")]
    Transfer {
        /// `read` or `write`.
        kind: &'static str,
        /// Bytes asked for.
        len: u32,
        /// Where in the image.
        offset: u64,
        /// What failed.
        #[source]
        source: GuestMemoryError,
    },
    /// `fdatasync` of the image failed.
    #[error("the flush of the image failed")]
    Flush(#[source] io::Error),
}

impl RequestError {
    /// The status byte for this failure, where the chain has one.
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What the device answered to one chain.
#[derive(Debug)]
pub struct Completion {
    /// The used-ring length: bytes written into the chain, status included.
    pub used_len: u32,
    /// Why the request did not succeed, to log.
    pub fault: Option<RequestError>,
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
}

impl Kind {
    fn from_type(request_type: u32) -> Result<Kind, RequestError> {
        match request_type {
            VIRTIO_BLK_T_IN => Ok(Kind::In),
            VIRTIO_BLK_T_OUT => Ok(Kind::Out),
            VIRTIO_BLK_T_FLUSH => Ok(Kind::Flush),
            VIRTIO_BLK_T_GET_ID => Ok(Kind::GetId),
            other => Err(RequestError::Unsupported(other)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::In => "read",
            Kind::Out => "write",
            Kind::Flush => "flush",
            Kind::GetId => "get-id",
        }
    }

    /// Whether the data buffers must be device-writable.
    fn writes_guest(self) -> bool {
        matches!(self, Kind::In | Kind::GetId)
    }
}

/// A chain split into its parts.
struct Parts {
    /// The first descriptors, status included unless the chain is too long.
    descriptors: Vec<Descriptor>,
    /// How many descriptors the chain has.
    count: usize,
    status: GuestAddress,
}

impl Parts {
    /// Walks the chain once (the guest may change the table meanwhile, so it
    /// is never walked twice) and finds the status byte.
    fn walk(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Parts, RequestError> {
        let mut descriptors = Vec::new();
        let mut count = 0usize;
        let mut last = None;
        for desc in chain {
            count += 1;
            if descriptors.len() < MAX_DESCRIPTORS {
                descriptors.push(desc);
            }
            last = Some(desc);
        }
        // The crate ends a chain early, on a descriptor still marked NEXT,
        // when it loops past the queue size or links out of the table.
        let last = last
            .filter(|d| !d.has_next())
            .ok_or(RequestError::BrokenChain)?;
        if !last.is_write_only() || last.len() == 0 {
            return Err(RequestError::NoStatus);
        }
        if !mem.check_range(last.addr(), 1) {
            return Err(RequestError::StatusOutside(last.addr().raw_value()));
        }
        Ok(Parts {
            descriptors,
            count,
            status: last.addr(),
        })
    }

    /// The header and data descriptors (all but the status).
    fn request(&self) -> Result<(Descriptor, &[Descriptor]), RequestError> {
        if self.count > MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors(self.count));
        }
        let (header, rest) = match self.descriptors.split_first() {
            Some((h, rest)) if !rest.is_empty() => (*h, rest),
            _ => return Err(RequestError::BadHeader),
        };
        if header.is_write_only() || header.len() < HEADER_SIZE {
            return Err(RequestError::BadHeader);
        }
        Ok((header, &rest[..rest.len() - 1]))
    }
}

/// A checked request, ready to run.
struct Request<'a> {
    kind: Kind,
    sector: u64,
    data: &'a [Descriptor],
    /// The image offset of a read or write.
    offset: u64,
}

impl<'a> Request<'a> {
    fn parse(
        mem: &GuestMemoryMmap,
        disk: &DiskImage,
        parts: &'a Parts,
    ) -> Result<Self, RequestError> {
        let (header, data) = parts.request()?;
        let mut raw = [0u8; HEADER_SIZE as usize];
        mem.read_slice(&mut raw, header.addr())
            .map_err(|_| RequestError::HeaderOutside(header.addr().raw_value()))?;
        let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&raw[8..16]);
        let mut request = Request {
            kind: Kind::from_type(request_type)?,
            sector: u64::from_le_bytes(sector),
            data,
            offset: 0,
        };
        request.check_directions()?;
        if matches!(request.kind, Kind::In | Kind::Out) {
            request.offset = request.checked_offset(disk)?;
        }
        request.check_in_memory(mem)?;
        Ok(request)
    }

    /// Whether the data buffers point the way the request moves data (a
    /// flush has none to move: any it has are ignored).
    fn check_directions(&self) -> Result<(), RequestError> {
        let writes_guest = self.kind.writes_guest();
        let wrong = self.data.iter().any(|d| d.is_write_only() != writes_guest);
        if wrong && self.kind != Kind::Flush {
            return Err(self.wrong_direction());
        }
        Ok(())
    }

    /// Whether the data buffers are all in guest RAM.
    fn check_in_memory(&self, mem: &GuestMemoryMmap) -> Result<(), RequestError> {
        if self.kind == Kind::Flush {
            return Ok(());
        }
        let outside = self
            .data
            .iter()
            .find(|d| !mem.check_range(d.addr(), d.len() as usize));
        match outside {
            Some(d) => Err(RequestError::DataOutside {
                addr: d.addr().raw_value(),
                len: d.len(),
            }),
            None => Ok(()),
        }
    }

    fn wrong_direction(&self) -> RequestError {
        let (found, wanted) = match self.kind.writes_guest() {
            true => ("readable", "writable"),
            false => ("writable", "readable"),
        };
        let kind = self.kind.name();
        RequestError::WrongDirection {
            kind,
            found,
            wanted,
        }
    }

    fn data_len(&self) -> u64 {
        self.data.iter().map(|d| u64::from(d.len())).sum()
    }

    /// The image offset of the transfer, once its size and range are checked.
    fn checked_offset(&self, disk: &DiskImage) -> Result<u64, RequestError> {
        let len = self.data_len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector(len));
        }
        if len > MAX_DATA {
            return Err(RequestError::TooLarge(len));
        }
        let capacity = disk.size() / SECTOR_SIZE;
        let count = len / SECTOR_SIZE;
        let fits = self
            .sector
            .checked_add(count)
            .is_some_and(|end| end <= capacity);
        if !fits {
            let sector = self.sector;
            return Err(RequestError::OutOfRange {
                sector,
                count,
                capacity,
            });
        }
        Ok(self.sector * SECTOR_SIZE)
    }

    /// Runs the request; returns the bytes written into guest buffers.
    fn execute(
        &self,
        disk: &DiskImage,
        mem: &GuestMemoryMmap,
        id: &[u8],
    ) -> Result<u32, RequestError> {
        match self.kind {
            Kind::In => self.transfer(disk, mem, true),
            Kind::Out if disk.read_only() => Err(RequestError::ReadOnly),
            Kind::Out => self.transfer(disk, mem, false).map(|_| 0),
            Kind::Flush => disk.flush().map(|()| 0).map_err(RequestError::Flush),
            Kind::GetId => Ok(self.write_id(mem, id)),
        }
    }

    fn transfer(
        &self,
        disk: &DiskImage,
        mem: &GuestMemoryMmap,
        read: bool,
    ) -> Result<u32, RequestError> {
        let mut offset = self.offset;
        for desc in self.data {
            let len = desc.len();
            let moved = match read {
                true => disk.read_to(mem, desc.addr(), len as usize, offset),
                false => disk.write_from(mem, desc.addr(), len as usize, offset),
            };
            moved.map_err(|source| RequestError::Transfer {
                kind: if read { "read" } else { "write" },
                len,
                offset,
                source,
            })?;
            offset += u64::from(len);
        }
        // At most MAX_DATA, which fits a u32.
        Ok(self.data_len() as u32)
    }

    /// Writes the 20-byte id (zero-padded) into the data buffers, as much of
    /// it as they hold; returns the bytes written.
    fn write_id(&self, mem: &GuestMemoryMmap, id: &[u8]) -> u32 {
        let mut padded = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = id.len().min(padded.len());
        padded[..n].copy_from_slice(&id[..n]);
        let mut rest = &padded[..];
        for desc in self.data {
            let n = rest.len().min(desc.len() as usize);
            // In range: checked by check_in_memory.
            if mem.write_slice(&rest[..n], desc.addr()).is_err() {
                break;
            }
            rest = &rest[n..];
        }
        (padded.len() - rest.len()) as u32
    }
}

/// Serves one chain: checks it, runs it, and writes its status byte.
pub fn serve(
    disk: &DiskImage,
    id: &[u8],
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Completion {
    let parts = match Parts::walk(mem, chain) {
        Ok(parts) => parts,
        Err(fault) => {
            return Completion {
                used_len: 0,
                fault: Some(fault),
            }
        }
    };
    let result = Request::parse(mem, disk, &parts).and_then(|r| r.execute(disk, mem, id));
    finish(mem, parts.status, result)
}

fn finish(
    mem: &GuestMemoryMmap,
    status: GuestAddress,
    result: Result<u32, RequestError>,
) -> Completion {
    let (code, written, fault) = match result {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written, None),
        Err(e) => (e.status(), 0, Some(e)),
    };
    if mem.write_obj(code, status).is_err() {
        // Checked in range by Parts::walk; kept so that no path panics.
        let fault = fault.or(Some(RequestError::StatusOutside(status.raw_value())));
        return Completion { used_len: 0, fault };
    }
    Completion {
        used_len: written + 1,
        fault,
    }
}
