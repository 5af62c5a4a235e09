//! What a vCPU does with each reason KVM_RUN returns for.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use devices::bus::PioBus;
use devices::mmio_bus::MmioBus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::cpu::{describe_internal_error, InternalErrorInfo};

/// `int3`, which the instruction emulator of some nested hosts cannot run.
const OPCODE_INT3: u8 = 0xcc;
/// `fwait`, likewise.
const OPCODE_FWAIT: u8 = 0x9b;
/// The #BP exception vector.
const BP_VECTOR: u8 = 3;

/// What the VMM does, on this host, when the emulator fails on an
/// instruction that it can complete itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulationWorkarounds {
    /// Inject #BP for an `int3` at CPL 0, as the CPU would have.
    pub inject_int3: bool,
    /// Step over `fwait`, which only reports pending x87 exceptions.
    pub skip_fwait: bool,
}

/// Why a vCPU stopped running the guest for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked for a reset (reboot) or triple-faulted.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The guest reported a crash.
    Crash,
    /// Running the vCPU failed; the text says how.
    Error(String),
}

/// What the run loop does after an exit.
pub enum Next {
    /// Re-enter the guest.
    Continue,
    /// KVM_RUN was interrupted: look at the command channel.
    Interrupted,
    /// Stop the vCPU.
    Stop(StopReason),
}

/// The devices and facts an exit handler needs.
pub struct ExitContext {
    /// The port I/O devices.
    pub pio: Arc<PioBus>,
    /// The memory-mapped devices.
    pub mmio: Arc<MmioBus>,
    /// Guest memory, to show the instruction a failure happened at.
    pub mem: GuestMemoryMmap,
    /// What to do about known emulator gaps.
    pub workarounds: EmulationWorkarounds,
    unknown_ports: Mutex<HashSet<u16>>,
    unknown_mmio: Mutex<HashSet<u64>>,
}

impl ExitContext {
    /// A context over these devices and memory.
    pub fn new(
        pio: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        mem: GuestMemoryMmap,
        workarounds: EmulationWorkarounds,
    ) -> Self {
        ExitContext {
            pio,
            mmio,
            mem,
            workarounds,
            unknown_ports: Mutex::new(HashSet::new()),
            unknown_mmio: Mutex::new(HashSet::new()),
        }
    }

    fn note_unknown_port(&self, port: u16, write: bool) {
        if self.unknown_ports.lock().unwrap().insert(port) {
            let dir = if write { "write to" } else { "read of" };
            log::debug!("guest {dir} port {port:#x}: no device there, ignored from now on");
        }
    }

    fn note_unknown_mmio(&self, addr: u64) {
        if self.unknown_mmio.lock().unwrap().insert(addr) {
            log::debug!("guest access to MMIO {addr:#x}: no device there, ignored");
        }
    }
}

/// Runs the vCPU once and handles the exit.
pub fn run_once(vcpu: &mut VcpuFd, id: u8, ctx: &ExitContext) -> Next {
    let handled = match vcpu.run() {
        Ok(exit) => handle_exit(exit, id, ctx),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            Handled::Done(Next::Interrupted)
        }
        Err(e) => Handled::Done(Next::Stop(StopReason::Error(format!(
            "KVM_RUN failed on vCPU {id}: {e}"
        )))),
    };
    match handled {
        Handled::Done(next) => next,
        // The exit borrowed the vCPU; it is examined once that borrow ends.
        Handled::InternalError => internal_error(vcpu, id, ctx),
    }
}

/// The outcome of an exit, or the note that it needs a closer look.
enum Handled {
    Done(Next),
    InternalError,
}

fn handle_exit(exit: VcpuExit<'_>, id: u8, ctx: &ExitContext) -> Handled {
    let next = match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(port, data) {
                data.fill(0xff);
                ctx.note_unknown_port(port, false);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(port, data) {
                ctx.note_unknown_port(port, true);
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
                ctx.note_unknown_mmio(addr);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                ctx.note_unknown_mmio(addr);
            }
            Next::Continue
        }
        VcpuExit::Hlt => Next::Stop(StopReason::PowerOff),
        VcpuExit::Shutdown => {
            log::info!("vCPU {id}: the guest reset itself or triple-faulted");
            Next::Stop(StopReason::Reset)
        }
        VcpuExit::SystemEvent(kind, _) => system_event(kind),
        VcpuExit::InternalError => return Handled::InternalError,
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(StopReason::Error(format!(
            "KVM could not enter vCPU {id} (hardware reason {reason:#x}, host CPU {cpu})"
        ))),
        VcpuExit::Intr => Next::Interrupted,
        other => Next::Stop(StopReason::Error(format!(
            "vCPU {id} stopped for a reason Hiber does not handle: {other:?}"
        ))),
    };
    Handled::Done(next)
}

fn system_event(kind: u32) -> Next {
    match kind {
        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(StopReason::PowerOff),
        kvm_bindings::KVM_SYSTEM_EVENT_RESET => Next::Stop(StopReason::Reset),
        kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Next::Stop(StopReason::Crash),
        other => Next::Stop(StopReason::Error(format!(
            "unknown KVM system event {other}"
        ))),
    }
}

/// Facts about an emulation failure, for the report and the workarounds.
#[derive(Debug)]
pub struct FailedInstruction {
    /// Guest RIP of the instruction.
    pub rip: u64,
    /// The privilege level it ran at.
    pub cpl: u8,
    /// KVM's suberror and the instruction's first bytes, as far as they
    /// could be had.
    pub info: InternalErrorInfo,
}

fn internal_error(vcpu: &mut VcpuFd, id: u8, ctx: &ExitContext) -> Next {
    let failed = match examine_failure(vcpu, ctx) {
        Ok(f) => f,
        Err(e) => return Next::Stop(StopReason::Error(e)),
    };
    if failed.info.is_emulation_failure() && failed.cpl == 0 {
        if let Some(next) = try_workaround(vcpu, &failed, ctx.workarounds) {
            return next;
        }
    }
    Next::Stop(StopReason::Error(describe_failure(id, &failed)))
}

fn examine_failure(vcpu: &mut VcpuFd, ctx: &ExitContext) -> Result<FailedInstruction, String> {
    let mut info = describe_internal_error(vcpu.get_kvm_run());
    let regs = vcpu
        .get_regs()
        .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    if info.insn_bytes.is_empty() {
        // Older KVMs do not report the bytes: read them from guest memory.
        info.insn_bytes = read_instruction(vcpu, &ctx.mem, regs.rip);
    }
    Ok(FailedInstruction {
        rip: regs.rip,
        cpl: (sregs.cs.selector & 3) as u8,
        info,
    })
}

/// Reads up to 15 bytes at the guest virtual address `rip`.
fn read_instruction(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let Ok(tr) = vcpu.translate_gva(rip) else {
        return Vec::new();
    };
    if tr.valid == 0 {
        return Vec::new();
    }
    let page_left = 4096 - (tr.physical_address & 0xfff) as usize;
    let mut bytes = vec![0u8; page_left.min(15)];
    match mem.read_slice(&mut bytes, GuestAddress(tr.physical_address)) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

fn try_workaround(
    vcpu: &mut VcpuFd,
    failed: &FailedInstruction,
    workarounds: EmulationWorkarounds,
) -> Option<Next> {
    match failed.info.insn_bytes.first().copied()? {
        OPCODE_INT3 if workarounds.inject_int3 => Some(inject_breakpoint(vcpu, failed.rip)),
        OPCODE_FWAIT if workarounds.skip_fwait => Some(skip_instruction(vcpu, failed.rip, 1)),
        _ => None,
    }
}

/// Completes an `int3` as the CPU would: RIP past it, then #BP delivered.
fn inject_breakpoint(vcpu: &mut VcpuFd, rip: u64) -> Next {
    log::trace!("injecting #BP for int3 at {rip:#x}");
    if let Next::Stop(r) = skip_instruction(vcpu, rip, 1) {
        return Next::Stop(r);
    }
    // Keep whatever else is pending (interrupts, NMIs); add the exception.
    let mut events = match vcpu.get_vcpu_events() {
        Ok(e) => e,
        Err(e) => return Next::Stop(StopReason::Error(format!("could not read events: {e}"))),
    };
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    match vcpu.set_vcpu_events(&events) {
        Ok(()) => Next::Continue,
        Err(e) => Next::Stop(StopReason::Error(format!("could not inject #BP: {e}"))),
    }
}

fn skip_instruction(vcpu: &mut VcpuFd, rip: u64, len: u64) -> Next {
    let result = vcpu.get_regs().and_then(|mut regs| {
        regs.rip = rip + len;
        vcpu.set_regs(&regs)
    });
    match result {
        Ok(()) => Next::Continue,
        Err(e) => Next::Stop(StopReason::Error(format!(
            "could not step over {rip:#x}: {e}"
        ))),
    }
}

/// The hint for an instruction the probe's table does not know.
const GENERIC_HINT: &str = "This host may run guest kernel code in an emulator (nested KVM \
    without hardware virtualization); find the CPU feature that uses this instruction and \
    hide it with --cpu-hide or a clearcpuid= switch in --cmdline.";

/// The message shown when the guest hits an instruction the host cannot run.
pub fn describe_failure(id: u8, f: &FailedInstruction) -> String {
    let bytes: Vec<String> = f
        .info
        .insn_bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let what = if f.info.is_emulation_failure() {
        "KVM's instruction emulator could not run the guest's instruction"
    } else {
        "KVM reported an internal error"
    };
    // The probe's instruction table names the instruction and its remedy.
    let hint = f.info.hint().unwrap_or_else(|| GENERIC_HINT.to_string());
    format!(
        "{what} on vCPU {id} (suberror {}): RIP {:#x}, CPL {}, bytes [{}]. {hint}",
        f.info.suberror,
        f.rip,
        f.cpl,
        bytes.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_report_names_rip_cpl_bytes_and_a_hint() {
        let f = FailedInstruction {
            rip: 0xffff_ffff_8100_0000,
            cpl: 0,
            info: InternalErrorInfo {
                suberror: 1,
                insn_bytes: vec![0xf3, 0x48, 0x0f, 0xb8, 0xc0],
                data: Vec::new(),
            },
        };
        let text = describe_failure(0, &f);
        assert!(text.contains("RIP 0xffffffff81000000"), "{text}");
        assert!(text.contains("CPL 0"), "{text}");
        assert!(text.contains("[f3 48 0f b8 c0]"), "{text}");
        assert!(text.contains("--cpu-hide popcnt"), "{text}");
    }

    #[test]
    fn system_events_map_to_stop_reasons() {
        let stop = |k| match system_event(k) {
            Next::Stop(r) => r,
            _ => panic!("event {k} did not stop the vCPU"),
        };
        assert_eq!(
            stop(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN),
            StopReason::PowerOff
        );
        assert_eq!(
            stop(kvm_bindings::KVM_SYSTEM_EVENT_RESET),
            StopReason::Reset
        );
        assert_eq!(
            stop(kvm_bindings::KVM_SYSTEM_EVENT_CRASH),
            StopReason::Crash
        );
    }
}
