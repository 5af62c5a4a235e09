//! One virtual CPU: its boot-time set-up and its complete saveable state.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, Xsave,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::msrs::{self, MsrError};

/// Offsets of the local vector table registers in the LAPIC page.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes (bits 10:8).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// x87 control word after FNINIT, and the MXCSR reset value.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Errors of configuring or saving a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Creating the vCPU failed.
    #[error("KVM refused to create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// A vCPU ioctl failed.
    #[error("the KVM call {call} failed on vCPU {id}")]
    Ioctl {
        /// Which call.
        call: &'static str,
        /// Which vCPU.
        id: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An MSR operation failed.
    #[error("the MSRs of vCPU {0} could not be accessed")]
    Msrs(u8, #[source] MsrError),
    /// The saved CPUID could not be turned back into a KVM array.
    #[error("the saved CPUID of vCPU {0} has too many entries")]
    Cpuid(u8),
}

/// Everything KVM holds for one vCPU, in the form a snapshot stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index (and APIC id).
    pub id: u8,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every saveable MSR, TSC and kvmclock included.
    pub msrs: Vec<kvm_msr_entry>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The whole XSAVE area (KVM_GET_XSAVE2 size), x87 and SSE included.
    #[serde(with = "serde_bytes")]
    pub xsave: Vec<u8>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC page.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, NMIs, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// The TSC frequency the guest saw, when KVM reports one.
    pub tsc_khz: Option<u32>,
}

/// A KVM vCPU.
pub struct Vcpu {
    /// The index of this vCPU, also its APIC id.
    pub id: u8,
    /// The KVM file descriptor.
    pub fd: VcpuFd,
    xsave_size: usize,
    /// The CPUID given with KVM_SET_CPUID2. Saved as given: on some hosts
    /// KVM_GET_CPUID2 reports bits of the host CPU on top of it.
    cpuid: Vec<kvm_cpuid_entry2>,
}

impl Vcpu {
    /// Creates vCPU `id` in `vm`.
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        let size = vm.check_extension_int(Cap::Xsave2);
        let xsave_size = usize::try_from(size)
            .unwrap_or(0)
            .max(std::mem::size_of::<kvm_bindings::kvm_xsave>());
        Ok(Vcpu {
            id,
            fd,
            xsave_size,
            cpuid: Vec::new(),
        })
    }

    fn ioctl_err(&self, call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Ioctl { call, id, source }
    }

    /// Sets the vCPU up for Linux's 64-bit boot protocol: CPUID, MSRs, the
    /// registers at the kernel's entry point, a clean FPU and the LAPIC's
    /// LINT0/LINT1 wired as ExtINT and NMI.
    pub fn configure_boot(
        &mut self,
        cpuid: &CpuId,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.ioctl_err("KVM_SET_CPUID2"))?;
        self.cpuid = cpuid.as_slice().to_vec();
        msrs::set_msrs(&self.fd, &msrs::boot_msrs()).map_err(|e| VcpuError::Msrs(self.id, e))?;
        self.fd
            .set_regs(regs)
            .map_err(self.ioctl_err("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(sregs)
            .map_err(self.ioctl_err("KVM_SET_SREGS"))?;
        let fpu = kvm_fpu {
            fcw: FPU_CONTROL_WORD,
            mxcsr: MXCSR_DEFAULT,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(self.ioctl_err("KVM_SET_FPU"))?;
        self.configure_lint()
    }

    /// The current special registers, as a base for the boot sregs.
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(self.ioctl_err("KVM_GET_SREGS"))
    }

    fn configure_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.ioctl_err("KVM_GET_LAPIC"))?;
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.ioctl_err("KVM_SET_LAPIC"))
    }

    /// Reads the complete state. The vCPU must be out of KVM_RUN, with any
    /// I/O it exited for already completed.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        let msrs =
            msrs::get_msrs(&self.fd, msr_indices).map_err(|e| VcpuError::Msrs(self.id, e))?;
        Ok(VcpuState {
            id: self.id,
            cpuid: self.cpuid.clone(),
            msrs,
            regs: self.fd.get_regs().map_err(self.ioctl_err("KVM_GET_REGS"))?,
            sregs: self.sregs()?,
            xsave: self.get_xsave()?,
            xcrs: self.fd.get_xcrs().map_err(self.ioctl_err("KVM_GET_XCRS"))?,
            debug_regs: self
                .fd
                .get_debug_regs()
                .map_err(self.ioctl_err("KVM_GET_DEBUGREGS"))?,
            lapic: self
                .fd
                .get_lapic()
                .map_err(self.ioctl_err("KVM_GET_LAPIC"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(self.ioctl_err("KVM_GET_VCPU_EVENTS"))?,
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(self.ioctl_err("KVM_GET_MP_STATE"))?,
            tsc_khz: self.fd.get_tsc_khz().ok(),
        })
    }

    /// Writes back a saved state, in the order KVM needs: CPUID first (it
    /// decides which MSRs and XSAVE components exist), the TSC frequency,
    /// then registers, LAPIC before MSRs (TSC deadline) and events last.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::Cpuid(self.id))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.ioctl_err("KVM_SET_CPUID2"))?;
        self.cpuid = state.cpuid.clone();
        if let Some(khz) = state.tsc_khz {
            self.set_tsc_khz(khz);
        }
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(self.ioctl_err("KVM_SET_MP_STATE"))?;
        self.fd
            .set_regs(&state.regs)
            .map_err(self.ioctl_err("KVM_SET_REGS"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(self.ioctl_err("KVM_SET_SREGS"))?;
        self.set_xsave(&state.xsave)?;
        self.fd
            .set_xcrs(&state.xcrs)
            .map_err(self.ioctl_err("KVM_SET_XCRS"))?;
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(self.ioctl_err("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(self.ioctl_err("KVM_SET_LAPIC"))?;
        msrs::set_msrs(&self.fd, &state.msrs).map_err(|e| VcpuError::Msrs(self.id, e))?;
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(self.ioctl_err("KVM_SET_VCPU_EVENTS"))
    }

    /// Sets the guest TSC frequency when it differs from this host's. A host
    /// without TSC scaling refuses; the guest then runs at the host's rate,
    /// which kvmclock compensates for, so that is logged, not fatal.
    fn set_tsc_khz(&self, khz: u32) {
        if self.fd.get_tsc_khz().ok() == Some(khz) {
            return;
        }
        if let Err(e) = self.fd.set_tsc_khz(khz) {
            log::warn!(
                "vCPU {}: could not set the saved TSC frequency {khz} kHz ({e}); \
                 the guest keeps this host's TSC rate",
                self.id
            );
        }
    }

    fn get_xsave(&self) -> Result<Vec<u8>, VcpuError> {
        let base = std::mem::size_of::<kvm_bindings::kvm_xsave>();
        let extra = (self.xsave_size - base).div_ceil(4);
        let mut xsave = Xsave::new(extra).map_err(|_| VcpuError::Cpuid(self.id))?;
        // SAFETY: `xsave` was allocated with the size KVM_CAP_XSAVE2 reports,
        // which is what KVM_GET_XSAVE2 writes.
        unsafe { self.fd.get_xsave2(&mut xsave) }.map_err(self.ioctl_err("KVM_GET_XSAVE2"))?;
        let fam = xsave.as_fam_struct_ref();
        let mut bytes = Vec::with_capacity(self.xsave_size);
        for word in fam.xsave.region.iter().chain(xsave.as_slice()) {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        Ok(bytes)
    }

    fn set_xsave(&self, bytes: &[u8]) -> Result<(), VcpuError> {
        let base = std::mem::size_of::<kvm_bindings::kvm_xsave>();
        let extra = bytes.len().saturating_sub(base).div_ceil(4);
        let mut xsave = Xsave::new(extra).map_err(|_| VcpuError::Cpuid(self.id))?;
        // SAFETY: the region is plain data; `region` holds exactly `base`
        // bytes and the extra words hold the rest.
        let fam = unsafe { xsave.as_mut_fam_struct() };
        for (i, word) in fam.xsave.region.iter_mut().enumerate() {
            *word = read_word(bytes, i);
        }
        let region_words = fam.xsave.region.len();
        for (i, word) in xsave.as_mut_slice().iter_mut().enumerate() {
            *word = read_word(bytes, region_words + i);
        }
        // SAFETY: the area has the size the snapshot was taken with, which
        // KVM_SET_XSAVE2 reads no further than.
        unsafe { self.fd.set_xsave2(&xsave) }.map_err(self.ioctl_err("KVM_SET_XSAVE"))
    }
}

fn read_word(bytes: &[u8], index: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(src) = bytes.get(index * 4..index * 4 + 4) {
        word.copy_from_slice(src);
    }
    u32::from_le_bytes(word)
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = lapic.regs[reg + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0] = 0xff_u8 as _;
        lapic.regs[APIC_LVT0 + 1] = 0x01;
        lapic.regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(lapic.regs[APIC_LVT0] as u8, 0xff);
        assert_eq!(lapic.regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(lapic.regs[APIC_LVT0 + 2] as u8, 0x01);
    }

    #[test]
    fn xsave_words_read_little_endian_and_pad_with_zeros() {
        let bytes = [1, 0, 0, 0, 2, 0];
        assert_eq!(read_word(&bytes, 0), 1);
        assert_eq!(read_word(&bytes, 1), 0);
        assert_eq!(read_word(&bytes, 5), 0);
    }
}
