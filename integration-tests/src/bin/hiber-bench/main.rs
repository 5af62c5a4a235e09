//! `make bench`: Hiber's figures on this machine, with QEMU beside them.
//!
//! - boot: wall time to the guest's readiness line, the VMM's own start-up
//!   (process start to first KVM_RUN) and resident memory.
//! - snapshot: for 128 MiB, 1 GiB and 4 GiB guests that touched a known
//!   amount of RAM: pause latency, snapshot time and throughput, restore
//!   time to a running vCPU, and the memory file's apparent and allocated
//!   sizes.
//! - block: sequential 1 MiB reads and writes (MB/s) and random 4 KiB reads
//!   and writes (IOPS) on the guest's virtio disk, with O_DIRECT, the same
//!   raw image under Hiber and under QEMU's `microvm`.
//! - vsock: median and p99 round-trip time of 1-byte and 4 KiB messages to
//!   the guest agent's echo server.
//!
//! `HIBER_BENCH` picks sections, comma separated: `boot`, `snapshot`,
//! `block`, `vsock`, `virtio` (block and vsock) or `all` (the default).
//! Benchmarks print; nothing here asserts a timing.

mod block;
mod boot;
mod qemu;
mod snapshots;
mod vsock;

use std::time::Duration;

use integration_tests::{measure, CommandResult, Vmm};

/// How long a guest may take to boot on an emulating host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long one guest command may take.
const STEP: Duration = Duration::from_secs(300);

/// The sections, in the order they run.
const SECTIONS: [(&str, fn()); 4] = [
    ("boot", boot::section),
    ("snapshot", snapshots::section),
    ("block", block::section),
    ("vsock", vsock::section),
];

/// A guest whose console agent runs shell commands.
trait AgentShell {
    /// Runs `cmd` in the guest and waits for its exit status.
    fn run(&self, cmd: &str, timeout: Duration) -> Result<CommandResult, String>;
}

impl AgentShell for Vmm {
    fn run(&self, cmd: &str, timeout: Duration) -> Result<CommandResult, String> {
        Vmm::run(self, cmd, timeout)
    }
}

/// The median (the upper one of an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The section names `spec` (the value of `HIBER_BENCH`) selects.
fn selected(spec: &str) -> Result<Vec<&'static str>, String> {
    let mut names = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let picked: Vec<&str> = match word {
            "all" => SECTIONS.iter().map(|(n, _)| *n).collect(),
            "virtio" => vec!["block", "vsock"],
            _ => match SECTIONS.iter().find(|(n, _)| *n == word) {
                Some((n, _)) => vec![*n],
                None => {
                    return Err(format!(
                        "HIBER_BENCH names no section '{word}': use boot, snapshot, block, \
                         vsock, virtio or all, comma separated"
                    ))
                }
            },
        };
        names.extend(
            picked
                .into_iter()
                .filter(|n| !names.contains(n))
                .collect::<Vec<_>>(),
        );
    }
    if names.is_empty() {
        return Err("HIBER_BENCH is empty: name at least one section, or all".into());
    }
    Ok(names)
}

fn main() {
    let spec = std::env::var("HIBER_BENCH").unwrap_or_else(|_| "all".into());
    let names = selected(&spec).unwrap_or_else(|e| {
        eprintln!("hiber-bench: {e}");
        std::process::exit(2)
    });
    println!("hiber benchmark on: {}", measure::machine_description());
    for (name, section) in SECTIONS {
        if names.contains(&name) {
            section();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_picked_by_name_and_group() {
        assert_eq!(
            selected("all").unwrap(),
            ["boot", "snapshot", "block", "vsock"]
        );
        assert_eq!(selected("virtio").unwrap(), ["block", "vsock"]);
        assert_eq!(selected("vsock, block,vsock").unwrap(), ["vsock", "block"]);
        assert!(selected("disk").unwrap_err().contains("'disk'"));
        assert!(selected(" , ").is_err());
    }

    #[test]
    fn the_median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert!(median(Vec::new()).is_nan());
    }
}
