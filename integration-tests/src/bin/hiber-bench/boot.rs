//! Boot figures: wall time to the guest's readiness line, the VMM's own
//! start-up (process start to first KVM_RUN) and resident memory, Hiber and
//! QEMU (`-machine pc`) alternating.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::measure::{first_kvm_run_ms, resident};
use integration_tests::{scratch_dir, Vmm};

use crate::qemu::{Machine, QemuGuest};
use crate::{median, BOOT_TIMEOUT, STEP};

/// Boots of each VMM in the comparison; they alternate, so that a change in
/// the machine's load falls on both.
const BOOT_ROUNDS: usize = 3;

/// What one boot took.
pub struct BootFigures {
    ready: Duration,
    first_run_ms: Option<u64>,
    vmm_kb: u64,
    guest_kb: u64,
}

impl BootFigures {
    fn ready_secs(&self) -> f64 {
        self.ready.as_secs_f64()
    }
}

/// Boots the test guest under Hiber with `extra` flags and waits for the
/// console agent; panics with the log if it does not come up.
pub fn boot_hiber(dir: &Path, extra: &[&str]) -> (Vmm, BootFigures) {
    let start = Instant::now();
    let vmm = Vmm::boot(dir, extra);
    vmm.wait_for("hiber-guest: ready", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    let ready = start.elapsed();
    vmm.wait_for("hiber-agent: listening", STEP).unwrap();
    let rss = resident(vmm.pid());
    let figures = BootFigures {
        ready,
        first_run_ms: first_kvm_run_ms(&vmm.log()),
        vmm_kb: rss.vmm_kb,
        guest_kb: rss.guest_kb,
    };
    (vmm, figures)
}

/// Boots the same kernel and initramfs under QEMU; None if QEMU is missing
/// or the guest does not come up.
fn boot_qemu(dir: &Path) -> Option<BootFigures> {
    let qemu = QemuGuest::spawn(Machine::Pc, &[], dir)?;
    qemu.wait_for("hiber-guest: ready", BOOT_TIMEOUT).ok()?;
    let ready = qemu.started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss = resident(qemu.pid());
    Some(BootFigures {
        ready,
        first_run_ms: None,
        vmm_kb: rss.vmm_kb,
        guest_kb: rss.guest_kb,
    })
}

/// Prints one boot's figures under `name`.
pub fn print_boot(name: &str, f: &BootFigures) {
    let first = f
        .first_run_ms
        .map_or("-".to_string(), |ms| format!("{ms} ms"));
    println!(
        "  {name:<6} ready after {:>7.2} s | first KVM_RUN {first:>7} | RSS: VMM {:>6.1} MiB, \
         guest {:>6.1} MiB",
        f.ready.as_secs_f64(),
        f.vmm_kb as f64 / 1024.0,
        f.guest_kb as f64 / 1024.0
    );
}

fn print_ratio(hiber: &[BootFigures], qemu: &[BootFigures]) {
    if qemu.is_empty() {
        return;
    }
    let ready = |runs: &[BootFigures]| median(runs.iter().map(|f| f.ready_secs()).collect());
    let rss = |runs: &[BootFigures]| median(runs.iter().map(|f| f.vmm_kb as f64).collect());
    println!(
        "  medians: hiber {:.2} s, qemu {:.2} s to ready; qemu/hiber: time {:.2}x, \
         VMM RSS {:.2}x",
        ready(hiber),
        ready(qemu),
        ready(qemu) / ready(hiber),
        rss(qemu) / rss(hiber).max(1.0)
    );
}

/// The boot comparison.
pub fn section() {
    println!(
        "boot (128 MiB, 1 vCPU, same kernel, initramfs and command line; \
         {BOOT_ROUNDS} rounds, the two VMMs alternating):"
    );
    let mut hiber_runs = Vec::new();
    let mut qemu_runs = Vec::new();
    for round in 0..BOOT_ROUNDS {
        let dir = scratch_dir(&format!("bench-boot-{round}"));
        let (vmm, hiber) = boot_hiber(&dir, &[]);
        vmm.kill();
        print_boot("hiber", &hiber);
        hiber_runs.push(hiber);
        match boot_qemu(&dir) {
            Some(q) => {
                print_boot("qemu", &q);
                qemu_runs.push(q);
            }
            None => println!("  qemu: not run (qemu-system-x86_64 missing or failed)"),
        }
    }
    print_ratio(&hiber_runs, &qemu_runs);
}
