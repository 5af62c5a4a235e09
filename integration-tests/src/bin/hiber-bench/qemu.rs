//! QEMU with the test guest: the same kernel, initramfs, command line, CPU
//! flags and memory as Hiber, its serial console on stdio, and the console
//! agent driven the way `Vmm::run` drives it under Hiber.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::console::{literal, ConsoleLog};
use integration_tests::{guest_images, retry_start_crashes, CommandResult, TEST_CMDLINE};
use vmm::cpu::{CpuFeature, CpuOverrides, QuirkMode};

use crate::AgentShell;

/// Agent request ids; far from those `Vmm` uses, so a log never mixes them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 32);
/// QEMU processes started, to name their logs.
static SPAWNS: AtomicU64 = AtomicU64::new(0);

/// The board QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `pc`: SeaBIOS, i8259, PIT, PCI (the guest is told `pci=off`).
    Pc,
    /// `microvm`: qboot, no PCI or ACPI, virtio-mmio devices that QEMU
    /// announces on the kernel command line, as Hiber does.
    Microvm,
}

/// The QEMU `-cpu` value hiding what Hiber hides on this host.
pub fn cpu_flags(hide: &[CpuFeature]) -> String {
    let mut cpu = String::from("host");
    if !hide.is_empty() {
        cpu.push_str(",-arch-capabilities");
    }
    for (feature, flag) in [
        (CpuFeature::Cx16, "-cx16"),
        (CpuFeature::KvmStealTime, "-kvm-steal-time"),
        (CpuFeature::KvmClockStable, "-kvmclock-stable-bit"),
        (CpuFeature::KvmPvUnhalt, "-kvm-pv-unhalt"),
        (CpuFeature::KvmPvSendIpi, "-kvm-pv-ipi"),
        (CpuFeature::KvmPvSchedYield, "-kvm-pv-sched-yield"),
    ] {
        if hide.contains(&feature) {
            cpu.push(',');
            cpu.push_str(flag);
        }
    }
    cpu
}

fn machine_args(machine: Machine) -> &'static [&'static str] {
    match machine {
        Machine::Pc => &["-machine", "pc,hpet=off"],
        Machine::Microvm => &[
            "-machine",
            "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off,pcie=off",
            // Hiber gives every guest an entropy device by default.
            "-device",
            "virtio-rng-device",
        ],
    }
}

/// The QEMU command for the test guest (128 MiB, 1 vCPU), plus `extra`;
/// None if this host's quirks cannot be read.
fn command(machine: Machine, extra: &[String]) -> Option<Command> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let quirks = vmm::cpu::host_quirks(&kvm, QuirkMode::Auto, &CpuOverrides::default()).ok()?;
    let (kernel, initrd) = guest_images();
    let cmdline = format!("{TEST_CMDLINE} {}", quirks.cmdline_string());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-enable-kvm", "-cpu", &cpu_flags(&quirks.hide)])
        .args(["-m", "128", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(machine_args(machine))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline])
        .args(extra);
    Some(cmd)
}

/// A running QEMU with the test guest.
pub struct QemuGuest {
    child: Child,
    stdin: Mutex<ChildStdin>,
    console: ConsoleLog,
    cursor: Mutex<usize>,
    /// When the process was started.
    pub started: Instant,
}

impl QemuGuest {
    /// Starts QEMU; its stderr goes to `dir/qemu-<n>.log`. None if QEMU is
    /// missing or does not start.
    pub fn spawn(machine: Machine, extra: &[String], dir: &Path) -> Option<QemuGuest> {
        let log_path = dir.join(format!(
            "qemu-{}.log",
            SPAWNS.fetch_add(1, Ordering::SeqCst)
        ));
        let log = std::fs::File::create(log_path).ok()?;
        let started = Instant::now();
        let mut child = command(machine, extra)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .ok()?;
        let console = ConsoleLog::collect(child.stdout.take()?);
        let stdin = Mutex::new(child.stdin.take()?);
        Some(QemuGuest {
            child,
            stdin,
            console,
            cursor: Mutex::new(0),
            started,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `needle` on the console after what was already matched.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let mut cursor = self.cursor.lock().unwrap();
        *cursor = self.console.wait_for(*cursor, timeout, literal(needle))?;
        Ok(())
    }

    fn run_once(&self, cmd: &str, timeout: Duration) -> Result<CommandResult, String> {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let begin = format!("hiber-agent: begin {id}\n");
        let done = format!("hiber-agent: done {id} ");
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "run {id} {cmd}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("QEMU's console takes no input: {e}"))?;
        }
        let mut cursor = self.cursor.lock().unwrap();
        let start = self.console.wait_for(*cursor, timeout, literal(&begin))?;
        let end = self.console.wait_for(start, timeout, |t| {
            let at = t.find(&done)?;
            t[at..].find('\n').map(|nl| at + nl + 1)
        })?;
        *cursor = end;
        let body = self.console.text()[start..end].to_string();
        let at = body.rfind(&done).expect("matched above");
        Ok(CommandResult {
            status: body[at + done.len()..].trim().parse().unwrap_or(-1),
            output: body[..at].to_string(),
        })
    }
}

impl AgentShell for QemuGuest {
    /// As `Vmm::run`: on an emulating host a command whose busybox crashed
    /// at start runs again, at most 4 times.
    fn run(&self, cmd: &str, timeout: Duration) -> Result<CommandResult, String> {
        retry_start_crashes(
            cmd,
            || self.run_once(cmd, timeout),
            |r| matches!(r, Ok(r) if r.output.contains("Segmentation fault")),
        )
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_hide_what_hiber_hides() {
        assert_eq!(cpu_flags(&[]), "host");
        let hide = [CpuFeature::Cx16, CpuFeature::KvmPvSendIpi];
        assert_eq!(
            cpu_flags(&hide),
            "host,-arch-capabilities,-cx16,-kvm-pv-ipi"
        );
    }
}
