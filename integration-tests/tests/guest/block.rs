//! The data disk over virtio-blk, end to end: the guest mounts a copy of
//! `data.ext4`, reads and writes it, is snapshotted and restored in a new
//! process, reads its files back from the disk and keeps writing; the host
//! finds what the guest wrote in the image file. A second copy, given
//! read-only, stays read-only in the guest and unchanged on the host.
//!
//! It boots its own guest (the base snapshot has no drives), so it is one
//! test that walks every step in order; the restore refusals for a changed
//! or missing image come last, on the snapshot it took, and then a clone
//! restored onto its own copy of the disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::fixture::BOOT_TIMEOUT;
use integration_tests::{hiber_bin, repo_root, scratch_dir, Vmm};

use super::CMD_TIMEOUT;

/// The data disk's size: 16 MiB.
const DATA_DISK_BYTES: u64 = 16 << 20;

/// The two drive images of the test, copies of `data.ext4`.
struct Images {
    /// Given read-write, as `data` (the guest's vda).
    data: PathBuf,
    /// Given read-only, as `ro` (vdb).
    ro: PathBuf,
}

fn copy_images(dir: &Path) -> Images {
    let original = repo_root().join("guest-images/out/data.ext4");
    assert!(
        original.exists(),
        "{} is missing: run `make guest-images` first",
        original.display()
    );
    let images = Images {
        data: dir.join("data.ext4"),
        ro: dir.join("ro.ext4"),
    };
    fs::copy(&original, &images.data).unwrap();
    fs::copy(&original, &images.ro).unwrap();
    images
}

/// A guest command copying 256 KiB of the guest's busybox binary, from
/// 64 KiB block `skip` on: data that differs in every sector, so a sector
/// in the wrong place shows. (The guest kernel's random source costs
/// seconds per 64 KiB where guest kernel code is emulated.)
fn copy_256k_of_busybox(skip: u32, to: &str) -> String {
    format!("dd if=/bin/busybox of={to} bs=64k skip={skip} count=4 2>/dev/null")
}

/// Runs `cmd` in the guest; it must succeed. Returns its output.
fn guest(vmm: &Vmm, cmd: &str) -> String {
    let r = vmm
        .run(cmd, CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}\nVMM log:\n{}", vmm.log()));
    assert_eq!(r.status, 0, "`{cmd}` failed: {}", r.output);
    r.output
}

/// The first word of the line of `output` that ends with `path` (an
/// `md5sum` line).
fn md5_of(output: &str, path: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.trim_end().ends_with(path))
        .unwrap_or_else(|| panic!("no md5sum of {path} in: {output}"));
    line.split_whitespace().next().unwrap().to_string()
}

fn run_tool(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "{cmd:?} ended with {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file of the ext4 image as the host finds it. With `replay`, the
/// image is read as a crash would leave it: a copy whose journal e2fsck
/// replays first (what `sync` made durable may still be only in the
/// journal while the guest has the file system mounted).
fn host_file(image: &Path, name: &str, replay: bool) -> Vec<u8> {
    let checked = image.with_extension("check");
    let image = if replay {
        fs::copy(image, &checked).unwrap();
        run_tool(Command::new("e2fsck").arg("-fy").arg(&checked));
        checked.as_path()
    } else {
        image
    };
    let dumped = image.with_extension("dumped");
    let _ = fs::remove_file(&dumped);
    let request = format!("dump /{name} {}", dumped.display());
    run_tool(Command::new("debugfs").arg("-R").arg(&request).arg(image));
    fs::read(&dumped).unwrap_or_else(|e| panic!("debugfs found no /{name} in the image: {e}"))
}

fn host_md5(bytes: &[u8], dir: &Path) -> String {
    let path = dir.join("md5-input");
    fs::write(&path, bytes).unwrap();
    let out = run_tool(Command::new("md5sum").arg(&path));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().next().unwrap().to_string()
}

/// Boots with both drives and checks what the guest sees of them.
fn boot_with_drives(dir: &Path, images: &Images) -> Vmm {
    let data = format!("path={},id=data", images.data.display());
    let ro = format!("path={},read-only=on,id=ro", images.ro.display());
    let vmm = Vmm::boot(dir, &["--drive", &data, "--drive", &ro]);
    vmm.wait_for("hiber-agent: listening", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nVMM log:\n{}", vmm.log()));
    let sysfs = guest(
        &vmm,
        "cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vdb/ro /sys/block/vda/serial",
    );
    let lines: Vec<&str> = sysfs.lines().map(str::trim).collect();
    let sectors = (DATA_DISK_BYTES / 512).to_string();
    // The serial (GET_ID) has no newline of its own: it comes last.
    assert_eq!(lines, [sectors.as_str(), "0", "1", "data"], "{sysfs}");
    vmm
}

/// Mounts both disks, reads hello.txt from each, writes two files on the
/// data disk; returns the md5 of the larger one.
fn mount_read_and_write(vmm: &Vmm) -> String {
    let out = guest(
        vmm,
        "mkdir -p /mnt/data /mnt/ro && mount -t ext4 /dev/vda /mnt/data && \
         mount -t ext4 -o ro /dev/vdb /mnt/ro && cat /mnt/data/hello.txt /mnt/ro/hello.txt",
    );
    assert_eq!(out.matches("hiber-data: ok").count(), 2, "{out}");
    let cmd = format!(
        "echo before-snapshot > /mnt/data/a.txt && \
         {} && sync && md5sum /mnt/data/big",
        copy_256k_of_busybox(0, "/mnt/data/big")
    );
    let out = guest(vmm, &cmd);
    md5_of(&out, "/mnt/data/big")
}

/// The guest cannot write the read-only drive, through its file system or
/// the raw device.
fn assert_read_only_in_guest(vmm: &Vmm) {
    for cmd in [
        "echo x > /mnt/ro/x.txt",
        "dd if=/dev/zero of=/dev/vdb bs=512 count=1",
    ] {
        let r = vmm.run(cmd, CMD_TIMEOUT).unwrap();
        assert_ne!(r.status, 0, "`{cmd}` wrote a read-only drive: {}", r.output);
    }
}

fn snapshot_and_kill(vmm: Vmm, dir: &Path) -> (PathBuf, PathBuf) {
    vmm.pause();
    let (state, mem) = (dir.join("disk.state"), dir.join("disk.mem"));
    vmm.snapshot(&state, &mem);
    vmm.kill();
    (state, mem)
}

/// In the restored guest: drops the page cache so that the files are read
/// from the disk through the restored device, checks them, writes more,
/// and unmounts. Returns the md5 of the new large file.
fn read_back_and_keep_writing(vmm: &Vmm, big_md5: &str) -> String {
    let out = guest(
        vmm,
        "echo 3 > /proc/sys/vm/drop_caches && cat /mnt/data/a.txt /mnt/ro/hello.txt && \
         md5sum /mnt/data/big",
    );
    assert!(out.contains("before-snapshot"), "{out}");
    assert!(out.contains("hiber-data: ok"), "{out}");
    assert_eq!(md5_of(&out, "/mnt/data/big"), big_md5);
    let cmd = format!(
        "echo after-restore > /mnt/data/b.txt && {} && sync && \
         md5sum /mnt/data/big2",
        copy_256k_of_busybox(4, "/mnt/data/big2")
    );
    let out = guest(vmm, &cmd);
    let big2 = md5_of(&out, "/mnt/data/big2");
    report_read_speed(vmm);
    guest(vmm, "umount /mnt/data && umount /mnt/ro");
    big2
}

/// Prints how fast the guest reads the whole data disk with O_DIRECT, by
/// the guest's clock (for the report; not checked, host speeds vary).
fn report_read_speed(vmm: &Vmm) {
    let cmd = "cat /proc/uptime; dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null; \
               cat /proc/uptime";
    let Ok(r) = vmm.run(cmd, CMD_TIMEOUT) else {
        return;
    };
    let uptimes: Vec<f64> = r
        .output
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    if let [start, end] = uptimes[..] {
        let mib = (DATA_DISK_BYTES >> 20) as f64;
        let secs = end - start;
        eprintln!(
            "guest O_DIRECT read of the {mib} MiB data disk: {secs:.2} s, {:.1} MiB/s",
            mib / secs
        );
    }
}

/// `hiber restore` of the snapshot must fail with `needle` in its error.
fn assert_restore_refused(state: &Path, mem: &Path, needle: &str) {
    let out = Command::new(hiber_bin())
        .args(["restore", "--paused", "--snapshot"])
        .arg(state)
        .arg("--mem")
        .arg(mem)
        .output()
        .expect("hiber runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the restore was not refused: {stderr}"
    );
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(
        !stderr.contains("entering the guest"),
        "a vCPU ran: {stderr}"
    );
}

/// The snapshot is refused when its data disk has another size or is gone;
/// the image is put back as it was after each case.
fn assert_changed_images_refused(state: &Path, mem: &Path, data: &Path) {
    let file = fs::OpenOptions::new().write(true).open(data).unwrap();
    file.set_len(DATA_DISK_BYTES + 512).unwrap();
    let needle = format!(
        "drive data: image {} is {} bytes but the snapshot was taken with {DATA_DISK_BYTES} \
         bytes: restore with the disk image the snapshot was taken with",
        data.display(),
        DATA_DISK_BYTES + 512
    );
    assert_restore_refused(state, mem, &needle);
    file.set_len(DATA_DISK_BYTES).unwrap();

    let away = data.with_extension("away");
    fs::rename(data, &away).unwrap();
    let needle = format!("drive data: image {} does not exist", data.display());
    assert_restore_refused(state, mem, &needle);
    fs::rename(&away, data).unwrap();
}

#[test]
fn the_data_disk_keeps_its_data_across_a_snapshot_and_a_restore() {
    let dir = scratch_dir("block");
    let images = copy_images(&dir);
    let ro_before = fs::read(&images.ro).unwrap();

    let vmm = boot_with_drives(&dir, &images);
    let big_md5 = mount_read_and_write(&vmm);
    assert_read_only_in_guest(&vmm);
    assert_eq!(host_file(&images.data, "a.txt", true), b"before-snapshot\n");
    let big = host_file(&images.data, "big", true);
    assert_eq!(
        host_md5(&big, &dir),
        big_md5,
        "the host image holds the guest's data"
    );
    let (state, mem) = snapshot_and_kill(vmm, &dir);
    let clone = dir.join("clone.ext4");
    fs::copy(&images.data, &clone).unwrap();

    let vmm = Vmm::restore(&dir, &state, &mem, &[]);
    let big2_md5 = read_back_and_keep_writing(&vmm, &big_md5);
    // Unmounted: the image is clean, no journal replay needed.
    assert_eq!(host_file(&images.data, "b.txt", false), b"after-restore\n");
    assert_eq!(
        host_file(&images.data, "a.txt", false),
        b"before-snapshot\n"
    );
    let big2 = host_file(&images.data, "big2", false);
    assert_eq!(host_md5(&big2, &dir), big2_md5);
    vmm.kill();
    assert!(
        fs::read(&images.ro).unwrap() == ro_before,
        "the read-only image changed"
    );

    assert_changed_images_refused(&state, &mem, &images.data);
    a_paused_restore_saves_the_same_drives(&dir, &state, &mem);
    a_clone_writes_to_its_own_copy(&dir, &state, &mem, &clone);
}

/// Restored paused and snapshotted again at once, the machine with its two
/// drives saves the same state, apart from the drift the drift list names:
/// the drives' transports and queue positions come back exactly.
fn a_paused_restore_saves_the_same_drives(dir: &Path, state: &Path, mem: &Path) {
    let vmm = Vmm::restore(dir, state, mem, &["--paused"]);
    let (again, again_mem) = (dir.join("again.state"), dir.join("again.mem"));
    vmm.snapshot(&again, &again_mem);
    vmm.kill();
    let mut a = vmm::persist::SavedMachine::read(state).unwrap();
    let mut b = vmm::persist::SavedMachine::read(&again).unwrap();
    assert_eq!(a.virtio.len(), 3, "two drives and the entropy device");
    vmm::persist::drift::normalize(&mut a);
    vmm::persist::drift::normalize(&mut b);
    let diffs = vmm::persist::drift::differences(&a, &b);
    assert!(
        diffs.is_empty(),
        "state files differ beyond known drift: {diffs:#?}"
    );
}

/// Restores the snapshot onto `clone`, a copy of the disk taken with it
/// (`--drive-override`): the guest finds its files there, and what it
/// writes lands in the copy, not in the image the first restore used.
fn a_clone_writes_to_its_own_copy(dir: &Path, state: &Path, mem: &Path, clone: &Path) {
    let arg = format!("data={}", clone.display());
    let vmm = Vmm::restore(dir, state, mem, &["--drive-override", &arg]);
    let out = guest(
        &vmm,
        "echo 3 > /proc/sys/vm/drop_caches && cat /mnt/data/a.txt && \
         echo clone > /mnt/data/c.txt && sync && umount /mnt/data",
    );
    assert!(out.contains("before-snapshot"), "{out}");
    vmm.kill();
    assert_eq!(host_file(clone, "c.txt", false), b"clone\n");
    assert_eq!(host_file(clone, "a.txt", false), b"before-snapshot\n");
}
