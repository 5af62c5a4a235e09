//! Tests that run the test guest under KVM. The guest boots once per run
//! (see `fixture`); every other test restores the snapshot of that boot in
//! a new `hiber` process. They need /dev/kvm and fail without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{base_snapshot, scratch_dir, Vmm};

mod block;
mod cli_errors;
mod net;
mod preboot_api;
mod refusals;
mod vsock;

const CMD_TIMEOUT: Duration = Duration::from_secs(120);
const TICK_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const WORKLOAD_MIB: u32 = 8;

/// A new process restored from the base snapshot, answering commands.
fn restored(name: &str) -> Vmm {
    let base = base_snapshot();
    let dir = scratch_dir(name);
    let vmm = Vmm::restore(&dir, &base.state, &base.mem, &[]);
    let r = vmm
        .run("true", CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    assert_eq!(r.status, 0);
    vmm
}

/// One line of the workload: its counter, and whether its checks held.
#[derive(Debug)]
struct Tick {
    counter: u64,
    checksum_ok: bool,
}

fn next_tick(vmm: &Vmm) -> Tick {
    let rest = vmm
        .wait_line("hiber-workload: tick ", TICK_TIMEOUT)
        .unwrap_or_else(|e| panic!("no workload tick: {e}\n{}", vmm.log()));
    let mut words = rest.split_whitespace();
    let counter = words
        .next()
        .and_then(|w| w.parse().ok())
        .expect("a counter");
    let checksum_ok = rest.contains("checksum ok");
    Tick {
        counter,
        checksum_ok,
    }
}

fn start_workload(vmm: &Vmm) {
    let r = vmm
        .run(&format!("hiber-workload {WORKLOAD_MIB} &"), CMD_TIMEOUT)
        .unwrap();
    assert_eq!(r.status, 0, "{r:?}");
    assert!(next_tick(vmm).checksum_ok);
}

/// The highest tick counter printed so far.
fn last_tick(vmm: &Vmm) -> u64 {
    vmm.console_text()
        .lines()
        .filter_map(|l| l.strip_prefix("hiber-workload: tick "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .max()
        .expect("the workload printed ticks")
}

fn assert_guest_healthy(vmm: &Vmm) {
    let console = vmm.console_text();
    assert!(
        !console.contains("BACKWARDS"),
        "monotonic clock went back:\n{console}"
    );
    assert!(
        !console.contains("checksum BAD"),
        "workload memory corrupted:\n{console}"
    );
    // One guest process (dmesg); the matching is done here.
    let r = vmm.run("dmesg", CMD_TIMEOUT).unwrap();
    let trouble: Vec<&str> = r
        .output
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["soft lockup", "oops", "bug:", "self-detected stall"]
                .iter()
                .any(|p| l.contains(p))
        })
        .collect();
    assert!(
        trouble.is_empty(),
        "the guest kernel logged trouble: {trouble:#?}"
    );
    assert!(
        !r.output.contains("Segmentation fault"),
        "dmesg crashed in every attempt: {}",
        r.output
    );
}

fn snapshot_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.state")),
        dir.join(format!("{name}.mem")),
    )
}

#[test]
fn boot_reaches_readiness_and_runs_a_command() {
    let base = base_snapshot();
    assert!(
        base.first_command.contains("hello-from-guest"),
        "{}",
        base.first_command
    );
    assert!(base.boot_console.contains("hiber-guest: ready"));
    eprintln!("guest ready {:?} after hiber started", base.boot_time);
}

#[test]
fn guest_poweroff_ends_the_vmm_with_status_0() {
    let mut vmm = restored("poweroff");
    let status = vmm.run_to_exit("poweroff -f", EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log());
}

#[test]
fn guest_reboot_ends_the_vmm_with_status_0() {
    let mut vmm = restored("reboot");
    let status = vmm.run_to_exit("reboot -f", EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", vmm.log());
}

#[test]
fn a_guest_kernel_panic_ends_the_vmm_with_a_failure_and_says_so() {
    let mut vmm = restored("panic");
    // PID 1 exits: the kernel panics, and panic=-1 resets at once.
    vmm.send_line("exit-init");
    let status = vmm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(1), "log:\n{}", vmm.log());
    assert!(
        vmm.log().contains("the guest kernel panicked"),
        "{}",
        vmm.log()
    );
    assert!(vmm.console_text().contains("Kernel panic - not syncing"));
}

#[test]
fn workload_continues_after_a_restore_in_a_new_process() {
    let vmm = restored("continue");
    start_workload(&vmm);
    next_tick(&vmm);
    vmm.pause();
    let before = last_tick(&vmm);
    let (state, mem) = snapshot_paths(&vmm.dir, "cont");
    vmm.snapshot(&state, &mem);
    let dir = vmm.dir.clone();
    vmm.kill();

    let vmm = Vmm::restore(&dir, &state, &mem, &[]);
    let first = next_tick(&vmm);
    assert!(
        first.counter == before + 1 || first.counter == before + 2,
        "the counter was {before} at the snapshot and {} after the restore",
        first.counter
    );
    let second = next_tick(&vmm);
    assert_eq!(second.counter, first.counter + 1);
    assert!(first.checksum_ok && second.checksum_ok);
    assert_guest_healthy(&vmm);
}

#[test]
fn twenty_restore_run_pause_snapshot_cycles() {
    let vmm = restored("cycles");
    start_workload(&vmm);
    let dir = vmm.dir.clone();
    let mut current = vmm;
    let mut counter = 0;
    for cycle in 0..20 {
        let tick = next_tick(&current);
        assert!(tick.checksum_ok, "cycle {cycle}: {tick:?}");
        assert!(
            tick.counter > counter,
            "cycle {cycle}: {} after {counter}",
            tick.counter
        );
        counter = tick.counter;
        current.pause();
        let (state, mem) = snapshot_paths(&dir, &format!("cycle{}", cycle % 2));
        current.snapshot(&state, &mem);
        current.kill();
        current = Vmm::restore(&dir, &state, &mem, &[]);
    }
    assert!(next_tick(&current).checksum_ok);
    assert_guest_healthy(&current);
}

#[test]
fn pause_and_resume_in_the_same_process_many_times() {
    let vmm = restored("pause-resume");
    start_workload(&vmm);
    for _ in 0..15 {
        vmm.pause();
        let (status, info) = vmm.api("GET", "/", None);
        assert_eq!(status, 200);
        assert_eq!(info.unwrap()["state"], "Paused");
        std::thread::sleep(Duration::from_millis(50));
        vmm.resume();
    }
    let a = next_tick(&vmm);
    let b = next_tick(&vmm);
    assert_eq!(b.counter, a.counter + 1);
    assert!(a.checksum_ok && b.checksum_ok);
    assert_guest_healthy(&vmm);
}

#[test]
fn a_snapshot_needs_a_paused_vm() {
    let vmm = restored("needs-pause");
    let body = serde_json::json!({
        "snapshot_path": vmm.dir.join("x.state"),
        "mem_file_path": vmm.dir.join("x.mem"),
    });
    let (status, reply) = vmm.api("PUT", "/snapshot/create", Some(body));
    assert_eq!(status, 400);
    let msg = reply.unwrap()["fault_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("paused"), "{msg}");
    // The refused request did not stop the guest.
    assert_eq!(vmm.run("echo still-here", CMD_TIMEOUT).unwrap().status, 0);
}

#[test]
fn restore_then_snapshot_at_once_gives_the_same_state() {
    let base = base_snapshot();
    let dir = scratch_dir("same-state");
    let vmm = Vmm::restore(&dir, &base.state, &base.mem, &["--paused"]);
    let (state, mem) = snapshot_paths(&dir, "again");
    vmm.snapshot(&state, &mem);
    vmm.kill();
    let mut a = vmm::persist::SavedMachine::read(&base.state).unwrap();
    let mut b = vmm::persist::SavedMachine::read(&state).unwrap();
    let pages = differing_pages(&a, &base.mem, &mem);
    let clocks = vmm::persist::drift::kvmclock_areas(&a);
    for page in &pages {
        assert!(
            clocks
                .iter()
                .any(|c| c.start < page + 4096 && *page < c.end),
            "guest page {page:#x} changed although the guest never ran"
        );
    }
    vmm::persist::drift::normalize(&mut a);
    vmm::persist::drift::normalize(&mut b);
    let diffs = vmm::persist::drift::differences(&a, &b);
    assert!(
        diffs.is_empty(),
        "state files differ beyond known drift: {diffs:#?}"
    );
}

/// Guest physical addresses of the 4 KiB pages whose contents differ
/// between two memory files of the same layout.
fn differing_pages(m: &vmm::persist::SavedMachine, a: &Path, b: &Path) -> Vec<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let mut pages = Vec::new();
    let (mut pa, mut pb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for region in &m.memory.regions {
        fa.seek(SeekFrom::Start(region.file_offset)).unwrap();
        fb.seek(SeekFrom::Start(region.file_offset)).unwrap();
        for chunk in 0..region.size >> 20 {
            fa.read_exact(&mut pa).unwrap();
            fb.read_exact(&mut pb).unwrap();
            for (i, (x, y)) in pa.chunks(4096).zip(pb.chunks(4096)).enumerate() {
                if x != y {
                    pages.push(region.guest_addr + (chunk << 20) + (i as u64) * 4096);
                }
            }
        }
    }
    pages
}

#[test]
fn a_snapshot_loads_over_the_api_into_an_empty_process() {
    let base = base_snapshot();
    let dir = scratch_dir("api-load");
    let vmm = Vmm::spawn(&dir, &["run".to_string()]);
    let (status, info) = vmm.api("GET", "/", None);
    assert_eq!(status, 200);
    let info = info.unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "hiber");
    let body = serde_json::json!({
        "snapshot_path": base.state,
        "mem_backend": {"backend_type": "File", "backend_path": base.mem},
        "resume_vm": true,
    });
    let (status, reply) = vmm.api("PUT", "/snapshot/load", Some(body.clone()));
    assert_eq!(status, 204, "{reply:?}\n{}", vmm.log());
    assert_eq!(vmm.api("GET", "/", None).1.unwrap()["state"], "Running");
    let (status, config) = vmm.api("GET", "/vm/config", None);
    assert_eq!(status, 200);
    let config = config.unwrap();
    assert_eq!(config["machine-config"]["vcpu_count"], 1);
    assert_eq!(config["machine-config"]["mem_size_mib"], 128);
    let r = vmm.run("echo loaded-over-api", CMD_TIMEOUT).unwrap();
    assert!(r.output.contains("loaded-over-api"), "{r:?}");
    // A second load into a process that runs a VM is refused, and the VM
    // keeps running.
    let (status, reply) = vmm.api("PUT", "/snapshot/load", Some(body));
    assert_eq!(status, 400, "{reply:?}");
    assert_eq!(vmm.run("true", CMD_TIMEOUT).unwrap().status, 0);
}

#[test]
fn the_copy_memory_backend_restores_too() {
    let base = base_snapshot();
    let dir = scratch_dir("copy-backend");
    let vmm = Vmm::restore(&dir, &base.state, &base.mem, &["--mem-backend", "copy"]);
    let r = vmm.run("echo copied", CMD_TIMEOUT).unwrap();
    assert!(r.output.contains("copied"), "{r:?}");
}

#[test]
fn inspect_shows_registers_devices_and_the_memory_map() {
    let base = base_snapshot();
    let out = std::process::Command::new(integration_tests::hiber_bin())
        .arg("inspect")
        .arg(&base.state)
        .arg("--mem")
        .arg(&base.mem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "format version 1",
        "vCPU 0",
        "rip 0x",
        "cr3",
        "devices",
        "apparent",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    let json = std::process::Command::new(integration_tests::hiber_bin())
        .args(["inspect", "--json"])
        .arg(&base.state)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["vcpus"].as_array().unwrap().len(), 1);
    assert!(v["vcpus"][0]["regs"]["rip"].as_u64().unwrap() > 0);
}

/// The one test that boots a second guest: the MP table must bring up
/// every vCPU.
#[test]
fn two_vcpus_boot_and_come_online() {
    let dir = scratch_dir("smp");
    let vmm = Vmm::boot(&dir, &["--vcpus", "2"]);
    vmm.wait_for(
        "hiber-agent: listening",
        integration_tests::fixture::BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    let r = vmm
        .run("cat /sys/devices/system/cpu/online", CMD_TIMEOUT)
        .unwrap();
    assert_eq!(r.output.trim(), "0-1", "{r:?}");
}
