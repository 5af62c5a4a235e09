//! A check of the boot path against real KVM: a tiny 64-bit "kernel" prepared by
//! `configure_system` and started with `boot_regs`/`boot_sregs` must run in long
//! mode, find the zero page through RSI and use the boot stack.
//!
//! It does not prove that Linux boots: only that KVM accepts the registers and that
//! the page tables, GDT and zero page pointer work for the first instructions.
//! Without /dev/kvm the test returns early and says so in the log.

use std::io::Cursor;
use std::mem::size_of;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EM_X86_64, PT_LOAD};
use vm_memory::{ByteValued, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{create_guest_memory, KVM_TSS_ADDR};
use super::{boot_regs, boot_sregs, build_cmdline, configure_system};

const ENTRY: u64 = 16 << 20;
const SERIAL_PORT: u16 = 0x3f8;

/// Guest code: checks "HdrS" at RSI + 0x202, pushes and pops through the stack,
/// reports CS's selector low byte and then 'K' (or 'F' on a bad zero page) on the
/// serial port, and halts.
const GUEST_CODE: &[u8] = &[
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0x3d, 0x48, 0x64, 0x72, 0x53, // cmp eax, "HdrS"
    0x75, 0x0d, // jne fail
    0x50, // push rax
    0x58, // pop rax
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8c, 0xc8, // mov eax, cs
    0xee, // out dx, al
    0xb0, b'K', // mov al, 'K'
    0xee, // out dx, al
    0xf4, // hlt
    0x66, 0xba, 0xf8, 0x03, // fail: mov dx, 0x3f8
    0xb0, b'F', // mov al, 'F'
    0xee, // out dx, al
    0xf4, // hlt
];

fn guest_elf() -> Vec<u8> {
    let phoff = size_of::<Elf64_Ehdr>() as u64;
    let mut ehdr = Elf64_Ehdr {
        e_type: 2,
        e_machine: EM_X86_64,
        e_entry: ENTRY,
        e_phoff: phoff,
        e_phentsize: size_of::<Elf64_Phdr>() as u16,
        e_phnum: 1,
        ..Default::default()
    };
    ehdr.e_ident[..6].copy_from_slice(b"\x7fELF\x02\x01");
    let phdr = Elf64_Phdr {
        p_type: PT_LOAD,
        p_offset: phoff + size_of::<Elf64_Phdr>() as u64,
        p_paddr: ENTRY,
        p_filesz: GUEST_CODE.len() as u64,
        p_memsz: GUEST_CODE.len() as u64,
        ..Default::default()
    };
    [ehdr.as_slice(), phdr.as_slice(), GUEST_CODE].concat()
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which outlives
        // the VM in this test, and slots do not overlap.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
    }
}

#[test]
fn tiny_kernel_runs_in_long_mode_on_kvm() {
    let Ok(kvm) = Kvm::new() else {
        log::warn!("no /dev/kvm: the KVM boot check did not run");
        return;
    };
    let mem = create_guest_memory(64 << 20).unwrap();
    let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
    let mut kernel = Cursor::new(guest_elf());
    let info = configure_system(&mem, &mut kernel, None, &cmdline, 1).unwrap();

    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(KVM_TSS_ADDR as usize).unwrap();
    register_memory(&vm, &mem);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    let sregs = boot_sregs(&vcpu.get_sregs().unwrap());
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&boot_regs(info.entry)).unwrap();

    let mut out = Vec::new();
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(SERIAL_PORT, data) => out.extend_from_slice(data),
            VcpuExit::Hlt => break,
            exit => panic!("unexpected exit {exit:?}, output so far {out:?}"),
        }
    }
    assert_eq!(out, vec![0x10, b'K'], "CS selector then 'K' expected");
}
