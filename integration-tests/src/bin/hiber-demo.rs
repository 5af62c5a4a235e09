//! `make demo`: Hiber's main job, step by step, with the time of each step.
//!
//! Boots the test guest with a virtio data disk, starts a workload that
//! keeps changing its memory and counting, writes a file to the disk,
//! pauses, snapshots, kills the VMM, restores the snapshot in a new process
//! and shows the workload carrying on where it stopped and the file still
//! there.

use std::time::{Duration, Instant};

use integration_tests::{guest_images, scratch_dir, Vmm};

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
    let disk = dir.join("data.ext4");
    let (kernel, _) = guest_images();
    let image = kernel.with_file_name("data.ext4");
    std::fs::copy(&image, &disk).unwrap_or_else(|e| panic!("copy {}: {e}", image.display()));
    let drive = format!("path={}", disk.display());
    let vmm = step("boot to `hiber-guest: ready`", || {
        let vmm = Vmm::boot(&dir, &["--drive", &drive]);
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
    let note = "busybox mount -t ext4 /dev/vda /mnt && \
                echo 'written before the snapshot' > /mnt/note.txt && busybox sync";
    step("write /mnt/note.txt on the virtio disk", || {
        let r = vmm.run(note, STEP_TIMEOUT).expect("agent answers");
        assert_eq!(r.status, 0, "writing the note failed: {}", r.output);
    });
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
    let r = step("read /mnt/note.txt back", || {
        vmm.run("busybox cat /mnt/note.txt", STEP_TIMEOUT)
            .expect("agent answers")
    });
    println!("[guest] {}", r.output.trim());
    assert!(
        r.output.contains("written before the snapshot"),
        "{}",
        r.output
    );
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
    println!(
        "[demo] done: the workload continued from where it was snapshotted, \
         and the disk kept what the guest wrote"
    );
}
