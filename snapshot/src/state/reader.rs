//! Reading and checking a state file, then decoding its sections.

use std::path::Path;

use serde::de::DeserializeOwned;
use xxhash_rust::xxh3::xxh3_64;

use super::error::{Origin, StateError};
use super::format::{
    read_u64, walk, Header, WalkError, WalkErrorKind, HEADER_LEN, MAGIC, STATE_FORMAT_VERSION,
};

/// One section of a state file: its name, CBOR payload and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    name: String,
    payload: Vec<u8>,
    offset: u64,
}

impl Section {
    /// The section name ("vm", "vcpu", ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CBOR-encoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The file offset of the section (of its name length field).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A state file whose framing and checksum were verified.
#[derive(Debug, Clone)]
pub struct StateFile {
    origin: Origin,
    version: u32,
    sections: Vec<Section>,
}

impl StateFile {
    /// Reads and verifies the state file at `path`.
    pub fn read(path: &Path) -> Result<StateFile, StateError> {
        let bytes = std::fs::read(path).map_err(|source| StateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = parse(&bytes, Origin(Some(path.to_path_buf())))?;
        log::debug!("read state file {path:?}: {} sections", file.sections.len());
        Ok(file)
    }

    /// Verifies and parses state file bytes that are already in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<StateFile, StateError> {
        parse(bytes, Origin(None))
    }

    /// The format version the file was written with.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// All sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Decodes the only section named `name`.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T, StateError> {
        let found: Vec<&Section> = self.named(name).collect();
        match found.as_slice() {
            [] => Err(self.missing(name)),
            [section] => self.decode(section),
            _ => Err(StateError::DuplicateSection {
                origin: self.origin.clone(),
                name: name.to_string(),
                count: found.len(),
            }),
        }
    }

    /// Decodes every section named `name`, in file order; none is an error.
    pub fn sections_named<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, StateError> {
        let values: Vec<T> = self
            .named(name)
            .map(|section| self.decode(section))
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(self.missing(name));
        }
        Ok(values)
    }

    /// Decodes section `index` as a generic CBOR tree, for display.
    pub fn section_value(&self, index: usize) -> Result<ciborium::Value, StateError> {
        let section = self.sections.get(index).ok_or(StateError::NoSuchIndex {
            origin: self.origin.clone(),
            index,
            count: self.sections.len(),
        })?;
        self.decode(section)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections
            .iter()
            .filter(move |section| section.name == name)
    }

    fn missing(&self, name: &str) -> StateError {
        let names: Vec<&str> = self.sections.iter().map(|s| s.name.as_str()).collect();
        StateError::MissingSection {
            origin: self.origin.clone(),
            name: name.to_string(),
            present: if names.is_empty() {
                "no sections".to_string()
            } else {
                names.join(", ")
            },
        }
    }

    fn decode<T: DeserializeOwned>(&self, section: &Section) -> Result<T, StateError> {
        let mut rest = section.payload.as_slice();
        let value = ciborium::from_reader(&mut rest).map_err(|source| StateError::Decode {
            origin: self.origin.clone(),
            name: section.name.clone(),
            offset: section.offset,
            type_name: std::any::type_name::<T>(),
            source,
        })?;
        if !rest.is_empty() {
            return Err(StateError::TrailingPayload {
                origin: self.origin.clone(),
                name: section.name.clone(),
                offset: section.offset,
                extra: rest.len(),
            });
        }
        Ok(value)
    }
}

/// Checks, in order: magic, header checksum, version, flags, length, checksum,
/// structure. Each step's failure is the most specific explanation left.
fn parse(bytes: &[u8], origin: Origin) -> Result<StateFile, StateError> {
    let header = parse_header(bytes, &origin)?;
    check_length(bytes, &header, &origin)?;
    let (body, trailer) = bytes.split_at(bytes.len() - 8);
    if xxh3_64(body) != read_u64(trailer) {
        return Err(StateError::ChecksumMismatch { origin });
    }
    let raw = walk(bytes, true).map_err(|err| malformed(err, &origin))?;
    let sections = raw
        .into_iter()
        .map(|raw| Section {
            payload: bytes[raw.payload].to_vec(),
            name: raw.name,
            offset: raw.offset,
        })
        .collect();
    Ok(StateFile {
        origin,
        version: header.version,
        sections,
    })
}

fn parse_header(bytes: &[u8], origin: &Origin) -> Result<Header, StateError> {
    let prefix = &bytes[..bytes.len().min(MAGIC.len())];
    if prefix != &MAGIC[..prefix.len()] {
        let hint = if bytes.starts_with(b"HIBERMEM") {
            "; it is a memory file: pass the state file of the snapshot"
        } else {
            "; pass the state file of a snapshot"
        };
        return Err(StateError::NotAStateFile {
            origin: origin.clone(),
            hint,
        });
    }
    let Some(fixed) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(StateError::TruncatedHeader {
            origin: origin.clone(),
            len: bytes.len(),
        });
    };
    let header = Header::decode(fixed).ok_or_else(|| StateError::HeaderCorrupted {
        origin: origin.clone(),
    })?;
    check_version(header, origin)?;
    Ok(header)
}

fn check_version(header: Header, origin: &Origin) -> Result<(), StateError> {
    if header.version != STATE_FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion {
            origin: origin.clone(),
            found: header.version,
            expected: STATE_FORMAT_VERSION,
        });
    }
    if header.flags != 0 {
        return Err(StateError::UnknownFlags {
            origin: origin.clone(),
            flags: header.flags,
        });
    }
    Ok(())
}

fn check_length(bytes: &[u8], header: &Header, origin: &Origin) -> Result<(), StateError> {
    let expected = header.file_len;
    if (bytes.len() as u64) > expected {
        return Err(StateError::TooLong {
            origin: origin.clone(),
            len: bytes.len(),
            expected,
        });
    }
    if (bytes.len() as u64) == expected {
        return Ok(());
    }
    // Walk what is there to say where the end falls.
    let (place, offset) = match walk(bytes, false) {
        Err(err) => (describe(&err), err.offset),
        Ok(_) => ("the trailer".to_string(), bytes.len() as u64),
    };
    Err(StateError::Truncated {
        origin: origin.clone(),
        len: bytes.len(),
        expected,
        place,
        offset,
    })
}

fn describe(err: &WalkError) -> String {
    match &err.section {
        Some(place) => format!("{} of {place}", err.field),
        None => err.field.to_string(),
    }
}

fn malformed(err: WalkError, origin: &Origin) -> StateError {
    let detail = match &err.kind {
        WalkErrorKind::Invalid(detail) => detail.clone(),
        WalkErrorKind::Truncated => "fewer bytes than it needs".to_string(),
    };
    StateError::Malformed {
        origin: origin.clone(),
        place: describe(&err),
        offset: err.offset,
        detail,
    }
}
