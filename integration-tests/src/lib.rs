//! The harness of Hiber's guest tests: starts `hiber` processes, talks to
//! the guest's console agent and to the control API, and keeps one booted
//! snapshot per test run that the other tests restore from.
//!
//! Every test that uses this needs /dev/kvm and fails, loudly, without it.

pub mod console;
pub mod fixture;
pub mod measure;
pub mod netns;
pub mod vmm;
pub mod vsock;

use std::path::{Path, PathBuf};

pub use fixture::{base_snapshot, BaseSnapshot};
pub use vmm::{CommandResult, Vmm};

/// The kernel command line the tests boot the guest with.
pub const TEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux quiet \
    init_on_alloc=0 cryptomgr.notests";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

/// The `hiber` binary under test: `$HIBER_BIN`, else the release build.
pub fn hiber_bin() -> PathBuf {
    let path = std::env::var_os("HIBER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/hiber"));
    assert!(
        path.exists(),
        "the hiber binary {} is missing: run `make build` first",
        path.display()
    );
    path
}

/// The guest kernel and initramfs built by `make guest-images` (or those
/// in `$HIBER_GUEST_IMAGES`, a directory holding the same two files).
pub fn guest_images() -> (PathBuf, PathBuf) {
    let out = std::env::var_os("HIBER_GUEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guest-images/out"));
    let images = (out.join("vmlinux"), out.join("initramfs.cpio"));
    for p in [&images.0, &images.1] {
        assert!(
            p.exists(),
            "the guest image {} is missing: run `make guest-images` first",
            p.display()
        );
    }
    images
}

/// Whether this host's KVM runs guest kernel code through an emulator
/// (the nested "PVM" kind), which the guest tests must allow for.
pub fn host_emulates_guest_kernel() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// How often [`retry_start_crashes`] runs a command again.
const START_CRASH_RETRIES: u32 = 4;

/// Runs `once`, and on a host that emulates guest kernel code runs it again
/// (at most 4 times, each logged) while `crashed` says a guest process died
/// as it started, that host's known fault (see README.md). Elsewhere the
/// first result stands, so a crash fails the test.
pub fn retry_start_crashes<T>(
    what: &str,
    mut once: impl FnMut() -> T,
    crashed: impl Fn(&T) -> bool,
) -> T {
    let retries = if host_emulates_guest_kernel() {
        START_CRASH_RETRIES
    } else {
        0
    };
    let mut result = once();
    for attempt in 1..=retries {
        if !crashed(&result) {
            break;
        }
        eprintln!("guest process crashed at start (host issue); retry {attempt}: {what}");
        result = once();
    }
    result
}

/// Fails the test unless this host has KVM.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these tests boot a guest under KVM and cannot run here"
    );
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/hiber-tests")
        .join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the target directory is writable");
    dir
}
