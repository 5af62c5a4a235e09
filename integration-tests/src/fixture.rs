//! The one guest boot of a test run: booted, checked, paused and
//! snapshotted once; every other guest test restores from that snapshot.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::vmm::Vmm;

/// How long the guest may take to boot on a host that emulates guest
/// kernel code (about two minutes measured; bare metal takes under a second).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The snapshot of a freshly booted test guest, idle at its agent prompt.
#[derive(Debug)]
pub struct BaseSnapshot {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub mem: PathBuf,
    /// What the guest printed while booting.
    pub boot_console: String,
    /// The output of the first agent command (`echo` and `uname`).
    pub first_command: String,
    /// Wall time from process start to the readiness line.
    pub boot_time: Duration,
}

static BASE: OnceLock<Result<BaseSnapshot, String>> = OnceLock::new();

/// The base snapshot, booting the guest the first time it is asked for.
pub fn base_snapshot() -> &'static BaseSnapshot {
    match BASE.get_or_init(boot_and_snapshot) {
        Ok(base) => base,
        Err(e) => panic!("the base guest could not be booted: {e}"),
    }
}

fn boot_and_snapshot() -> Result<BaseSnapshot, String> {
    let dir = crate::scratch_dir("base");
    let start = Instant::now();
    let vmm = Vmm::boot(&dir, &[]);
    vmm.wait_for("hiber-guest: ready", BOOT_TIMEOUT)
        .map_err(|e| format!("{e}\nVMM log:\n{}", vmm.log()))?;
    let boot_time = start.elapsed();
    vmm.wait_for("hiber-agent: listening", Duration::from_secs(60))?;
    let first = vmm.run("echo hello-from-guest; uname -r", Duration::from_secs(120))?;
    if first.status != 0 || !first.output.contains("hello-from-guest") {
        return Err(format!("the first command failed: {first:?}"));
    }
    // Boot on an emulating host is slow enough to trip the soft-lockup
    // detector; the tests look for new reports only.
    vmm.run("dmesg -c > /dev/null", Duration::from_secs(120))?;
    vmm.pause();
    let state = dir.join("base.state");
    let mem = dir.join("base.mem");
    vmm.snapshot(&state, &mem);
    let boot_console = vmm.console_text();
    vmm.kill();
    Ok(BaseSnapshot {
        state,
        mem,
        boot_console,
        first_command: first.output,
        boot_time,
    })
}
