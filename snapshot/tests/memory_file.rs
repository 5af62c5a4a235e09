//! Memory file round trips, sparseness, and the damage the reader must refuse.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use snapshot::{
    allocated_size, apparent_size, commit_pair, read_memory_header, stage_memory_file,
    verify_memory_file, write_memory_file, HoleFill, MemRegion, MemoryError, MemoryFile,
    MemoryFileInfo, SnapshotWriter, StateFile, REGION_ALIGNMENT,
};
use vmm_sys_util::tempdir::TempDir;
use xxhash_rust::xxh3::xxh3_64;

const PAGE: usize = 4096;
const ID: [u8; 16] = [0x42; 16];

/// Two regions: a low one with a few scattered data pages, a high one mostly data.
fn guest_ram() -> (Vec<u8>, Vec<u8>) {
    let mut low = vec![0u8; 64 * PAGE];
    low[0] = 1;
    low[5 * PAGE + 100] = 0xaa;
    low[63 * PAGE + 4095] = 0x55;
    let mut high: Vec<u8> = (0..16 * PAGE).map(|i| (i % 251) as u8).collect();
    high[3 * PAGE..4 * PAGE].fill(0);
    (low, high)
}

fn regions<'a>(low: &'a [u8], high: &'a [u8]) -> [MemRegion<'a>; 2] {
    [
        MemRegion {
            guest_addr: 0,
            bytes: low,
        },
        MemRegion {
            guest_addr: 0x1_0000_0000,
            bytes: high,
        },
    ]
}

fn write_sample(dir: &TempDir) -> (PathBuf, MemoryFileInfo) {
    let (low, high) = guest_ram();
    let path = dir.as_path().join("vm.mem");
    let info = write_memory_file(&path, ID, &regions(&low, &high)).unwrap();
    (path, info)
}

fn verify(path: &Path, info: &MemoryFileInfo) -> Result<(), MemoryError> {
    verify_memory_file(&File::open(path).unwrap(), path, info)
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x08;
    file.write_all_at(&byte, offset).unwrap();
}

#[test]
fn regions_round_trip_with_checksums() {
    let dir = TempDir::new().unwrap();
    let (low, high) = guest_ram();
    let (path, info) = write_sample(&dir);
    assert_eq!(info.snapshot_id, ID);
    assert_eq!(info.regions[0].checksum, xxh3_64(&low));
    assert_eq!(info.regions[1].checksum, xxh3_64(&high));
    for region in &info.regions {
        assert_eq!(region.file_offset % REGION_ALIGNMENT, 0);
    }
    verify(&path, &info).unwrap();

    let memory = MemoryFile::open(&path, &info).unwrap();
    memory.verify().unwrap();
    let mut copy = vec![0xffu8; low.len()];
    memory
        .read_region_into(0, &mut copy, HoleFill::WriteZeros)
        .unwrap();
    assert_eq!(copy, low);
    let mut copy = vec![0u8; high.len()];
    memory
        .read_region_into(1, &mut copy, HoleFill::AlreadyZero)
        .unwrap();
    assert_eq!(copy, high);
    assert!(memory
        .read_region_into(1, &mut [0u8; 10], HoleFill::WriteZeros)
        .is_err());
    assert!(memory
        .read_region_into(2, &mut [], HoleFill::WriteZeros)
        .is_err());
}

#[test]
fn the_file_is_sparse() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let apparent = apparent_size(&path).unwrap();
    let allocated = allocated_size(&path).unwrap();
    assert_eq!(apparent, info.file_size);
    // Header page + 3 low data pages + 15 high data pages, with some file system slack.
    assert!(
        allocated < 64 * PAGE as u64,
        "allocated {allocated} of {apparent}"
    );
    assert!(allocated < apparent);
}

#[test]
fn the_header_alone_describes_the_file() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let header = read_memory_header(&File::open(&path).unwrap(), &path).unwrap();
    assert_eq!(header.info(), info);
    assert_eq!(header.format_version, 1);
}

#[test]
fn a_flipped_data_byte_fails_its_region() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    flip_byte(&path, info.regions[1].file_offset + 7 * PAGE as u64 + 3);
    MemoryFile::open(&path, &info).unwrap();
    let err = verify(&path, &info).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, MemoryError::ChecksumMismatch { index: 1, .. }),
        "{text}"
    );
    assert!(
        text.contains("region #1 (guest address 0x100000000"),
        "{text}"
    );
    assert!(text.contains(&format!("{path:?}")), "{text}");
}

#[test]
fn data_written_into_a_hole_fails_its_region() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    flip_byte(&path, info.regions[0].file_offset + 30 * PAGE as u64);
    let err = verify(&path, &info).unwrap_err();
    assert!(
        matches!(err, MemoryError::ChecksumMismatch { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_flipped_header_byte_is_refused() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    flip_byte(&path, 60);
    let err = MemoryFile::open(&path, &info).unwrap_err();
    assert!(matches!(err, MemoryError::HeaderCorrupted { .. }), "{err}");
}

#[test]
fn a_memory_file_of_another_snapshot_is_refused() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let mut other = info.clone();
    other.snapshot_id = [0x17; 16];
    let err = MemoryFile::open(&path, &other).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MemoryError::WrongSnapshot { .. }), "{text}");
    assert!(
        text.contains(&"42".repeat(16)) && text.contains(&"17".repeat(16)),
        "{text}"
    );
}

#[test]
fn a_different_region_table_is_refused() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let mut other = info.clone();
    other.regions[1].checksum ^= 1;
    let err = MemoryFile::open(&path, &other).unwrap_err();
    assert!(matches!(err, MemoryError::RegionMismatch { .. }), "{err}");
    other.regions.pop();
    let err = MemoryFile::open(&path, &other).unwrap_err();
    assert!(err.to_string().contains("it has 2 regions"), "{err}");
}

#[test]
fn a_truncated_or_extended_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(info.file_size - 1).unwrap();
    let err = MemoryFile::open(&path, &info).unwrap_err();
    assert!(matches!(err, MemoryError::WrongSize { .. }), "{err}");
    file.set_len(info.file_size + PAGE as u64).unwrap();
    let err = verify(&path, &info).unwrap_err();
    assert!(matches!(err, MemoryError::WrongSize { .. }), "{err}");
    file.set_len(100).unwrap();
    let err = verify(&path, &info).unwrap_err();
    assert!(
        matches!(err, MemoryError::TruncatedHeader { len: 100, .. }),
        "{err}"
    );
}

#[test]
fn a_state_file_is_not_a_memory_file() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let state = dir.as_path().join("vm.state");
    SnapshotWriter::new().write_atomic(&state).unwrap();
    fs::copy(&state, &path).unwrap();
    let err = MemoryFile::open(&path, &info).unwrap_err();
    assert!(matches!(err, MemoryError::NotAMemoryFile { .. }), "{err}");
}

#[test]
fn a_large_region_hashes_on_two_threads_correctly() {
    let dir = TempDir::new().unwrap();
    let mut ram = vec![0u8; 8 << 20];
    for i in (0..ram.len()).step_by(3 * PAGE + 17) {
        ram[i] = (i >> 12) as u8 | 1;
    }
    let path = dir.as_path().join("big.mem");
    let region = [MemRegion {
        guest_addr: 0,
        bytes: &ram,
    }];
    let info = write_memory_file(&path, ID, &region).unwrap();
    assert_eq!(info.regions[0].checksum, xxh3_64(&ram));
    verify(&path, &info).unwrap();
}

#[test]
fn a_failed_snapshot_keeps_the_earlier_pair() {
    let dir = TempDir::new().unwrap();
    let (path, info) = write_sample(&dir);
    let before = fs::read(&path).unwrap();

    // Staged but never committed, as when writing the state file fails afterwards.
    let ram = vec![9u8; PAGE];
    let region = [MemRegion {
        guest_addr: 0,
        bytes: &ram,
    }];
    let (staged, _) = stage_memory_file(&path, [1; 16], &region).unwrap();
    drop(staged);
    assert_eq!(fs::read(&path).unwrap(), before);
    verify(&path, &info).unwrap();
    assert_eq!(fs::read_dir(dir.as_path()).unwrap().count(), 1);
}

#[test]
fn a_committed_pair_restores() {
    let dir = TempDir::new().unwrap();
    let (low, high) = guest_ram();
    let mem_path = dir.as_path().join("vm.mem");
    let state_path = dir.as_path().join("vm.state");
    let (memory, info) = stage_memory_file(&mem_path, ID, &regions(&low, &high)).unwrap();
    let mut writer = SnapshotWriter::new();
    writer.add_section("memory", &info).unwrap();
    let state = writer.stage(&state_path).unwrap();
    commit_pair(memory, state).unwrap();

    let recorded: MemoryFileInfo = StateFile::read(&state_path)
        .unwrap()
        .section("memory")
        .unwrap();
    assert_eq!(recorded, info);
    MemoryFile::open(&mem_path, &recorded)
        .unwrap()
        .verify()
        .unwrap();
}
