//! The KVM virtual machine: its file descriptor, guest memory slots, the
//! in-kernel interrupt controllers and PIT, and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout;

/// Errors of setting up or saving the virtual machine.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Creating the VM failed.
    #[error("KVM refused to create a virtual machine")]
    Create(#[source] kvm_ioctls::Error),
    /// A VM-level ioctl failed.
    #[error("the KVM call {0} failed on the virtual machine")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be given to KVM.
    #[error("KVM refused guest memory slot {slot} at {addr:#x} ({size} bytes)")]
    MemorySlot {
        /// Slot number.
        slot: u32,
        /// Guest physical address of the slot.
        addr: u64,
        /// Size of the slot in bytes.
        size: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Everything KVM keeps per VM (outside the vCPUs) that a snapshot records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The in-kernel 8254 PIT.
    pub pit: kvm_pit_state2,
    /// The kvmclock at the time of the snapshot.
    pub clock: kvm_clock_data,
}

/// A KVM virtual machine with an in-kernel irqchip and PIT.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM with its TSS area, in-kernel PIC/IOAPIC and PIT.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        // Intel hosts need three pages for a real-mode TSS and one for an
        // identity-mapped page table, both outside guest RAM.
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| VmError::Ioctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        fd.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Ioctl("KVM_CREATE_PIT2", e))?;
        Ok(Vm { fd })
    }

    /// The VM's file descriptor, for creating vCPUs and devices.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Hands every region of `mem` to KVM as one memory slot each.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let addr = region.start_addr().raw_value();
            let size = region.len();
            let host = region.as_ptr() as u64;
            let desc = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: host,
                flags: 0,
            };
            // SAFETY: the host range belongs to `mem`, which the caller keeps
            // alive (and mapped) for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(desc) }.map_err(|source| {
                VmError::MemorySlot {
                    slot,
                    addr,
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Routes writes to `evt` into interrupt line `gsi` of the irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Ioctl("KVM_IRQFD", e))
    }

    /// Reads the irqchips, PIT and clock.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let clock = self
            .fd
            .get_clock()
            .map_err(|e| VmError::Ioctl("KVM_GET_CLOCK", e))?;
        Ok(VmState {
            pic_master: self.get_irqchip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.get_irqchip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.get_irqchip(KVM_IRQCHIP_IOAPIC)?,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| VmError::Ioctl("KVM_GET_PIT2", e))?,
            clock,
        })
    }

    /// Writes back the PIT and irqchips of [`Vm::save_state`]; done before
    /// the vCPUs are restored.
    pub fn restore_irqchips(&self, state: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::Ioctl("KVM_SET_PIT2", e))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Ioctl("KVM_SET_IRQCHIP", e))?;
        }
        Ok(())
    }

    /// Writes back the kvmclock; done last, just before the vCPUs run, so
    /// that guest time resumes where it stopped.
    pub fn restore_clock(&self, state: &VmState) -> Result<(), VmError> {
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            // No KVM_CLOCK_REALTIME: the clock resumes at the saved value, so
            // guest time does not count the time the snapshot spent on disk.
            flags: 0,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::Ioctl("KVM_SET_CLOCK", e))
    }

    fn get_irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(|e| VmError::Ioctl("KVM_GET_IRQCHIP", e))?;
        Ok(chip)
    }
}
