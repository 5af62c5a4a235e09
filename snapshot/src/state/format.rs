//! The byte layout of a state file: header, sections, trailer.
//!
//! ```text
//! header   magic "HIBERSNP" | version u32 | flags u32 | file length u64 | header xxh3 u64
//! section  name length u16 (1..=255) | name UTF-8 | payload length u64 | payload (CBOR)
//! ...      more sections
//! trailer  end marker u16 = 0 | xxh3-64 u64 of every byte before it
//! ```
//!
//! All integers are little endian. The 32-byte header keeps this layout in every
//! format version, so any version can be recognized and refused clearly.

use xxhash_rust::xxh3::xxh3_64;

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HIBERSNP";
/// The state file format version this crate writes and reads.
pub const STATE_FORMAT_VERSION: u32 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Bytes of the header covered by the header checksum.
pub const HEADER_SUMMED: usize = 24;
/// Length of the trailer: end marker and checksum.
pub const TRAILER_LEN: usize = 10;
/// A name length of zero marks the end of the sections.
pub const END_MARKER: u16 = 0;
/// The longest section name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    pub file_len: u64,
}

impl Header {
    /// Encodes the header, computing its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        let sum = xxh3_64(&out[..HEADER_SUMMED]);
        out[24..32].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes a header whose magic was already checked; `None` if its checksum fails.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
        if xxh3_64(&bytes[..HEADER_SUMMED]) != read_u64(&bytes[24..32]) {
            return None;
        }
        Some(Header {
            version: read_u32(&bytes[8..12]),
            flags: read_u32(&bytes[12..16]),
            file_len: read_u64(&bytes[16..24]),
        })
    }
}

/// Where a walk over the sections stopped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkError {
    /// The offset of the field that could not be read.
    pub offset: u64,
    /// The section being read, if the walk was inside one.
    pub section: Option<SectionPlace>,
    /// The field being read ("the payload length", ...).
    pub field: &'static str,
    /// Whether the bytes ran out (truncation) or were invalid.
    pub kind: WalkErrorKind,
}

/// What went wrong in a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkErrorKind {
    /// The bytes ended inside the field.
    Truncated,
    /// The field's value is impossible (too long, not UTF-8, ...).
    Invalid(String),
}

/// Identifies a section in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionPlace {
    /// Its position among the sections, from 0.
    pub index: usize,
    /// Its name, if it was read.
    pub name: Option<String>,
    /// The offset of its name length field.
    pub offset: u64,
}

impl std::fmt::Display for SectionPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(
                f,
                "section #{} {name:?} at offset {}",
                self.index, self.offset
            ),
            None => write!(f, "section #{} at offset {}", self.index, self.offset),
        }
    }
}

/// One section as found by [`walk`]: name, payload range, start offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSection {
    pub name: String,
    pub payload: std::ops::Range<usize>,
    pub offset: u64,
}

/// Reads the sections from `HEADER_LEN` up to the end marker, which must be followed
/// by exactly the checksum and nothing else. `complete` says whether `bytes` is the
/// whole file (a payload longer than the room left is then invalid, not truncated).
pub fn walk(bytes: &[u8], complete: bool) -> Result<Vec<RawSection>, WalkError> {
    let mut cursor = Cursor {
        bytes,
        pos: HEADER_LEN,
        complete,
    };
    let mut sections = Vec::new();
    loop {
        let mut place = SectionPlace {
            index: sections.len(),
            name: None,
            offset: cursor.pos as u64,
        };
        let name_len = cursor.u16("a section name length or the end marker", None)?;
        if name_len == END_MARKER {
            cursor.trailer_checksum()?;
            return Ok(sections);
        }
        let name = cursor.name(name_len as usize, &place)?;
        place.name = Some(name.clone());
        let payload = cursor.payload(&place)?;
        sections.push(RawSection {
            name,
            payload,
            offset: place.offset,
        });
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    complete: bool,
}

impl Cursor<'_> {
    fn fail(
        &self,
        field: &'static str,
        place: Option<&SectionPlace>,
        kind: WalkErrorKind,
    ) -> WalkError {
        WalkError {
            offset: self.pos as u64,
            section: place.cloned(),
            field,
            kind,
        }
    }

    fn take(
        &mut self,
        len: usize,
        field: &'static str,
        place: Option<&SectionPlace>,
    ) -> Result<&[u8], WalkError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| self.fail(field, place, WalkErrorKind::Truncated))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn u16(&mut self, field: &'static str, at: Option<&SectionPlace>) -> Result<u16, WalkError> {
        let raw = self.take(2, field, at)?;
        Ok(u16::from_le_bytes(raw.try_into().unwrap()))
    }

    fn name(&mut self, len: usize, place: &SectionPlace) -> Result<String, WalkError> {
        const FIELD: &str = "the section name";
        if len > MAX_NAME_LEN {
            let detail = format!("a name of {len} bytes (at most {MAX_NAME_LEN} are allowed)");
            return Err(self.fail(FIELD, Some(place), WalkErrorKind::Invalid(detail)));
        }
        let start = self.pos;
        let raw = self.take(len, FIELD, Some(place))?.to_vec();
        String::from_utf8(raw).map_err(|_| WalkError {
            offset: start as u64,
            section: Some(place.clone()),
            field: FIELD,
            kind: WalkErrorKind::Invalid("a name that is not UTF-8".to_string()),
        })
    }

    fn payload(&mut self, place: &SectionPlace) -> Result<std::ops::Range<usize>, WalkError> {
        let raw = self.take(8, "the payload length", Some(place))?;
        let len = read_u64(raw);
        let start = self.pos;
        let room = self.bytes.len().saturating_sub(start + TRAILER_LEN) as u64;
        if self.complete && len > room {
            let detail = format!(
                "a payload of {len} bytes, but only {room} bytes remain before the trailer"
            );
            return Err(self.fail("the payload", Some(place), WalkErrorKind::Invalid(detail)));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, "the payload", Some(place))?;
        Ok(start..self.pos)
    }

    fn trailer_checksum(&mut self) -> Result<(), WalkError> {
        self.take(8, "the trailer checksum", None)?;
        if self.pos != self.bytes.len() {
            let detail = format!("{} bytes after the trailer", self.bytes.len() - self.pos);
            return Err(self.fail("the end of the file", None, WalkErrorKind::Invalid(detail)));
        }
        Ok(())
    }
}

/// Reads a little-endian u32 from exactly four bytes.
pub fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("four bytes"))
}

/// Reads a little-endian u64 from exactly eight bytes.
pub fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_flips() {
        let header = Header {
            version: 1,
            flags: 0,
            file_len: 1234,
        };
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Some(header));
        for i in 8..HEADER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert_eq!(Header::decode(&bad), None, "flip at {i}");
        }
    }

    #[test]
    fn walk_names_the_section_a_truncation_hits() {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(b"vm");
        bytes.extend_from_slice(&100u64.to_le_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let err = walk(&bytes, false).unwrap_err();
        assert_eq!(err.kind, WalkErrorKind::Truncated);
        assert_eq!(err.field, "the payload");
        assert_eq!(err.section.unwrap().name.as_deref(), Some("vm"));
    }
}
