//! Snapshot figures for 128 MiB, 1 GiB and 4 GiB guests that touched a
//! known amount of RAM: pause latency, snapshot time and throughput, restore
//! time to a running vCPU, and the memory file's apparent and allocated sizes.

use std::time::{Duration, Instant};

use integration_tests::measure::{file_sizes, first_kvm_run_ms, resident};
use integration_tests::{scratch_dir, Vmm};

use crate::boot::{boot_hiber, print_boot};
use crate::STEP;

/// How much RAM the workload fills in every guest size.
const TOUCHED_MIB: u64 = 64;
const PAUSES: u32 = 20;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
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
    let (vmm, boot) = boot_hiber(&dir, &["--mem", mem]);
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
        restore_figures(&dir, &state, &memf, backend);
    }
}

fn restore_figures(
    dir: &std::path::Path,
    state: &std::path::Path,
    memf: &std::path::Path,
    backend: &str,
) {
    let t = Instant::now();
    let vmm = Vmm::restore(dir, state, memf, &["--mem-backend", backend]);
    vmm.wait_line("hiber-workload: tick ", STEP)
        .expect("ticks after restore");
    let to_tick = t.elapsed();
    let first = first_kvm_run_ms(&vmm.log()).unwrap_or(0);
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

/// The snapshot and restore figures.
pub fn section() {
    println!("snapshot and restore (each guest booted, then {TOUCHED_MIB} MiB filled):");
    for (mem, bytes) in [("128M", 128u64 << 20), ("1G", 1 << 30), ("4G", 4 << 30)] {
        snapshot_figures(mem, bytes);
    }
}
