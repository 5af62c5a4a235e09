//! Every snapshot `hiber restore` must refuse: each test damages a copy of
//! the base snapshot in one way and checks the message, the exit status 2,
//! and that no vCPU ran.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{base_snapshot, hiber_bin, scratch_dir};

/// Offset of the format version in the state file header.
const VERSION_OFFSET: usize = 8;
/// The header bytes its own checksum covers, and where that checksum is.
const HEADER_SUMMED: usize = 24;

struct Copy {
    state: PathBuf,
    mem: PathBuf,
}

fn copy_base(name: &str) -> Copy {
    let base = base_snapshot();
    let dir = scratch_dir(name);
    let copy = Copy {
        state: dir.join("s.state"),
        mem: dir.join("s.mem"),
    };
    fs::copy(&base.state, &copy.state).unwrap();
    // `cp --sparse` keeps the holes; fs::copy may not.
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&base.mem)
        .arg(&copy.mem)
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

fn restore(state: &Path, mem: &Path) -> Output {
    Command::new(hiber_bin())
        .args(["restore", "--paused", "--snapshot"])
        .arg(state)
        .arg("--mem")
        .arg(mem)
        .output()
        .expect("hiber runs")
}

fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    }
    assert!(
        !stderr.contains("entering the guest"),
        "a vCPU ran: {stderr}"
    );
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let data = fs::read(path).unwrap();
    patch(path, offset, &[data[offset as usize] ^ 0x40]);
}

#[test]
fn a_truncated_state_file_is_refused() {
    let c = copy_base("trunc-state");
    let len = fs::metadata(&c.state).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&c.state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_refused(&restore(&c.state, &c.mem), &["truncated", "s.state"]);
}

#[test]
fn a_flipped_byte_in_the_state_file_is_refused() {
    let c = copy_base("flip-state");
    let len = fs::metadata(&c.state).unwrap().len();
    flip(&c.state, len / 2);
    assert_refused(&restore(&c.state, &c.mem), &["checksum", "s.state"]);
}

#[test]
fn a_wrong_magic_is_refused() {
    let c = copy_base("magic");
    patch(&c.state, 0, b"NOTHIBER");
    assert_refused(&restore(&c.state, &c.mem), &["s.state", "not a Hiber"]);
}

#[test]
fn an_unknown_format_version_is_refused_by_its_number() {
    let c = copy_base("version");
    let mut data = fs::read(&c.state).unwrap();
    data[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&99u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&data[..HEADER_SUMMED]);
    data[HEADER_SUMMED..HEADER_SUMMED + 8].copy_from_slice(&sum.to_le_bytes());
    fs::write(&c.state, data).unwrap();
    assert_refused(&restore(&c.state, &c.mem), &["version 99"]);
}

#[test]
fn a_memory_file_of_the_wrong_size_is_refused() {
    let c = copy_base("mem-size");
    let len = fs::metadata(&c.mem).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&c.mem).unwrap();
    f.set_len(len - 4096).unwrap();
    assert_refused(&restore(&c.state, &c.mem), &["s.mem", "size"]);
}

#[test]
fn a_flipped_byte_in_guest_memory_is_refused() {
    let c = copy_base("mem-flip");
    let saved = vmm::persist::SavedMachine::read(&c.state).unwrap();
    let region = saved.memory.regions[0];
    // The kernel image is loaded at 16 MiB: data, never a hole.
    flip(&c.mem, region.file_offset + (16 << 20) + 100);
    assert_refused(&restore(&c.state, &c.mem), &["checksum", "s.mem"]);
}

#[test]
fn a_memory_file_of_another_snapshot_is_refused() {
    let c = copy_base("mem-other");
    let mut saved = vmm::persist::SavedMachine::read(&c.state).unwrap();
    saved.meta.snapshot_id[0] ^= 1;
    saved.memory.snapshot_id[0] ^= 1;
    saved.write(&c.state).unwrap();
    assert_refused(&restore(&c.state, &c.mem), &["s.mem", "snapshot"]);
}

#[test]
fn a_cpu_this_host_cannot_give_is_refused_with_the_missing_features() {
    let c = copy_base("cpuid");
    let mut saved = vmm::persist::SavedMachine::read(&c.state).unwrap();
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm opens");
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf7 = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 7 && e.index == 0)
        .map_or(0, |e| e.ebx);
    let bit = (0..32)
        .rev()
        .find(|b| leaf7 & (1 << b) == 0)
        .expect("a free bit");
    for vcpu in saved.vcpus.iter_mut() {
        let entry = vcpu
            .cpuid
            .iter_mut()
            .find(|e| e.function == 7 && e.index == 0)
            .expect("leaf 7 given");
        entry.ebx |= 1 << bit;
    }
    saved.write(&c.state).unwrap();
    assert_refused(
        &restore(&c.state, &c.mem),
        &["cannot run on this host", "missing"],
    );
}

#[test]
fn missing_files_are_refused_by_name() {
    let c = copy_base("missing");
    let nowhere = c.state.with_file_name("nowhere.state");
    assert_refused(&restore(&nowhere, &c.mem), &["nowhere.state"]);
    let nomem = c.mem.with_file_name("nowhere.mem");
    assert_refused(&restore(&c.state, &nomem), &["nowhere.mem"]);
}

/// Root reads files whatever their mode, and CI runs as root: so this
/// checks the unreadable-file path with a directory in place of the file,
/// which no one can read. It does not prove the EACCES message itself.
#[test]
fn an_unreadable_state_file_is_refused() {
    let c = copy_base("unreadable");
    let dir = c.state.with_file_name("a-directory.state");
    fs::create_dir_all(&dir).unwrap();
    assert_refused(&restore(&dir, &c.mem), &["a-directory.state"]);
}
