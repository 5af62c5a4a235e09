//! A throw-away VM with one vCPU already in 64-bit long mode at CPL 0, with
//! identity paging, a GDT, a TSS and an IDT whose handler for vector `v`
//! writes `v` to [`FAULT_PORT`] and halts. [`ScratchVm::enter_user_mode`]
//! moves the vCPU to CPL 3 before it first runs.
//!
//! Guest physical layout (all inside [`MEM_SIZE`]):
//! GDT at 0x500, IDT at 0x1000, page tables at 0x2000-0x4fff (one 2 MiB
//! page, user-accessible so the same code can run at CPL 3; CR4.SMEP and
//! SMAP stay clear, so CPL 0 is not affected), TSS at 0x5000, exception
//! handlers at 0x6000, the data area `[rbx]` points to at 0x8000, stack
//! below 0xf000, code at 0x10000.

use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::internal_error::{describe_internal_error, InternalErrorInfo};
use super::snippets::CR4_OSXSAVE;
use super::ProbeError;
use crate::cpu::host::native_cpuid;

/// Port the exception handlers write their vector to.
pub const FAULT_PORT: u16 = 0x10;
/// Port the code writes to once the instruction under test has completed.
pub const DONE_PORT: u16 = 0x11;

const MEM_SIZE: usize = 0x12000;
const GDT: u64 = 0x500;
const IDT: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const TSS: u64 = 0x5000;
const HANDLERS: u64 = 0x6000;
/// The data area `[rbx]` points to.
pub const DATA: u64 = 0x8000;
const STACK_TOP: u64 = 0xf000;
const CODE: u64 = 0x10000;
/// The most code a scratch VM can hold.
pub const MAX_CODE: usize = MEM_SIZE - CODE as usize;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
/// The user data selector, RPL 3.
const USER_DATA_SELECTOR: u16 = 0x28 | 3;
/// The user code selector, RPL 3.
const USER_CODE_SELECTOR: u16 = 0x30 | 3;
const GDT_ENTRIES: [u64; 7] = [
    0,
    0x00af_9b00_0000_ffff,                             // 64-bit code, DPL 0
    0x00cf_9300_0000_ffff,                             // data, DPL 0
    0x0000_8900_0000_0067 | ((TSS & 0xff_ffff) << 16), // 64-bit TSS, low half
    0,                                                 // 64-bit TSS, high half
    0x00cf_f300_0000_ffff,                             // data, DPL 3
    0x00af_fb00_0000_ffff,                             // 64-bit code, DPL 3
];

/// Page-table entry bits: present, writable, user.
const PTE_P_W_U: u64 = 0x7;
/// Page-directory entry bit for a 2 MiB page.
const PDE_LARGE: u64 = 0x80;
/// RFLAGS with IOPL 3, so code at CPL 3 may use `out` to report back.
const RFLAGS_IOPL3: u64 = 0x3002;
/// MSR_IA32_TSC: writing it sets the guest's time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;

const CR0_PE_MP_ET_NE_WP_AM_PG: u64 = 0x8005_0033;
const CR4_PAE_OSFXSR_OSXMMEXCPT: u64 = (1 << 5) | (1 << 9) | (1 << 10);
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);

/// A KVM exit, copied out of `kvm_run`.
#[derive(Debug)]
pub enum Exit {
    /// `out` of one byte `value` to `port`.
    Out { port: u16, value: u8 },
    /// `hlt`.
    Hlt,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError(InternalErrorInfo),
    /// Any other exit, described.
    Other(String),
}

/// The scratch VM. Its memory must outlive the VM, hence the field order.
pub struct ScratchVm {
    vcpu: VcpuFd,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
}

impl ScratchVm {
    /// A VM whose vCPU has `cpuid` and will run `code` at CPL 0 with CR4
    /// holding the base bits plus `cr4_extra`.
    pub fn new(kvm: &Kvm, cpuid: &CpuId, code: &[u8], cr4_extra: u64) -> Result<Self, ProbeError> {
        let vm = kvm.create_vm().map_err(ProbeError::kvm("KVM_CREATE_VM"))?;
        let mem = guest_memory(&vm)?;
        lay_out(&mem, code)?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(ProbeError::kvm("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(cpuid)
            .map_err(ProbeError::kvm("KVM_SET_CPUID2"))?;
        let scratch = ScratchVm {
            vcpu,
            _vm: vm,
            _mem: mem,
        };
        scratch.enter_long_mode(cr4_extra)?;
        Ok(scratch)
    }

    fn enter_long_mode(&self, cr4_extra: u64) -> Result<(), ProbeError> {
        let mut sregs = self
            .vcpu
            .get_sregs()
            .map_err(ProbeError::kvm("KVM_GET_SREGS"))?;
        let code = segment(CODE_SELECTOR, 0xb, true);
        let data = segment(DATA_SELECTOR, 0x3, false);
        (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) =
            (code, data, data, data, data, data);
        sregs.tr = kvm_segment {
            base: TSS,
            limit: 0x67,
            selector: TSS_SELECTOR,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
        sregs.idt.base = IDT;
        sregs.idt.limit = 256 * 16 - 1;
        sregs.cr0 = CR0_PE_MP_ET_NE_WP_AM_PG;
        sregs.cr3 = PML4;
        sregs.cr4 = CR4_PAE_OSFXSR_OSXMMEXCPT | cr4_extra;
        sregs.efer = EFER_LME_LMA;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(ProbeError::kvm("KVM_SET_SREGS"))?;
        if cr4_extra & CR4_OSXSAVE != 0 {
            self.enable_xsave_components()?;
        }
        let regs = kvm_regs {
            rip: CODE,
            rsp: STACK_TOP,
            rbx: DATA,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu
            .set_regs(&regs)
            .map_err(ProbeError::kvm("KVM_SET_REGS"))
    }

    /// XCR0 = x87, SSE and, where the host has it, AVX.
    fn enable_xsave_components(&self) -> Result<(), ProbeError> {
        let host_xcr0 = u64::from(native_cpuid(0xd, 0)[0]);
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = host_xcr0 & 0x7 | 0x1;
        self.vcpu
            .set_xcrs(&xcrs)
            .map_err(ProbeError::kvm("KVM_SET_XCRS"))
    }

    /// Runs the vCPU until its next exit.
    pub fn run(&mut self) -> Result<Exit, ProbeError> {
        let exit = match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => Exit::Out {
                port,
                value: data.first().copied().unwrap_or(0),
            },
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::InternalError) => Exit::InternalError(InternalErrorInfo::default()),
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) => return Err(ProbeError::Kvm("KVM_RUN", e)),
        };
        Ok(match exit {
            Exit::InternalError(_) => {
                Exit::InternalError(describe_internal_error(self.vcpu.get_kvm_run()))
            }
            other => other,
        })
    }

    /// Moves RIP `len` bytes on, past an instruction KVM could not run.
    pub fn step_over(&self, len: u64) -> Result<(), ProbeError> {
        let mut regs = self.regs()?;
        regs.rip += len;
        self.vcpu
            .set_regs(&regs)
            .map_err(ProbeError::kvm("KVM_SET_REGS"))
    }

    /// Steps over a trapping instruction of `len` bytes and injects the
    /// exception `vector` it should have raised, as a VMM would.
    pub fn inject_trap(&self, len: u64, vector: u8) -> Result<(), ProbeError> {
        self.step_over(len)?;
        let mut events = self
            .vcpu
            .get_vcpu_events()
            .map_err(ProbeError::kvm("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        self.vcpu
            .set_vcpu_events(&events)
            .map_err(ProbeError::kvm("KVM_SET_VCPU_EVENTS"))
    }

    /// Moves the vCPU, not yet run, to CPL 3: user code and data segments,
    /// IOPL 3 so the code can still report with `out`. Exceptions go to the
    /// CPL 0 handlers on the TSS's stack.
    pub fn enter_user_mode(&self) -> Result<(), ProbeError> {
        let mut sregs = self
            .vcpu
            .get_sregs()
            .map_err(ProbeError::kvm("KVM_GET_SREGS"))?;
        let data = segment(USER_DATA_SELECTOR, 0x3, false);
        sregs.cs = segment(USER_CODE_SELECTOR, 0xb, true);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        self.vcpu
            .set_sregs(&sregs)
            .map_err(ProbeError::kvm("KVM_SET_SREGS"))?;
        let mut regs = self.regs()?;
        regs.rflags = RFLAGS_IOPL3;
        self.vcpu
            .set_regs(&regs)
            .map_err(ProbeError::kvm("KVM_SET_REGS"))
    }

    /// Sets the guest's time-stamp counter with KVM_SET_MSRS, as a restore
    /// does; KVM turns the value into a TSC offset.
    pub fn set_tsc(&self, value: u64) -> Result<(), ProbeError> {
        let entry = kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: value,
            ..Default::default()
        };
        let msrs = Msrs::from_entries(&[entry]).map_err(|_| ProbeError::MsrArray)?;
        match self.vcpu.set_msrs(&msrs) {
            Ok(1) => Ok(()),
            Ok(_) => Err(ProbeError::MsrRefused(MSR_IA32_TSC)),
            Err(e) => Err(ProbeError::Kvm("KVM_SET_MSRS", e)),
        }
    }

    /// The vCPU's general-purpose registers.
    pub fn regs(&self) -> Result<kvm_regs, ProbeError> {
        self.vcpu
            .get_regs()
            .map_err(ProbeError::kvm("KVM_GET_REGS"))
    }
}

/// A flat 4 GiB code or data segment at the selector's privilege level.
fn segment(selector: u16, type_: u8, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

fn guest_memory(vm: &VmFd) -> Result<GuestMemoryMmap, ProbeError> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(ProbeError::Memory)?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(ProbeError::Layout)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is MEM_SIZE bytes of our own mapping, kept alive in
    // ScratchVm after the VM fd (fields drop in order, the VM first).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(ProbeError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(mem)
}

/// Writes page tables, descriptor tables, handlers, data and `code`.
fn lay_out(mem: &GuestMemoryMmap, code: &[u8]) -> Result<(), ProbeError> {
    let w64 = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr));
    w64(PML4, PDPT | PTE_P_W_U)?;
    w64(PDPT, PD | PTE_P_W_U)?;
    w64(PD, PDE_LARGE | PTE_P_W_U)?; // one 2 MiB page at 0
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        w64(GDT + 8 * i as u64, *entry)?;
    }
    for vector in 0..=255u8 {
        let handler = HANDLERS + 8 * u64::from(vector);
        // mov al, vector; out FAULT_PORT, al; hlt
        let stub = [0xb0, vector, 0xe6, FAULT_PORT as u8, 0xf4];
        mem.write_slice(&stub, GuestAddress(handler))?;
        w64(IDT + 16 * u64::from(vector), interrupt_gate(handler))?;
    }
    w64(TSS + 4, STACK_TOP)?; // rsp0
    let mxcsr_at = DATA + super::snippets::MXCSR_OFFSET;
    mem.write_obj(0x1f80u32, GuestAddress(mxcsr_at))?;
    let selector_at = DATA + super::snippets::SELECTOR_OFFSET;
    mem.write_obj(DATA_SELECTOR, GuestAddress(selector_at))?;
    if code.len() > MAX_CODE {
        return Err(ProbeError::CodeTooLong(code.len()));
    }
    mem.write_slice(code, GuestAddress(CODE))?;
    Ok(())
}

/// The low half of a present DPL 0 64-bit interrupt gate to `handler`
/// (below 4 GiB, so the high half is zero).
fn interrupt_gate(handler: u64) -> u64 {
    (handler & 0xffff)
        | (u64::from(CODE_SELECTOR) << 16)
        | (0x8e << 40)
        | (((handler >> 16) & 0xffff) << 48)
}
