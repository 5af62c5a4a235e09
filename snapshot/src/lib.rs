//! The Hiber snapshot format: a checksummed state file and a memory file.
//!
//! A snapshot is two files written side by side:
//!
//! - the **state file** ([`SnapshotWriter`], [`StateFile`]): a small framed file of
//!   named sections (vCPU, VM and device state), each a CBOR encoding of a serde type,
//!   with a format version and an xxh3 checksum over every byte;
//! - the **memory file** ([`write_memory_file`], [`MemoryFile`]): a header page
//!   followed by each guest RAM region at a page-aligned offset, zero pages left as
//!   holes, so that a restore can map it directly; each region carries an xxh3
//!   checksum that the state file records in its "memory" section.
//!
//! Both files are written atomically ([`StagedFile`]), and a random snapshot id stored
//! in both pairs them, so a memory file from another snapshot is refused.
//! The byte-by-byte layout is described in `docs/SNAPSHOT.md`.

mod atomic;
mod id;
mod memory;
mod persist;
mod state;

pub use atomic::{commit_pair, AtomicError, StagedFile};
pub use id::{format_snapshot_id, random_snapshot_id, IdError, SnapshotId};
pub use memory::{
    allocated_size, apparent_size, read_memory_header, stage_memory_file, verify_memory_file,
    write_memory_file, HoleFill, MemRegion, MemoryError, MemoryFile, MemoryFileInfo, MemoryHeader,
    RegionInfo, MEMORY_FORMAT_VERSION, REGION_ALIGNMENT,
};
pub use persist::Persist;
pub use state::{
    render_value, Origin as StateOrigin, Section, SnapshotWriter, StateError, StateFile,
    STATE_FORMAT_VERSION,
};
