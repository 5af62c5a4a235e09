//! The boot vCPU's registers at the kernel's 64-bit entry point.
//!
//! Long mode with paging on (CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 at the identity
//! map), the segments of the boot GDT, interrupts off, RSI at the zero page.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;

use super::gdt::{gdt_entries, kvm_segment_from_gdt, GDT_ENTRY_COUNT, IDT_SIZE};
use super::layout::{BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_POINTER, PML4_ADDR, ZERO_PAGE_ADDR};

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern processors).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: not write-through (cleared: caching on).
pub const X86_CR0_NW: u64 = 1 << 29;
/// CR0: cache disable (cleared: caching on).
pub const X86_CR0_CD: u64 = 1 << 30;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension, needed for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS at entry: only the always-one bit 1, so interrupts are off.
pub const BOOT_RFLAGS: u64 = 0x2;

/// `base` (the vCPU's current special registers) set up for the 64-bit entry.
pub fn boot_sregs(base: &kvm_sregs) -> kvm_sregs {
    let gdt = gdt_entries();
    let segment = |index: usize| kvm_segment_from_gdt(gdt[index], index as u8);
    let data = segment(3);
    let mut sregs = *base;
    sregs.cs = segment(2);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(4);

    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRY_COUNT * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = (IDT_SIZE - 1) as u16;

    // A fresh vCPU has CD and NW set (caches off); the kernel expects them clear.
    sregs.cr0 = (base.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = base.cr4 | X86_CR4_PAE;
    sregs.efer = base.efer | EFER_LME | EFER_LMA;
    sregs
}

/// General registers for jumping to `entry` with the zero page in RSI.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::gdt::{CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};

    fn fresh_vcpu_sregs() -> kvm_sregs {
        // What KVM reports for a new vCPU: caches disabled, real mode.
        kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        }
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let sregs = boot_sregs(&fresh_vcpu_sregs());
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG);
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    }

    #[test]
    fn sregs_use_the_boot_protocol_selectors() {
        let sregs = boot_sregs(&fresh_vcpu_sregs());
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE_SELECTOR, 1));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(seg.selector, DATA_SELECTOR);
        }
        assert_eq!(sregs.tr.selector, TSS_SELECTOR);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_ADDR, 47));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (BOOT_IDT_ADDR, 15));
    }

    #[test]
    fn sregs_keep_unrelated_fields() {
        let base = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..fresh_vcpu_sregs()
        };
        assert_eq!(boot_sregs(&base).apic_base, 0xfee0_0900);
    }

    #[test]
    fn regs_point_at_entry_stack_and_zero_page() {
        let regs = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rsi, ZERO_PAGE_ADDR);
        assert_eq!((regs.rflags, regs.rax), (0x2, 0));
    }
}
