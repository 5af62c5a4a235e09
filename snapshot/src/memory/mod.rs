//! The memory file: guest RAM regions at aligned offsets, zero pages as holes.

mod error;
mod extents;
mod header;
mod reader;
mod writer;
mod zero;

use serde::{Deserialize, Serialize};

use crate::id::SnapshotId;

pub use error::MemoryError;
pub use header::{MemoryHeader, MEMORY_FORMAT_VERSION};
pub use reader::{
    allocated_size, apparent_size, read_memory_header, verify_memory_file, HoleFill, MemoryFile,
};
pub use writer::{stage_memory_file, write_memory_file, REGION_ALIGNMENT};

/// One guest RAM region to save: where the guest sees it and its bytes.
///
/// The guest must be paused while the region is written, or the bytes and the
/// checksum may disagree.
#[derive(Debug, Clone, Copy)]
pub struct MemRegion<'a> {
    /// The guest physical address of the first byte.
    pub guest_addr: u64,
    /// The region's contents.
    pub bytes: &'a [u8],
}

/// Where one region lies in the memory file, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The guest physical address of the first byte.
    pub guest_addr: u64,
    /// The region's length in bytes.
    pub size: u64,
    /// The file offset of the first byte; a multiple of [`REGION_ALIGNMENT`].
    pub file_offset: u64,
    /// xxh3-64 of the region's full contents, zero pages included.
    pub checksum: u64,
}

/// What a memory file holds; goes into the state file's "memory" section so a
/// restore can check that it has the right memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFileInfo {
    /// The id shared by the state file and the memory file of one snapshot.
    pub snapshot_id: SnapshotId,
    /// The memory file's length in bytes (its apparent size).
    pub file_size: u64,
    /// The regions, in the order they were given.
    pub regions: Vec<RegionInfo>,
}
