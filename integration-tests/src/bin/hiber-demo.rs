//! `make demo`: Hiber's main job, step by step, with the time of each step.
//!
//! Boots the test guest, starts a workload that keeps changing its memory
//! and counting, pauses, snapshots, kills the VMM, restores the snapshot in
//! a new process and shows the workload carrying on where it stopped.

use std::time::{Duration, Instant};

use integration_tests::{scratch_dir, Vmm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn step<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!("[demo] {what}: {:.3} s", start.elapsed().as_secs_f64());
    out
}

fn show_ticks(vmm: &Vmm, n: usize) -> String {
    let mut last = String::new();
    for _ in 0..n {
        last = vmm
            .wait_line("hiber-workload: tick ", STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
        println!("[guest] hiber-workload: tick {last}");
    }
    last
}

fn main() {
    let dir = scratch_dir("demo");
    println!("[demo] working in {}", dir.display());
    let vmm = step("boot to `hiber-guest: ready`", || {
        let vmm = Vmm::boot(&dir, &[]);
        vmm.wait_for("hiber-guest: ready", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
        vmm
    });
    let r = step("run `uname -a` in the guest", || {
        vmm.run("uname -a", STEP_TIMEOUT).expect("agent answers")
    });
    println!("[guest] {}", r.output.trim());
    step(
        "start the workload (8 MiB, checksummed every second)",
        || {
            vmm.run("hiber-workload 8 &", STEP_TIMEOUT)
                .expect("agent answers")
        },
    );
    let before = show_ticks(&vmm, 3);
    step("pause", || vmm.pause());
    let (state, mem) = (dir.join("demo.state"), dir.join("demo.mem"));
    step("snapshot (state + memory file)", || {
        vmm.snapshot(&state, &mem)
    });
    step("kill the VMM process", || vmm.kill());
    println!("[demo] the workload's last tick before the snapshot: {before}");
    let vmm = step(
        "restore in a new process (until the first guest tick)",
        || {
            let vmm = Vmm::restore(&dir, &state, &mem, &[]);
            show_ticks(&vmm, 1);
            vmm
        },
    );
    show_ticks(&vmm, 2);
    let mut vmm = vmm;
    step("guest `poweroff -f` ends the VMM", || {
        let status = vmm
            .run_to_exit("poweroff -f", STEP_TIMEOUT)
            .expect("hiber exits");
        println!("[demo] hiber exited with {status}");
    });
    let alloc = std::fs::metadata(&mem).map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.len(), m.blocks() * 512)
    });
    if let Ok((apparent, allocated)) = alloc {
        println!(
            "[demo] memory file: {} MiB apparent, {} MiB on disk",
            apparent >> 20,
            allocated >> 20
        );
    }
    println!("[demo] done: the workload continued from where it was snapshotted");
}
