//! Errors from writing and reading state files.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::atomic::AtomicError;

/// Names where state bytes came from, for messages: a path, or bytes in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin(pub Option<PathBuf>);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(path) => write!(f, "state file {path:?}"),
            None => f.write_str("the state data"),
        }
    }
}

const RETAKE: &str = "use an intact copy or take a new snapshot";

/// Errors from writing and reading state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A section name is empty, too long or the end marker.
    #[error("section name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A section value could not be encoded.
    #[error("cannot encode section {name:?} (a {type_name}) as CBOR")]
    Encode {
        /// The section name.
        name: String,
        /// The Rust type of the value.
        type_name: &'static str,
        /// The cause.
        #[source]
        source: ciborium::ser::Error<io::Error>,
    },
    /// Writing the file failed; the earlier file at the path, if any, is unchanged.
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// The file could not be read.
    #[error("cannot read state file {path:?}; check that it exists and is readable")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes do not start with the state file magic.
    #[error("{origin} is not a Hiber state file (it does not start with \"HIBERSNP\"){hint}")]
    NotAStateFile {
        /// Where the bytes came from.
        origin: Origin,
        /// What the file seems to be instead, if known.
        hint: &'static str,
    },
    /// The file is shorter than the header.
    #[error("{origin} is truncated: it has {len} bytes, less than the 32-byte header; {RETAKE}")]
    TruncatedHeader {
        /// Where the bytes came from.
        origin: Origin,
        /// Its length.
        len: usize,
    },
    /// The header checksum does not match.
    #[error("{origin}: header checksum mismatch: the file is corrupted; {RETAKE}")]
    HeaderCorrupted {
        /// Where the bytes came from.
        origin: Origin,
    },
    /// The file was written by another format version.
    #[error(
        "{origin} was written by format version {found}; this Hiber reads version \
             {expected}: use a Hiber release that reads version {found}"
    )]
    UnsupportedVersion {
        /// Where the bytes came from.
        origin: Origin,
        /// The version in the file.
        found: u32,
        /// The version this crate reads.
        expected: u32,
    },
    /// The header has flags this version does not define.
    #[error(
        "{origin} has header flags {flags:#x}, which format version 1 does not define; \
             use the Hiber release that wrote it"
    )]
    UnknownFlags {
        /// Where the bytes came from.
        origin: Origin,
        /// The flags.
        flags: u32,
    },
    /// The file is shorter than its header says.
    #[error(
        "{origin} is truncated: it has {len} of its {expected} bytes and ends in {place} \
             at offset {offset}; {RETAKE}"
    )]
    Truncated {
        /// Where the bytes came from.
        origin: Origin,
        /// Its length.
        len: usize,
        /// The length the header declares.
        expected: u64,
        /// The field and section the end falls into.
        place: String,
        /// The offset of that field.
        offset: u64,
    },
    /// The file is longer than its header says.
    #[error(
        "{origin} has {len} bytes but its header declares {expected}: the file is \
             corrupted or has data appended; {RETAKE}"
    )]
    TooLong {
        /// Where the bytes came from.
        origin: Origin,
        /// Its length.
        len: usize,
        /// The length the header declares.
        expected: u64,
    },
    /// The trailer checksum does not match the bytes.
    #[error("{origin}: checksum mismatch: the file is corrupted; {RETAKE}")]
    ChecksumMismatch {
        /// Where the bytes came from.
        origin: Origin,
    },
    /// The checksum is right but the structure is not: the writer was faulty.
    #[error(
        "{origin} is malformed: {place} at offset {offset} holds {detail}; the checksum \
             matches, so the writer was faulty: take a new snapshot with a fixed Hiber"
    )]
    Malformed {
        /// Where the bytes came from.
        origin: Origin,
        /// The field and section.
        place: String,
        /// The offset of the field.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// No section has the name asked for.
    #[error(
        "{origin} has no section {name:?} (it has: {present}); the Hiber that wrote it \
             did not save that part: take a new snapshot"
    )]
    MissingSection {
        /// Where the bytes came from.
        origin: Origin,
        /// The name asked for.
        name: String,
        /// The names present, comma separated.
        present: String,
    },
    /// Several sections have a name asked for as unique.
    #[error(
        "{origin} has {count} sections named {name:?} where one was expected; read them \
             with sections_named"
    )]
    DuplicateSection {
        /// Where the bytes came from.
        origin: Origin,
        /// The name.
        name: String,
        /// How many there are.
        count: usize,
    },
    /// A section index is out of range.
    #[error("{origin} has {count} sections; there is no section #{index}")]
    NoSuchIndex {
        /// Where the bytes came from.
        origin: Origin,
        /// The index asked for.
        index: usize,
        /// The number of sections.
        count: usize,
    },
    /// A payload does not decode as the type asked for.
    #[error(
        "section {name:?} at offset {offset} of {origin} does not decode as {type_name}; \
             it was written by an incompatible Hiber: take a new snapshot"
    )]
    Decode {
        /// Where the bytes came from.
        origin: Origin,
        /// The section name.
        name: String,
        /// The section offset.
        offset: u64,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The cause.
        #[source]
        source: ciborium::de::Error<io::Error>,
    },
    /// A payload has bytes after its CBOR value.
    #[error(
        "section {name:?} at offset {offset} of {origin} has {extra} bytes after its \
             value; it was written by an incompatible Hiber: take a new snapshot"
    )]
    TrailingPayload {
        /// Where the bytes came from.
        origin: Origin,
        /// The section name.
        name: String,
        /// The section offset.
        offset: u64,
        /// How many bytes are left over.
        extra: usize,
    },
}
