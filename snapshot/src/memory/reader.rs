//! Opening, verifying and reading a memory file.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Default;

use super::error::MemoryError;
use super::extents::DataExtents;
use super::header::{MemoryHeader, HEADER_SIZE, MAGIC};
use super::{MemoryFileInfo, RegionInfo};
use crate::id::format_snapshot_id;

/// How much file data is read at once while hashing.
const READ_CHUNK: usize = 1 << 20;

/// Zeros fed to the hasher in place of a hole.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What [`MemoryFile::read_region_into`] does with the destination where the file
/// has a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoleFill {
    /// The destination is already zero (a fresh anonymous mapping): leave it
    /// untouched, so its pages are not allocated.
    AlreadyZero,
    /// Write zeros into the destination.
    WriteZeros,
}

/// A memory file whose header matches the state file's record of it.
///
/// To restore by mapping, map `file()` at each region's `file_offset` with
/// `MAP_PRIVATE`; to restore by copying, use [`MemoryFile::read_region_into`].
#[derive(Debug)]
pub struct MemoryFile {
    file: File,
    path: PathBuf,
    info: MemoryFileInfo,
}

impl MemoryFile {
    /// Opens the memory file at `path` and checks its header and size against
    /// `info` (from the state file). Contents are checked by [`MemoryFile::verify`].
    pub fn open(path: &Path, info: &MemoryFileInfo) -> Result<MemoryFile, MemoryError> {
        let file = File::open(path).map_err(|source| MemoryError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        check_header_and_size(&file, path, info)?;
        Ok(MemoryFile {
            file,
            path: path.to_path_buf(),
            info: info.clone(),
        })
    }

    /// The open file, to map regions from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The regions: guest address, size, file offset and checksum of each.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.info.regions
    }

    /// Gives up the file, for a restorer that keeps it open while mapped.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Checks every region's checksum; reads only the data, not the holes.
    pub fn verify(&self) -> Result<(), MemoryError> {
        verify_regions(&self.file, &self.path, &self.info)
    }

    /// Copies region `index` into `dest`, which must have the region's size.
    pub fn read_region_into(
        &self,
        index: usize,
        dest: &mut [u8],
        holes: HoleFill,
    ) -> Result<(), MemoryError> {
        let region = self.region(index)?;
        if dest.len() as u64 != region.size {
            return Err(MemoryError::DestinationSize {
                path: self.path.clone(),
                index,
                expected: region.size,
                actual: dest.len(),
            });
        }
        copy_region(&self.file, region, dest, holes).map_err(|source| self.read_error(source))
    }

    fn region(&self, index: usize) -> Result<&RegionInfo, MemoryError> {
        self.info
            .regions
            .get(index)
            .ok_or_else(|| MemoryError::NoSuchRegion {
                path: self.path.clone(),
                index,
                count: self.info.regions.len(),
            })
    }

    fn read_error(&self, source: io::Error) -> MemoryError {
        MemoryError::Read {
            path: self.path.clone(),
            source,
        }
    }
}

/// Checks the memory file `file` (opened from `path`) against `info`: magic,
/// version, snapshot id, region table, size, and every region's checksum.
pub fn verify_memory_file(
    file: &File,
    path: &Path,
    info: &MemoryFileInfo,
) -> Result<(), MemoryError> {
    check_header_and_size(file, path, info)?;
    verify_regions(file, path, info)
}

/// Reads and checks the header page alone, for inspecting a memory file offline.
pub fn read_memory_header(file: &File, path: &Path) -> Result<MemoryHeader, MemoryError> {
    let len = file_len(file, path)?;
    let mut page = Box::new([0u8; HEADER_SIZE]);
    let present = len.min(HEADER_SIZE as u64) as usize;
    file.read_exact_at(&mut page[..present], 0)
        .map_err(|source| MemoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    // The magic first, so that a short file of another kind is named as such.
    if !MAGIC.starts_with(&page[..present.min(MAGIC.len())]) {
        return Err(MemoryError::NotAMemoryFile {
            path: path.to_path_buf(),
        });
    }
    if present < HEADER_SIZE {
        return Err(MemoryError::TruncatedHeader {
            path: path.to_path_buf(),
            len,
        });
    }
    MemoryHeader::decode(&page, path)
}

/// The disk space a file takes (allocated blocks), which is less than its
/// apparent size when it has holes.
pub fn allocated_size(path: &Path) -> Result<u64, MemoryError> {
    Ok(metadata(path)?.blocks() * 512)
}

/// The apparent size of a file (its length).
pub fn apparent_size(path: &Path) -> Result<u64, MemoryError> {
    Ok(metadata(path)?.len())
}

fn metadata(path: &Path) -> Result<std::fs::Metadata, MemoryError> {
    std::fs::metadata(path).map_err(|source| MemoryError::Stat {
        path: path.to_path_buf(),
        source,
    })
}

fn file_len(file: &File, path: &Path) -> Result<u64, MemoryError> {
    let meta = file.metadata().map_err(|source| MemoryError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(meta.len())
}

fn check_header_and_size(
    file: &File,
    path: &Path,
    info: &MemoryFileInfo,
) -> Result<(), MemoryError> {
    let header = read_memory_header(file, path)?;
    if header.snapshot_id != info.snapshot_id {
        return Err(MemoryError::WrongSnapshot {
            path: path.to_path_buf(),
            found: format_snapshot_id(&header.snapshot_id),
            expected: format_snapshot_id(&info.snapshot_id),
        });
    }
    check_regions_match(&header, path, info)?;
    let actual = file_len(file, path)?;
    if actual != info.file_size || header.file_size != info.file_size {
        return Err(MemoryError::WrongSize {
            path: path.to_path_buf(),
            actual,
            expected: info.file_size,
        });
    }
    Ok(())
}

fn check_regions_match(
    header: &MemoryHeader,
    path: &Path,
    info: &MemoryFileInfo,
) -> Result<(), MemoryError> {
    let detail = if header.regions.len() != info.regions.len() {
        format!(
            "it has {} regions, the state file {}",
            header.regions.len(),
            info.regions.len()
        )
    } else if let Some(i) = (0..info.regions.len()).find(|&i| header.regions[i] != info.regions[i])
    {
        format!(
            "region #{i} differs: {:?} in the file, {:?} in the state file",
            header.regions[i], info.regions[i]
        )
    } else {
        return Ok(());
    };
    Err(MemoryError::RegionMismatch {
        path: path.to_path_buf(),
        detail,
    })
}

fn verify_regions(file: &File, path: &Path, info: &MemoryFileInfo) -> Result<(), MemoryError> {
    for (index, region) in info.regions.iter().enumerate() {
        let checksum = hash_region(file, region).map_err(|source| MemoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if checksum != region.checksum {
            return Err(MemoryError::ChecksumMismatch {
                path: path.to_path_buf(),
                index,
                guest_addr: region.guest_addr,
                size: region.size,
            });
        }
    }
    log::debug!(
        "memory file {path:?}: {} region checksums match",
        info.regions.len()
    );
    Ok(())
}

fn file_range(region: &RegionInfo) -> Range<u64> {
    region.file_offset..region.file_offset + region.size
}

/// Hashes the region as if read in full, feeding zeros for holes instead of
/// reading them.
fn hash_region(file: &File, region: &RegionInfo) -> io::Result<u64> {
    let mut hasher = Xxh3Default::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let range = file_range(region);
    let mut pos = range.start;
    for extent in DataExtents::new(file, range.clone())? {
        let extent = extent?;
        feed_zeros(&mut hasher, extent.start - pos);
        feed_file(&mut hasher, file, extent.clone(), &mut buf)?;
        pos = extent.end;
    }
    feed_zeros(&mut hasher, range.end - pos);
    Ok(hasher.digest())
}

fn feed_zeros(hasher: &mut Xxh3Default, mut len: u64) {
    while len > 0 {
        let step = len.min(ZEROS.len() as u64);
        hasher.update(&ZEROS[..step as usize]);
        len -= step;
    }
}

fn feed_file(
    hasher: &mut Xxh3Default,
    file: &File,
    range: Range<u64>,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut pos = range.start;
    while pos < range.end {
        let step = (range.end - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..step], pos)?;
        hasher.update(&buf[..step]);
        pos += step as u64;
    }
    Ok(())
}

fn copy_region(
    file: &File,
    region: &RegionInfo,
    dest: &mut [u8],
    holes: HoleFill,
) -> io::Result<()> {
    let range = file_range(region);
    let base = range.start;
    let mut pos = 0usize;
    for extent in DataExtents::new(file, range)? {
        let extent = extent?;
        let (start, end) = ((extent.start - base) as usize, (extent.end - base) as usize);
        if holes == HoleFill::WriteZeros {
            dest[pos..start].fill(0);
        }
        file.read_exact_at(&mut dest[start..end], extent.start)?;
        pos = end;
    }
    if holes == HoleFill::WriteZeros {
        dest[pos..].fill(0);
    }
    Ok(())
}
