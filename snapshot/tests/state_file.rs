//! State file round trips and every kind of damage the reader must refuse.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use snapshot::{SnapshotWriter, StateError, StateFile, STATE_FORMAT_VERSION};
use vmm_sys_util::tempdir::TempDir;
use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    hiber_version: String,
    created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Vcpu {
    id: u8,
    regs: Vec<u64>,
}

fn sample_writer() -> SnapshotWriter {
    let mut writer = SnapshotWriter::new();
    let meta = Meta {
        hiber_version: "0.1.0".into(),
        created_unix: 1_700_000_000,
    };
    writer.add_section("meta", &meta).unwrap();
    for id in 0..2 {
        let vcpu = Vcpu {
            id,
            regs: vec![u64::from(id) * 3, 0xffff_0000],
        };
        writer.add_section("vcpu", &vcpu).unwrap();
    }
    writer
        .add_section("devices", &vec!["serial", "i8042"])
        .unwrap();
    writer
}

/// Recomputes the trailer checksum, as a faulty writer would have produced it.
fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - 8;
    let sum = xxh3_64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn sections_round_trip_in_order() {
    let file = StateFile::from_bytes(&sample_writer().to_bytes()).unwrap();
    assert_eq!(file.format_version(), STATE_FORMAT_VERSION);
    let names: Vec<&str> = file.sections().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["meta", "vcpu", "vcpu", "devices"]);
    let meta: Meta = file.section("meta").unwrap();
    assert_eq!(meta.created_unix, 1_700_000_000);
    let vcpus: Vec<Vcpu> = file.sections_named("vcpu").unwrap();
    assert_eq!(vcpus.iter().map(|v| v.id).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(vcpus[1].regs, [3, 0xffff_0000]);
    assert_eq!(file.sections()[0].offset(), 32);
}

#[test]
fn generic_values_show_any_section() {
    let file = StateFile::from_bytes(&sample_writer().to_bytes()).unwrap();
    let value = file.section_value(0).unwrap();
    let map = value.as_map().expect("a struct is a CBOR map");
    let key = map[0].0.as_text().unwrap();
    assert_eq!(key, "hiber_version");
    assert!(file.section_value(9).is_err());
}

#[test]
fn missing_duplicate_and_mistyped_sections_are_named() {
    let file = StateFile::from_bytes(&sample_writer().to_bytes()).unwrap();
    let err = file.section::<Meta>("vm").unwrap_err();
    assert!(matches!(err, StateError::MissingSection { .. }));
    assert!(err.to_string().contains("\"vm\""), "{err}");
    assert!(
        err.to_string().contains("meta, vcpu, vcpu, devices"),
        "{err}"
    );
    let err = file.section::<Vcpu>("vcpu").unwrap_err();
    assert!(
        matches!(err, StateError::DuplicateSection { count: 2, .. }),
        "{err}"
    );
    let err = file.section::<Vcpu>("meta").unwrap_err();
    assert!(matches!(err, StateError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("Vcpu"), "{err}");
}

#[test]
fn bad_section_names_are_refused() {
    let mut writer = SnapshotWriter::new();
    assert!(writer.add_section("", &1u8).is_err());
    assert!(writer.add_section(&"x".repeat(256), &1u8).is_err());
    writer.add_section(&"x".repeat(255), &1u8).unwrap();
    writer.add_section("vcpu-état", &1u8).unwrap();
    let file = StateFile::from_bytes(&writer.to_bytes()).unwrap();
    assert_eq!(file.sections()[1].name(), "vcpu-état");
}

#[test]
fn empty_file_of_sections_round_trips() {
    let file = StateFile::from_bytes(&SnapshotWriter::new().to_bytes()).unwrap();
    assert!(file.sections().is_empty());
    let err = file.sections_named::<u8>("vcpu").unwrap_err();
    assert!(err.to_string().contains("no sections"), "{err}");
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = sample_writer().to_bytes();
    bytes[0] = b'X';
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, StateError::NotAStateFile { .. }), "{err}");
    let mut memory = b"HIBERMEM".to_vec();
    memory.resize(64, 0);
    let err = StateFile::from_bytes(&memory).unwrap_err();
    assert!(err.to_string().contains("it is a memory file"), "{err}");
}

#[test]
fn unknown_version_is_refused_by_number() {
    let mut bytes = sample_writer().to_bytes();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    // A genuine version 7 file has a valid header checksum.
    let sum = xxh3_64(&bytes[..24]);
    bytes[24..32].copy_from_slice(&sum.to_le_bytes());
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("was written by format version 7; this Hiber reads version 1"),
        "{text}"
    );
}

#[test]
fn every_truncation_is_refused_and_located() {
    let bytes = sample_writer().to_bytes();
    for len in 0..bytes.len() {
        let err = StateFile::from_bytes(&bytes[..len]).unwrap_err();
        let text = err.to_string();
        match len {
            0..=31 => assert!(
                matches!(err, StateError::TruncatedHeader { .. }),
                "{len}: {text}"
            ),
            _ => {
                assert!(matches!(err, StateError::Truncated { .. }), "{len}: {text}");
                assert!(text.contains(&format!("it has {len} of its")), "{text}");
            }
        }
    }
    // Cutting inside the second vcpu payload names that section.
    let file = StateFile::from_bytes(&bytes).unwrap();
    let second_vcpu = file.sections()[2].offset() as usize;
    let err = StateFile::from_bytes(&bytes[..second_vcpu + 16]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the payload of section #2 \"vcpu\""),
        "{text}"
    );
}

#[test]
fn every_flipped_byte_is_refused() {
    let bytes = sample_writer().to_bytes();
    for offset in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[offset] ^= bit;
            let err = StateFile::from_bytes(&bad).unwrap_err();
            let expected = match offset {
                0..=7 => matches!(err, StateError::NotAStateFile { .. }),
                8..=31 => matches!(err, StateError::HeaderCorrupted { .. }),
                _ => matches!(err, StateError::ChecksumMismatch { .. }),
            };
            assert!(expected, "flip {bit:#x} at {offset}: {err}");
        }
    }
}

#[test]
fn corrupted_message_says_so() {
    let mut bytes = sample_writer().to_bytes();
    bytes[40] ^= 1;
    let text = StateFile::from_bytes(&bytes).unwrap_err().to_string();
    assert!(
        text.contains("checksum mismatch: the file is corrupted"),
        "{text}"
    );
}

#[test]
fn bad_section_length_is_refused() {
    let mut bytes = sample_writer().to_bytes();
    // The first section: name length (2) + "meta" (4), then the payload length.
    let at = 32 + 2 + 4;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, StateError::ChecksumMismatch { .. }), "{err}");

    reseal(&mut bytes);
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StateError::Malformed { .. }), "{text}");
    assert!(text.contains("section #0 \"meta\""), "{text}");
    assert!(text.contains("1099511627776 bytes"), "{text}");
}

#[test]
fn short_section_length_is_refused() {
    let mut bytes = sample_writer().to_bytes();
    let at = 32 + 2 + 4;
    let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    bytes[at..at + 8].copy_from_slice(&(len - 1).to_le_bytes());
    reseal(&mut bytes);
    // The walk now reads garbage as the next section; it must not succeed silently.
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, StateError::Malformed { .. }), "{err}");
}

#[test]
fn appended_bytes_are_refused() {
    let mut bytes = sample_writer().to_bytes();
    bytes.push(0);
    let err = StateFile::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, StateError::TooLong { .. }), "{err}");
}

#[test]
fn files_round_trip_and_errors_name_the_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("vm.state");
    sample_writer().write_atomic(&path).unwrap();
    let file = StateFile::read(&path).unwrap();
    assert_eq!(file.sections().len(), 4);

    let mut bytes = fs::read(&path).unwrap();
    bytes[50] ^= 4;
    fs::write(&path, &bytes).unwrap();
    let text = StateFile::read(&path).unwrap_err().to_string();
    assert!(text.contains(&format!("{path:?}")), "{text}");

    let text = StateFile::read(&dir.as_path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("absent"), "{text}");
}

#[test]
fn a_failed_write_keeps_the_earlier_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("vm.state");
    sample_writer().write_atomic(&path).unwrap();
    let before = fs::read(&path).unwrap();

    // A write that fails half-way: staged, partly overwritten, then dropped.
    let mut writer = SnapshotWriter::new();
    writer.add_section("meta", &"newer").unwrap();
    let staged = writer.stage(&path).unwrap();
    staged.file().set_len(10).unwrap();
    drop(staged);
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(fs::read_dir(dir.as_path()).unwrap().count(), 1);

    // A write into a directory that does not exist fails before touching anything.
    let elsewhere = dir.as_path().join("absent").join("vm.state");
    assert!(writer.write_atomic(&elsewhere).is_err());
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(!Path::new(&elsewhere).exists());
}
