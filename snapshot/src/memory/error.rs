//! Errors from writing and reading memory files.

use std::io;
use std::path::PathBuf;

use crate::atomic::AtomicError;

const RETAKE: &str = "use an intact copy or take a new snapshot";
const PAIR: &str = "pass the memory file that was written with this state file";

/// Errors from writing and reading memory files.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// More regions than the header page can describe.
    #[error(
        "cannot save {count} memory regions: a memory file holds at most {max}; merge \
             adjacent regions"
    )]
    TooManyRegions {
        /// The number of regions given.
        count: usize,
        /// The most a header page describes.
        max: usize,
    },
    /// A region has no bytes.
    #[error("memory region #{index} at guest address {guest_addr:#x} is empty; leave it out")]
    EmptyRegion {
        /// Its position.
        index: usize,
        /// Its guest address.
        guest_addr: u64,
    },
    /// Creating, writing or committing the file failed; an earlier file is unchanged.
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// The file could not be opened.
    #[error("cannot open memory file {path:?}; check that it exists and is readable")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read memory file {path:?}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the memory file magic.
    #[error("{path:?} is not a Hiber memory file (it does not start with \"HIBERMEM\"); {PAIR}")]
    NotAMemoryFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is shorter than the header page.
    #[error(
        "memory file {path:?} is truncated: it has {len} bytes, less than its 4096-byte \
             header; {RETAKE}"
    )]
    TruncatedHeader {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The header page checksum does not match.
    #[error("memory file {path:?}: header checksum mismatch: the file is corrupted; {RETAKE}")]
    HeaderCorrupted {
        /// The path.
        path: PathBuf,
    },
    /// The header is well formed but impossible (a region past the end, ...).
    #[error("memory file {path:?} has an invalid header: {detail}; {RETAKE}")]
    InvalidHeader {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file was written by another format version.
    #[error(
        "memory file {path:?} was written by format version {found}; this Hiber reads \
             version {expected}: use a Hiber release that reads version {found}"
    )]
    UnsupportedVersion {
        /// The path.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this crate reads.
        expected: u32,
    },
    /// The file belongs to another snapshot.
    #[error(
        "memory file {path:?} belongs to snapshot {found}, but the state file expects \
             snapshot {expected}; {PAIR} (a crash between writing the two files also leaves \
             such a pair: take a new snapshot)"
    )]
    WrongSnapshot {
        /// The path.
        path: PathBuf,
        /// The id in the memory file.
        found: String,
        /// The id the state file expects.
        expected: String,
    },
    /// The region table differs from the state file's.
    #[error("memory file {path:?} does not match the state file: {detail}; {PAIR}")]
    RegionMismatch {
        /// The path.
        path: PathBuf,
        /// The first difference.
        detail: String,
    },
    /// The file length differs from the one recorded.
    #[error(
        "memory file {path:?} has {actual} bytes but the snapshot expects {expected}: it \
             was truncated or extended; {RETAKE}"
    )]
    WrongSize {
        /// The path.
        path: PathBuf,
        /// Its length.
        actual: u64,
        /// The recorded length.
        expected: u64,
    },
    /// A region's contents do not match its checksum.
    #[error(
        "memory file {path:?}: checksum mismatch in region #{index} (guest address \
             {guest_addr:#x}, {size} bytes): the file is corrupted; {RETAKE}"
    )]
    ChecksumMismatch {
        /// The path.
        path: PathBuf,
        /// The region's position.
        index: usize,
        /// Its guest address.
        guest_addr: u64,
        /// Its size.
        size: u64,
    },
    /// A region index is out of range.
    #[error("memory file {path:?} has {count} regions; there is no region #{index}")]
    NoSuchRegion {
        /// The path.
        path: PathBuf,
        /// The index asked for.
        index: usize,
        /// The number of regions.
        count: usize,
    },
    /// A destination buffer does not have the region's size.
    #[error(
        "region #{index} of memory file {path:?} has {expected} bytes, but the destination \
             has {actual}; pass guest memory laid out as the snapshot records"
    )]
    DestinationSize {
        /// The path.
        path: PathBuf,
        /// The region's position.
        index: usize,
        /// The region's size.
        expected: u64,
        /// The destination's size.
        actual: usize,
    },
    /// The file's metadata could not be read.
    #[error("cannot get the size of {path:?}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}
