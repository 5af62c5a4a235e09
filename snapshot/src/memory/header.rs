//! The memory file's header page.
//!
//! ```text
//! 0     magic "HIBERMEM"
//! 8     format version u32
//! 12    flags u32 (0)
//! 16    snapshot id, 16 bytes
//! 32    file size u64
//! 40    region count u32
//! 44    reserved u32 (0)
//! 48    region table: per region guest address, size, file offset, xxh3-64 (u64 each)
//! 4088  xxh3-64 of bytes 0..4088
//! ```
//!
//! All integers are little endian; unused table bytes are zero.

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::error::MemoryError;
use super::{MemoryFileInfo, RegionInfo};
use crate::id::SnapshotId;

/// The first eight bytes of every memory file.
pub const MAGIC: [u8; 8] = *b"HIBERMEM";
/// The memory file format version this crate writes and reads.
pub const MEMORY_FORMAT_VERSION: u32 = 1;
/// The size of the header page; the first region starts at or after it.
pub const HEADER_SIZE: usize = 4096;
/// Where the region table starts.
const TABLE_OFFSET: usize = 48;
/// The size of one region table entry.
const ENTRY_SIZE: usize = 32;
/// Where the header checksum lies.
const CHECKSUM_OFFSET: usize = HEADER_SIZE - 8;
/// The most regions the header page can describe.
pub const MAX_REGIONS: usize = (CHECKSUM_OFFSET - TABLE_OFFSET) / ENTRY_SIZE;

/// The decoded header page of a memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHeader {
    /// The format version the file was written with.
    pub format_version: u32,
    /// The id of the snapshot the file belongs to.
    pub snapshot_id: SnapshotId,
    /// The file length the writer produced.
    pub file_size: u64,
    /// The regions, with their checksums.
    pub regions: Vec<RegionInfo>,
}

impl MemoryHeader {
    /// The header describing `info`, in the current format version.
    pub fn for_info(info: &MemoryFileInfo) -> MemoryHeader {
        MemoryHeader {
            format_version: MEMORY_FORMAT_VERSION,
            snapshot_id: info.snapshot_id,
            file_size: info.file_size,
            regions: info.regions.clone(),
        }
    }

    /// What the header records, in the form the state file keeps.
    pub fn info(&self) -> MemoryFileInfo {
        MemoryFileInfo {
            snapshot_id: self.snapshot_id,
            file_size: self.file_size,
            regions: self.regions.clone(),
        }
    }

    /// Encodes the header page; the caller keeps `regions.len() <= MAX_REGIONS`.
    pub fn encode(&self) -> Box<[u8; HEADER_SIZE]> {
        let mut page = Box::new([0u8; HEADER_SIZE]);
        page[0..8].copy_from_slice(&MAGIC);
        page[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        page[16..32].copy_from_slice(&self.snapshot_id);
        page[32..40].copy_from_slice(&self.file_size.to_le_bytes());
        page[40..44].copy_from_slice(&(self.regions.len() as u32).to_le_bytes());
        for (i, region) in self.regions.iter().enumerate() {
            let entry = TABLE_OFFSET + i * ENTRY_SIZE;
            let fields = [
                region.guest_addr,
                region.size,
                region.file_offset,
                region.checksum,
            ];
            for (j, field) in fields.iter().enumerate() {
                let at = entry + j * 8;
                page[at..at + 8].copy_from_slice(&field.to_le_bytes());
            }
        }
        let sum = xxh3_64(&page[..CHECKSUM_OFFSET]);
        page[CHECKSUM_OFFSET..].copy_from_slice(&sum.to_le_bytes());
        page
    }

    /// Decodes a header page read from `path`, checking magic, checksum and version.
    pub fn decode(page: &[u8; HEADER_SIZE], path: &Path) -> Result<MemoryHeader, MemoryError> {
        let path_buf = || path.to_path_buf();
        if page[0..8] != MAGIC {
            return Err(MemoryError::NotAMemoryFile { path: path_buf() });
        }
        if xxh3_64(&page[..CHECKSUM_OFFSET]) != u64_at(page, CHECKSUM_OFFSET) {
            return Err(MemoryError::HeaderCorrupted { path: path_buf() });
        }
        let format_version = u32_at(page, 8);
        if format_version != MEMORY_FORMAT_VERSION {
            return Err(MemoryError::UnsupportedVersion {
                path: path_buf(),
                found: format_version,
                expected: MEMORY_FORMAT_VERSION,
            });
        }
        let header = MemoryHeader {
            format_version,
            snapshot_id: page[16..32].try_into().unwrap(),
            file_size: u64_at(page, 32),
            regions: decode_table(page, path)?,
        };
        header.check(path)?;
        Ok(header)
    }

    /// Refuses flags and regions that a correct writer never produces.
    fn check(&self, path: &Path) -> Result<(), MemoryError> {
        let bad = |detail: String| MemoryError::InvalidHeader {
            path: path.to_path_buf(),
            detail,
        };
        for (i, region) in self.regions.iter().enumerate() {
            let end = region.file_offset.checked_add(region.size);
            if region.file_offset < HEADER_SIZE as u64 || end.is_none_or(|e| e > self.file_size) {
                return Err(bad(format!("region #{i} lies outside the file")));
            }
        }
        Ok(())
    }
}

fn decode_table(page: &[u8; HEADER_SIZE], path: &Path) -> Result<Vec<RegionInfo>, MemoryError> {
    let flags = u32_at(page, 12);
    let count = u32_at(page, 40) as usize;
    if flags != 0 || count > MAX_REGIONS {
        return Err(MemoryError::InvalidHeader {
            path: path.to_path_buf(),
            detail: format!("flags {flags:#x} and {count} regions (0 and at most {MAX_REGIONS})"),
        });
    }
    let entry = |i: usize, j: usize| u64_at(page, TABLE_OFFSET + i * ENTRY_SIZE + j * 8);
    Ok((0..count)
        .map(|i| RegionInfo {
            guest_addr: entry(i, 0),
            size: entry(i, 1),
            file_offset: entry(i, 2),
            checksum: entry(i, 3),
        })
        .collect())
}

fn u32_at(page: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(page[at..at + 4].try_into().unwrap())
}

fn u64_at(page: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(page[at..at + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemoryHeader {
        MemoryHeader {
            format_version: MEMORY_FORMAT_VERSION,
            snapshot_id: [7; 16],
            file_size: 8 << 20,
            regions: vec![RegionInfo {
                guest_addr: 0x10_0000,
                size: 1 << 20,
                file_offset: 2 << 20,
                checksum: 0x1234_5678,
            }],
        }
    }

    #[test]
    fn header_round_trips() {
        let page = sample().encode();
        assert_eq!(
            MemoryHeader::decode(&page, Path::new("m")).unwrap(),
            sample()
        );
    }

    #[test]
    fn every_flipped_header_byte_is_refused() {
        let page = sample().encode();
        for i in 0..HEADER_SIZE {
            let mut bad = page.clone();
            bad[i] ^= 0x01;
            assert!(
                MemoryHeader::decode(&bad, Path::new("m")).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn region_outside_the_file_is_refused() {
        let mut header = sample();
        header.regions[0].file_offset = 8 << 20;
        let err = MemoryHeader::decode(&header.encode(), Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("outside the file"), "{err}");
    }
}
