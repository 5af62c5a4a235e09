//! Measurements the benchmark takes of running processes.

use std::path::Path;

/// Mappings at least this large are guest RAM; a VMM's own are smaller.
const GUEST_MAPPING_MIN_KB: u64 = 64 * 1024;

/// Resident memory of a process, split into guest RAM and the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    /// Resident KiB of guest-RAM-sized mappings.
    pub guest_kb: u64,
    /// Resident KiB of everything else: the VMM itself.
    pub vmm_kb: u64,
}

/// Reads /proc/PID/smaps and splits the resident set.
pub fn resident(pid: u32) -> Resident {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut r = Resident::default();
    let mut size = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Size:") => size = words.next().and_then(|w| w.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let kb: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                if size >= GUEST_MAPPING_MIN_KB {
                    r.guest_kb += kb;
                } else {
                    r.vmm_kb += kb;
                }
            }
            _ => {}
        }
    }
    r
}

/// Apparent and allocated size of a file, in bytes.
pub fn file_sizes(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.len(), m.blocks() * 512))
        .unwrap_or((0, 0))
}

/// One line describing this machine, for the benchmark's header.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let hw_virt = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nested_pvm = Path::new("/sys/module/kvm_pvm").exists();
    format!(
        "{model}, {cpus} CPUs, {} GiB RAM, host kernel {}, hardware virtualization flag: {}, \
         KVM: {}",
        mem_kb >> 20,
        kernel.trim(),
        if hw_virt { "yes" } else { "no" },
        if nested_pvm {
            "kvm_pvm (nested, guest kernel emulated)"
        } else {
            "kvm"
        }
    )
}

/// The "N ms after process start" figure of the VMM's first KVM_RUN.
pub fn first_kvm_run_ms(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("entering the guest"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_kvm_run_figure_is_read_from_the_log() {
        let log = "x\n[t INFO vcpu_thread] vCPU 0 entering the guest, 35 ms after process start\n";
        assert_eq!(first_kvm_run_ms(log), Some(35));
        assert_eq!(first_kvm_run_ms("nothing"), None);
    }
}
