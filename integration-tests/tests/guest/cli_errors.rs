//! Bad input to `hiber run`: one clear line, status 2, nothing started.

use std::process::{Command, Output};

use integration_tests::{guest_images, hiber_bin, scratch_dir};

/// Runs `hiber` with `args` to its end.
pub(crate) fn hiber(args: &[&str]) -> Output {
    Command::new(hiber_bin())
        .args(args)
        .output()
        .expect("hiber runs")
}

/// Asserts status 2, a message holding `needle`, and that no vCPU ran.
pub(crate) fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(
        !stderr.contains("entering the guest"),
        "a vCPU ran: {stderr}"
    );
}

#[test]
fn a_missing_kernel_file_is_refused() {
    let out = hiber(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_refused(&out, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let dir = scratch_dir("not-a-kernel");
    let path = dir.join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let out = hiber(&["run", "--kernel", path.to_str().unwrap()]);
    assert_refused(&out, "is not a Linux kernel");
}

#[test]
fn zero_vcpus_are_refused() {
    let (kernel, _) = guest_images();
    let out = hiber(&["run", "--kernel", kernel.to_str().unwrap(), "--vcpus", "0"]);
    assert_refused(&out, "--vcpus 0 is out of range");
}

#[test]
fn memory_too_small_for_kernel_and_initrd_is_refused() {
    let (kernel, initrd) = guest_images();
    let out = hiber(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "8M",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("memory") || stderr.contains("fit"),
        "{stderr}"
    );
}

#[test]
fn a_missing_initrd_is_refused() {
    let (kernel, _) = guest_images();
    let out = hiber(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        "/nope.cpio",
    ]);
    assert_refused(&out, "cannot open initrd /nope.cpio");
}

#[test]
fn a_bad_memory_size_is_refused_by_the_parser() {
    let out = hiber(&["run", "--kernel", "k", "--mem", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory size `lots`"));
}
