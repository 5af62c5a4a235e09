//! The machine: a KVM VM with its memory, vCPU threads and legacy devices,
//! built either by booting a kernel or from a snapshot (see `persist`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use devices::mmio_bus::MmioBus;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot;
use crate::config::MachineConfig;
use crate::cpu::{self, HostQuirks};
use crate::legacy::{LegacyDevices, LegacyError};
use crate::virtio::{VirtioDevices, VirtioError};
use crate::vstate::exits::{EmulationWorkarounds, ExitContext, StopReason};
use crate::vstate::msrs;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuState};
use crate::vstate::vcpu_thread::VcpuThreadError;
use crate::vstate::vcpu_thread::{StopNotifier, VcpuCommand, VcpuHandle, VcpuReply};
use crate::vstate::vm::{Vm, VmError};

/// What the kernel prints first when it panics; seen on the console, it
/// turns the reset that follows (`panic=-1`) into a reported crash.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Errors of building or steering the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {hint}")]
    Kvm {
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The kernel or initrd file could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host CPU probe failed.
    #[error("could not decide the guest CPU model")]
    Cpu(#[source] cpu::Error),
    /// Loading the kernel or writing the boot structures failed.
    #[error("could not prepare the guest for boot")]
    Boot(#[source] boot::Error),
    /// A VM-level operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A vCPU thread failed.
    #[error(transparent)]
    VcpuThread(#[from] VcpuThreadError),
    /// The legacy devices could not be built.
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// The MSR list could not be read.
    #[error("could not list the vCPU MSRs")]
    Msrs(#[source] msrs::MsrError),
    /// A vCPU answered a command with a refusal.
    #[error("vCPU {0} refused: {1}")]
    Refused(u8, &'static str),
    /// An eventfd could not be made.
    #[error("could not create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The virtio devices failed.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
}

/// Watches console output for the kernel's panic message.
pub struct PanicWatch {
    inner: Box<dyn Write + Send>,
    seen: Arc<AtomicBool>,
    tail: Vec<u8>,
}

impl PanicWatch {
    /// Wraps `inner`, raising `seen` once the panic message passes.
    pub fn new(inner: Box<dyn Write + Send>, seen: Arc<AtomicBool>) -> Self {
        PanicWatch {
            inner,
            seen,
            tail: Vec::new(),
        }
    }
}

impl Write for PanicWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self
            .tail
            .windows(PANIC_MARKER.len())
            .any(|w| w == PANIC_MARKER)
        {
            self.seen.store(true, Ordering::SeqCst);
        }
        let keep = self.tail.len().saturating_sub(PANIC_MARKER.len());
        self.tail.drain(..keep);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Opens /dev/kvm with an error that says what to do.
pub fn open_kvm() -> Result<Kvm, MachineError> {
    Kvm::new().map_err(|source| MachineError::Kvm {
        hint: kvm_open_hint(source.errno()),
        source,
    })
}

/// What to do when /dev/kvm fails to open with `errno`.
fn kvm_open_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "this host has no KVM: load the kvm module or use a host with it",
        libc::EACCES | libc::EPERM => {
            "permission denied: add yourself to the `kvm` group or run as root"
        }
        _ => "KVM is not usable on this host",
    }
}

/// The CPUID this host's KVM can give a guest.
pub fn supported_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, MachineError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| MachineError::Kvm {
            hint: "KVM did not report its supported CPUID",
            source,
        })
}

/// A running (or paused) guest.
pub struct Machine {
    /// What the machine was built from.
    pub config: MachineConfig,
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Vm,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The vCPU threads.
    pub vcpus: Vec<VcpuHandle>,
    /// The legacy devices.
    pub devices: LegacyDevices,
    /// The virtio devices.
    pub virtio: VirtioDevices,
    /// Which vCPU stopped and why.
    pub stop_rx: Receiver<(u8, StopReason)>,
    /// Signalled with every message on `stop_rx`.
    pub stop_evt: Arc<EventFd>,
    /// Raised once the guest kernel printed its panic message.
    pub panic_seen: Arc<AtomicBool>,
    /// The host decision the guest's CPU model follows.
    pub quirks: HostQuirks,
}

/// What [`Machine::start`] needs besides the finished pieces.
pub struct Parts {
    /// The machine configuration.
    pub config: MachineConfig,
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Vm,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The configured vCPUs, not yet running.
    pub vcpus: Vec<Vcpu>,
    /// The legacy devices.
    pub devices: LegacyDevices,
    /// The virtio devices.
    pub virtio: VirtioDevices,
    /// Raised by the console sink on a panic.
    pub panic_seen: Arc<AtomicBool>,
    /// The host decision.
    pub quirks: HostQuirks,
}

impl Machine {
    /// Boots `config`'s kernel on a new VM, running or paused.
    pub fn boot(
        mut config: MachineConfig,
        kvm: Kvm,
        quirks: HostQuirks,
        out: Box<dyn Write + Send>,
        start_paused: bool,
    ) -> Result<Machine, MachineError> {
        let mem = boot::create_guest_memory(config.mem.bytes()).map_err(MachineError::Boot)?;
        let vm = Vm::new(&kvm)?;
        vm.register_memory(&mem)?;
        let virtio = VirtioDevices::new(&vm, &mem, &config)?;
        let merged = cpu::merge_cmdline(&config.cmdline, &quirks);
        let cmdline =
            boot::build_cmdline(&merged, &virtio.cmdline_args()).map_err(MachineError::Boot)?;
        config.cmdline = cmdline_text(&cmdline);
        log::info!("guest command line: {}", config.cmdline);
        let info = load(&config, &mem, &cmdline)?;
        let panic_seen = Arc::new(AtomicBool::new(false));
        let out = Box::new(PanicWatch::new(out, panic_seen.clone()));
        let devices = LegacyDevices::new(&vm, out)?;
        let vcpus = create_boot_vcpus(&kvm, &vm, &config, &quirks, info.entry)?;
        let parts = Parts {
            config,
            kvm,
            vm,
            mem,
            vcpus,
            devices,
            virtio,
            panic_seen,
            quirks,
        };
        Machine::start(parts, start_paused)
    }

    /// Starts a thread per vCPU.
    pub fn start(parts: Parts, start_paused: bool) -> Result<Machine, MachineError> {
        let msr_indices = Arc::new(
            msrs::saveable_msrs(&parts.kvm, &parts.vcpus[0].fd).map_err(MachineError::Msrs)?,
        );
        let (tx, stop_rx) = channel();
        let stop_evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventFd)?);
        let notifier = StopNotifier::new(tx, stop_evt.clone());
        let workarounds = EmulationWorkarounds {
            inject_int3: parts.quirks.inject_int3_bp,
            skip_fwait: parts.quirks.skip_fwait,
        };
        if start_paused {
            parts.virtio.pause()?;
        }
        let mut mmio = MmioBus::new();
        parts.virtio.add_to_bus(&mut mmio)?;
        let ctx = Arc::new(ExitContext::new(
            Arc::new(parts.devices.bus()?),
            Arc::new(mmio),
            parts.mem.clone(),
            workarounds,
        ));
        let mut vcpus = Vec::with_capacity(parts.vcpus.len());
        for vcpu in parts.vcpus {
            vcpus.push(VcpuHandle::spawn(
                vcpu,
                ctx.clone(),
                msr_indices.clone(),
                notifier.clone(),
                start_paused,
            )?);
        }
        Ok(Machine {
            config: parts.config,
            kvm: parts.kvm,
            vm: parts.vm,
            mem: parts.mem,
            vcpus,
            devices: parts.devices,
            virtio: parts.virtio,
            stop_rx,
            stop_evt,
            panic_seen: parts.panic_seen,
            quirks: parts.quirks,
        })
    }

    /// Sends `cmd` to every vCPU and checks each answer with `ok`.
    fn broadcast(
        &self,
        cmd: impl Fn() -> VcpuCommand,
        ok: impl Fn(&VcpuReply) -> bool,
    ) -> Result<Vec<VcpuReply>, MachineError> {
        let mut replies = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            let reply = vcpu.request(cmd())?;
            if let VcpuReply::Refused(why) = reply {
                return Err(MachineError::Refused(vcpu.id(), why));
            }
            if !ok(&reply) {
                return Err(MachineError::Refused(vcpu.id(), "an unexpected answer"));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Takes every vCPU out of the guest, then holds the device thread
    /// still, so nothing changes guest memory or device state.
    pub fn pause(&self) -> Result<(), MachineError> {
        self.broadcast(|| VcpuCommand::Pause, |r| matches!(r, VcpuReply::Paused))?;
        self.virtio.pause()?;
        Ok(())
    }

    /// Lets the devices and then every vCPU run again.
    pub fn resume(&self) -> Result<(), MachineError> {
        self.virtio.resume()?;
        self.broadcast(|| VcpuCommand::Resume, |r| matches!(r, VcpuReply::Resumed))
            .map(|_| ())
    }

    /// Whether every vCPU is halted with interrupts off: a guest that did
    /// `poweroff` or `halt` without ACPI ends like this.
    pub fn halted_for_good(&self) -> Result<bool, MachineError> {
        let replies = self.broadcast(
            || VcpuCommand::CheckHalted,
            |r| matches!(r, VcpuReply::Halted(_)),
        )?;
        Ok(replies.iter().all(|r| matches!(r, VcpuReply::Halted(true))))
    }

    /// The state of every vCPU; the machine must be paused.
    pub fn save_vcpus(&self) -> Result<Vec<VcpuState>, MachineError> {
        let replies = self.broadcast(
            || VcpuCommand::SaveState,
            |r| matches!(r, VcpuReply::State(_)),
        )?;
        let mut states = Vec::with_capacity(replies.len());
        for reply in replies {
            if let VcpuReply::State(state) = reply {
                states.push((*state)?);
            }
        }
        Ok(states)
    }

    /// Stops every vCPU thread.
    pub fn shutdown(&mut self) {
        for vcpu in self.vcpus.drain(..) {
            vcpu.exit();
        }
        self.virtio.stop();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn cmdline_text(cmdline: &linux_loader::cmdline::Cmdline) -> String {
    cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn open(what: &'static str, path: &Path) -> Result<File, MachineError> {
    File::open(path).map_err(|source| MachineError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load(
    config: &MachineConfig,
    mem: &GuestMemoryMmap,
    cmdline: &linux_loader::cmdline::Cmdline,
) -> Result<boot::BootInfo, MachineError> {
    let kernel_path = config.kernel.as_deref().unwrap_or(Path::new(""));
    let mut kernel = open("kernel", kernel_path)?;
    let mut initrd = match &config.initrd {
        Some(p) => Some(open("initrd", p)?),
        None => None,
    };
    boot::configure_system(mem, &mut kernel, initrd.as_mut(), cmdline, config.vcpus)
        .map_err(MachineError::Boot)
}

fn create_boot_vcpus(
    kvm: &Kvm,
    vm: &Vm,
    config: &MachineConfig,
    quirks: &HostQuirks,
    entry: vm_memory::GuestAddress,
) -> Result<Vec<Vcpu>, MachineError> {
    let supported = supported_cpuid(kvm)?;
    let regs = boot::boot_regs(entry);
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let mut vcpu = Vcpu::new(vm.fd(), id)?;
        let cpuid = cpu::guest_cpuid(&supported, id, config.vcpus, &quirks.hide);
        let sregs = boot::boot_sregs(&vcpu.sregs()?);
        vcpu.configure_boot(&cpuid, &regs, &sregs)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_forbidden_dev_kvm_gets_a_hint() {
        assert!(kvm_open_hint(libc::ENOENT).contains("no KVM"));
        assert!(kvm_open_hint(libc::EACCES).contains("`kvm` group"));
        assert!(kvm_open_hint(libc::EBUSY).contains("not usable"));
    }

    #[test]
    fn the_panic_watch_sees_the_marker_across_writes() {
        let seen = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Box::new(std::io::sink()), seen.clone());
        w.write_all(b"[ 1.0] Kernel pan").unwrap();
        assert!(!seen.load(Ordering::SeqCst));
        w.write_all(b"ic - not syncing: Attempted to kill init!")
            .unwrap();
        assert!(seen.load(Ordering::SeqCst));
    }
}
