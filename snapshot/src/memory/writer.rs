//! Writing guest RAM into a sparse memory file, checksumming it on the way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::error::MemoryError;
use super::header::{MemoryHeader, HEADER_SIZE, MAX_REGIONS};
use super::zero::data_runs;
use super::{MemRegion, MemoryFileInfo, RegionInfo};
use crate::atomic::StagedFile;
use crate::id::SnapshotId;

/// Every region starts at a multiple of this file offset (2 MiB), so a restore can
/// map it directly, even with huge pages. The gaps are holes and cost no disk space.
pub const REGION_ALIGNMENT: u64 = 2 << 20;

/// Regions smaller than this are hashed on the writing thread; a second thread
/// costs more than it saves for them.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// Writes `regions` into a new memory file at `path`, atomically, and returns what
/// the state file must record about it.
pub fn write_memory_file(
    path: &Path,
    snapshot_id: SnapshotId,
    regions: &[MemRegion<'_>],
) -> Result<MemoryFileInfo, MemoryError> {
    let start = Instant::now();
    let (staged, info) = stage_memory_file(path, snapshot_id, regions)?;
    let written = start.elapsed();
    staged.commit()?;
    let ram: u64 = info.regions.iter().map(|region| region.size).sum();
    log::info!(
        "memory file written: {path:?}, {} MiB of guest RAM in {} ms (+{} ms to sync)",
        ram >> 20,
        written.as_millis(),
        (start.elapsed() - written).as_millis()
    );
    Ok(info)
}

/// Writes the memory file under a temporary name beside `path`, to be committed
/// later (with [`crate::commit_pair`], before the state file).
pub fn stage_memory_file(
    path: &Path,
    snapshot_id: SnapshotId,
    regions: &[MemRegion<'_>],
) -> Result<(StagedFile, MemoryFileInfo), MemoryError> {
    let mut info = plan_layout(snapshot_id, regions)?;
    let staged = StagedFile::create(path)?;
    let file = staged.file();
    file.set_len(info.file_size)
        .map_err(|source| staged.write_error(source))?;

    let mut data = 0;
    for (region, slot) in regions.iter().zip(info.regions.iter_mut()) {
        let (checksum, written) = write_region(file, region.bytes, slot.file_offset)
            .map_err(|source| staged.write_error(source))?;
        slot.checksum = checksum;
        data += written;
    }

    // The header goes last: until it is written the file has no valid magic.
    let header = MemoryHeader::for_info(&info).encode();
    file.write_all_at(&header[..], 0)
        .map_err(|source| staged.write_error(source))?;
    log::debug!(
        "staged memory file {path:?}: {} MiB of non-zero pages",
        data >> 20
    );
    Ok((staged, info))
}

/// Places each region at the next aligned offset after the previous one.
fn plan_layout(
    snapshot_id: SnapshotId,
    regions: &[MemRegion<'_>],
) -> Result<MemoryFileInfo, MemoryError> {
    if regions.len() > MAX_REGIONS {
        return Err(MemoryError::TooManyRegions {
            count: regions.len(),
            max: MAX_REGIONS,
        });
    }
    let mut end = HEADER_SIZE as u64;
    let mut infos = Vec::with_capacity(regions.len());
    for (index, region) in regions.iter().enumerate() {
        if region.bytes.is_empty() {
            return Err(MemoryError::EmptyRegion {
                index,
                guest_addr: region.guest_addr,
            });
        }
        let file_offset = end.next_multiple_of(REGION_ALIGNMENT);
        let size = region.bytes.len() as u64;
        end = file_offset + size;
        infos.push(RegionInfo {
            guest_addr: region.guest_addr,
            size,
            file_offset,
            checksum: 0,
        });
    }
    Ok(MemoryFileInfo {
        snapshot_id,
        file_size: end,
        regions: infos,
    })
}

/// Writes the non-zero pages of `bytes` at `file_offset` and hashes all of `bytes`,
/// on two threads for large regions. Returns the checksum and the bytes written.
fn write_region(file: &File, bytes: &[u8], file_offset: u64) -> io::Result<(u64, u64)> {
    if bytes.len() < PARALLEL_HASH_MIN {
        let written = write_data_runs(file, bytes, file_offset)?;
        return Ok((xxh3_64(bytes), written));
    }
    thread::scope(|scope| {
        let hasher = scope.spawn(|| xxh3_64(bytes));
        let written = write_data_runs(file, bytes, file_offset);
        let checksum = hasher.join().expect("the hashing thread does not panic");
        Ok((checksum, written?))
    })
}

fn write_data_runs(file: &File, bytes: &[u8], file_offset: u64) -> io::Result<u64> {
    let mut written = 0;
    for run in data_runs(bytes) {
        file.write_all_at(&bytes[run.clone()], file_offset + run.start as u64)?;
        written += run.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_aligns_every_region() {
        let a = vec![0u8; 4096];
        let b = vec![0u8; (2 << 20) + 4096];
        let regions = [
            MemRegion {
                guest_addr: 0,
                bytes: &a,
            },
            MemRegion {
                guest_addr: 1 << 32,
                bytes: &b,
            },
        ];
        let info = plan_layout([0; 16], &regions).unwrap();
        let offsets: Vec<u64> = info.regions.iter().map(|r| r.file_offset).collect();
        assert_eq!(offsets, [2 << 20, 4 << 20]);
        assert_eq!(info.file_size, (6 << 20) + 4096);
    }

    #[test]
    fn empty_and_too_many_regions_are_refused() {
        let empty = [MemRegion {
            guest_addr: 0x1000,
            bytes: &[],
        }];
        let err = plan_layout([0; 16], &empty).unwrap_err();
        assert!(err.to_string().contains("0x1000"), "{err}");
        let page = [1u8; 1];
        let many = vec![
            MemRegion {
                guest_addr: 0,
                bytes: &page,
            };
            MAX_REGIONS + 1
        ];
        let err = plan_layout([0; 16], &many).unwrap_err();
        assert!(matches!(err, MemoryError::TooManyRegions { .. }), "{err}");
    }
}
