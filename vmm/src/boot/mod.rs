//! The x86_64 boot path: guest memory layout, kernel and initrd loading, the zero
//! page, the MP table, and the page tables and GDT for a 64-bit entry.
//!
//! [`configure_system`] does it all for a fresh guest memory; the vCPU code then
//! sets the boot vCPU's registers with [`regs::boot_regs`] and [`regs::boot_sregs`].
//! Everything here is a plain function of guest memory and the inputs: no KVM calls.

pub mod gdt;
#[cfg(test)]
mod kvm_check;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod regs;

use std::io::{Read, Seek};

use linux_loader::cmdline::Cmdline;
use log::info;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

pub use layout::{create_guest_memory, ram_regions};
pub use loader::{load_initrd, load_kernel, InitrdInfo, KernelImage, KernelKind};
pub use params::{write_boot_params, BootConfig};
pub use regs::{boot_regs, boot_sregs};

/// Errors from preparing a guest for boot, one variant per step.
#[derive(Debug, Error)]
pub enum Error {
    /// Guest memory could not be created.
    #[error("cannot create guest memory")]
    Memory(#[source] layout::Error),
    /// The kernel command line was refused.
    #[error("cannot build the kernel command line")]
    Cmdline(#[source] params::Error),
    /// The vCPU count does not fit in the MP table (checked before loading).
    #[error("cannot describe the vCPUs to the guest")]
    CpuCount(#[source] mptable::Error),
    /// The kernel could not be loaded.
    #[error("cannot load the kernel")]
    Kernel(#[source] loader::Error),
    /// The initrd could not be loaded.
    #[error("cannot load the initrd")]
    Initrd(#[source] loader::Error),
    /// The command line or zero page could not be written.
    #[error("cannot write the boot parameters")]
    BootParams(#[source] params::Error),
    /// The MP table could not be written.
    #[error("cannot write the MP table")]
    Mptable(#[source] mptable::Error),
    /// The page tables could not be written.
    #[error("cannot write the boot page tables")]
    PageTables(#[source] paging::Error),
    /// The GDT or IDT could not be written.
    #[error("cannot write the boot GDT")]
    Gdt(#[source] gdt::Error),
}

/// What the vCPU code needs to start the guest that [`configure_system`] prepared.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// The kernel's 64-bit entry point: RIP of the boot vCPU.
    pub entry: GuestAddress,
    /// The format of the loaded kernel.
    pub kernel_kind: KernelKind,
    /// First byte past the kernel's memory.
    pub kernel_end: u64,
    /// Where the initrd went, if there was one.
    pub initrd: Option<InitrdInfo>,
    /// Guest physical address of the zero page: RSI of the boot vCPU.
    pub zero_page: GuestAddress,
}

/// The kernel command line `base` plus `extra` parameters: see
/// [`params::build_cmdline`].
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, Error> {
    params::build_cmdline(base, extra).map_err(Error::Cmdline)
}

/// Prepares `mem` to boot the kernel in `kernel` with `num_cpus` vCPUs: loads the
/// kernel and the initrd, writes the command line, zero page, MP table, page tables,
/// GDT and IDT.
pub fn configure_system<M, F>(
    mem: &M,
    kernel: &mut F,
    initrd: Option<&mut F>,
    cmdline: &Cmdline,
    num_cpus: u8,
) -> Result<BootInfo, Error>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    mptable::check_cpu_count(num_cpus).map_err(Error::CpuCount)?;
    let image = load_kernel(mem, kernel).map_err(Error::Kernel)?;
    let initrd = initrd
        .map(|file| load_initrd(mem, file, &image))
        .transpose()
        .map_err(Error::Initrd)?;

    let config = BootConfig {
        cmdline,
        initrd,
        setup_header: image.setup_header,
    };
    write_boot_params(mem, &config).map_err(Error::BootParams)?;
    mptable::setup_mptable(mem, num_cpus).map_err(Error::Mptable)?;
    paging::setup_page_tables(mem).map_err(Error::PageTables)?;
    gdt::write_gdt_idt(mem).map_err(Error::Gdt)?;

    info!(
        "guest ready to boot: {num_cpus} vCPUs, entry {:#x}",
        image.entry.0
    );
    Ok(BootInfo {
        entry: image.entry,
        kernel_kind: image.kind,
        kernel_end: image.kernel_end,
        initrd,
        zero_page: GuestAddress(layout::ZERO_PAGE_ADDR),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::bootparam::boot_params;
    use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EM_X86_64, PT_LOAD};
    use std::io::Cursor;
    use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    /// A one-segment x86_64 ELF at 16 MiB: enough for the loader, not a real kernel.
    fn tiny_vmlinux() -> Vec<u8> {
        let phoff = std::mem::size_of::<Elf64_Ehdr>() as u64;
        let mut ehdr = Elf64_Ehdr {
            e_type: 2,
            e_machine: EM_X86_64,
            e_entry: 16 * MIB,
            e_phoff: phoff,
            e_phentsize: std::mem::size_of::<Elf64_Phdr>() as u16,
            e_phnum: 1,
            ..Default::default()
        };
        ehdr.e_ident[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_offset: phoff + std::mem::size_of::<Elf64_Phdr>() as u64,
            p_paddr: 16 * MIB,
            p_filesz: 2,
            p_memsz: 0x10_0000,
            ..Default::default()
        };
        [ehdr.as_slice(), phdr.as_slice(), &[0xf4, 0xf4]].concat()
    }

    #[test]
    fn configure_system_prepares_every_structure() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        let mut kernel = Cursor::new(tiny_vmlinux());
        let mut initrd = Cursor::new(vec![0x42u8; 5000]);
        let info = configure_system(&mem, &mut kernel, Some(&mut initrd), &cmdline, 2).unwrap();

        assert_eq!(info.entry, GuestAddress(16 * MIB));
        assert_eq!(info.kernel_kind, KernelKind::Elf);
        assert_eq!(info.initrd.unwrap().addr, GuestAddress(64 * MIB - 0x2000));
        let params: boot_params = mem.read_obj(info.zero_page).unwrap();
        assert_eq!({ params.hdr.ramdisk_image }, (64 * MIB - 0x2000) as u32);
        let mp_signature: [u8; 4] = mem.read_obj(GuestAddress(layout::MPTABLE_START)).unwrap();
        assert_eq!(&mp_signature, b"_MP_");
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4, layout::PDPT_ADDR | 3);
        let code: u64 = mem
            .read_obj(GuestAddress(layout::BOOT_GDT_ADDR + 0x10))
            .unwrap();
        assert_eq!(code, gdt::gdt_entries()[2]);
    }

    #[test]
    fn bad_cpu_count_is_refused_before_loading() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cmdline = build_cmdline("quiet", &[]).unwrap();
        // Not a kernel at all: the CPU count must be reported first.
        let mut kernel = Cursor::new(b"not a kernel".to_vec());
        let err = configure_system(&mem, &mut kernel, None, &cmdline, 0).unwrap_err();
        assert!(matches!(err, Error::CpuCount(_)));
    }

    #[test]
    fn non_kernel_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cmdline = build_cmdline("quiet", &[]).unwrap();
        let mut kernel = Cursor::new(b"not a kernel".to_vec());
        let err = configure_system(&mem, &mut kernel, None, &cmdline, 1).unwrap_err();
        assert!(matches!(err, Error::Kernel(loader::Error::NotAKernel)));
    }
}
