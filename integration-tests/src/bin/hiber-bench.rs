//! `make bench`: Hiber's figures on this machine, with QEMU beside them.
//!
//! Boot: wall time to the guest's readiness line, the VMM's own start-up
//! (process start to first KVM_RUN) and resident memory. Snapshots, for
//! 128 MiB, 1 GiB and 4 GiB guests that touched a known amount of RAM:
//! pause latency, snapshot time and throughput, restore time to a running
//! vCPU, and the memory file's apparent and allocated sizes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::measure::{self, file_sizes, first_kvm_run_ms, resident};
use integration_tests::{guest_images, scratch_dir, Vmm, TEST_CMDLINE};
use vmm::cpu::{CpuFeature, CpuOverrides, QuirkMode};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const STEP: Duration = Duration::from_secs(300);
/// How much RAM the workload fills in every guest size.
const TOUCHED_MIB: u64 = 64;
const PAUSES: u32 = 20;
/// Boots of each VMM in the comparison; they alternate, so that a change in
/// the machine's load falls on both.
const BOOT_ROUNDS: usize = 3;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

struct BootFigures {
    ready: Duration,
    first_run_ms: Option<u64>,
    vmm_kb: u64,
    guest_kb: u64,
}

fn boot_hiber(mem: &str, dir: &std::path::Path) -> (Vmm, BootFigures) {
    let start = Instant::now();
    let vmm = Vmm::boot(dir, &["--mem", mem]);
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

fn qemu_cpu_flags(hide: &[CpuFeature]) -> String {
    let mut cpu = String::from("host");
    if !hide.is_empty() {
        cpu.push_str(",-arch-capabilities");
    }
    for (feature, flag) in [
        (CpuFeature::Cx16, "-cx16"),
        (CpuFeature::KvmStealTime, "-kvm-steal-time"),
        (CpuFeature::KvmClockStable, "-kvmclock-stable-bit"),
    ] {
        if hide.contains(&feature) {
            cpu.push(',');
            cpu.push_str(flag);
        }
    }
    cpu
}

/// Boots the same kernel and initramfs under QEMU; None if QEMU is missing.
fn boot_qemu() -> Option<BootFigures> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let quirks = vmm::cpu::host_quirks(&kvm, QuirkMode::Auto, &CpuOverrides::default()).ok()?;
    let (kernel, initrd) = guest_images();
    let cmdline = format!("{TEST_CMDLINE} {}", quirks.cmdline_string());
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-enable-kvm", "-cpu", &qemu_cpu_flags(&quirks.hide)])
        .args([
            "-machine",
            "pc,hpet=off",
            "-m",
            "128",
            "-smp",
            "1",
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let out = BufReader::new(child.stdout.take()?);
    let mut figures = None;
    for line in out.lines() {
        let Ok(line) = line else { break };
        if line.contains("hiber-guest: ready") {
            let ready = start.elapsed();
            std::thread::sleep(Duration::from_secs(2));
            let rss = resident(pid);
            figures = Some(BootFigures {
                ready,
                first_run_ms: None,
                vmm_kb: rss.vmm_kb,
                guest_kb: rss.guest_kb,
            });
            break;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    figures
}

fn print_boot(name: &str, f: &BootFigures) {
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_ratio(hiber: &[BootFigures], qemu: &[BootFigures]) {
    if qemu.is_empty() {
        return;
    }
    let ready = |runs: &[BootFigures]| median(runs.iter().map(|f| f.ready.as_secs_f64()).collect());
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

fn pause_latency(vmm: &Vmm) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..PAUSES {
        let t = Instant::now();
        vmm.pause();
        total += t.elapsed();
        vmm.resume();
    }
    total / PAUSES
}

fn snapshot_figures(mem: &str, mem_bytes: u64) {
    let dir = scratch_dir(&format!("bench-{mem}"));
    let (vmm, boot) = boot_hiber(mem, &dir);
    print_boot(mem, &boot);
    let r = vmm
        .run(&format!("hiber-workload {TOUCHED_MIB} &"), STEP)
        .expect("workload starts");
    assert_eq!(r.status, 0);
    vmm.wait_line("hiber-workload: tick ", STEP)
        .expect("workload ticks");
    let pause = pause_latency(&vmm);
    vmm.pause();
    let (state, memf) = (dir.join("b.state"), dir.join("b.mem"));
    let t = Instant::now();
    vmm.snapshot(&state, &memf);
    let snap = t.elapsed();
    vmm.kill();
    let (apparent, allocated) = file_sizes(&memf);
    let (state_bytes, _) = file_sizes(&state);
    println!(
        "    pause {:>8.1} us (mean of {PAUSES}) | snapshot {:>8.1} ms, {:>7.0} MiB/s of RAM | \
         state file {} KiB | memory file {:.0} MiB apparent, {:.1} MiB allocated \
         ({TOUCHED_MIB} MiB touched by the workload)",
        pause.as_secs_f64() * 1e6,
        snap.as_secs_f64() * 1e3,
        mib(mem_bytes) / snap.as_secs_f64(),
        state_bytes >> 10,
        mib(apparent),
        mib(allocated),
    );
    for backend in ["map", "copy"] {
        let t = Instant::now();
        let vmm = Vmm::restore(&dir, &state, &memf, &["--mem-backend", backend]);
        vmm.wait_line("hiber-workload: tick ", STEP)
            .expect("ticks after restore");
        let to_tick = t.elapsed();
        let log = vmm.log();
        let first = first_kvm_run_ms(&log).unwrap_or(0);
        let rss = resident(vmm.pid());
        println!(
            "    restore ({backend:<4}) to a running vCPU {first:>5} ms | to the next guest \
             tick {:>6.2} s | RSS after: VMM {:.1} MiB, guest {:.1} MiB",
            to_tick.as_secs_f64(),
            rss.vmm_kb as f64 / 1024.0,
            rss.guest_kb as f64 / 1024.0
        );
        vmm.kill();
    }
}

fn main() {
    println!("hiber benchmark on: {}", measure::machine_description());
    println!(
        "boot (128 MiB, 1 vCPU, same kernel, initramfs and command line; \
         {BOOT_ROUNDS} rounds, the two VMMs alternating):"
    );
    let mut hiber_runs = Vec::new();
    let mut qemu_runs = Vec::new();
    for round in 0..BOOT_ROUNDS {
        let dir = scratch_dir(&format!("bench-boot-{round}"));
        let (vmm, hiber) = boot_hiber("128M", &dir);
        vmm.kill();
        print_boot("hiber", &hiber);
        hiber_runs.push(hiber);
        match boot_qemu() {
            Some(q) => {
                print_boot("qemu", &q);
                qemu_runs.push(q);
            }
            None => println!("  qemu: not run (qemu-system-x86_64 missing or failed)"),
        }
    }
    print_ratio(&hiber_runs, &qemu_runs);
    println!("snapshot and restore (each guest booted, then {TOUCHED_MIB} MiB filled):");
    for (mem, bytes) in [("128M", 128u64 << 20), ("1G", 1 << 30), ("4G", 4 << 30)] {
        snapshot_figures(mem, bytes);
    }
}
